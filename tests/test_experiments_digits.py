"""experiments/digits.py: the four-method calibration table on scikit-learn's digits."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from tests.experiment_scripts import load_script


def script() -> ModuleType:
    return load_script("digits")


@pytest.mark.slow
def test_short_run_learns_and_writes_the_table(tmp_path: Path) -> None:
    digits = script()
    results = digits.main(["--epochs", "6", "--swa-epochs", "4", "--out", str(tmp_path)])
    (result,) = results
    assert set(result) == set(digits.METHODS)
    for method, metrics in result.items():
        assert metrics["accuracy"] > 0.85, method  # digits is easy: 6 epochs are plenty
        assert all(math.isfinite(v) for v in metrics.values()), method
    # temperature scaling never changes the predicted class
    assert result["SGD + temp. scaling"]["accuracy"] == result["SGD"]["accuracy"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["numbers"]["results"] == results and saved["config"]["epochs"] == 6
    assert saved["seeds"] == [0] and len(saved["claims"]) == 3
    swa_gain = results[0]["SWA"]["nll"] < results[0]["SGD"]["nll"]
    assert saved["claims"][0]["verdict"] == ("holds" if swa_gain else "fails")
    table = (tmp_path / "results.md").read_text().split("\n\n")[0]
    rows = [line for line in table.splitlines() if line[:2] == "| "]
    assert [r.split(" | ")[0][2:] for r in rows] == ["method", *digits.METHODS]

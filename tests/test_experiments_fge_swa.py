"""experiments/fge_swa.py: both studies run end to end on tiny settings and write their tables."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.experiment_scripts import load_script


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One thread, restored afterwards: these runs are tiny, and the CI's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def script() -> ModuleType:
    return load_script("fge_swa")


def test_quick_run_writes_both_tables(tmp_path: Path) -> None:
    exp = script()
    results = exp.main(["--quick", "--seeds", "0", "--out", str(tmp_path)])
    assert set(results) == {"fge", "sam"}
    (fge,) = results["fge"]
    (sam,) = results["sam"]
    assert set(fge) == set(exp.FGE_METHODS) and set(sam) == set(exp.SAM_METHODS)
    for row in [*fge.values(), *sam.values()]:
        assert all(math.isfinite(v) for v in row.values())
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["auroc"] <= 1
    # with whole cycles, the final weights are the last snapshot
    assert fge["last snapshot"]["accuracy"] >= 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["numbers"]["results"] == results and saved["seeds"] == [0]
    fge_gap = fge["SWA"]["accuracy"] - fge["FGE"]["accuracy"]
    sam_gain = sam["SAM"]["accuracy"] - sam["SGD"]["accuracy"]
    assert [c["numbers"] for c in saved["claims"]] == [
        {"accuracy SWA − FGE": [fge_gap]},
        {"accuracy SAM − SGD": [sam_gain]},
    ]
    assert saved["claims"][1]["verdict"] == ("holds" if sam_gain > 0 else "fails")
    text = (tmp_path / "results.md").read_text()
    assert "## fge" in text and "## sam" in text and "| SWAG (SAM) |" in text

"""Mean ± std over seeds (swag.bench._aggregate) and experiments/classification.py, its CLI."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest

from swag.bench import COLUMNS
from swag.bench import _aggregate as aggregate
from tests.experiment_scripts import load_script


def script() -> ModuleType:
    return load_script("classification")


def fake_run(folder: Path, seed: int, acc: float, preset: str = "default") -> Path:
    # metrics.json writes an undefined metric as null
    result = {key: 0.5 for key, _ in COLUMNS} | {"accuracy": acc, "ood_auroc_mi": None}
    summary = {
        "settings": {"seed": seed, "preset": preset},
        "seconds": {"total": 100.0 + seed},
        "results": {"SGD": result, "SWAG": result | {"ood_auroc_mi": 0.9}},
    }
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(summary))
    return folder


def test_table_is_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    accs = [0.90, 0.92, 0.97]
    runs = [fake_run(tmp_path / f"s{i}", i, a) for i, a in enumerate(accs)]
    text = aggregate.table(aggregate.load_runs(runs))
    sgd = next(line for line in text.splitlines() if line.startswith("| SGD |"))
    expected = f"{statistics.fmean(accs):.4f} ± {statistics.stdev(accs):.4f}"
    assert sgd.split(" | ")[1] == expected
    assert "–" in sgd  # null (no mutual information for one sample) is shown as a dash
    assert "| SWAG |" in text and "0.9000 ± 0.0000" in text


def test_mixed_presets_are_refused(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path / "a", 0, 0.9), fake_run(tmp_path / "b", 1, 0.9, preset="smoke")]
    with pytest.raises(ValueError, match="runs mix presets"):
        aggregate.load_runs(runs)


def test_paired_table_is_difference_to_sgd_in_the_same_run(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path / f"s{i}", i, a) for i, a in enumerate([0.90, 0.92, 0.97])]
    summaries = aggregate.load_runs(runs)
    for s, delta in zip(summaries, [0.01, 0.03, 0.02], strict=True):
        s["results"]["SWAG"] = s["results"]["SWAG"] | {
            "accuracy": s["results"]["SGD"]["accuracy"] + delta
        }
    text = aggregate.paired_table(summaries)
    swag_row = next(line for line in text.splitlines() if line.startswith("| SWAG |"))
    expected = (
        f"{statistics.fmean([0.01, 0.03, 0.02]):+.4f} ± {statistics.stdev([0.01, 0.03, 0.02]):.4f}"
    )
    assert swag_row.split(" | ")[1] == expected
    assert "| SGD |" not in text
    assert swag_row.count("–") == 1  # SGD has no mutual information: no paired difference

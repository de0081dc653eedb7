"""Smoke test of ``experiments/regression.py --quick``: output files, structure, sane metrics."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from swag.data import load_uci_regression
from tests.experiment_scripts import load_script

METHODS = [
    "SGD",
    "SGD, end of SWA phase",
    "SWA",
    "SWAG",
    "Ensemble (5)",
    "MultiSWAG (5)",
    "PCA+ESS",
    "PCA+VI",
]
KEYS = {"ll", "ll_mixture", "rmse", "coverage90"}


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    """The experiment script as a module (``experiments/`` is not a package)."""
    module = load_script("regression")
    try:
        yield module
    finally:
        del sys.modules[module.__name__]


@pytest.fixture(scope="module")
def quick_run(
    script: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, object]]:
    """One ``--quick`` run (diabetes, 2 splits, few epochs) into a temporary folder."""
    out = tmp_path_factory.mktemp("regression")
    return out, script.main(["--quick", "--seed", "3", "--out", str(out)])


def test_quick_run_writes_json_and_table(quick_run: tuple[Path, dict[str, object]]) -> None:
    out, results = quick_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))  # the common schema, checked by write
    assert on_disk["schema"] == "swag-experiment/1" and on_disk["seeds"] == [3]
    numbers = on_disk["numbers"]
    assert numbers["datasets"] == ["diabetes"] and numbers["splits"] == 2
    assert list(numbers["summary"]["diabetes"]) == METHODS
    assert on_disk["config"]["max_rank"] == 20 and on_disk["config"]["scale"] == 0.5
    assert [c["verdict"] in ("holds", "fails", "mixed") for c in on_disk["claims"]] == [True] * 2
    table = (out / "results.md").read_text().split("\n\n")[0].splitlines()
    assert table[0].startswith("| dataset | method | test LL")
    assert [row.split(" | ")[:2] for row in table[2:]] == [["| diabetes", m] for m in METHODS]


def test_quick_run_metrics_are_finite_and_plausible(
    quick_run: tuple[Path, dict[str, object]],
) -> None:
    _, results = quick_run
    _, y = load_uci_regression("diabetes")
    y_std = y.std().item()  # ≈ 77: a constant prediction's RMSE
    per_split = results["numbers"]["per_split"]["diabetes"]  # type: ignore[index]
    assert len(per_split) == 2
    for run in per_split:
        assert list(run) == METHODS
        for method, metrics in run.items():
            assert set(metrics) == KEYS
            assert all(math.isfinite(v) for v in metrics.values()), (method, metrics)
            assert 0.0 <= metrics["coverage90"] <= 1.0
            assert metrics["rmse"] < y_std, (method, metrics)
            # In original units the LL is about −log(RMSE) − 1.42 for a calibrated Gaussian.
            assert -7.0 < metrics["ll"] < -4.0, (method, metrics)
        # A point posterior is one Gaussian: the mixture LL equals the moment-matched LL.
        assert run["SGD"]["ll_mixture"] == pytest.approx(run["SGD"]["ll"], abs=1e-5)
    summary = results["numbers"]["summary"]["diabetes"]  # type: ignore[index]
    assert summary["SGD"]["ll_vs_sgd"] == {"mean": 0.0, "se": 0.0}


def test_same_seed_same_numbers_and_global_rng_untouched(script: ModuleType) -> None:
    cfg = script.Config(
        epochs=2, swag_epochs=3, num_samples=4, ensemble_size=2, ess_samples=2, vi_epochs=1
    )
    state = torch.random.get_rng_state()
    first = script.run_split(cfg, "diabetes", 0, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert script.run_split(cfg, "diabetes", 0, seed=5) == first
    assert script.run_split(cfg, "diabetes", 1, seed=5) != first

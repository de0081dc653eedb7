"""Smoke tests of experiments/toy_subspace.py and experiments/fmnist_landscape.py (tiny runs)."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest

from tests.experiment_scripts import load_script


def load(name: str) -> ModuleType:
    return load_script(name)


def test_toy_subspace_smoke(tmp_path: Path) -> None:
    args = "--sgd-epochs 30 --swag-epochs 20 --ess-samples 4 --burn-in 1 --vi-epochs 2"
    result = load("toy_subspace").main([*args.split(), "--members", "2", "--out", str(tmp_path)])
    assert (tmp_path / "toy_subspace.png").stat().st_size > 10_000
    methods = result["numbers"]["methods"]
    assert list(methods) == ["SGD", "SWAG", "PCA(5)+ESS", "PCA(5)+VI", "Ensemble (2)"]
    assert methods["SGD"]["epistemic_sd_in_gap"] == 0.0
    assert methods["PCA(5)+ESS"]["epistemic_sd_in_gap"] > 0.0
    assert result["numbers"]["ess"]["passes_per_sample"] >= 1.0
    (claim,) = result["claims"]
    ess = methods["PCA(5)+ESS"]
    ratio = ess["epistemic_sd_in_gap"] / ess["epistemic_sd_on_data"]
    assert claim["numbers"]["PCA(5)+ESS"] == ratio


def test_fmnist_landscape_smoke(tmp_path: Path) -> None:
    try:
        from swag.data import load_fashion_mnist

        load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    args = (
        "--train-size 512 --eval-size 128 --epochs 2 --swa-epochs 1 --line-points 3 --grid 2 "
        "--ess-samples 2 --ess-size 128"
    )
    result = load("fmnist_landscape").main([*args.split(), "--out", str(tmp_path)])
    for png in ("fmnist_loss_line.png", "fmnist_loss_plane.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    numbers = result["numbers"]
    assert numbers["ess"]["passes_per_sample"] >= 1.0
    assert all(math.isfinite(v["nll"]) for v in numbers["test"].values())
    (claim,) = result["claims"]
    sgd, swa = claim["numbers"].values()  # the train loss nearest t = 0 and t = 1
    assert claim["verdict"] == ("holds" if swa < sgd else "fails")

"""experiments/averaging_cnn.py: the verdicts from given numbers, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.experiment_scripts import load_script

exp = load_script("averaging_cnn")


def seed_run(swa_nll: float, ema_nll: float, ema_acc: float) -> dict[str, Any]:
    """Test metrics of one seed: every other method at NLL 0.40, accuracy 0.88."""
    test = {m: {"accuracy": 0.88, "nll": 0.40} for m in exp.METHODS}
    test["SWA"] = {"accuracy": 0.89, "nll": swa_nll}
    test["EMA (SWA run)"] = {"accuracy": ema_acc, "nll": ema_nll}
    return {"test": test}


def test_verdicts_follow_the_numbers() -> None:
    # seed 0: EMA within tolerance of SWA, SWA best; seed 1: EMA 0.02 nats worse, and it beats
    # SWA on accuracy, so SWA is best on NLL only
    runs = [seed_run(0.35, 0.355, 0.888), seed_run(0.35, 0.37, 0.90)]
    same_swa_run, same_sgd_run, best = exp.claims(runs)
    assert same_swa_run.verdict == "mixed"
    assert same_swa_run.numbers["nll_minus_swa"] == pytest.approx([0.005, 0.02])
    assert same_sgd_run.verdict == "fails"  # 0.40 vs 0.35: far from "about the same"
    assert best.verdict == "mixed"  # NLL on both seeds, accuracy on seed 0 only
    assert best.numbers["best_accuracy_method_per_seed"] == ["SWA", "EMA (SWA run)"]
    assert exp.claims([seed_run(0.35, 0.352, 0.889)])[0].verdict == "holds"


def test_best_picks_the_lowest_validation_nll() -> None:
    cands = {
        "EMA 0.99": {"val": {"nll": 0.5}, "test": {"nll": 0.1}},
        "EMA 0.999": {"val": {"nll": 0.4}, "test": {"nll": 0.9}},
    }
    assert exp.best(cands)[0] == "EMA 0.999"  # chosen on validation, whatever the test says


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    try:
        from swag.data import load_fashion_mnist

        load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    threads = torch.get_num_threads()
    try:
        doc = exp.main(["--quick", "--seeds", "0", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(doc)) and saved["schema"] == "swag-experiment/1"
    assert saved["seeds"] == [0] and saved["config"]["bench"]["epochs"] == exp.QUICK.bench.epochs
    (run,) = saved["numbers"]["runs"]
    assert list(run["test"]) == list(exp.METHODS)
    for method, m in run["test"].items():
        assert 0.1 < m["accuracy"] <= 1 and 0 < m["nll"] < 3, method
    assert run["chosen"]["EMA (SGD run)"] in run["candidates"]["EMA (SGD run)"]
    assert [c["verdict"] in ("holds", "fails", "mixed") for c in saved["claims"]] == [True] * 3
    md = (tmp_path / "results.md").read_text()
    assert "| SWA |" in md and "| claim | verdict |" in md
    assert (tmp_path / "averaging_cnn.png").stat().st_size > 10_000

"""`swag bench --preset smoke` end to end, and the benchmark's building blocks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from swag.bench.config import PRESETS, BenchConfig
from swag.bench.train import schedule
from swag.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_schedule_is_the_papers_piecewise_linear_rate() -> None:
    assert schedule(0, 100, 0.1, 0.01) == 0.1
    assert schedule(50, 100, 0.1, 0.01) == 0.1
    assert math.isclose(schedule(70, 100, 0.1, 0.01), 0.055)
    assert schedule(90, 100, 0.1, 0.01) == 0.01
    assert schedule(500, 100, 0.1, 0.01) == 0.01


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="swa_epochs must be between 1 and epochs - 1"):
        BenchConfig(preset="x", epochs=3, swa_epochs=3)
    with pytest.raises(ValueError, match="num_samples >= members"):
        PRESETS["smoke"].replace(num_samples=1)


def test_collection_covers_the_rank() -> None:
    for cfg in PRESETS.values():
        assert cfg.swa_epochs * cfg.collects_per_epoch >= cfg.max_rank, cfg.preset


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_smoke_bench_writes_a_complete_report(tmp_path: Path) -> None:
    rng_state = torch.get_rng_state()
    assert main(["bench", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    assert torch.equal(torch.get_rng_state(), rng_state), "the bench must not touch the global RNG"
    summary = json.loads((tmp_path / "metrics.json").read_text())
    methods = [
        "SGD", "SWA", "SWAG-Diag", "SWAG", "MultiSWAG", "Deep ensemble",
        "SGD + temp. scaling", "MC dropout",
    ]  # fmt: skip
    assert list(summary["results"]) == methods
    for name, result in summary["results"].items():
        assert 0.0 <= result["accuracy"] <= 1.0, name
        assert result["nll"] > 0 and 0 <= result["ece"] <= 1, name
        assert 0 <= result["ood_auroc_entropy"] <= 1, name
    # mutual information exists only for methods with several samples
    assert math.isnan(summary["results"]["SGD"]["ood_auroc_mi"])
    assert not math.isnan(summary["results"]["SWAG"]["ood_auroc_mi"])
    report = (tmp_path / "report.md").read_text()
    assert "| MultiSWAG |" in report and "seed 0" in report
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "reliability_swag.png").is_file()
    assert (tmp_path / "ood_entropy_deep_ensemble.png").is_file()


def test_missing_data_is_a_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", "--preset", "smoke", "--data-dir", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "is not a device name"), ("cuda", "sees no CUDA GPU")],
)
def test_unusable_device_is_a_clear_cli_error_before_any_work(
    device: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "--preset", "smoke", "--device", device, "--no-progress"]) == 2
    assert message in capsys.readouterr().err

"""experiments/averaging_lm.py end to end on tiny settings: curves, verdicts, plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.experiment_scripts import load_script


@pytest.mark.slow
def test_quick_run_writes_curves_verdicts_and_plot(tmp_path: Path) -> None:
    exp = load_script("averaging_lm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = exp.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert [c["step"] for c in result["numbers"]["curves"]] == [10, 20]
    beats, finds = result["claims"]
    gains = beats["numbers"]["mid_minus_latest"].values()
    assert beats["verdict"] == exp._common.verdict([g < 0 for g in gains])
    assert finds["verdict"] in {"holds", "fails"}
    assert finds["numbers"]["posthoc_sigma_rel"] in exp.GRID
    assert (tmp_path / "averaging_lm.png").stat().st_size > 0

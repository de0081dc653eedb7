"""The Lightning callback benchmark's plumbing on a few small steps; no timing asserts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import integrations


# Lightning 2.6 calls torch's deprecated pytree LeafSpec; a 4-batch fit trips its advice on
# loader workers and log intervals. None of it is ours to fix.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers")
@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_callback_overhead_benchmark_writes_a_finite_ratio(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    argv = ["--steps", "8", "--batch", "4", "--threads", "0", "--out", str(out)]
    row = integrations.main(argv)  # --threads 0: leave this process's thread count alone
    assert json.loads(out.read_text()) == row
    assert row["collects"] == 8 and row["steps_timed"] == 8 - integrations.WARMUP
    for key in ("callback_seconds", "step_seconds", "ratio"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["status"] in ("PASS", "MISS")

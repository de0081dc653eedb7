"""scripts/gpu_check.sh's CPU dry run (issue 19): without a GPU, every CUDA part is skipped by
name, the summary and environment land in the folder given, and the script succeeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_dry_run_on_cpu_skips_the_cuda_parts_by_name(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    out = tmp_path / "gpu"
    done = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=ROOT, env=env, timeout=120,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary == [
        f"{name}: skipped (no CUDA GPU visible to torch)"
        for name in ("tests-cuda", "bench-smoke", "benchmarks-quick")
    ]
    assert "cuda False" in (out / "env.txt").read_text()


def test_usage_error_without_an_output_folder() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 2 and "usage: scripts/gpu_check.sh OUTDIR" in done.stderr

"""The benchmark's plumbing on a tiny model: JSON keys and finite ratios, no timing asserts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_benchmark_writes_complete_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    argv = ["--models", "tiny-mlp", "--rounds", "1", "--no-peers", "--no-compile", "--samples", "2"]
    doc = run.main([*argv, "--growth-collects", "30", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    meta = doc["meta"]
    for key in ("command", "torch", "cpu", "threads", "device", "load_average_start"):
        assert key in meta, key
    rows = doc["rows"]
    assert {r["section"] for r in rows} >= {"collect", "sample", "predict", "lever", "growth"}
    timed = [r for r in rows if "seconds" in r]
    impls = {(r["section"], r["impl"]) for r in timed}
    assert {("collect", "swag"), ("collect", "AveragedModel"), ("sample", "swag.sample")} <= impls
    for r in timed:
        for key in ("seconds", "ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["impl"], key)
        assert r["ratio_to"]
    collect = next(r for r in timed if r["impl"] == "swag" and r["K"] == 20)
    assert collect["held_x4P"] >= 23  # (K + 3) · 4P by design, plus scratch
    assert {g["status"] for g in doc["goals"]} <= {"PASS", "MISS", "n/a"}
    assert any(g["goal"].startswith("no growth") for g in doc["goals"])
    assert any(g["goal"].startswith("swag.predict / by hand") for g in doc["goals"])


def _stderr_of(code: str) -> str:
    """Run ``code`` in a fresh interpreter (Kineto reads its log level once, when it starts)."""
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_memory_measurement_prints_no_profiler_lines() -> None:
    out = _stderr_of(
        "import torch\nfrom benchmarks.timing import allocations\n"
        "print(allocations(lambda: torch.zeros(1000), torch.device('cpu')))"
    )
    assert "USDT" not in out and "profiler_start" not in out, out
    assert "(4000, 4000)" in out, out  # still measured: 1000 float32 kept


@pytest.mark.slow
def test_benchmark_run_prints_no_profiler_lines(tmp_path: Path) -> None:
    argv = "--models tiny-mlp --rounds 1 --no-peers --no-compile --samples 2 --growth-collects 30"
    out = _stderr_of(
        f"from benchmarks import run; run.main({argv.split()!r} + ['--out', "
        f"{str(tmp_path / 'r.json')!r}])"
    )
    assert "USDT" not in out, out
    assert "wrote" in out, out

"""The benchmark's plumbing on a tiny model: JSON keys and finite ratios, no timing asserts."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import run


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

"""The averaging benchmark's plumbing on the tiny model: rows, finite ratios, timm's skip."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import averaging


def test_averaging_benchmark_writes_ratios(tmp_path: Path) -> None:
    out = tmp_path / "avg.json"
    argv = ["--model", "tiny-mlp", "--rounds", "2", "--inner", "1", "--out", str(out)]
    doc = averaging.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    rows = {(r["rule"], r["impl"]): r for r in doc["rows"]}
    for key in [("EMA", "swag (mean only)"), ("SWA", "swag (mean only)")]:
        assert math.isfinite(rows[key]["ratio"]) and rows[key]["ratio"] > 0
    timm = rows["EMA", "timm ModelEmaV3"]
    assert "ratio" in timm or timm["note"].startswith("skipped: timm is not importable")

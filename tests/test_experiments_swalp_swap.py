"""Smoke runs of experiments/swalp.py (in process) and experiments/swap.py (torchrun, W = 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.experiment_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def script(name: str) -> ModuleType:
    return load_script(name)


def test_swalp_short_run_writes_every_method(tmp_path: Path) -> None:
    swalp = script("swalp")
    argv = ["--seeds", "0", "--train-size", "512", "--test-size", "300", "--epochs", "2"]
    argv += ["--swa-epochs", "1", "--samples", "2", "--out", str(tmp_path)]
    (run,) = swalp.main(argv)
    assert set(run["results"]) == set(swalp.METHODS)
    for method, m in run["results"].items():
        assert m["accuracy"] > 0.3, method  # 10 classes: chance is 0.1
    assert run["seconds_per_step"]["8-bit"] > 0 and 0 <= run["grid"]["below_quarter"] <= 1
    table = (tmp_path / "results.md").read_text().split("\n\n")[0]
    rows = [r for r in table.splitlines() if r.startswith("| ")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["method", *swalp.METHODS]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["numbers"]["runs"] == json.loads(json.dumps([run])) and saved["seeds"] == [0]
    acc = {m: v["accuracy"] for m, v in run["results"].items()}
    beats = acc["8-bit SWALP"] > acc["8-bit SGD"]
    assert saved["claims"][1]["verdict"] == ("holds" if beats else "fails")


@pytest.mark.slow
def test_swap_short_run_under_torchrun(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(ROOT / "experiments" / "swap.py"),
    ]
    cmd += ["--seeds", "0", "--train-size", "512", "--test-size", "300", "--epochs", "2"]
    cmd += ["--samples", "2", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's swag
    done = subprocess.run(cmd, cwd=ROOT, timeout=300, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["schema"] == "swag-experiment/1" and len(saved["claims"]) == 2
    (run,) = saved["numbers"]["runs"]
    res = run["results"]
    assert res["SWAP workers (mean)"]["syncs"] == 0
    steps_per_epoch = 1  # 512 examples over 2 workers, 256 per large batch
    e1 = res["SWAP"]["phase1_epochs"]
    assert e1 == 1  # at most epochs - 1: phase 2 always gets an epoch
    assert res["SWAP"]["syncs"] == e1 * steps_per_epoch + e1 + 2  # steps, checks, phase 3
    assert res["large batch"]["syncs"] == 2 * steps_per_epoch
    assert all(m["accuracy"] > 0.2 for m in res.values())

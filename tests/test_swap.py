"""swag.swap on CPU with gloo: communication-free phase 2, exact average and BN recomputed
(W = 3; W = 2 in the slow test), and a failing worker reported on every rank within the timeout
(W = 2).

One module fixture starts ``tests/swap_worker.py`` for three jobs at once (they share nothing:
each has its own rendezvous file) and each test reads what the ranks wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import swag
from tests.swap_worker import TIMEOUT, bn_batches, make_model

ROOT = Path(__file__).parents[1]
JOBS = {
    "ok3": (3, "ok"),
    "raise2": (2, "raise"),
    "crash2": (2, "crash"),
    "layouts2": (2, "layouts"),
}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    base = tmp_path_factory.mktemp("swap")
    procs = {}
    for name, (world, scenario) in JOBS.items():
        (base / name).mkdir()
        cmd = [sys.executable, str(ROOT / "tests" / "swap_worker.py"), str(world)]
        cmd += [str(base / name), scenario]
        procs[name] = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    out: dict[str, dict[str, Any]] = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-3000:]
        world = JOBS[name][0]
        files = [base / name / f"rank{r}.json" for r in range(world)]
        ranks = [json.loads(f.read_text()) if f.exists() else None for f in files]
        tensors = [
            load_file(str(f)) if (f := base / name / f"rank{r}.safetensors").exists() else None
            for r in range(world)
        ]
        out[name] = {"exit": json.loads(stdout), "ranks": ranks, "tensors": tensors}
    return out


@pytest.mark.parametrize("job", ["ok3"])
def test_phase_two_is_communication_free_and_the_workers_diverge(jobs, job: str) -> None:
    ranks, tensors = jobs[job]["ranks"], jobs[job]["tensors"]
    assert all(r["error"] is None and r["phase2_calls"] == [] for r in ranks)
    # phase 1 was synchronous: every rank left it at the same step with the same weights
    assert len({r["phase1_steps"] for r in ranks}) == 1
    assert all(torch.equal(t["start"], tensors[0]["start"]) for t in tensors)
    # phase 2 was not: with no gradient averaging, each rank's own seed took it elsewhere
    for a in range(len(tensors)):
        for b in range(a):
            assert (tensors[a]["before"] - tensors[b]["before"]).abs().max() > 1e-3
    # the helper synchronised once per phase-1 check, then twice (status, average)
    assert all(r["syncs"] == r["phase1_steps"] + 2 for r in ranks)


@pytest.mark.parametrize("job", ["ok3"])
def test_average_is_the_exact_mean_on_every_rank(jobs, job: str) -> None:
    tensors = jobs[job]["tensors"]
    befores = np.stack([t["before"].double().numpy() for t in tensors])
    expected = torch.from_numpy(befores.mean(0).astype(np.float32))  # float64 mean, rounded once
    for t in tensors:
        assert torch.equal(t["after"], expected)


@pytest.mark.parametrize("job", ["ok3"])
def test_batchnorm_is_recomputed_for_the_averaged_weights(jobs, job: str) -> None:
    tensors = jobs[job]["tensors"]
    model = make_model()
    swag.ParamLayout.from_model(model).scatter(tensors[0]["after"], model)
    swag.update_bn(bn_batches(), model)
    bn = model[1]
    for t in tensors:
        # same data, same weights, same ops: the statistics agree to float32 rounding
        torch.testing.assert_close(t["running_mean"], bn.running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(t["running_var"], bn.running_var, rtol=1e-6, atol=1e-6)
    # and they are not the statistics the un-averaged phase-2 weights of rank 0 would give
    other = make_model()
    swag.ParamLayout.from_model(other).scatter(tensors[0]["before"], other)
    swag.update_bn(bn_batches(), other)
    assert not torch.allclose(other[1].running_mean, bn.running_mean, atol=1e-4)


def test_a_worker_raising_in_phase_two_is_reported_on_every_rank(jobs) -> None:
    ranks = jobs["raise2"]["ranks"]
    assert ranks[1]["error"] == "ValueError: simulated failure on rank 1"
    assert ranks[0]["error"] == (
        "RuntimeError: SWAP phase 2 failed, nothing was averaged "
        "(rank 1: ValueError: simulated failure on rank 1)"
    )
    assert jobs["raise2"]["tensors"] == [None, None]


def test_a_worker_dying_in_phase_two_gives_an_error_not_a_hang(jobs) -> None:
    exits, ranks = jobs["crash2"]["exit"], jobs["crash2"]["ranks"]
    assert exits == [0, 3] and ranks[1] is None  # rank 1 died; rank 0 returned
    assert ranks[0]["error"].startswith("RuntimeError: SWAP: rank 0 did not hear from every rank")
    assert ranks[0]["seconds"] < TIMEOUT + 30  # bounded by the helper's timeout, not gloo's 30 min


@pytest.mark.parametrize("case", ["shape", "transposed", "dtype", "names"])
def test_peers_whose_models_differ_are_refused_on_every_rank(
    jobs: dict[str, dict[str, Any]], case: str
) -> None:
    ranks = jobs["layouts2"]["ranks"]
    assert jobs["layouts2"]["exit"] == [0, 0]  # no std::terminate, no hang
    for rank in ranks:
        error = rank[case]["error"]
        assert error.startswith("ValueError: SWAP: the model on rank(s) [1] differs"), error
        assert rank[case]["seconds"] < TIMEOUT  # refused at once, not at the timeout


def test_peers_with_the_same_model_still_average_after_refusals(
    jobs: dict[str, dict[str, Any]],
) -> None:
    ranks = jobs["layouts2"]["ranks"]
    torch.manual_seed(0)
    b0 = torch.nn.Linear(4, 3).bias.detach().double()
    torch.manual_seed(1)
    b1 = torch.nn.Linear(4, 3).bias.detach().double()
    want = ((b0 + b1) / 2).float().tolist()
    assert [r["same"]["bias"] for r in ranks] == [want, want]


@pytest.mark.parametrize(
    ("timeout", "exc"),
    [(float("nan"), ValueError), (float("inf"), ValueError), (0, ValueError), ("5", TypeError)],
)
def test_swap_timeout_is_checked_by_name(timeout: object, exc: type[Exception]) -> None:
    from swag.swap import SWAP

    with (
        mock.patch("torch.distributed.is_initialized", return_value=True),
        pytest.raises(exc, match="timeout"),
    ):
        SWAP(make_model(), timeout=timeout)  # type: ignore[arg-type]


def test_swap_needs_a_process_group() -> None:
    from swag.swap import SWAP

    with pytest.raises(RuntimeError, match="init_process_group"):
        SWAP(make_model())


@pytest.mark.slow
def test_swap_at_world_size_two(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "tests" / "swap_worker.py"), "2", str(tmp_path), "ok"]
    done = subprocess.run(cmd, cwd=ROOT, timeout=240, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    tensors = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    mean = (tensors[0]["before"].double() + tensors[1]["before"].double()) / 2
    assert all(torch.equal(t["after"], mean.float()) for t in tensors)
    assert (tensors[0]["before"] - tensors[1]["before"]).abs().max() > 1e-3

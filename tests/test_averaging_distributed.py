"""EMA and LAWA sharded (DDP shard=True, FSDP2; gloo, W = 2 and 3) equal unsharded bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import swag
from swag.averaging import AveragingRule

ROOT = Path(__file__).parents[1]
RULES: dict[str, AveragingRule] = {
    "ema": swag.EMA(0.8, warmup=True),
    "power": swag.PowerEMA(gamma=4.0),
    "lawa": swag.LAWA(3),
}
STEPS = 7


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 5))  # rows split unevenly


def _thetas() -> list[torch.Tensor]:
    """``STEPS`` deterministic flat iterates ``(P,)``, the same on every rank."""
    size = swag.ParamLayout.from_model(_model()).size
    gen = torch.Generator().manual_seed(5)
    steps = torch.randn(STEPS, size, generator=gen).mul_(0.1).cumsum(0)
    return list(steps + torch.randn(size, generator=gen))


def _statistics(mode: str) -> dict[str, list[torch.Tensor]]:
    """Mean, σ and the ring per rule after the iterates: ``plain``, ``shard`` or ``fsdp``."""
    model = _model()
    layout = swag.ParamLayout.from_model(model)
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from tests.dist_worker import _set_fsdp

        plan = swag.Collector(_model(), 0, shard=True).plan
        assert plan is not None
        fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    shard = mode == "shard"
    collectors = {k: swag.Collector(model, 2, average=r, shard=shard) for k, r in RULES.items()}
    for theta in _thetas():
        if mode == "fsdp":
            _set_fsdp(model, theta, plan)
        else:
            layout.scatter(theta, model)
        for c in collectors.values():
            c.collect()
    out = {}
    for k, c in collectors.items():
        post = c.posterior() if mode == "plain" else c.sharded_posterior().full()
        out[k] = [post.mean, post.std, post.deviations]
    return out


def worker(rank: int, world: int, folder: str) -> None:
    """One rank: sharded statistics gathered whole; rank 0 compares them with unsharded ones."""
    store = Path(folder) / "store"
    dist.init_process_group("gloo", init_method=store.as_uri(), rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        runs = {mode: _statistics(mode) for mode in ("shard", "fsdp")}
        if rank == 0:
            plain = _statistics("plain")
            same = {
                f"{mode} {k}": [torch.equal(a, b) for a, b in zip(got[k], plain[k], strict=True)]
                for mode, got in runs.items()
                for k in RULES
            }
            (Path(folder) / "same.json").write_text(json.dumps(same))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two process groups spawned: ~1 min each on a loaded 2-core machine
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_and_fsdp2_rules_are_bit_identical_to_unsharded(tmp_path: Path, world: int) -> None:
    code = (
        "import torch.multiprocessing as mp; from tests.test_averaging_distributed import worker; "
        f"mp.spawn(worker, args=({world}, {str(tmp_path)!r}), nprocs={world})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, timeout=120, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    same = json.loads((tmp_path / "same.json").read_text())
    # mean, σ, deviations: DDP with shard=True and FSDP2 alike
    assert same == {f"{m} {k}": [True, True, True] for m in ("shard", "fsdp") for k in RULES}

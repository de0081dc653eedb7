"""EMA and LAWA on a sharded collector (gloo, W = 2 and 3) equal the unsharded one bit for bit."""

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


def _statistics(shard: bool) -> dict[str, list[torch.Tensor]]:
    """Mean, σ and the ring per rule after ``STEPS`` deterministic iterates."""
    model = _model()
    collectors = {k: swag.Collector(model, 2, average=r, shard=shard) for k, r in RULES.items()}
    gen = torch.Generator().manual_seed(5)
    for _ in range(STEPS):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for c in collectors.values():
            c.collect()
    out = {}
    for k, c in collectors.items():
        post = c.sharded_posterior().full() if shard else c.posterior()
        out[k] = [post.mean, post.std, post.deviations]
    return out


def worker(rank: int, world: int, folder: str) -> None:
    """One rank: sharded statistics gathered whole; rank 0 compares them with unsharded ones."""
    store = Path(folder) / "store"
    dist.init_process_group("gloo", init_method=store.as_uri(), rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        sharded = _statistics(shard=True)
        if rank == 0:
            plain = _statistics(shard=False)
            same = {
                k: [torch.equal(a, b) for a, b in zip(sharded[k], plain[k], strict=True)]
                for k in RULES
            }
            (Path(folder) / "same.json").write_text(json.dumps(same))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two process groups spawned: ~1 min each on a loaded 2-core machine
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_rules_are_bit_identical_to_unsharded(tmp_path: Path, world: int) -> None:
    code = (
        "import torch.multiprocessing as mp; from tests.test_averaging_distributed import worker; "
        f"mp.spawn(worker, args=({world}, {str(tmp_path)!r}), nprocs={world})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, timeout=120, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    same = json.loads((tmp_path / "same.json").read_text())
    assert same == {k: [True, True, True] for k in RULES}  # mean, σ, deviations

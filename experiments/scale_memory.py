"""Memory per rank of a sharded collector, and sharded against unsharded samples (docs/scale.md).

For world sizes 1..W on CPU (gloo), every rank builds the same ~1.07M-parameter MLP
(784-1024-256-10), collects 25 iterates with ``Collector(model, 20, shard=True)`` and reports
the bytes its collector holds (state and scratch buffers), as a multiple of the model's 4·P
bytes. Rank 0 also collects unsharded and reports the largest absolute difference between
``sharded_posterior().sample(...)`` and ``posterior().sample(...)`` for the same seed.

Usage::

    python experiments/scale_memory.py --max-world 3
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import swag


def run(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(),
                          nn.Linear(256, 10))  # fmt: skip
    sharded = swag.Collector(model, max_rank=20, shard=True)
    whole = swag.Collector(model, max_rank=20) if rank == 0 else None
    layout = sharded.layout
    g = torch.Generator().manual_seed(1)
    base = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for _ in range(25):
        layout.scatter(base + 0.01 * torch.randn(layout.size, generator=g), model)
        sharded.collect()
        if whole is not None:
            whole.collect()
    sizes = [torch.zeros(2, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(held(sharded)))
    got = sharded.sharded_posterior().sample((2,), generator=torch.Generator().manual_seed(3))
    if whole is not None:
        ref = whole.posterior().sample((2,), generator=torch.Generator().manual_seed(3))
        unit = 4 * layout.size
        per_rank = ", ".join(f"{int(s[0]) / unit:.2f} + {int(s[1]) / unit:.2f}" for s in sizes)
        state, scratch = held(whole)
        print(
            f"W={world} P={layout.size} K=20, bytes per rank / 4P (state + scratch): "
            f"sharded [{per_rank}], unsharded {state / unit:.2f} + {scratch / unit:.2f}; "
            f"max |sharded - unsharded| sample = {(got - ref).abs().max().item():.3g}"
        )
    dist.destroy_process_group()


def held(collector: swag.Collector) -> list[int]:
    """Bytes of the collector's state (shift, mean, M2, ring) and of its scratch buffer."""
    state = sum(t.numel() * t.element_size() for t in collector.state_dict().values()
                if isinstance(t, torch.Tensor))  # fmt: skip
    return [state, collector._scratch.numel() * collector._scratch.element_size()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-world", type=int, default=3)
    args = parser.parse_args()
    for world in range(1, args.max_world + 1):
        mp.spawn(run, args=(world, free_port()), nprocs=world)  # type: ignore[attr-defined,no-untyped-call]

"""Runs SWAP on W CPU processes (gloo); tests/test_swap.py drives it.

``python tests/swap_worker.py WORLD OUT SCENARIO`` runs WORLD ranks of one job (rank 0 in itself)
(file rendezvous, no port). SCENARIO is ``ok``, ``raise`` (rank 1 raises inside phase 2) or
``crash`` (rank 1's process exits inside phase 2), or ``layouts`` (the ranks' models differ: each
case of :data:`LAYOUTS` in turn, then the same model). Each rank writes ``OUT/rank{r}.json`` (its
error, helper syncs, collective calls seen in phase 2) and, when it gets that far,
``OUT/rank{r}.safetensors`` (weights before and after the average, BN statistics).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's swag, not another
TIMEOUT = 8.0  # seconds the helper waits at the end of phase 2
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
    "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "scatter",
    "gather", "all_to_all", "all_to_all_single", "barrier", "monitored_barrier", "send", "recv",
    "isend", "irecv", "batch_isend_irecv",
)  # fmt: skip


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def data() -> tuple[Tensor, Tensor]:
    """A fixed 3-class problem, the same on every rank (each rank reads its own part)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 4, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def bn_batches() -> list[Tensor]:
    return list(data()[0][:200].split(50))


@contextmanager
def forbid_collectives(calls: list[str]) -> Iterator[None]:
    """Every torch.distributed collective raises (and is recorded) while inside."""
    saved = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}

    def refuse(name: str) -> Callable[..., Any]:
        def call(*_a: Any, **_k: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"phase 2 called torch.distributed.{name}")

        return call

    for name in saved:
        setattr(dist, name, refuse(name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


def run(rank: int, world: int, out: str, scenario: str) -> None:
    store = Path(out).resolve() / "rendezvous"
    dist.init_process_group("gloo", init_method=store.as_uri(), rank=rank, world_size=world)
    torch.set_num_threads(1)
    from swag.swap import SWAP

    result: dict[str, Any] = {"error": None}
    start = time.perf_counter()
    x, y = data()
    ddp = nn.parallel.DistributedDataParallel(make_model())
    swap = SWAP(ddp, timeout=TIMEOUT)
    try:
        # phase 1: synchronous, a large batch split over the ranks, until 80% training accuracy
        opt = torch.optim.SGD(ddp.parameters(), lr=0.2, momentum=0.9)
        mine = torch.arange(rank, len(x), world)
        steps = 0
        while steps < 100:
            out_ = ddp(x[mine])
            loss = nn.functional.cross_entropy(out_, y[mine])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            steps += 1
            correct = (out_.argmax(1) == y[mine]).sum().item()
            if swap.reached(correct, len(mine), 0.8):
                break
        result["phase1_steps"] = steps
        start_weights = torch.cat([p.detach().reshape(-1) for p in swap.model.parameters()])
        # phase 2: alone, small batches, own seed, no collective at all
        calls: list[str] = []
        model = swap.model
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(100 + rank)
        with swap.independent(), forbid_collectives(calls):
            for step in range(30):
                idx = torch.randint(0, len(x), (16,), generator=g)
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                if rank == 1 and step == 10 and scenario == "raise":
                    raise ValueError("simulated failure on rank 1")
                if rank == 1 and step == 10 and scenario == "crash":
                    os._exit(3)
        result["phase2_calls"] = calls
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        # phase 3
        swap.average(bn_batches())
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        bn = model[1]
        tensors = {
            "start": start_weights,
            "before": before,
            "after": after,
            "running_mean": bn.running_mean,
            "running_var": bn.running_var,
        }
        save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out}/rank{rank}.safetensors")
    except Exception as exc:  # record what this rank saw, for the test
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["syncs"] = swap.syncs
    result["seconds"] = time.perf_counter() - start
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    if result["error"] is None:
        dist.destroy_process_group()


class _Renamed(nn.Module):
    """nn.Linear(4, 3)'s parameters under other names."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, 4))
        self.b = nn.Parameter(torch.zeros(3))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.w.T + self.b


def _transposed() -> nn.Module:
    model = nn.Linear(4, 3)
    model.weight = nn.Parameter(torch.zeros(4, 3))
    return model


# what rank 1 builds while rank 0 has nn.Linear(4, 3): each differs in one respect
LAYOUTS: dict[str, Callable[[], nn.Module]] = {
    "shape": lambda: nn.Linear(3, 4),  # 12 + 4 elements against 12 + 3: sizes differ
    "transposed": _transposed,  # same names and element counts, other shapes
    "dtype": lambda: nn.Linear(4, 3).double(),
    "names": _Renamed,
    "same": lambda: nn.Linear(4, 3),
}


def run_layouts(rank: int, world: int, out: str) -> None:
    """Each LAYOUTS case: rank 0 averages nn.Linear(4, 3), the others that case's model."""
    store = Path(out).resolve() / "rendezvous"
    dist.init_process_group("gloo", init_method=store.as_uri(), rank=rank, world_size=world)
    from swag.swap import SWAP

    result: dict[str, Any] = {}
    for case, build in LAYOUTS.items():
        torch.manual_seed(rank)
        model = nn.Linear(4, 3) if rank == 0 else build()
        swap = SWAP(model, timeout=TIMEOUT)
        start = time.perf_counter()
        try:
            swap.average()
            result[case] = {"error": None, "bias": model.state_dict()["bias"].tolist()}
        except Exception as exc:
            result[case] = {"error": f"{type(exc).__name__}: {exc}"}
        result[case]["seconds"] = time.perf_counter() - start
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def main(world: int, out: str, scenario: str) -> list[int | None]:
    """Run rank 0 in this process and ranks 1.. in spawned ones; their exit codes (0 for us)."""
    ctx = mp.get_context("spawn")
    if scenario == "layouts":
        procs = [ctx.Process(target=run_layouts, args=(r, world, out)) for r in range(1, world)]
    else:
        procs = [ctx.Process(target=run, args=(r, world, out, scenario)) for r in range(1, world)]
    for p in procs:
        p.start()
    if scenario == "layouts":
        run_layouts(0, world, out)
    else:
        run(0, world, out, scenario)
    for p in procs:
        p.join(timeout=120)
    return [0] + [p.exitcode for p in procs]


if __name__ == "__main__":
    codes = main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
    print(json.dumps(codes))

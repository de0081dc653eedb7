"""SWAP at our scale: large-batch-only vs SWAP vs small-batch-only on Fashion-MNIST, equal epochs.

Run with torchrun (CPU, gloo), one process per worker::

    torchrun --standalone --nproc-per-node 2 experiments/swap.py --seeds 0 1 2 --out runs/swap

Per seed, with W workers, the benchmark's CNN and E epochs for every method:

- **large batch**: synchronous data-parallel SGD (DDP), ``b_L`` per worker (global ``W·b_L``),
  E epochs: one gradient all-reduce per step;
- **SWAP** (:class:`swag.swap.SWAP`): phase 1 as large batch until the training accuracy of an
  epoch reaches ``--threshold`` (checked once per epoch), phase 2 each worker alone with
  batch ``b_S`` and its own seed for the remaining epochs, phase 3 the exact average and a
  BatchNorm refresh. Each worker also runs a :class:`swag.Collector` in phase 2, and
  :func:`swag.distributed.gather_multiswag` mixes the W posteriors into a MultiSWAG;
- **small batch**: one worker, batch ``b_S``, E epochs, no communication (seed ``s`` runs on
  rank ``s mod W``, so the seeds train in parallel).

Rank 0 prints and writes the accuracies, the synchronisations each method needed, and the
measured per-step costs (large step, small step, one all-reduce of the weights) that the
wall-clock formula in docs/swap.md takes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import _common
import torch
import torch.distributed as dist
from torch import Tensor, nn

import swag
from swag.bench import small_cnn
from swag.distributed import gather_multiswag
from swag.swap import SWAP

ACC_TOL = 0.005  # "reaches": within half a point of test accuracy
METHODS = ("large batch", "SWAP", "SWAP workers (mean)", "SWAP MultiSWAG", "small batch")


def parse(argv: list[str] | None) -> argparse.Namespace:
    defaults = dict(
        seeds=[0, 1, 2], train_size=6000, test_size=5000, epochs=6, small_batch=64,
        large_batch=256, small_lr=0.05, large_lr=0.2, threshold=0.8, width=8, samples=6,
        out=Path("runs/swap"),
    )  # fmt: skip
    helps = {"large_batch": "per worker", "threshold": "phase-1 training accuracy",
             "samples": "MultiSWAG samples"}  # fmt: skip
    return _common.parser(__doc__, defaults, helps=helps).parse_args(argv)


def rate(step: int, total: int, lr: float) -> float:
    """``lr`` for the first half, then linear to ``0.01·lr`` at the end."""
    t = step / max(total, 1)
    return lr if t <= 0.5 else lr * (1 - 0.99 * (t - 0.5) / 0.5)


def sgd_epochs(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch: int,
    lr: float,
    g: torch.Generator,
    collector: swag.Collector | None = None,
) -> tuple[int, float]:
    """Plain SGD on ``(x, y)``; returns (steps, seconds per step). Collects twice per epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    per_epoch = -(-len(x) // batch)
    total, start = epochs * per_epoch, time.perf_counter()

    def after_step(step: int) -> None:  # the rate of the next step; collect twice per epoch
        for group in opt.param_groups:
            group["lr"] = rate(step, total, lr)
        if collector is not None and step % max(per_epoch // 2, 1) == 0:
            collector.collect()

    step = _common.train(model, opt, x, y, epochs=epochs, batch_size=batch, generator=g,
                         after_step=after_step)  # fmt: skip
    return step, (time.perf_counter() - start) / max(step, 1)


def large_batch(
    ddp: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace, g: torch.Generator,
    swap: SWAP | None,
) -> tuple[int, int, int, float]:  # fmt: skip
    """Synchronous phase on this rank's shard; stops early when ``swap`` says the threshold is
    reached. Returns (epochs, steps, threshold checks, seconds per step)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    opt = torch.optim.SGD(ddp.parameters(), lr=args.large_lr, momentum=0.9, weight_decay=5e-4)
    shard = torch.arange(rank, len(x), world)
    per_epoch = -(-len(shard) // args.large_batch)
    total, step, checks, start = args.epochs * per_epoch, 0, 0, time.perf_counter()
    epochs = 0
    for _ in range(args.epochs if swap is None else args.epochs - 1):
        order = shard[torch.randperm(len(shard), generator=g)]
        correct = 0
        for i in range(0, len(order), args.large_batch):
            idx = order[i : i + args.large_batch]
            for group in opt.param_groups:
                group["lr"] = rate(step, total, args.large_lr)
            out = ddp(x[idx])
            loss = nn.functional.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            correct += int((out.argmax(1) == y[idx]).sum())
            step += 1
        epochs += 1
        if swap is not None:
            checks += 1
            if swap.reached(correct, len(order), args.threshold):
                break
    return epochs, step, checks, (time.perf_counter() - start) / max(step, 1)


def run_seed(args: argparse.Namespace, seed: int, data: _common.Images) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y, tx, ty = data.x, data.y, data.test_x, data.test_y
    test = list(torch.split(tx, 1000))
    bn = list(torch.split(x[:2000], 200))  # the same refresh batches on every rank
    g = torch.Generator().manual_seed(seed)

    def accuracy(post: swag.Posterior, model: nn.Module, **kw: Any) -> float:
        probs = swag.predict(
            post, model, test, generator=g, **kw, options=swag.PredictOptions(bn=swag.BNRefresh(bn))
        )
        return swag.metrics.accuracy(probs, ty)

    res: dict[str, Any] = {}
    torch.manual_seed(seed)  # the same initial weights on every rank
    ddp = nn.parallel.DistributedDataParallel(small_cnn(args.width))
    _, steps, _, t_large = large_batch(ddp, x, y, args, torch.Generator().manual_seed(seed), None)
    point = swag.PointPosterior.from_model(ddp.module)
    res["large batch"] = {"accuracy": accuracy(point, ddp.module), "syncs": steps}

    torch.manual_seed(seed)
    ddp = nn.parallel.DistributedDataParallel(small_cnn(args.width))
    swap = SWAP(ddp)
    e1, steps1, checks, _ = large_batch(ddp, x, y, args, torch.Generator().manual_seed(seed), swap)
    model = swap.model
    collector = swag.Collector(model, max_rank=5)
    g2 = torch.Generator().manual_seed(1000 * seed + rank)
    torch.manual_seed(1000 * seed + rank)  # this worker's dropout
    with swap.independent():
        _, t_small = sgd_epochs(
            model, x, y, epochs=args.epochs - e1, batch=args.small_batch, lr=args.small_lr,
            g=g2, collector=collector,
        )  # fmt: skip
    alone = accuracy(swag.PointPosterior.from_model(model), model)
    mix = gather_multiswag(collector.posterior())
    swap.average(bn)
    workers = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(workers, torch.tensor([alone]))
    res["SWAP"] = {
        "accuracy": accuracy(swag.PointPosterior.from_model(model), model),
        "syncs": steps1 + checks + 2,
        "phase1_epochs": e1,
    }
    res["SWAP workers (mean)"] = {"accuracy": float(torch.cat(workers).mean()), "syncs": 0}
    res["SWAP MultiSWAG"] = {
        "accuracy": accuracy(mix, model, num_samples=args.samples),
        "syncs": steps1 + checks + 3,
    }

    # small batch: seed s on rank s mod W; the result is broadcast from there
    small = torch.zeros(2)
    if seed % world == rank:
        torch.manual_seed(seed)
        single = small_cnn(args.width)
        steps_s, _ = sgd_epochs(
            single, x, y, epochs=args.epochs, batch=args.small_batch, lr=args.small_lr,
            g=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        small = torch.tensor([accuracy(swag.PointPosterior.from_model(single), single), steps_s])
    dist.broadcast(small, src=seed % world)
    res["small batch"] = {"accuracy": float(small[0]), "syncs": 0, "steps": int(small[1])}

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    dist.barrier()
    start = time.perf_counter()
    for _ in range(20):
        dist.all_reduce(flat.clone())
    t_ar = (time.perf_counter() - start) / 20
    costs = {"large_step": t_large, "small_step": t_small, "all_reduce": t_ar, "P": flat.numel()}
    return {"seed": seed, "results": res, "costs": costs}


def wallclock(costs: dict[str, float], settings: dict[str, Any], e1: float) -> dict[str, float]:
    """Seconds each method would take on W real workers, from the measured per-step costs.

    ``t_L`` is measured with DDP on W processes, so it includes the gradient all-reduce.
    """
    n, e, w = settings["train_size"], settings["epochs"], settings["world"]
    t_l, t_s, t_ar = costs["large_step"], costs["small_step"], costs["all_reduce"]
    large_steps, small_steps = (
        -(-n // (w * settings["large_batch"])),
        -(-n // settings["small_batch"]),
    )
    return {
        "small batch": e * small_steps * t_s,
        "large batch": e * large_steps * t_l,
        "SWAP": e1 * large_steps * t_l + (e - e1) * small_steps * t_s + 2 * t_ar,
    }


def table(runs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """Accuracy, synchronisations and the wall-clock formula per method, and the step costs."""
    world = settings["world"]
    e1 = statistics.mean(r["results"]["SWAP"]["phase1_epochs"] for r in runs)
    costs = {k: statistics.mean(r["costs"][k] for r in runs) for k in runs[0]["costs"]}
    clock = wallclock(costs, settings, e1)
    rows = [
        [m, _common.cell([100 * r["results"][m]["accuracy"] for r in runs], 2),
         f"{statistics.mean(r['results'][m]['syncs'] for r in runs):g}",
         f"{clock[m]:.1f}" if m in clock else "as SWAP"]
        for m in METHODS
    ]  # fmt: skip
    header = [f"method (W = {world})", "test accuracy %", "synchronisations",
              "wall clock, formula (s)"]  # fmt: skip
    return _common.table(header, rows) + (
        f"\nPhase 1 took {e1:g} epochs on average. Measured per step: t_L = "
        f"{costs['large_step'] * 1e3:.1f} ms (batch {settings['large_batch']} per worker, with "
        f"DDP's all-reduce), t_S = {costs['small_step'] * 1e3:.1f} ms (batch "
        f"{settings['small_batch']}), t_ar = {costs['all_reduce'] * 1e3:.2f} ms (all-reduce of "
        f"{costs['P']:g} floats over {world} gloo workers).\n"
    )


def claims(runs: list[dict[str, Any]]) -> list[_common.Claim]:
    """SWAP's claim per seed: small-batch accuracy (within ``ACC_TOL``), and its weaker half,
    better than large batch."""
    results = [r["results"] for r in runs]
    return [
        _common.paired_claim(f"SWAP reaches small-batch accuracy (within {ACC_TOL})", results,
                             ("SWAP", "small batch"), "accuracy", lambda d: d >= -ACC_TOL),
        _common.paired_claim("SWAP is more accurate than large-batch training at equal epochs",
                             results, ("SWAP", "large batch"), "accuracy", lambda d: d > 0),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    data = _common.fashion_mnist(args.train_size, args.test_size)
    runs = [run_seed(args, s, data) for s in args.seeds]
    if dist.get_rank() == 0:
        settings = _common.settings(args) | {"world": dist.get_world_size()}
        doc = _common.Results("swap", claims(runs), {"runs": runs}, settings, args.seeds)
        _common.write(args.out, doc, table(runs, settings))
        for run in runs:
            print(json.dumps(run))
    dist.destroy_process_group()
    return runs


if __name__ == "__main__":
    main()

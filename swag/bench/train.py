"""Training runs of the benchmark: the model, the learning-rate schedule, SGD and SWAG runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from swag import Collector
from swag.bench.config import BenchConfig
from swag.bench.progress import Progress


def small_cnn(width: int = 8, dropout: float = 0.2, num_classes: int = 10) -> nn.Sequential:
    """A two-block CNN with BatchNorm and dropout for 1×28×28 images (52k parameters at width 8)."""
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * w * 7 * 7, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )  # fmt: skip


def schedule(step: int, window: int, lr: float, final_lr: float) -> float:
    """The SWAG paper's rate: ``lr`` until 50% of ``window``, linear to ``final_lr`` by 90%.

    The benchmark's only learning-rate schedule: every training run calls it once per step.
    """
    t = step / max(window, 1)
    if t <= 0.5:
        return lr
    if t >= 0.9:
        return final_lr
    return lr + (final_lr - lr) * (t - 0.5) / 0.4


def batches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of shuffled minibatches."""
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


@dataclass
class Run:
    """A trained network; ``collector`` holds its SWAG statistics for a SWAG run."""

    model: nn.Module
    collector: Collector | None
    seconds: float
    cpu_seconds: float


def train(
    cfg: BenchConfig,
    x: Tensor,
    y: Tensor,
    *,
    swag: bool,
    seed: int,
    device: torch.device,
    desc: str,
    progress: Progress,
) -> Run:
    """Train one network on ``(x, y)``; with ``swag`` collect SWAG statistics at the end.

    The run draws all its randomness (initialisation, shuffling, dropout) from ``seed`` inside a
    forked RNG, so the caller's global RNG state is left as it was.
    """
    start, cpu = time.perf_counter(), time.process_time()
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    window = (cfg.epochs - cfg.swa_epochs) * steps_per_epoch if swag else total
    final_lr = cfg.swa_lr if swag else cfg.lr * 0.01
    collect_every = max(steps_per_epoch // cfg.collects_per_epoch, 1)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = small_cnn(cfg.width, cfg.dropout).to(device)
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: schedule(s, window, cfg.lr, final_lr) / cfg.lr
        )
        collector = Collector(model, max_rank=cfg.max_rank) if swag else None
        g = torch.Generator().manual_seed(seed)
        bar = progress.bar(total, desc)
        step = 0
        for _ in range(cfg.epochs):
            for xb, yb in batches(x, y, cfg.batch_size, g):
                loss = nn.functional.cross_entropy(model(xb.to(device)), yb.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                step += 1
                if collector is not None and step > window and (step - window) % collect_every == 0:
                    collector.collect()
                bar.update()
            bar.set_postfix_str(f"loss {loss.item():.3f}")
        bar.close()
    model.eval()
    return Run(model, collector, time.perf_counter() - start, time.process_time() - cpu)

"""Training runs of the benchmark: the model, and one run of each kind (SGD, SWAG, FGE, SAM).

Every run's learning rate comes from :mod:`swag.schedules`: :class:`~swag.schedules.SWAGDecay`
(the SWAG paper's decay; SGD's with ``final = 0.01`` over the whole run) or, for FGE,
:class:`~swag.schedules.Cyclic`; the schedule's ``collect`` says when to collect.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from swag.bench._config import BenchConfig
from swag.bench._progress import Progress
from swag.core.collector import Collector
from swag.family.optim import SAM
from swag.family.schedules import CollectEvery, Cyclic, SWAGDecay
from swag.family.snapshots import Snapshots

Kind = Literal["sgd", "swag", "fge", "sam", "swag_sam", "ivon"]
KINDS: tuple[Kind, ...] = ("sgd", "swag", "fge", "sam", "swag_sam", "ivon")


def small_cnn(width: int = 8, dropout: float = 0.2, num_classes: int = 10) -> nn.Sequential:
    """A two-block CNN with BatchNorm and dropout for 1×28×28 images (52k parameters at width 8)."""
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * w * 7 * 7, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )  # fmt: skip


def batches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of minibatches of ``(x, y)`` in an order drawn from ``generator``; the last
    batch holds the remainder."""
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


@dataclass
class Run:
    """A trained network and what its run collected.

    ``collector`` holds the SWAG statistics of a SWAG run (``"swag"``, ``"swag_sam"``),
    ``snapshots`` the cycle-end weights of an FGE run, and ``collected_at`` the optimizer steps
    (counted from 1) after which either collected.
    """

    model: nn.Module
    collector: Collector | None
    seconds: float
    cpu_seconds: float
    snapshots: Snapshots | None = None
    collected_at: list[int] = field(default_factory=list)
    ivon: Any = None  # the IVON optimizer of an "ivon" run: its posterior


def plan(
    cfg: BenchConfig, kind: Kind, steps_per_epoch: int
) -> tuple[SWAGDecay | Cyclic, CollectEvery | None]:
    """The learning-rate factor of a run of ``kind`` (of the base rate ``cfg.lr``), and when it
    collects (None: never).

    SGD and SAM: the SWAG paper's SGD schedule over the whole run (``lr`` to ``lr / 100``).
    SWAG (on SGD or SAM): its decay to ``swa_lr`` over the first ``epochs - swa_epochs``
    epochs, then ``collects_per_epoch`` collects per epoch at ``swa_lr``. FGE: ``lr`` until
    ``fge_cycles`` linear cycles from ``lr`` to ``lr / 100`` fill the last ``swa_epochs``
    epochs (the SWA paper's cyclical schedule), a snapshot after each cycle's last step.
    """
    total = cfg.epochs * steps_per_epoch
    if kind in ("sgd", "sam", "ivon"):
        return SWAGDecay(total, 0.01), None
    if kind == "fge":
        cycle = cfg.swa_epochs * steps_per_epoch // cfg.fge_cycles
        cyclic = Cyclic(cycle, 0.01, start=total - cfg.fge_cycles * cycle)
        return cyclic, cyclic.collect
    decay = SWAGDecay((cfg.epochs - cfg.swa_epochs) * steps_per_epoch, cfg.swa_lr / cfg.lr)
    return decay, decay.collect_every(max(steps_per_epoch // cfg.collects_per_epoch, 1))


def train(
    cfg: BenchConfig,
    x: Tensor,
    y: Tensor,
    *,
    kind: Kind,
    seed: int,
    device: torch.device,
    desc: str,
    progress: Progress,
) -> Run:
    """Train one network of ``kind`` on ``(x, y)``, the benchmark's protocol for it.

    Schedules (factors of ``cfg.lr`` from :mod:`swag.schedules`): ``"sgd"`` and ``"sam"`` the
    SWAG paper's SGD schedule over the whole run (``lr`` to ``lr / 100``); ``"swag"`` and
    ``"swag_sam"`` its decay to ``swa_lr`` over the first ``epochs - swa_epochs`` epochs,
    then ``collects_per_epoch`` collects per epoch; ``"fge"`` ``lr`` until ``fge_cycles``
    linear cycles from ``lr`` to ``lr / 100`` fill the last ``swa_epochs`` epochs, a snapshot
    after each cycle's last step.

    ``"sam"`` and ``"swag_sam"`` wrap the same SGD in :class:`swag.optim.SAM` (radius
    ``cfg.sam_rho``, BatchNorm statistics updated at θ only): two gradient evaluations per
    step. The run draws all its randomness (initialisation, shuffling, dropout) from ``seed``
    inside a forked RNG, so the caller's global RNG state is left as it was.

    Args:
        cfg: the settings (:class:`~swag.bench.BenchConfig`).
        x: ``(N, 1, 28, 28)`` training images.
        y: ``(N,)`` their labels.
        kind: ``"sgd"``, ``"swag"``, ``"fge"``, ``"sam"`` or ``"swag_sam"``.
        seed: the run's seed.
        device: where to train.
        desc: the progress line's text.
        progress: where progress goes (``Progress(enabled=False)`` for none).

    Raises:
        ValueError: if ``kind`` is none of these.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    start, cpu = time.perf_counter(), time.process_time()
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    factor, when = plan(cfg, kind, steps_per_epoch)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = small_cnn(cfg.width, cfg.dropout).to(device)
        base = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        sam = kind in ("sam", "swag_sam")
        opt: Any = SAM(base, rho=cfg.sam_rho, model=model) if sam else base
        if kind == "ivon":  # variational learning (Shen et al., 2024), the SGD schedule
            import ivon

            opt = ivon.IVON(
                model.parameters(), lr=cfg.ivon_lr, ess=len(x), weight_decay=cfg.weight_decay,
                hess_init=cfg.ivon_hess_init,
            )  # fmt: skip
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        collector = Collector(model, max_rank=cfg.max_rank) if kind.startswith("swag") else None
        snapshots = Snapshots(model, cfg.fge_cycles) if kind == "fge" else None
        target = collector if collector is not None else snapshots
        collected_at: list[int] = []
        g = torch.Generator().manual_seed(seed)
        bar = progress.bar(cfg.epochs * steps_per_epoch, desc)
        step = 0
        for _ in range(cfg.epochs):
            for xb, yb in batches(x, y, cfg.batch_size, g):
                xb, yb = xb.to(device), yb.to(device)

                def closure(xb: Tensor = xb, yb: Tensor = yb) -> Tensor:
                    loss = nn.functional.cross_entropy(model(xb), yb)
                    loss.backward()  # type: ignore[no-untyped-call]
                    return loss

                opt.zero_grad(set_to_none=True)
                if kind == "ivon":  # the gradient at one sample of the posterior
                    with opt.sampled_params(train=True):
                        loss = closure()
                    opt.step()
                else:
                    loss = opt.step(closure)  # SGD and SAM alike: the loss at θ
                sched.step()
                step += 1
                if target is not None and when is not None and when(step):
                    target.collect()
                    collected_at.append(step)
                bar.update()
            bar.set_postfix_str(f"loss {loss.item():.3f}")
        bar.close()
    model.eval()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    ivon_opt = opt if kind == "ivon" else None
    return Run(model, collector, seconds, cpu_seconds, snapshots, collected_at, ivon_opt)

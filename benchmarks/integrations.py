"""The Lightning SWAGCallback's own cost on a training step of the benchmark CNN.

    python -m benchmarks.integrations [--steps 60] [--batch 128] [--threads 1] [--out FILE]

One real ``lightning.Trainer`` fit, collecting at every optimiser step (the worst case; K=20).
Two timing callbacks sit before and after ``SWAGCallback`` in the callback list, so each step
is split into the callback's time (its batch-start and batch-end hooks, the collect included)
and the step's own time (forward, backward, optimiser step, between the hooks). The ratio is
the median over steps of callback / step, both measured in the same step of the same run.
The goal is ≤ 0.02.

One thread by default: on a shared, loaded machine two OpenMP threads wait for each other at
every parallel region, which inflates short operations (a collect) far more than long ones
(a step) and measures the machine, not the callback.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.models import MODELS
from swag.integrations.lightning import SWAGCallback

MODEL = "cnn-0.36M"
GOAL = 0.02
WARMUP = 5  # steps left out: the first collect takes another path, allocators warm up


class _Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = MODELS[MODEL].build()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class _Clock(pl.Callback):
    """Records when its batch-start and batch-end hooks run."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, *args: Any) -> None:
        self.ends.append(time.perf_counter())


def measure(steps: int, batch: int, max_rank: int = 20) -> dict[str, Any]:
    """Fit ``steps`` steps with the callback collecting at each; the per-step split."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch, *MODELS[MODEL].input_shape, generator=g)
    y = torch.randint(0, 10, (steps * batch,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    before, after = _Clock(), _Clock()
    swag_cb = SWAGCallback(max_rank=max_rank, start=0, collect_every=1, bn_update=False)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[before, swag_cb, after],
    )
    trainer.fit(_Net(), loader)
    n = len(before.starts)
    own = [
        (after.starts[i] - before.starts[i]) + (after.ends[i] - before.ends[i]) for i in range(n)
    ][WARMUP:]
    step = [before.ends[i] - after.starts[i] for i in range(n)][WARMUP:]
    ratio = statistics.median(a / b for a, b in zip(own, step, strict=True))
    return {
        "section": "integrations",
        "model": MODEL,
        "impl": "lightning SWAGCallback",
        "K": max_rank,
        "batch": batch,
        "steps_timed": len(step),
        "collects": swag_cb.collected,
        "callback_seconds": statistics.median(own),
        "step_seconds": statistics.median(step),
        "ratio": ratio,
        "ratio_to": "the training step it rides on (same steps, same run)",
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "goal": GOAL,
        "status": "PASS" if ratio <= GOAL else "MISS",
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.integrations")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="benchmarks/results_integrations.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    row = measure(args.steps, args.batch)
    print(
        f"| {row['model']} | K={row['K']} | batch {row['batch']} | callback "
        f"{row['callback_seconds'] * 1e3:.3g} ms | step {row['step_seconds'] * 1e3:.3g} ms | "
        f"ratio {row['ratio']:.4f} (goal <= {GOAL}: {row['status']}) |"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=1)
    return row


if __name__ == "__main__":
    main()

"""``swag bench``: train, evaluate and report every method under one seed and one budget."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from swag.bench.config import BenchConfig
from swag.bench.evaluate import EvalData, method_predictions, score
from swag.bench.report import write_report
from swag.bench.train import Run, train
from swag.data import load_fashion_mnist, load_mnist_subset, synthetic_shift


def load_data(
    cfg: BenchConfig, seed: int, data_dir: str | os.PathLike[str] | None
) -> tuple[torch.Tensor, torch.Tensor, EvalData]:
    """Training set and evaluation sets: Fashion-MNIST (in), MNIST (OOD), rotated test (shift)."""
    g = torch.Generator().manual_seed(seed)
    x, y = load_fashion_mnist("train", data_dir=data_dir)
    order = torch.randperm(len(x), generator=g)
    val, rest = order[: cfg.val_size], order[cfg.val_size :]
    rest = rest[: cfg.train_size] if cfg.train_size else rest
    test_x, test_y = load_fashion_mnist("test", data_dir=data_dir)
    test_x, test_y = test_x[: cfg.test_size], test_y[: cfg.test_size]
    ood_x, _ = load_mnist_subset(seed=seed)
    shift_x = synthetic_shift(test_x[: cfg.shift_size], "rotate", cfg.rotate_degrees)
    bn_x = x[rest[: cfg.bn_batches * cfg.batch_size]]
    data = EvalData(
        test_x=test_x,
        test_y=test_y,
        ood_x=ood_x[: cfg.ood_size],
        shift_x=shift_x,
        shift_y=test_y[: cfg.shift_size],
        val_x=x[val],
        val_y=y[val],
        bn_x=bn_x,
    )
    return x[rest], y[rest], data


def run_bench(
    cfg: BenchConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    out: str | os.PathLike[str] = "runs/bench",
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the benchmark and write ``report.md``, ``metrics.json`` and figures under ``out``.

    Returns:
        The contents of ``metrics.json``: settings, timings, and per-method metrics.
    """
    start = time.perf_counter()
    device = torch.device(device)
    train_x, train_y, data = load_data(cfg, seed, data_dir)
    sgd: list[Run] = []
    swag: list[Run] = []
    jobs = [(kind, m) for m in range(cfg.members) for kind in ("sgd", "swag")]
    for kind, m in tqdm(jobs, desc="training runs", disable=not progress):
        run = train(
            cfg,
            train_x,
            train_y,
            swag=kind == "swag",
            seed=seed * 1000 + m,
            device=device,
            desc=f"{kind.upper()} run {m + 1}/{cfg.members}",
            progress=progress,
        )
        (swag if kind == "swag" else sgd).append(run)
    train_seconds = time.perf_counter() - start
    predictions = method_predictions(
        cfg, sgd, swag, data, seed=seed, device=device, progress=progress
    )
    results = {name: score(probs, data) for name, (probs, _) in predictions.items()}
    summary = {
        "settings": {"seed": seed, "device": str(device), **vars(cfg)},
        "data": {
            "train": len(train_x),
            "val": len(data.val_x),
            "test": len(data.test_x),
            "ood": len(data.ood_x),
            "shift": len(data.shift_x),
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "seconds": {
            "train": train_seconds,
            "train_per_run": [r.seconds for r in sgd + swag],
            "predict": {name: sec for name, (_, sec) in predictions.items()},
            "total": time.perf_counter() - start,
        },
        "results": results,
    }
    write_report(Path(out), summary, {k: p for k, (p, _) in predictions.items()}, data)
    return summary

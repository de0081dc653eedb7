"""``swag bench``: train, evaluate and report every method under each seed, all or nothing."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch

from swag.bench._config import BenchConfig
from swag.bench._evaluate import (
    BASELINES,
    FGE_SAM,
    INSTALL_BASELINES,
    METHODS,
    EvalData,
    Predictions,
    method_predictions,
    missing_baselines,
    score,
    score_intensities,
)
from swag.bench._outdir import prepare
from swag.bench._progress import Progress
from swag.bench._report import write_figures, write_report
from swag.bench._train import KINDS, Kind, Run, train
from swag.data import load_fashion_mnist, load_mnist_subset, synthetic_shift
from swag.evaluation.corruptions import CORRUPTIONS, ROTATIONS, corrupted_sets

_WHAT: dict[Kind, str] = {
    "sgd": "SGD",
    "swag": "SWAG (SGD, then collecting iterates)",
    "fge": "FGE (one cyclical run, a snapshot per cycle)",
    "sam": "SAM (two gradients per step)",
    "swag_sam": "SWAG (SAM) (SAM, then collecting iterates)",
    "ivon": "IVON (variational learning)",
}

# the rows that need `members` runs of a kind
_ENSEMBLES: dict[Kind, tuple[str, ...]] = {
    "sgd": ("Deep ensemble",),
    "swag": ("MultiSWAG", "MultiSWAG (fitted scale)"),
    "fge": (),
    "sam": (),
    "swag_sam": (),
    "ivon": (),
}


def load_data(
    cfg: BenchConfig, seed: int, data_dir: str | os.PathLike[str] | None
) -> tuple[torch.Tensor, torch.Tensor, EvalData]:
    """Training set and evaluation sets: Fashion-MNIST (in), MNIST (OOD), rotated test (shift),
    and the shift-intensity sets (Fashion-MNIST-C and rotations of ``intensity_size`` images)."""
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
    # the last test images (the shift set takes the first), corrupted offline from the seed
    base = test_x[len(test_x) - min(cfg.intensity_size, len(test_x)) :]
    sets = corrupted_sets(base, seed=seed) if cfg.intensity_size else {}
    levels = {name: range(1, 6) for name in CORRUPTIONS} | {"rotate": ROTATIONS}
    data = EvalData(
        test_x=test_x,
        test_y=test_y,
        ood_x=ood_x[: cfg.ood_size],
        shift_x=shift_x,
        shift_y=test_y[: cfg.shift_size],
        val_x=x[val],
        val_y=y[val],
        bn_x=bn_x,
        train_x=x[rest],
        train_y=y[rest],
        intensity_x=torch.cat([t for ts in sets.values() for t in ts]) if sets else base[:0],
        intensity_y=test_y[len(test_x) - len(base) :],
        intensity_sets=[(n, float(lv)) for n in sets for lv in levels[n]],
    )
    return x[rest], y[rest], data


def run_seed(
    cfg: BenchConfig,
    seed: int,
    *,
    device: torch.device,
    data_dir: str | os.PathLike[str] | None,
    methods: Sequence[str],
    progress: Progress,
) -> tuple[dict[str, Any], Predictions, EvalData]:
    """Train, predict and score every method under one seed; returns the summary too."""
    start, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    progress.note(f"seed {seed}: loading Fashion-MNIST and MNIST")
    train_x, train_y, data = load_data(cfg, seed, data_dir)
    kinds = {METHODS[m] for m in methods}
    runs: dict[Kind, list[Run]] = {kind: [] for kind in KINDS if kind in kinds}
    # SGD and SWAG: `members` runs each when an ensemble row needs them, else one; FGE, SAM
    # and SWAG (SAM): one run each, from the initialisation and data order of the first SGD run
    count = {kind: cfg.members if set(methods) & set(_ENSEMBLES[kind]) else 1 for kind in KINDS}
    plan = [(m, k) for m in range(cfg.members) for k in KINDS if k in kinds and m < count[k]]
    for m, kind in plan:
        count_text = f" run {m + 1}/{count[kind]}" if kind in KINDS[:2] else ""
        desc = f"seed {seed}: train {_WHAT[kind]}{count_text}"
        run = train(
            cfg, train_x, train_y, kind=kind, seed=seed * 1000 + m, device=device, desc=desc,
            progress=progress,
        )  # fmt: skip
        runs[kind].append(run)
    train_seconds = time.perf_counter() - start
    predictions = method_predictions(
        cfg, runs, data, methods=methods, seed=seed, device=device, progress=progress
    )
    progress.note(f"seed {seed}: scoring {len(methods)} methods")
    results = {
        name: score(probs, data, predictions.logits.get(name), seed=seed)
        for name, probs in predictions.probs.items()
    }
    intensities = {
        name: score_intensities(probs, data) for name, probs in predictions.probs.items()
    }
    summary = {
        "settings": {"seed": seed, "device": str(device), **vars(cfg)},
        "methods": list(methods),
        "data": {
            "train": len(train_x),
            "val": len(data.val_x),
            "test": len(data.test_x),
            "ood": len(data.ood_x),
            "shift": len(data.shift_x),
            "per_intensity_set": len(data.intensity_y),
            "intensity_sets": len(data.intensity_sets),
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
        "seconds": {
            "train": train_seconds,
            "train_per_run": [r.seconds for kind in runs.values() for r in kind],
            "train_per_kind": {k: [r.seconds for r in rs] for k, rs in runs.items()},
            "predict": predictions.seconds,
            "total": time.perf_counter() - start,
            "cpu": time.process_time() - cpu,
        },
        "load": [load, os.getloadavg()[0]],
        "fitted": predictions.fitted,
        "notes": predictions.notes,
        "results": results,
        "shift_intensities": intensities if data.intensity_sets else {},
    }
    return summary, predictions, data


def run_bench(
    cfg: BenchConfig,
    *,
    seeds: Sequence[int] = (0,),
    device: str | torch.device = "cpu",
    out: str | os.PathLike[str] = "runs/bench",
    data_dir: str | os.PathLike[str] | None = None,
    methods: Sequence[str] | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the benchmark for each seed and write the report, all or nothing.

    ``out`` is checked before any training (a file, a path inside a file, an unwritable
    folder or a full disk fail at once); the run is written into a temporary sibling folder
    and renamed to ``out`` at the end (to ``out-2``, ... when ``out`` exists and
    ``overwrite`` is False). One seed: ``report.md``, ``metrics.json`` and figures in
    ``out``. Several: the mean ± std report in ``out`` and each seed's own in ``out/seed-S``.
    ``methods`` (names of :data:`swag.bench.METHODS`) defaults to all of them, less the FGE
    and SAM rows when ``cfg.fge_sam`` is False.

    Returns:
        ``{"out": the folder written, "moved": True when it is not ``out``, "runs": each seed's
        summary (the content of its metrics.json)}``.
    """
    progress = progress or Progress()
    device = torch.device(device)
    methods = list(
        methods
        or (
            m
            for m in METHODS
            if (cfg.fge_sam or m not in FGE_SAM) and (cfg.baselines or m not in BASELINES)
        )
    )
    skipped = missing_baselines(methods)
    skip_notes = [
        f"skipping {m}: its package is not installed; {INSTALL_BASELINES}" for m in skipped
    ]
    for note in skip_notes:
        progress.note(note)
    methods = [m for m in methods if m not in skipped]
    run_dir = prepare(out, overwrite=overwrite)
    if run_dir.moved:
        progress.note(f"{out} exists: writing {run_dir.final} (--overwrite replaces it)")
    try:
        summaries = []
        for seed in seeds:
            summary, predictions, data = run_seed(
                cfg, seed, device=device, data_dir=data_dir, methods=methods, progress=progress
            )
            summary["notes"] = skip_notes + summary["notes"]  # in report.md's Notes too
            folder = run_dir.tmp if len(seeds) == 1 else run_dir.tmp / f"seed-{seed}"
            folder.mkdir(exist_ok=True)
            progress.note(f"seed {seed}: writing figures and report")
            write_figures(folder, predictions.probs, data)
            write_report(folder, [summary])
            summaries.append(summary)
            del predictions
        if len(seeds) > 1:
            progress.note("writing the mean ± std report over the seeds")
            write_report(run_dir.tmp, summaries)
        final = run_dir.commit()
    except BaseException:
        run_dir.discard()
        raise
    return {"out": str(final), "moved": run_dir.moved, "runs": summaries}

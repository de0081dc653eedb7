"""The ``swag`` command: ``swag bench`` runs the calibration and OOD benchmark."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser(
        "bench",
        help="train SGD, SWA, SWAG, MultiSWAG, ensembles... on Fashion-MNIST and compare them",
        description="Calibration and OOD benchmark: Fashion-MNIST in-distribution, MNIST as OOD, "
        "rotated test images as a shift. Writes report.md, metrics.json and figures to --out.",
    )
    bench.add_argument("--preset", choices=["smoke", "default", "full"], default="default")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--epochs", type=int, help="epochs per training run (overrides preset)")
    bench.add_argument("--swa-epochs", type=int, help="epochs of SWAG collection per run")
    bench.add_argument("--samples", type=int, help="posterior samples per SWAG method")
    bench.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    bench.add_argument("--out", default=None, help="run folder (default runs/bench-PRESET-sSEED)")
    bench.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    bench.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _device_problem(name: str) -> str | None:
    """Why ``--device name`` cannot be used here, or None."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name!r} is not a device name; use cpu or cuda (cuda:1, ...)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "--device cuda, but this torch build sees no CUDA GPU; use --device cpu"
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        return f"--device {name!r}: swag bench runs on cpu or cuda"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swag`` console script."""
    args = _parser().parse_args(argv)
    from swag.bench import PRESETS, run_bench
    from swag.bench.report import table

    problem = _device_problem(args.device)
    if problem:
        print(f"swag bench: error: {problem}", file=sys.stderr)
        return 2
    cfg = PRESETS[args.preset]
    overrides = {"epochs": args.epochs, "swa_epochs": args.swa_epochs, "num_samples": args.samples}
    try:
        cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
        out = args.out or f"runs/bench-{args.preset}-s{args.seed}"
        summary = run_bench(
            cfg,
            seed=args.seed,
            device=args.device,
            out=out,
            data_dir=args.data_dir,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"swag bench: error: {e}", file=sys.stderr)
        return 2
    print(table(summary["results"]))
    print(f"\n{summary['seconds']['total']:.0f} s; report in {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

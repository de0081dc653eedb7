"""The swag command: swag bench runs the calibration and OOD benchmark."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

import torch

import swag
from swag.bench import BASELINES, FGE_SAM, METHODS, PRESETS, BenchConfig
from swag.family.averaging import _files as average_cli

__all__ = ["main"]


class _Once(argparse.Action):
    """Stores a single-valued flag, and refuses it a second time (the last would silently win)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        _refuse_twice(self, parser, namespace, option_string)
        setattr(namespace, self.dest, values)


class _OnceBool(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, given at most once (``--fge-sam --no-fge-sam`` is refused)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        _refuse_twice(self, parser, namespace, option_string)
        super().__call__(parser, namespace, values, option_string)


def _refuse_twice(
    action: argparse.Action,
    parser: argparse.ArgumentParser,
    namespace: argparse.Namespace,
    option_string: str | None,
) -> None:
    given: dict[str, str] = namespace.__dict__.setdefault("_given", {})
    if action.dest in given:
        parser.error(
            f"{option_string} given twice (after {given[action.dest]}): it takes one value, "
            "give it once"
        )
    given[action.dest] = option_string or action.dest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swag", description="swag: Bayesian uncertainty from SGD iterates (SWA, SWAG)."
    )
    parser.add_argument("--version", action="version", version=f"swag {swag.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    default = PRESETS["default"]
    bench = sub.add_parser(
        "bench",
        help="train SGD, SWA, SWAG, MultiSWAG, ensembles... on Fashion-MNIST and compare them",
        description="Calibration and OOD benchmark: Fashion-MNIST in-distribution, MNIST as OOD, "
        "rotated test images as a shift. Writes report.md, metrics.json and figures to --out.",
    )
    bench.add_argument(
        "--preset",
        action=_Once,
        choices=list(PRESETS),
        default="default",
        help="budget: default = the SWAG paper's regime scaled down (SGD trained until it is "
        "overconfident); short = 8 epochs on all images; smoke = seconds, for tests; full = for "
        "a GPU (default: default)",
    )
    seeds = bench.add_mutually_exclusive_group()
    seeds.add_argument("--seed", action=_Once, type=int, help="one seed (default: 0)")
    seeds.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        action="extend",
        help="several seeds: a mean ± std report; may repeat, --seeds 0 --seeds 1 is "
        "--seeds 0 1 (default: 0)",
    )
    bench.add_argument(
        "--epochs",
        action=_Once,
        type=int,
        help=f"epochs per training run (default: the preset's, {default.epochs} for default)",
    )
    bench.add_argument(
        "--swa-epochs",
        action=_Once,
        type=int,
        help="epochs of SWAG collection at the end of each SWAG run, 1 to --epochs - 1 "
        f"(default: the preset's, {default.swa_epochs} for default)",
    )
    bench.add_argument(
        "--samples",
        action=_Once,
        type=int,
        help="posterior samples per SWAG method, at least one per MultiSWAG member "
        f"(default: the preset's, {default.num_samples} for default)",
    )
    bench.add_argument(
        "--skip",
        nargs="+",
        action="extend",
        default=[],
        choices=[m for m in METHODS if m != "SGD"],
        metavar="METHOD",
        help="leave these methods out, e.g. --skip 'MC dropout'; may repeat: --skip A --skip B "
        "leaves out both (default: run all of: "
        + ", ".join(m for m in METHODS if m != "SGD")
        + ", and SGD)",
    )
    bench.add_argument(
        "--fge-sam",
        action=_OnceBool,
        default=None,
        help="train the FGE and SAM rows (" + ", ".join(FGE_SAM) + "): one cyclical run and "
        "two SAM runs, about five SGD runs' worth of training (default: the preset's, on in "
        "short, smoke and full, off in default)",
    )
    bench.add_argument(
        "--baselines",
        action=_OnceBool,
        default=None,
        help="the Laplace (last layer) and IVON rows, from the optional extra "
        "swag-toolkit[baselines]: about an SGD run's training and two rows of prediction; a "
        "row whose package is missing is skipped with a message (default: on in every preset)",
    )
    bench.add_argument(
        "--device",
        action=_Once,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when a GPU is visible, else cpu)",
    )
    bench.add_argument(
        "--out",
        action=_Once,
        default=None,
        help="run folder; an existing one is kept and the run goes to OUT-2, OUT-3, ... "
        "(default: runs/bench-PRESET-sSEED)",
    )
    bench.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out folder (default: off)"
    )
    bench.add_argument(
        "--data-dir",
        action=_Once,
        default=None,
        help="folder with the Fashion-MNIST IDX files (default: /usr/share/datasets/fashion-mnist)",
    )
    bench.add_argument(
        "--no-progress",
        action="store_true",
        help="print nothing while running (default: progress bars in a terminal, a plain line "
        "every 30 s elsewhere)",
    )
    average_cli.register(sub)
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


def _config(args: argparse.Namespace, seeds: list[int]) -> tuple[BenchConfig | None, str | None]:
    """The preset with the flags' overrides, or the problem, named by flag."""
    cfg = PRESETS[args.preset]
    epochs = cfg.epochs if args.epochs is None else args.epochs
    swa = cfg.swa_epochs if args.swa_epochs is None else args.swa_epochs
    samples = cfg.num_samples if args.samples is None else args.samples
    flag = "--seed" if args.seeds is None else "--seeds"
    bad_seeds = [s for s in seeds if not 0 <= s < 2**32]
    if bad_seeds:
        return None, f"{flag} must be between 0 and 2**32 - 1, got {bad_seeds[0]}"
    if len(set(seeds)) != len(seeds):
        return None, f"--seeds lists a seed twice: {seeds}"
    if epochs < 2:
        return (
            None,
            f"--epochs must be >= 2 (training, then collecting), got {epochs}",
        )
    if not 1 <= swa < epochs:
        return None, f"--swa-epochs must be between 1 and --epochs - 1 = {epochs - 1}, got {swa}"
    if samples < cfg.members:
        return None, (
            f"--samples must be >= {cfg.members} (one per MultiSWAG member in preset "
            f"{args.preset!r}), got {samples}"
        )
    fge_sam = cfg.fge_sam if args.fge_sam is None else args.fge_sam
    baselines = cfg.baselines if args.baselines is None else args.baselines
    cfg = cfg.replace(
        epochs=epochs, swa_epochs=swa, num_samples=samples, fge_sam=fge_sam, baselines=baselines
    )
    return cfg, None


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swag`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "average":
        return average_cli.run(args)
    from swag.bench import Progress, run_bench, table

    seeds = args.seeds or [0 if args.seed is None else args.seed]
    cfg, problem = _config(args, seeds)
    problem = problem or _device_problem(args.device)
    if problem or cfg is None:
        print(f"swag bench: error: {problem}", file=sys.stderr)
        return 2
    out = args.out or f"runs/bench-{args.preset}-s{'-'.join(map(str, seeds))}"
    methods = [
        m
        for m in METHODS
        if m not in args.skip
        and (cfg.fge_sam or m not in FGE_SAM)
        and (cfg.baselines or m not in BASELINES)
    ]
    # a plain `kill` ends the run like Ctrl-C: the unfinished run folder is removed
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run_bench(
            cfg,
            seeds=seeds,
            device=args.device,
            out=out,
            data_dir=args.data_dir,
            methods=methods,
            progress=Progress(enabled=not args.no_progress),
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"swag bench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"swag bench: error: {e.strerror or e}{where}; nothing was written", file=sys.stderr)
        return 1
    print(table(result["runs"]))
    if result["moved"]:
        print(f"{out} exists, so this run went to {result['out']} (--overwrite replaces it)")
    total = sum(r["seconds"]["total"] for r in result["runs"])
    print(f"{total:.0f} s; report in {result['out']}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

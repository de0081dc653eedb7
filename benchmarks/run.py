"""One command for all benchmarks: prints the tables and writes JSON.

    python -m benchmarks.run [--quick] [--out results.json] [--device cpu|cuda] [--no-peers]

Each timing is a median over interleaved rounds; each ratio is taken round by round against a
reference measured in the same run (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks import extras, suites
from benchmarks.models import MODELS
from benchmarks.peers import load_peers

SECTIONS = ("collect", "sample", "predict", "levers", "growth")
LARGE = ("mlp-3.2M", "mlp-29M")  # P >= 3M: the bandwidth goal applies
SMALL = "cnn-0.36M"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _meta(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "git_commit": _git_commit(),
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    return meta


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _goal(
    name: str, model: str, measured: float | None, target: float, note: str = ""
) -> dict[str, Any]:
    status = "n/a" if measured is None else ("PASS" if measured <= target else "MISS")
    return {
        "goal": name,
        "model": model,
        "measured": measured,
        "target": target,
        "status": status,
        "note": note,
    }


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, each checked on ratios measured in this run.

    The collect goals are checked for the default (eager) collector and, where it was timed,
    for the opt-in compiled one.
    """
    out: list[dict[str, Any]] = []
    for model in sorted({r["model"] for r in rows if "model" in r}):
        for impl in ("swag", "swag(compiled)"):
            out += _collect_goals(rows, model, impl)
        sample = _find(rows, section="sample", model=model, impl="swag.sample")
        if sample:
            out.append(_goal("sample / (bandwidth + randn)", model, sample["ratio"], 1.5))
            out.append(
                _goal(
                    "extra during sample / 4P",
                    model,
                    sample["peak_extra_x4P"],
                    0.1,
                    "beyond the returned vector",
                )
            )
    for row in rows:
        if row.get("section") == "predict" and "by hand" in row.get("ratio_to", ""):
            label = f"{row['impl']} / by hand (S = {row['S']})"
            out.append(_goal(label, row["model"], row["ratio"], 1.1, row["ratio_to"]))
        if row.get("section") == "growth":
            ok = row["data_ptr_constant"] and row["net_alloc_bytes_last_collects"] in (0, None)
            label = f"no growth over {row['collects']} collects"
            out.append(_goal(label, row["model"], 0.0 if ok else 1.0, 0.0))
    return out


def _collect_goals(rows: list[dict[str, Any]], model: str, impl: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    k20 = _find(rows, section="collect", model=model, impl=impl, K=20)
    if k20 and model in LARGE:
        out.append(_goal(f"{impl} collect K=20 / bandwidth", model, k20["ratio"], 2.0))
    if k20 and model == SMALL:
        out.append(_goal(f"{impl} collect K=20 seconds", model, k20["seconds"], 0.5e-3))
    if k20:
        note = "shift kept by design: (K+3)·4P"
        out.append(_goal(f"{impl} held / 4P, K=20", model, k20["held_x4P"], 22.1, note))
        out.append(_goal(f"{impl} extra during collect / 4P", model, k20["peak_extra_x4P"], 0.1))
    k0 = _find(rows, section="collect", model=model, impl=impl, K=0)
    for peer, note in (
        ("AveragedModel", "ours also computes the variance"),
        ("AveragedModel(foreach)", "informational: torch's mean-only foreach path"),
    ):
        avg = _find(rows, section="collect", model=model, impl=peer, K=0)
        if k0 and avg:
            label = f"{impl} collect K=0 / {peer}"
            out.append(_goal(label, model, k0["ratio"] / avg["ratio"], 0.5, note))
    return out


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else format(x, spec)
    return str(x)


def table(rows: list[dict[str, Any]], goal_rows: list[dict[str, Any]]) -> str:
    """Markdown tables of the measurements and of the goals."""
    lines = [
        "| section | model | K | impl | ms | ratio | to | held ×4P | extra ×4P | load | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["section"] == "growth":
            detail = (
                f"{r['collects']} collects: data_ptr constant {r['data_ptr_constant']}, "
                f"net allocation over the last ones {r['net_alloc_bytes_last_collects']} B, "
                f"RSS change {r['rss_delta_bytes']} B"
            )
            lines.append(f"| growth | {r['model']} | 20 | swag | | | | | | | {detail} |")
            continue
        if "seconds" not in r:
            blank = "| " * 8
            lines.append(
                f"| {r['section']} | {r.get('model', '')} {blank}| {r.get('skipped', '')} |"
            )
            continue
        lines.append(
            f"| {r['section']} | {r['model']} | {_fmt(r.get('K', r.get('S')))} | {r['impl']} "
            f"| {r['seconds'] * 1e3:.3g} | {_fmt(r.get('ratio'))} | {r.get('ratio_to', '')} "
            f"| {_fmt(r.get('held_x4P'))} | {_fmt(r.get('peak_extra_x4P'))} "
            f"| {_fmt(r.get('load_average_1min'), '.2f')} | {r.get('note', '')} |"
        )
    lines += [
        "",
        "| goal | model | measured | target | status | note |",
        "|---|---|---|---|---|---|",
    ]
    for g in goal_rows:
        lines.append(
            f"| {g['goal']} | {g['model']} | {_fmt(g['measured'])} | {_fmt(g['target'])} "
            f"| {g['status']} | {g['note']} |"
        )
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="two models, fewer rounds (~4 min)")
    p.add_argument("--out", default="benchmarks/results.json", help="JSON output path")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--models", help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument(
        "--no-peers", action="store_true", help="skip swa_gaussian and torch-uncertainty"
    )
    p.add_argument("--no-compile", action="store_true", help="skip timing Collector(compiled=True)")
    p.add_argument("--rounds", type=int, help="timing rounds (default 15, quick 5)")
    p.add_argument("--samples", type=int, help="S for prediction (default 10, quick 4)")
    p.add_argument("--growth-collects", type=int, help="collects in the growth check (1e5)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks; print the tables; write and return the JSON document."""
    args = parse(argv)
    device = torch.device(args.device)
    default_models = [SMALL, "mlp-3.2M"] if args.quick else [SMALL, *LARGE]
    models = args.models.split(",") if args.models else default_models
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {list(MODELS)}")
    sections = args.sections.split(",")
    cfg = suites.Config(
        device=device,
        rounds=args.rounds or (5 if args.quick else 15),
        with_peers=not args.no_peers,
        compiled=not args.no_compile,
        samples=args.samples or (4 if args.quick else 10),
        growth_collects=args.growth_collects or (2_000 if args.quick else 100_000),
    )
    meta = _meta(args, device)
    if cfg.compiled and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # A fresh compile cache, so that the compile time reported is a first use's.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="swag-bench-inductor-")
        meta["compile_cache"] = "cold: a fresh TORCHINDUCTOR_CACHE_DIR"
    loaded = load_peers() if cfg.with_peers else {}
    meta["peers"] = {k: (v if isinstance(v, str) else "loaded") for k, v in loaded.items()}
    rows: list[dict[str, Any]] = []
    for name in models:
        if "collect" in sections:
            for k in (0, 20):
                rows += suites.collect_rows(name, k, cfg, loaded)
        if "sample" in sections:
            rows += suites.sample_rows(name, 20, cfg, loaded)
        if "predict" in sections:
            rows += extras.predict_rows(name, cfg)
        if "levers" in sections:
            rows += extras.bf16_rows(name, cfg)
            if name in (SMALL, "tiny-mlp"):
                rows += extras.vmap_rows(name, cfg)
    if "growth" in sections:
        rows += extras.growth_rows(SMALL if SMALL in models else models[0], cfg)
    meta["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    goal_rows = goals(rows)
    doc = {"meta": meta, "rows": rows, "goals": goal_rows}
    print(table(rows, goal_rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"\nwrote {args.out}")
    return doc


if __name__ == "__main__":
    main()

"""Mean-only averaging benchmark: swag's EMA / equal average against torch's ``AveragedModel``.

Times ``collect`` of ``Collector(model, 0, average=RULE, variance=False)`` and of torch's
``AveragedModel.update_parameters`` (foreach EMA, foreach SWA) interleaved round by round
(:func:`benchmarks.timing.interleaved`) and reports per-round ratios, not absolute times.
timm's ``ModelEmaV3`` is a peer when timm imports; otherwise its row says why it was skipped.

    python -m benchmarks.averaging --out benchmarks/results_averaging.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn

import swag
from benchmarks.models import MODELS, num_params
from benchmarks.timing import interleaved, ratio

DECAY = 0.999


def _timm_ema(model: nn.Module) -> Callable[[], object] | str:
    """timm's ``ModelEmaV3`` update, or why it cannot run here."""
    try:
        timm_ema: Any = importlib.import_module("timm.utils.model_ema")
    except Exception as exc:  # timm imports torchvision; a missing or broken one skips the row
        return f"skipped: timm is not importable ({type(exc).__name__}: {exc})"
    ema = timm_ema.ModelEmaV3(model, decay=DECAY)
    return lambda: ema.update(model)


def contenders(model: nn.Module) -> dict[str, dict[str, Callable[[], object] | str]]:
    """Per rule: name → the collect to time (or a reason it was skipped); ours listed first."""
    ema_ours = swag.Collector(model, 0, average=swag.EMA(DECAY), variance=False)
    swa_ours = swag.Collector(model, 0, variance=False)
    ema_torch = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(DECAY))  # type: ignore[no-untyped-call]
    swa_torch = AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn())  # type: ignore[no-untyped-call]
    with_var = swag.Collector(model, 0, average=swag.EMA(DECAY))
    return {
        "EMA": {
            "swag (mean only)": ema_ours.collect,
            "AveragedModel (foreach EMA)": lambda: ema_torch.update_parameters(model),
            "timm ModelEmaV3": _timm_ema(model),
            "swag (mean + variance)": with_var.collect,
        },
        "SWA": {
            "swag (mean only)": swa_ours.collect,
            "AveragedModel (foreach SWA)": lambda: swa_torch.update_parameters(model),
        },
    }


def run(model_name: str, device: torch.device, rounds: int, inner: int) -> list[dict[str, Any]]:
    """One row per contender: its time per collect as a ratio to torch's (same rule)."""
    torch.manual_seed(0)  # benchmark-only: model initialisation
    model = MODELS[model_name].build().to(device)
    rows: list[dict[str, Any]] = []
    for rule, impls in contenders(model).items():
        timed = {k: v for k, v in impls.items() if not isinstance(v, str)}
        result = interleaved(timed, device, rounds=rounds, inner=inner)
        base = next(k for k in result if k.startswith("AveragedModel"))
        for name, impl in impls.items():
            row: dict[str, Any] = {"rule": rule, "impl": name, "model": model_name}
            row["P"] = num_params(model)
            if isinstance(impl, str):
                row["note"] = impl
            else:
                row["ratio"] = ratio(result[name], result[base])
                row["ratio_to"] = base
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows."""
    lines = ["| rule | impl | P | time / torch's |", "|---|---|---|---|"]
    for r in rows:
        cell = f"{r['ratio']:.2f}×" if "ratio" in r else r["note"]
        lines.append(f"| {r['rule']} | {r['impl']} | {r['P']:,} | {cell} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.averaging")
    p.add_argument("--model", default="mlp-3.2M", choices=sorted(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results_averaging.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = run(args.model, device, args.rounds, args.inner)
    meta = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "inner": args.inner,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    doc = {"meta": meta, "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(table(rows))
    return doc


if __name__ == "__main__":
    main()

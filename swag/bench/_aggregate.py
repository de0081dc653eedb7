"""Mean ± std over seeds of benchmark runs: the tables ``swag bench --seeds`` writes.

A run's summary is the content of its ``metrics.json``; undefined metrics (mutual information
of a single network) are ``None`` there and NaN in memory, and print as ``–``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = [
    ("accuracy", "acc ↑"),
    ("nll", "NLL ↓"),
    ("ece", "ECE ↓"),
    ("brier", "Brier ↓"),
    ("shift_accuracy", "rot. acc ↑"),
    ("shift_nll", "rot. NLL ↓"),
    ("shift_ece", "rot. ECE ↓"),
    ("ood_auroc_entropy", "AUROC H ↑"),
    ("ood_auroc_mi", "AUROC MI ↑"),
    ("ood_aupr_out_entropy", "AUPR-out H ↑"),
    ("ood_fpr95_entropy", "FPR95 H ↓"),
]


def load_runs(runs: Sequence[Path]) -> list[dict[str, Any]]:
    """The ``metrics.json`` of each run folder, checked to share one preset."""
    summaries = [json.loads((Path(r) / "metrics.json").read_text()) for r in runs]
    presets = {s["settings"]["preset"] for s in summaries}
    if len(presets) != 1:
        raise ValueError(f"runs mix presets {sorted(presets)}; aggregate one preset at a time")
    return summaries


def _value(v: float | None) -> float:
    return math.nan if v is None else float(v)


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN when any value is undefined."""
    xs = [_value(v) for v in values]
    if any(math.isnan(x) for x in xs):
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def stats(summaries: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{method: {metric: (mean, std)}}`` over the runs."""
    first = summaries[0]["results"]
    return {
        m: {k: mean_std([s["results"][m][k] for s in summaries]) for k in first[m]} for m in first
    }


def _cell(mean: float, std: float | None, sign: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:{'+' if sign else ''}.4f}" + ("" if std is None else f" ± {std:.4f}")


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per method, each headline metric as mean ± std over the runs (the
    value alone for one run)."""
    agg = stats(summaries)
    one = len(summaries) == 1
    head = "| method | " + " | ".join(label for _, label in COLUMNS) + " |"
    rows = [head, "|---|" + "---:|" * len(COLUMNS)]
    for m, r in agg.items():
        cells = [_cell(r[key][0], None if one else r[key][1]) for key, _ in COLUMNS]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def paired_table(summaries: Sequence[dict[str, Any]], baseline: str = "SGD") -> str:
    """Markdown: each method's metric minus ``baseline``'s in the same run, mean ± std over runs.

    The seed-to-seed spread that all methods share (the data order, the initialization of the
    first member) cancels, so this is the table to read for "does X beat SGD".
    """
    methods = [m for m in summaries[0]["results"] if m != baseline]
    head = f"| method − {baseline} | " + " | ".join(label for _, label in COLUMNS) + " |"
    rows = [head, "|---|" + "---:|" * len(COLUMNS)]
    for m in methods:
        cells = []
        for key, _ in COLUMNS:
            diffs = [
                _value(s["results"][m][key]) - _value(s["results"][baseline][key])
                for s in summaries
            ]
            cells.append(_cell(*mean_std(diffs), sign=True))
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"

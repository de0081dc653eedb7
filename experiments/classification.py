"""Mean ± std over seeds of `swag bench` runs: the classification results table.

Run the benchmark once per seed, then aggregate::

    for s in 0 1 2; do .venv/bin/swag bench --seed $s --out runs/bench-default-s$s; done
    .venv/bin/python experiments/classification.py runs/bench-default-s0 runs/bench-default-s1 \
        runs/bench-default-s2 --out runs/bench-default-seeds.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from swag.bench.report import COLUMNS


def load(runs: list[Path]) -> list[dict[str, Any]]:
    """The ``metrics.json`` of each run folder, checked to share one preset."""
    summaries = [json.loads((r / "metrics.json").read_text()) for r in runs]
    presets = {s["settings"]["preset"] for s in summaries}
    if len(presets) != 1:
        raise SystemExit(f"runs mix presets {sorted(presets)}; aggregate one preset at a time")
    return summaries


def mean_std(values: list[float], sign: bool = False) -> str:
    """``mean ± std`` (sample std over seeds), or ``–`` when the metric is undefined."""
    if any(math.isnan(v) for v in values):
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{'+' if sign else ''}.4f} ± {std:.4f}"


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: one row per method, each headline metric as mean ± std over the runs."""
    methods = list(summaries[0]["results"])
    head = "| method | " + " | ".join(label for _, label in COLUMNS) + " |"
    rows = [head, "|---|" + "---:|" * len(COLUMNS)]
    for m in methods:
        cells = [mean_std([s["results"][m][key] for s in summaries]) for key, _ in COLUMNS]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    seeds = ", ".join(str(s["settings"]["seed"]) for s in summaries)
    wall = ", ".join(f"{s['seconds']['total']:.0f}" for s in summaries)
    return "\n".join(rows) + f"\n\nSeeds {seeds}; wall time per run {wall} s.\n"


def paired_table(summaries: list[dict[str, Any]], baseline: str = "SGD") -> str:
    """Markdown: each method's metric minus ``baseline``'s in the same run, mean ± std over runs.

    The seed-to-seed spread that all methods share (the data order, the initialization of the
    first member) cancels, so this is the table to read for "does X beat SGD".
    """
    methods = [m for m in summaries[0]["results"] if m != baseline]
    head = f"| method − {baseline} | " + " | ".join(label for _, label in COLUMNS) + " |"
    rows = [head, "|---|" + "---:|" * len(COLUMNS)]
    for m in methods:
        cells = [
            mean_std([s["results"][m][key] - s["results"][baseline][key] for s in summaries], True)
            for key, _ in COLUMNS
        ]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="swag bench run folders")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    summaries = load(args.runs)
    text = table(summaries) + "\n" + paired_table(summaries)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

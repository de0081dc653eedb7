"""Mean ± std over seeds of finished `swag bench` runs: the classification results tables.

`swag bench --seeds 0 1 2` writes this report itself. This script builds the same report from
run folders made one seed at a time (e.g. in parallel)::

    for s in 0 1 2; do .venv/bin/swag bench --seed $s --out runs/bench-default-s$s & done; wait
    .venv/bin/python experiments/classification.py runs/bench-default-s0 runs/bench-default-s1 \
        runs/bench-default-s2 --out runs/bench-default-seeds
"""

from __future__ import annotations

import argparse
from pathlib import Path

from swag.bench import load_runs, paired_table, table, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="swag bench run folders (one seed each)")
    parser.add_argument(
        "--out", type=Path, help="write report.md, metrics.json and the figure here"
    )
    args = parser.parse_args()
    summaries = load_runs(args.runs)
    print(table(summaries) + "\n" + paired_table(summaries))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_report(args.out, summaries)
        print(f"report in {args.out}/report.md")


if __name__ == "__main__":
    main()

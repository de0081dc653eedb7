"""The benchmark report: ``metrics.json``, ``report.md`` and figures, written atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from swag import metrics, plots
from swag.bench.evaluate import EvalData

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


def table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per method, the headline metrics as columns."""
    head = "| method | " + " | ".join(label for _, label in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = [
        f"| {name} | " + " | ".join(_fmt(r[key]) for key, _ in COLUMNS) + " |"
        for name, r in results.items()
    ]
    return "\n".join([head, rule, *rows])


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110)


def write_report(
    out: Path, summary: dict[str, Any], predictions: dict[str, Tensor], data: EvalData
) -> None:
    """Write ``metrics.json``, ``report.md``, a reliability diagram and an OOD histogram per
    method, and a comparison chart, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results = summary["results"]
    for name, per_sample in predictions.items():
        slug = name.lower().replace(" ", "_").replace(".", "").replace("+", "plus")
        test, ood, _ = data.split(per_sample.mean(0))
        _save(plots.reliability_diagram(test, data.test_y), out / f"reliability_{slug}.png")
        h_in, h_out = metrics.predictive_entropy(test), metrics.predictive_entropy(ood)
        _save(
            plots.ood_histogram(h_in, h_out, label=f"predictive entropy ({name})"),
            out / f"ood_entropy_{slug}.png",
        )
    _save(
        plots.compare_methods(results, ["accuracy", "nll", "ece", "ood_auroc_entropy"]),
        out / "comparison.png",
    )
    _atomic_write(out / "metrics.json", json.dumps(summary, indent=2, default=str) + "\n")
    _atomic_write(out / "report.md", markdown(summary))


def markdown(summary: dict[str, Any]) -> str:
    """The report: the table, what the columns mean, the settings, the data and the times."""
    s, sec = summary["settings"], summary["seconds"]
    runs = ", ".join(f"{t:.0f}" for t in sec["train_per_run"])
    lines = [
        "# swag bench report",
        "",
        f"Preset `{s['preset']}`, seed {s['seed']}, device `{s['device']}`. "
        f"Fashion-MNIST in-distribution, MNIST out-of-distribution, test images rotated "
        f"{s['rotate_degrees']:g}° as the shifted set.",
        "",
        table(summary["results"]),
        "",
        "acc/NLL/ECE/Brier on the Fashion-MNIST test set; *rot.* on the rotated test images; "
        "AUROC/AUPR-out/FPR95 for telling MNIST from Fashion-MNIST test images by predictive "
        "entropy (H) or mutual information (MI; – for single-sample methods). ECE: 15 "
        "equal-width bins. Definitions: docs/metrics.md.",
        "",
        "![comparison](comparison.png)",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in s.items()),
        "",
        "## Data",
        "",
        *(f"- {k}: {v} images" for k, v in summary["data"].items()),
        "",
        "## Time",
        "",
        f"- training: {sec['train']:.0f} s ({runs} s per run)",
        *(f"- predict, {k}: {v:.1f} s" for k, v in sec["predict"].items()),
        f"- total: {sec['total']:.0f} s",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in summary["environment"].items()),
        "",
    ]
    return "\n".join(lines)

"""The benchmark report: ``metrics.json``, ``report.md`` (conclusions first) and figures.

Files are written into the run's temporary folder (:mod:`swag.bench._outdir`), which is renamed
into place only when everything is written, so they are plain writes with the usual umask.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from swag.bench._aggregate import COLUMNS, paired_table, stats, table
from swag.bench._evaluate import EvalData
from swag.evaluation import metrics, plots

IN, OOD = "Fashion-MNIST test", "MNIST"
TITLES = {
    "accuracy": "test accuracy ↑",
    "nll": "test NLL (nats) ↓",
    "ece": "test ECE ↓",
    "shift_accuracy": "rotated test: accuracy ↑",
    "shift_nll": "rotated test: NLL ↓",
    "shift_ece": "rotated test: ECE ↓",
    "ood_auroc_entropy": "MNIST vs test: AUROC (entropy) ↑",
    "ood_auroc_mi": "MNIST vs test: AUROC (MI) ↑",
}


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by None, so strict JSON parsers accept it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def slug(name: str) -> str:
    return (
        name.lower().replace(" ", "_").replace(".", "").replace("+", "plus").replace("(", "")
    ).replace(")", "")


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=100)


def write_figures(out: Path, predictions: dict[str, Tensor], data: EvalData) -> None:
    """A reliability diagram and OOD histograms (entropy; MI for sampled methods) per method."""
    for name, per_sample in predictions.items():
        test, ood, _ = data.split(per_sample.mean(0))
        fig = plots.reliability_diagram(test, data.test_y, title=name)
        _save(fig, out / f"reliability_{slug(name)}.png")
        scores = {
            "entropy": (
                "predictive entropy (nats)",
                metrics.predictive_entropy(test),
                metrics.predictive_entropy(ood),
            )
        }
        if per_sample.shape[0] > 1:
            test_s, ood_s, _ = data.split(per_sample)
            scores["mi"] = (
                "mutual information (nats)",
                metrics.mutual_information(test_s),
                metrics.mutual_information(ood_s),
            )
        for key, (label, s_in, s_out) in scores.items():
            fig = plots.ood_histogram(s_in, s_out, label=label, names=(IN, OOD), title=name)
            _save(fig, out / f"ood_{key}_{slug(name)}.png")


def write_report(out: Path, summaries: Sequence[dict[str, Any]]) -> None:
    """``metrics.json``, ``report.md`` and ``comparison.png`` for one run or several seeds."""
    agg = stats(summaries)
    several = len(summaries) > 1
    means = {m: {k: v[0] for k, v in r.items()} for m, r in agg.items()}
    errors = {m: {k: v[1] for k, v in r.items()} for m, r in agg.items()} if several else None
    reference = "SGD" if "SGD" in means else None
    fig = plots.compare_methods(
        means, list(TITLES), errors=errors, titles=TITLES, reference=reference
    )
    _save(fig, out / "comparison.png")
    if summaries[0].get("shift_intensities"):
        _save(intensity_figure(summaries), out / "shift_intensity.png")
    content: Any = summaries[0] if not several else {"seeds": list(summaries)}
    (out / "metrics.json").write_text(json.dumps(json_safe(content), indent=2) + "\n")
    (out / "report.md").write_text(markdown(summaries))


SHIFT_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy ↑"),
    ("nll", "NLL (nats) ↓"),
    ("ece", "ECE ↓"),
)


def intensity_stats(summaries: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {set: {level: {metric: mean over the seeds}}}}`` of the shift intensities."""
    first = summaries[0]["shift_intensities"]
    rows = summaries[0]["results"]
    return {
        m: {
            name: {
                lv: {
                    k: statistics.fmean(s["shift_intensities"][m][name][lv][k] for s in summaries)
                    for k in first[m][name][lv]
                }
                for lv in first[m][name]
            }
            for name in first[m]
        }
        for m in first
        if m in rows
    }


def intensity_figure(summaries: Sequence[dict[str, Any]]) -> Figure:
    """Accuracy, NLL and ECE against corruption intensity (mean over the corruptions, top) and
    rotation angle (bottom), one line per method."""
    agg = intensity_stats(summaries)
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = fig.subplots(2, len(SHIFT_METRICS))
    for col, (key, label) in enumerate(SHIFT_METRICS):
        for row, (name, xlabel) in enumerate(
            (("mean", "corruption intensity (0 = clean test)"), ("rotate", "rotation (degrees)"))
        ):
            ax = axes[row, col]
            for i, (m, sets) in enumerate(agg.items()):
                if name not in sets:
                    continue
                xs = [float(lv) for lv in sets[name]]
                ys = [sets[name][lv][key] for lv in sets[name]]
                if name == "mean":  # intensity 0: the clean test set
                    xs, ys = [0.0, *xs], [_mean_over(summaries, m, key), *ys]
                ax.plot(xs, ys, marker="o", label=m, linestyle=("-", "--", ":")[i // 10 % 3])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper")
    count = len(set(next(iter(agg.values()))) - {"mean", "rotate"})
    fig.suptitle(
        f"Shift intensities: Fashion-MNIST-C (mean over {count} corruptions) and rotations"
    )
    return fig


def _mean_over(summaries: Sequence[dict[str, Any]], method: str, key: str) -> float:
    return statistics.fmean(float(s["results"][method][key]) for s in summaries)


def intensity_tables(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: per method, accuracy / NLL / ECE at each intensity and angle, and a verdict."""
    agg = intensity_stats(summaries)
    methods = list(agg)
    if not methods or "mean" not in agg[methods[0]]:
        return []
    levels = list(agg[methods[0]]["mean"])
    angles = list(agg[methods[0]].get("rotate", {}))
    lines = []
    for key, label in SHIFT_METRICS:
        head = (
            f"| {label} | clean | "
            + " | ".join(f"int. {lv}" for lv in levels)
            + " | "
            + " | ".join(f"{a}°" for a in angles)
            + " |"
        )
        lines += [head, "|---|" + "---:|" * (1 + len(levels) + len(angles))]
        for m in methods:
            cells = [f"{_mean_over(summaries, m, key):.4f}"]
            cells += [f"{agg[m]['mean'][lv][key]:.4f}" for lv in levels]
            cells += [f"{agg[m]['rotate'][a][key]:.4f}" for a in angles]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    ece = {m: statistics.fmean(agg[m]["mean"][lv]["ece"] for lv in levels) for m in methods}
    nll5 = {m: agg[m]["mean"][levels[-1]]["nll"] for m in methods}
    acc_drop = {
        m: _mean_over(summaries, m, "accuracy") - agg[m]["mean"][levels[-1]]["accuracy"]
        for m in methods
    }
    best_ece, best_nll = min(ece, key=ece.__getitem__), min(nll5, key=nll5.__getitem__)
    sgd = "SGD" if "SGD" in methods else methods[0]
    lines += [
        f"**Which method degrades most gracefully.** Over the corruptions, {best_ece} keeps the "
        f"lowest ECE averaged over intensities 1–{levels[-1]} ({ece[best_ece]:.4f}; {sgd} "
        f"{ece[sgd]:.4f}), and {best_nll} the lowest NLL at intensity {levels[-1]} "
        f"({nll5[best_nll]:.4f}; {sgd} {nll5[sgd]:.4f}). Accuracy drops from clean to intensity "
        f"{levels[-1]} by " + ", ".join(f"{m} {acc_drop[m]:.3f}" for m in methods) + ".",
        "",
    ]
    return lines


def metric_table(summaries: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown: one row per method, the given ``(metric, label)`` columns (mean ± std)."""
    agg = stats(summaries)
    one = len(summaries) == 1
    rows = ["| method | " + " | ".join(c for _, c in columns) + " |"]
    rows.append("|---|" + "---:|" * len(columns))
    for m, r in agg.items():
        cells = []
        for key, _ in columns:
            mean, std = r.get(key, (math.nan, math.nan))
            cells.append(
                "–" if math.isnan(mean) else f"{mean:.4f}" + ("" if one else f" ± {std:.4f}")
            )
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


SELECTIVE_COLUMNS = [
    ("adaptive_ece", "adaptive ECE ↓"),
    ("classwise_ece", "classwise ECE ↓"),
    ("aurc", "AURC ↓"),
    ("augrc", "AUGRC ↓"),
    ("sel_acc_50", "acc @50% ↑"),
    ("sel_acc_80", "acc @80% ↑"),
    ("sel_acc_90", "acc @90% ↑"),
]
OOD_NAMES = {
    "entropy": "entropy",
    "mi": "MI",
    "msp": "MSP",
    "expected_entropy": "exp. entropy",
    "energy": "energy",
    "max_logit": "max logit",
}
CONFORMAL_COLUMNS = [
    (f"conformal_{kind}_{m}", f"{m.upper()} {'coverage' if kind == 'coverage' else 'size'}")
    for m in ("lac", "aps", "raps")
    for kind in ("coverage", "size")
]


def _best(agg: dict[str, dict[str, tuple[float, float]]], key: str, high: bool) -> str:
    finite = [m for m in agg if not math.isnan(agg[m][key][0])]
    return (max if high else min)(finite, key=lambda m: agg[m][key][0])


def conclusions(summaries: Sequence[dict[str, Any]]) -> str:
    """3–5 sentences read off the numbers: who wins where, the fitted knobs, the wall time."""
    agg = stats(summaries)
    several = len(summaries) > 1

    def v(method: str, key: str) -> str:
        mean, std = agg[method][key]
        return f"{mean:.3f} ± {std:.3f}" if several else f"{mean:.3f}"

    def vs_sgd(method: str, key: str) -> str:
        return "" if method == "SGD" else f"; SGD {v('SGD', key)}"

    nll, ece = _best(agg, "nll", False), _best(agg, "ece", False)
    shift, ood_h = _best(agg, "shift_nll", False), _best(agg, "ood_auroc_entropy", True)
    text = [
        f"{'Averaged over the seeds, i' if several else 'I'}n-distribution {nll} has the lowest "
        f"test NLL ({v(nll, 'nll')}{vs_sgd(nll, 'nll')}) and {ece} the lowest ECE "
        f"({v(ece, 'ece')}{vs_sgd(ece, 'ece')}).",
        f"On test images rotated {summaries[0]['settings']['rotate_degrees']:g}°, {shift} has "
        f"the lowest NLL ({v(shift, 'shift_nll')}{vs_sgd(shift, 'shift_nll')}).",
        f"Telling MNIST from Fashion-MNIST by predictive entropy, {ood_h} does best (AUROC "
        f"{v(ood_h, 'ood_auroc_entropy')}{vs_sgd(ood_h, 'ood_auroc_entropy')}).",
    ]
    rows = summaries[0]["results"]
    side = []
    if {"FGE", "SWA (cyclical)"} <= rows.keys():
        side.append(
            f"FGE's ensemble of {summaries[0]['settings']['fge_cycles']} cycle-end snapshots "
            f"reaches accuracy {v('FGE', 'accuracy')} and NLL {v('FGE', 'nll')}, the SWA of the "
            f"same snapshots (one network) {v('SWA (cyclical)', 'accuracy')} and "
            f"{v('SWA (cyclical)', 'nll')}"
        )
    if "SAM" in rows:
        side.append(
            f"SAM has ECE {v('SAM', 'ece')} and entropy AUROC {v('SAM', 'ood_auroc_entropy')} "
            f"against SGD's {v('SGD', 'ece')} and {v('SGD', 'ood_auroc_entropy')}"
        )
    if side:
        text.append("; ".join(side) + ".")
    fitted = [s.get("fitted", {}) for s in summaries]
    knobs = []
    for key, name in (
        ("temperature", "temperature"),
        ("SWAG scale", "SWAG scale"),
        ("MultiSWAG scale", "MultiSWAG scale"),
    ):
        values = [f[key] for f in fitted if key in f]
        if values:
            knobs.append(f"{name} {', '.join(f'{x:.3g}' for x in values)}")
    if knobs:
        text.append(
            "Fitted on validation images (per seed): " + "; ".join(knobs) + " (the SWAG paper "
            "fixes the scale at 0.5)."
        )
    walls = [s["seconds"]["total"] / 60 for s in summaries]
    cpus = [s["seconds"].get("cpu", math.nan) / 60 for s in summaries]

    def span(xs: list[float]) -> str:
        return f"{min(xs):.1f}–{max(xs):.1f}" if several else f"{xs[0]:.1f}"

    text.append(
        f"{'Each seed' if several else 'The run'} took {span(walls)} min of wall time "
        f"({span(cpus)} min of CPU time) on {summaries[0]['settings']['device']}, with a load "
        f"average of {summaries[0]['load'][0]:.1f} at the start."
    )
    return " ".join(text)


# The SWAG paper's in-distribution claims: (text, metric, methods that must come in this
# order, whether higher is better for the metric).
CLAIMS: list[tuple[str, str, list[str], bool]] = [
    ("NLL: SWAG < SWA < SGD", "nll", ["SWAG", "SWA", "SGD"], False),
    ("ECE: SWAG < SGD", "ece", ["SWAG", "SGD"], False),
    ("NLL: MultiSWAG ≤ deep ensemble", "nll", ["MultiSWAG", "Deep ensemble"], False),
    (
        "AUROC (entropy): MultiSWAG ≥ deep ensemble",
        "ood_auroc_entropy",
        ["MultiSWAG", "Deep ensemble"],
        True,
    ),
]


def claims(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The paper's claims, each marked holds / fails on the mean, with the per-seed count."""
    lines = []
    for text, key, order, high in CLAIMS:
        if not all(m in summaries[0]["results"] for m in order):
            continue

        def ok(values: list[float], high: bool = high) -> bool:
            pairs = itertools.pairwise(values)
            return all(b <= a if high else a <= b for a, b in pairs)

        per_seed = [ok([s["results"][m][key] for m in order]) for s in summaries]
        means = [stats(summaries)[m][key][0] for m in order]
        numbers = ", ".join(f"{m} {v:.4f}" for m, v in zip(order, means, strict=True))
        verdict = "holds" if ok(means) else "fails"
        lines.append(
            f"- {text}: **{verdict}** on the mean ({numbers}); on {sum(per_seed)} of "
            f"{len(summaries)} seed{'s' if len(summaries) > 1 else ''}."
        )
    return lines


def markdown(summaries: Sequence[dict[str, Any]]) -> str:
    """Conclusions, the table, the pictures, then the settings, the data and the times."""
    first = summaries[0]
    s = first["settings"]
    several = len(summaries) > 1
    seeds = ", ".join(str(x["settings"]["seed"]) for x in summaries)
    lines = [
        "# swag bench report",
        "",
        conclusions(summaries),
        "",
        f"Preset `{s['preset']}`, seed{'s' if several else ''} {seeds}, device `{s['device']}`. "
        f"Fashion-MNIST in-distribution, MNIST out-of-distribution, test images rotated "
        f"{s['rotate_degrees']:g}° as the shifted set."
        + (" Mean ± standard deviation over the seeds." if several else ""),
        "",
        table(summaries),
        "acc/NLL/ECE/Brier on the Fashion-MNIST test set; *rot.* on the rotated test images; "
        "AUROC/AUPR-out/FPR95 for telling MNIST from Fashion-MNIST test images by predictive "
        "entropy (H) or mutual information (MI; – for single-sample methods). ECE: 15 "
        "equal-width bins. Definitions: docs/metrics.md.",
        "",
        "![comparison](comparison.png)",
        "",
        "Each panel zooms on its own values; the dotted red line is SGD"
        + (", the bars ± one standard deviation over the seeds." if several else "."),
        "",
    ]
    notes = [f"- seed {x['settings']['seed']}: {n}" for x in summaries for n in x.get("notes", [])]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += [
        "## Selective prediction and calibration details",
        "",
        metric_table(summaries, SELECTIVE_COLUMNS),
        "Confidence = maximum softmax probability of the BMA. AURC, AUGRC: area under the "
        "(generalized) risk–coverage curve; acc @c%: accuracy on the c% most confident test "
        "images. Definitions: docs/metrics.md.",
        "",
        "## OOD detection by score (MNIST vs Fashion-MNIST test)",
        "",
    ]
    for metric, label in (("auroc", "AUROC ↑"), ("aupr_out", "AUPR-out ↑"), ("fpr95", "FPR95 ↓")):
        cols = [(f"ood_{metric}_{k}", f"{label} {v}") for k, v in OOD_NAMES.items()]
        lines += [metric_table(summaries, cols), ""]
    lines += [
        "MSP and max logit are negated (higher = more OOD); energy is the mean per-sample "
        "energy; MI and expected entropy need 2+ samples, energy and max logit the logits "
        "(– where a method lacks them).",
        "",
        "## Conformal prediction sets (α = 0.1)",
        "",
        metric_table(summaries, CONFORMAL_COLUMNS),
        "Split conformal on the BMA probabilities: the test set halved by a seeded permutation, "
        "calibrated on one half, coverage (target ≥ 0.9) and mean set size on the other; RAPS "
        "randomized (penalty 0.01, k_reg 1). Smaller sets at the same coverage = a more useful "
        "posterior.",
        "",
    ]
    if first.get("shift_intensities"):
        lines += [
            "## Shift intensities (Fashion-MNIST-C and rotations)",
            "",
            f"Each set: the last {first['data'].get('per_intensity_set', '?')} test images, "
            "corrupted offline from the seed (parameters: docs/metrics.md); *int. k*: the mean "
            "over Gaussian noise, blur, contrast, translation, pixelate and elastic at "
            "intensity k.",
            "",
            "![shift intensities](shift_intensity.png)",
            "",
            *intensity_tables(summaries),
        ]
    verdicts = claims(summaries)
    if verdicts:
        lines += ["## The SWAG paper's in-distribution claims", "", *verdicts, ""]
    if several:
        lines += [
            "## Each method minus SGD, paired by seed",
            "",
            paired_table(summaries),
            "## Seeds",
            "",
            *(
                f"- [seed {x['settings']['seed']}](seed-{x['settings']['seed']}/report.md)"
                for x in summaries
            ),
            "",
        ]
    else:
        lines += ["## Per method", ""]
        for name in first["results"]:
            pics = [f"reliability_{slug(name)}.png", f"ood_entropy_{slug(name)}.png"]
            if not math.isnan(first["results"][name]["ood_auroc_mi"] or math.nan):
                pics.append(f"ood_mi_{slug(name)}.png")
            lines += [f"### {name}", "", " ".join(f"![{p}]({p})" for p in pics), ""]
    lines += _settings(first) + _times(summaries)
    return "\n".join(lines)


def _settings(summary: dict[str, Any]) -> list[str]:
    return [
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in summary["settings"].items()),
        "",
        "## Data",
        "",
        *(f"- {k}: {v} images" for k, v in summary["data"].items()),
        "",
    ]


def _times(summaries: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["## Time", ""]
    for x in summaries:
        sec = x["seconds"]
        runs = ", ".join(f"{t:.0f}" for t in sec["train_per_run"])
        lines += [
            f"- seed {x['settings']['seed']}: total {sec['total']:.0f} s wall "
            f"({sec['cpu']:.0f} s CPU); training {sec['train']:.0f} s ({runs} s per run); "
            + ", ".join(f"{k} {v:.0f} s" for k, v in sec["predict"].items())
            + f"; load average {x['load'][0]:.1f} at the start, {x['load'][1]:.1f} at the end",
        ]
    env = summaries[0]["environment"]
    lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    return lines


__all__ = [
    "COLUMNS",
    "conclusions",
    "intensity_figure",
    "intensity_stats",
    "intensity_tables",
    "json_safe",
    "markdown",
    "metric_table",
    "write_figures",
    "write_report",
]

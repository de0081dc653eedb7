"""Plots of the evaluation metrics; each returns a :class:`matplotlib.figure.Figure`.

Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``: nothing is
shown, no global state is touched, and no display is needed. Save with ``fig.savefig("x.png")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from torch import Tensor

from swag.metrics import auroc, ece, reliability_curve


def reliability_diagram(
    probs: Tensor, targets: Tensor, *, n_bins: int = 15, ax: Axes | None = None
) -> Figure:
    """Accuracy per confidence bin against the diagonal, with the gap to the mean confidence.

    Bars show each bin's accuracy and, hatched, the gap to its mean confidence (above the bar for
    overconfidence); the title gives the ECE. On a new figure a histogram of the fraction of
    predictions per bin sits underneath.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        n_bins: Number of equal-width confidence bins.
        ax: Axes to draw the diagram into (without the histogram); a new figure when None.

    Returns:
        The figure holding the plot.
    """
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    curve = reliability_curve(probs, targets, n_bins=n_bins)
    conf, acc = curve.confidence.cpu().numpy(), curve.accuracy.cpu().numpy()
    counts = curve.counts.cpu().numpy()
    edges = curve.edges.cpu().numpy()
    centers, width = (edges[:-1] + edges[1:]) / 2.0, 1.0 / n_bins
    full = counts > 0

    if ax is None:
        fig = Figure(figsize=(5.0, 6.0), layout="constrained")
        grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
        ax = fig.add_subplot(grid[0])
        hist = fig.add_subplot(grid[1], sharex=ax)
        hist.bar(centers, counts / counts.sum(), width=width, edgecolor="black", color="tab:gray")
        mean_conf = float(np.sum(conf[full] * counts[full]) / counts.sum())
        mean_acc = float(np.sum(acc[full] * counts[full]) / counts.sum())
        hist.axvline(mean_conf, color="tab:red", label="mean confidence")
        hist.axvline(mean_acc, color="tab:blue", label="accuracy")
        hist.set(xlabel="confidence", ylabel="fraction", xlim=(0.0, 1.0))
        hist.legend(loc="upper left")
    else:
        fig = _root_figure(ax)

    ax.bar(centers[full], acc[full], width=width, edgecolor="black", label="accuracy")
    ax.bar(
        centers[full],
        conf[full] - acc[full],
        bottom=acc[full],
        width=width,
        color="tab:red",
        alpha=0.3,
        hatch="//",
        edgecolor="tab:red",
        label="gap to confidence",
    )
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="black", label="perfect calibration")
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), ylabel="accuracy")
    ax.set_title(f"ECE = {ece(probs, targets, n_bins=n_bins):.4f} ({n_bins} bins)")
    ax.legend(loc="upper left")
    return fig


def ood_histogram(
    scores_in: Tensor, scores_out: Tensor, *, label: str = "score", bins: int = 50
) -> Figure:
    """Overlaid density histograms of in-distribution and OOD scores, AUROC in the title.

    Args:
        scores_in: ``(N_in,)`` finite scores of in-distribution inputs (higher = more OOD).
        scores_out: ``(N_out,)`` finite scores of out-of-distribution inputs.
        label: x-axis label, the name of the score (e.g. ``"predictive entropy"``).
        bins: Number of shared bins spanning both score sets.

    Returns:
        The new figure.
    """
    if not isinstance(label, str):
        raise TypeError(f"label must be a string, got {type(label).__name__}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    value = auroc(scores_in, scores_out)
    s_in = scores_in.detach().cpu().to(torch.float64).numpy()
    s_out = scores_out.detach().cpu().to(torch.float64).numpy()
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("scores must be finite to plot a histogram; drop or clip inf scores")
    edges = np.histogram_bin_edges(np.concatenate([s_in, s_out]), bins=bins).tolist()
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for scores, name, color in ((s_in, "in-distribution", "tab:blue"), (s_out, "OOD", "tab:red")):
        ax.hist(scores, bins=edges, density=True, alpha=0.5, color=color, label=name)
    ax.set(xlabel=label, ylabel="density", title=f"AUROC = {value:.4f} (OOD positive)")
    ax.legend()
    return fig


def compare_methods(
    results: Mapping[str, Mapping[str, float]], metrics: Sequence[str] | None = None
) -> Figure:
    """Grouped bar chart of methods by metric: one panel (own y-scale) per metric, a bar per method.

    Args:
        results: ``{method: {metric: value}}``, e.g. ``{"SWAG": summary(probs, targets), ...}``.
        metrics: Metrics to show, in order; by default those every method reports, in the order of
            the first method.

    Returns:
        The new figure.
    """
    if not isinstance(results, Mapping) or not all(
        isinstance(v, Mapping) for v in results.values()
    ):
        raise TypeError(
            "results must map method names to {metric: value} dicts, got " + type(results).__name__
        )
    if not results:
        raise ValueError("results must map at least one method name to its metrics, got {}")
    if metrics is not None and (
        isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics)
    ):
        raise TypeError(f"metrics must be a sequence of metric names (strings), got {metrics!r}")
    methods = list(results)
    if metrics is None:
        metrics = [m for m in results[methods[0]] if all(m in results[k] for k in methods)]
    if not metrics:
        raise ValueError(
            f"no metric to plot (got metrics={metrics!r}); pass metrics= naming at least one "
            "metric that every method reports"
        )
    for method in methods:
        missing = [m for m in metrics if m not in results[method]]
        if missing:
            raise ValueError(f"method {method!r} has no value for metrics {missing}")
        for m in metrics:
            value = results[method][m]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"results[{method!r}][{m!r}] must be a number, got {value!r}")
            if not np.isfinite(value):
                raise ValueError(f"results[{method!r}][{m!r}] is {value}; plot finite values only")

    fig = Figure(figsize=(max(3.0 * len(metrics), 4.0), 3.5), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    positions = np.arange(len(methods))
    for ax, metric in zip(axes, metrics, strict=True):
        values = [float(results[method][metric]) for method in methods]
        bars = ax.bar(positions, values, color=[f"C{i % 10}" for i in positions])
        ax.bar_label(bars, fmt="%.3g")
        ax.set_xticks(positions, labels=methods, rotation=30, ha="right")
        ax.set_title(metric)
        ax.margins(y=0.15)
    return fig


def _root_figure(ax: Axes) -> Figure:
    fig = ax.get_figure()
    if isinstance(fig, SubFigure):
        fig = fig.figure
    if not isinstance(fig, Figure):
        raise ValueError("ax must belong to a matplotlib figure")
    return fig

"""Plots of the evaluation metrics; each returns a :class:`matplotlib.figure.Figure`.

Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``: nothing is
shown, no global state is touched, and no display is needed. Save with ``fig.savefig("x.png")``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from torch import Tensor

from swag.metrics import auroc, ece, reliability_curve


def reliability_diagram(
    probs: Tensor,
    targets: Tensor,
    *,
    n_bins: int = 15,
    ax: Axes | None = None,
    title: str | None = None,
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
        title: What is shown (e.g. the method), put before the ECE in the title.

    Returns:
        The figure holding the plot.
    """
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
    value = f"ECE = {ece(probs, targets, n_bins=n_bins):.4f} ({n_bins} bins)"
    ax.set_title(value if title is None else f"{title}: {value}")
    ax.legend(loc="upper left")
    return fig


def ood_histogram(
    scores_in: Tensor,
    scores_out: Tensor,
    *,
    label: str = "score",
    bins: int = 50,
    names: tuple[str, str] = ("in-distribution", "OOD"),
    title: str | None = None,
) -> Figure:
    """Overlaid density histograms of in-distribution and OOD scores, AUROC in the title.

    Args:
        scores_in: ``(N_in,)`` finite scores of in-distribution inputs (higher = more OOD).
        scores_out: ``(N_out,)`` finite scores of out-of-distribution inputs.
        label: x-axis label, the name of the score with its unit (e.g.
            ``"predictive entropy (nats)"``).
        bins: Number of shared bins spanning both score sets.
        names: Legend entries of the two sets, e.g. the datasets'
            ``("Fashion-MNIST test", "MNIST")``.
        title: What is shown (e.g. the method), put before the AUROC in the title.

    Returns:
        The new figure.
    """
    value = auroc(scores_in, scores_out)
    s_in = scores_in.detach().cpu().to(torch.float64).numpy()
    s_out = scores_out.detach().cpu().to(torch.float64).numpy()
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("scores must be finite to plot a histogram; drop or clip inf scores")
    edges = np.histogram_bin_edges(np.concatenate([s_in, s_out]), bins=bins).tolist()
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for scores, name, color in ((s_in, names[0], "tab:blue"), (s_out, names[1], "tab:red")):
        ax.hist(scores, bins=edges, density=True, alpha=0.5, color=color, label=name)
    auroc_text = f"AUROC = {value:.4f} ({names[1]} positive)"
    ax.set(xlabel=label, ylabel="density")
    ax.set_title(auroc_text if title is None else f"{title}: {auroc_text}")
    ax.legend()
    return fig


def compare_methods(
    results: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    *,
    errors: Mapping[str, Mapping[str, float]] | None = None,
    titles: Mapping[str, str] | None = None,
    ncols: int = 4,
    reference: str | None = None,
) -> Figure:
    """Methods as rows of dots, one panel per metric, each panel's axis zoomed to its values.

    Every panel has its own x-range around the values (never forced to include 0), so close
    values stay apart; with ``errors`` each dot gets a ± bar (e.g. the std over seeds). NaN
    values (an undefined metric) leave their row empty.

    Args:
        results: ``{method: {metric: value}}``, e.g. ``{"SWAG": summary(probs, targets), ...}``.
        metrics: Metrics to show, in order; by default those every method reports, in the order of
            the first method.
        errors: ``{method: {metric: half-width}}`` of the bars; missing entries draw none.
        titles: Panel titles by metric, e.g. ``{"nll": "NLL ↓"}`` (default: the metric's key).
        ncols: Panels per row of the figure.
        reference: A method whose value gets a dotted vertical line in every panel (e.g. the
            ``"SGD"`` baseline), to read the others against.

    Returns:
        The new figure.
    """
    if not results:
        raise ValueError("results must map at least one method name to its metrics, got {}")
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
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if reference is not None and reference not in results:
        raise ValueError(f"reference {reference!r} is not one of the methods {methods}")

    ncols = min(ncols, len(metrics))
    nrows = -(-len(metrics) // ncols)
    label_width = 0.07 * max(len(m) for m in methods)
    fig = Figure(
        figsize=(label_width + 2.6 * ncols, 0.6 + (0.28 * len(methods) + 0.7) * nrows),
        layout="constrained",
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    rows = np.arange(len(methods))[::-1]  # the first method on top
    for i, ax in enumerate(axes.flat):
        if i >= len(metrics):
            fig.delaxes(ax)
            continue
        metric = metrics[i]
        values = np.array([float(results[m][metric]) for m in methods])
        err = np.array([float((errors or {}).get(m, {}).get(metric, 0.0)) for m in methods])
        ok = np.isfinite(values)
        ax.errorbar(
            values[ok], rows[ok], xerr=np.nan_to_num(err[ok]), fmt="o", color="tab:blue",
            ecolor="tab:gray", capsize=3, markersize=5,
        )  # fmt: skip
        ax.set_title((titles or {}).get(metric, metric), fontsize=10)
        ax.set_yticks(rows, labels=methods)
        ax.grid(axis="x", alpha=0.4)
        ax.margins(x=0.15, y=0.08)
        ax.tick_params(axis="x", labelsize=8)
        if reference is not None and math.isfinite(float(results[reference][metric])):
            ax.axvline(float(results[reference][metric]), color="tab:red", ls=":", lw=1)
    return fig


def _root_figure(ax: Axes) -> Figure:
    fig = ax.get_figure()
    if isinstance(fig, SubFigure):
        fig = fig.figure
    if not isinstance(fig, Figure):
        raise ValueError("ax must belong to a matplotlib figure")
    return fig

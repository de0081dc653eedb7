"""Plots of the evaluation metrics; each returns a :class:`matplotlib.figure.Figure`.

Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``: nothing is
shown, no global state is touched, and no display is needed. Save with ``fig.savefig("x.png")``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from torch import Tensor

from swag.evaluation.metrics import auroc, ece, reliability_curve

__all__ = ["compare_methods", "loss_line", "loss_plane", "ood_histogram", "reliability_diagram"]


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
    predictions per bin sits underneath. The legend sits outside the axes, to their right, so it
    covers no bar: in a figure of your own, leave room for it (``layout="constrained"``, or
    ``savefig(..., bbox_inches="tight")``).

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        n_bins: Number of equal-width confidence bins.
        ax: Axes to draw the diagram into (without the histogram); a new figure when None.
        title: What is shown (e.g. the method), put before the ECE in the title.

    Returns:
        The figure holding the plot.
    """
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    _check_title(title)
    curve = reliability_curve(probs, targets, n_bins=n_bins)
    conf, acc = curve.confidence.cpu().numpy(), curve.accuracy.cpu().numpy()
    counts = curve.counts.cpu().numpy()
    edges = curve.edges.cpu().numpy()
    centers, width = (edges[:-1] + edges[1:]) / 2.0, 1.0 / n_bins
    full = counts > 0

    if ax is None:
        fig = Figure(figsize=(7.0, 6.0), layout="constrained")
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
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), xlabel="confidence", ylabel="accuracy")
    value = f"ECE = {ece(probs, targets, n_bins=n_bins):.4f} ({n_bins} bins)"
    ax.set_title(value if title is None else f"{title}: {value}")
    # Outside the axes, to the right: inside, some bar can reach any corner (an underconfident
    # bin rises into the upper left, confident bins fill the lower right).
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
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
    if not isinstance(label, str):
        raise TypeError(f"label must be a string, got {type(label).__name__}")
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise TypeError(f"bins must be an int >= 1, got {type(bins).__name__} {bins!r}")
    if bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    if (
        not isinstance(names, tuple | list)
        or len(names) != 2
        or not all(isinstance(n, str) for n in names)
    ):
        raise TypeError(f"names must be two strings (in-distribution, OOD), got {names!r}")
    _check_title(title)
    value = auroc(scores_in=scores_in, scores_out=scores_out)
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
    ax.legend(loc="upper right")
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
            value: object = results[method][m]
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"results[{method!r}][{m!r}] must be a number, got {value!r}")
    _check_errors(errors)
    if titles is not None and (
        not isinstance(titles, Mapping)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in titles.items())
    ):
        raise TypeError(f"titles must map metric names to strings, got {titles!r}")
    if isinstance(ncols, bool) or not isinstance(ncols, int):
        raise TypeError(f"ncols must be an int >= 1, got {ncols!r}")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if reference is not None and not isinstance(reference, str):
        raise TypeError(f"reference must be a method name (a string), got {reference!r}")
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


def _check_title(title: object) -> None:
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {type(title).__name__}")


def _check_errors(errors: object) -> None:
    """``errors`` is None or ``{method: {metric: half-width ≥ 0}}`` (NaN: no bar)."""
    if errors is None:
        return
    if not isinstance(errors, Mapping) or not all(isinstance(v, Mapping) for v in errors.values()):
        raise TypeError(f"errors must map methods to {{metric: half-width}} dicts, got {errors!r}")
    for method, row in errors.items():
        for metric, width in row.items():
            if isinstance(width, bool) or not isinstance(width, Real):
                raise TypeError(f"errors[{method!r}][{metric!r}] must be a number, got {width!r}")
            if width < 0:
                raise ValueError(f"errors[{method!r}][{metric!r}] must be >= 0, got {width}")


def _root_figure(ax: Axes) -> Figure:
    fig = ax.get_figure()
    if isinstance(fig, SubFigure):
        fig = fig.figure
    if not isinstance(fig, Figure):
        raise ValueError("ax must belong to a matplotlib figure")
    return fig


# -- loss surfaces (data from swag.landscape) ------------------------------------------------


def _np(x: Tensor | Sequence[float] | Sequence[Sequence[float]], name: str = "value") -> np.ndarray:
    """``x`` as a float64 array; TypeError naming ``name`` for anything that is not numbers."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {x!r}")
    try:
        return torch.as_tensor(x).detach().cpu().to(torch.float64).numpy()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{name} must be a tensor or a sequence of numbers, got {type(x).__name__}"
        ) from None


def _finite(arr: np.ndarray, name: str) -> None:
    """Refuse NaN or ±inf in ``arr`` with our own message (matplotlib's would be obscure)."""
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(
            f"{name} must be finite, it holds {bad} NaN or inf value(s) (e.g. grid points where "
            "the weights overflowed); crop the grid to the finite region or clip the values"
        )


def _axis(arr: np.ndarray, name: str) -> None:
    """Refuse a coordinate axis that is not finite and strictly increasing."""
    _finite(arr, name)
    if not bool(np.all(np.diff(arr) > 0)):
        raise ValueError(
            f"{name} must be strictly increasing (distinct values), got {arr.tolist()}"
        )


def _check_ax(ax: object) -> None:
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")


def loss_line(
    ts: Tensor | Sequence[float],
    train_loss: Tensor | Sequence[float],
    test_error: Tensor | Sequence[float],
    *,
    labels: tuple[str, str] = ("SGD", "SWA"),
    ax: Axes | None = None,
) -> Figure:
    """Train loss (left axis) and test error (right axis) along the line between two weights.

    The picture of Izmailov et al. (2018): with ``labels=("SGD", "SWA")`` and ``ts`` past both
    ends, it shows whether SWA sits nearer the centre of a wide valley than SGD.

    Args:
        ts: ``(N,)`` positions; t = 0 is the first weight vector, t = 1 the second.
        train_loss: ``(N,)`` training loss at each t (e.g. ``LineScan.metrics["train_loss"]``
            from :func:`swag.landscape.scan_line`).
        test_error: ``(N,)`` test error rate (a fraction) at each t.
        labels: names of the points at t = 0 and t = 1.
        ax: Axes to draw into; a new figure when None.

    Returns:
        The figure holding the plot.
    """
    _check_ax(ax)
    t, loss = _np(ts, "ts"), _np(train_loss, "train_loss")
    err = _np(test_error, "test_error")
    if not (t.ndim == 1 and t.shape == loss.shape == err.shape and len(t) >= 2):
        raise ValueError(
            f"ts, train_loss and test_error must be 1-D of one length >= 2, got shapes "
            f"{t.shape}, {loss.shape}, {err.shape}"
        )
    _axis(t, "ts")
    _finite(loss, "train_loss")
    _finite(err, "test_error")
    if (
        not isinstance(labels, tuple | list)
        or len(labels) != 2
        or not all(isinstance(n, str) for n in labels)
    ):
        raise TypeError(f"labels must be two strings (the points at t = 0 and 1), got {labels!r}")
    if ax is None:
        fig = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = _root_figure(ax)
    ax.plot(t, loss, color="tab:blue", marker="o", markersize=3, label="train loss")
    ax.set(xlabel="t  (θ = (1 − t)·θ₀ + t·θ₁)", ylabel="train loss (nats)")
    right = ax.twinx()
    right.plot(t, 100 * err, color="tab:red", marker="s", markersize=3, label="test error")
    right.set_ylabel("test error (%)")
    for x, name in zip((0.0, 1.0), labels, strict=True):
        ax.axvline(x, color="gray", linestyle=":")
        ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom")
    lines = ax.get_lines()[:1] + right.get_lines()[:1]
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper center")
    return fig


def loss_plane(
    as_: Tensor | Sequence[float],
    bs: Tensor | Sequence[float],
    values: Tensor | Sequence[Sequence[float]],
    *,
    label: str = "train loss",
    points: Mapping[str, Tensor | Sequence[float]] | None = None,
    gaussian: tuple[Tensor, Tensor] | None = None,
    levels: int = 20,
    log: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """A metric over a plane of weight space, with marked points and Gaussian density contours.

    Args:
        as_: ``(A,)`` first coordinates of the grid.
        bs: ``(B,)`` second coordinates.
        values: ``(B, A)`` the metric at ``(as_[j], bs[i])`` (e.g. ``PlaneScan.metrics[...]``
            from :func:`swag.landscape.scan_plane`).
        label: the metric's name, for the colour bar.
        points: named points to mark, ``{"SWA": (a, b), ...}`` (see ``Plane.coords``).
        gaussian: ``(centre (2,), cov (2, 2))`` of a Gaussian over the plane coordinates, e.g.
            ``Plane.gaussian(swag_posterior)``; drawn as its 1σ, 2σ and 3σ density contours
            (Mahalanobis distance 1, 2, 3: ellipses holding 39%, 86% and 99% of its mass).
        levels: number of filled contour levels.
        log: space the levels logarithmically (losses span decades) when every value is > 0;
            with a zero or negative value (an error rate of 0) the levels are linear.
        ax: Axes to draw into; a new figure when None.

    Returns:
        The figure holding the plot.

    Raises:
        TypeError: for arguments of the wrong type (a float or bool ``levels``, a string grid).
        ValueError: for grids that are not strictly increasing, values of another shape,
            NaN or inf values, values that are all equal (no contour to draw), ``levels`` < 2,
            or a Gaussian whose covariance is not positive
            definite. Each message names the argument.
    """
    from matplotlib.colors import LogNorm

    _check_ax(ax)
    a, b, v = _np(as_, "as_"), _np(bs, "bs"), _np(values, "values")
    if a.ndim != 1 or b.ndim != 1 or v.shape != (len(b), len(a)) or min(len(a), len(b)) < 2:
        raise ValueError(
            f"values must have shape (len(bs), len(as_)) = ({len(b)}, {len(a)}) with both >= 2 "
            f"and as_, bs 1-D, got {v.shape}"
        )
    _axis(a, "as_")
    _axis(b, "bs")
    _finite(v, "values")
    if v.min() == v.max():
        raise ValueError(
            f"values are all equal ({v.min():.6g}): a constant surface has no contours to draw"
        )
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise TypeError(f"levels must be an int >= 2 (the number of levels), got {levels!r}")
    if levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels}")
    if not isinstance(log, bool):
        raise TypeError(f"log must be a bool, got {type(log).__name__} {log!r}")
    if not isinstance(label, str):
        raise TypeError(f"label must be a string, got {type(label).__name__}")
    if points is not None and not isinstance(points, Mapping):
        raise TypeError(f"points must map names to (a, b), got {type(points).__name__}")
    marks = {}
    for name, xy in (points or {}).items():
        p = _np(xy, f"points[{name!r}]")
        if p.shape != (2,) or not np.isfinite(p).all():
            raise ValueError(f"points[{name!r}] must be two finite coordinates (a, b), got {p}")
        marks[str(name)] = p
    ring = None
    if gaussian is not None:
        if not isinstance(gaussian, tuple | list) or len(gaussian) != 2:
            raise TypeError(f"gaussian must be (centre (2,), cov (2, 2)), got {gaussian!r}")
        centre, cov = _np(gaussian[0], "gaussian centre"), _np(gaussian[1], "gaussian cov")
        if centre.shape != (2,) or cov.shape != (2, 2):
            raise ValueError(
                f"gaussian must be (centre (2,), cov (2, 2)), got {centre.shape}, {cov.shape}"
            )
        _finite(centre, "gaussian centre")
        _finite(cov, "gaussian cov")
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
        if vals.min() <= 0 or not np.allclose(cov, cov.T):
            raise ValueError(
                f"gaussian cov must be symmetric positive definite, got {cov.tolist()}"
            )
        ring = centre, vals, vecs
    if ax is None:
        fig = Figure(figsize=(6.0, 5.0), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = _root_figure(ax)
    if log and v.min() > 0:
        edges = np.geomspace(v.min(), v.max(), levels + 1)
        norm = LogNorm(vmin=edges[0], vmax=edges[-1])
        filled = ax.contourf(a, b, v, levels=edges, norm=norm, cmap="viridis")
    else:
        filled = ax.contourf(a, b, v, levels=levels, cmap="viridis")
    bar = fig.colorbar(filled, ax=ax, label=label)
    bar.ax.yaxis.set_major_formatter("{x:.3g}")
    bar.ax.yaxis.set_minor_formatter("")
    if ring is not None:
        centre, vals, vecs = ring
        angle = np.linspace(0.0, 2 * np.pi, 200)
        circle = np.stack([np.cos(angle), np.sin(angle)])
        for r, style in ((1, "-"), (2, "--"), (3, ":")):
            xy = centre[:, None] + r * (vecs * np.sqrt(vals)) @ circle
            ax.plot(xy[0], xy[1], color="white", linestyle=style, linewidth=1.2)
        ax.plot([], [], color="white", label="SWAG density (1, 2, 3σ)")
    for i, (name, p) in enumerate(marks.items()):
        ax.plot(p[0], p[1], marker="*^os"[i % 4], markersize=11, color=f"C{(i + 1) % 10}",
                markeredgecolor="black", linestyle="none", label=name)  # fmt: skip
    if points or gaussian is not None:
        ax.legend(loc="upper right", facecolor="lightgray")
    ax.set(xlabel="a", ylabel="b", xlim=(a.min(), a.max()), ylim=(b.min(), b.max()))
    return fig

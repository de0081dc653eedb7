"""Plots render headless to valid PNG files and show the right numbers."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from swag.metrics import auroc, ece, reliability_curve
from swag.plots import compare_methods, ood_histogram, reliability_diagram

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(fig: Figure, path: Path) -> None:
    fig.savefig(path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000


def make_problem(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(400, 5, generator=g)
    targets = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return torch.softmax(3.0 * z, 1), targets


def test_reliability_diagram(tmp_path: Path) -> None:
    probs, targets = make_problem(1)
    fig = reliability_diagram(probs, targets, n_bins=10)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    diagram, hist = fig.axes
    assert diagram.get_title() == f"ECE = {ece(probs, targets, n_bins=10):.4f} (10 bins)"
    titled = reliability_diagram(probs, targets, n_bins=10, title="SWAG").axes[0]
    assert titled.get_title() == f"SWAG: ECE = {ece(probs, targets, n_bins=10):.4f} (10 bins)"
    nonempty = int((reliability_curve(probs, targets, n_bins=10).counts > 0).sum())
    assert len(diagram.patches) == 2 * nonempty  # an accuracy bar and a gap bar per bin
    assert len(hist.patches) == 10
    assert_png(fig, tmp_path / "reliability.png")


def test_reliability_diagram_into_given_axes(tmp_path: Path) -> None:
    probs, targets = make_problem(2)
    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert reliability_diagram(probs, targets, ax=right) is fig
    assert len(left.patches) == 0 and len(right.patches) > 0 and len(fig.axes) == 2
    outer = Figure()
    sub = outer.add_subfigure(outer.add_gridspec(1, 2)[0, 1])
    assert reliability_diagram(probs, targets, ax=sub.add_subplot()) is outer
    assert_png(fig, tmp_path / "into_axes.png")


def test_ood_histogram(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    s_in, s_out = torch.randn(500, generator=g), torch.randn(300, generator=g) + 1.5
    fig = ood_histogram(s_in, s_out, label="predictive entropy", bins=20)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "predictive entropy"
    assert ax.get_title().startswith(f"AUROC = {auroc(scores_in=s_in, scores_out=s_out):.4f}")
    named = ood_histogram(s_in, s_out, names=("Fashion-MNIST", "MNIST"), title="SWAG").axes[0]
    assert (
        named.get_title()
        == f"SWAG: AUROC = {auroc(scores_in=s_in, scores_out=s_out):.4f} (MNIST positive)"
    )
    assert [t.get_text() for t in named.get_legend().get_texts()] == ["Fashion-MNIST", "MNIST"]
    assert len(ax.patches) == 40
    assert_png(fig, tmp_path / "ood.png")
    with pytest.raises(ValueError, match="finite"):
        ood_histogram(s_in, torch.tensor([float("inf"), 0.0]))


def test_compare_methods(tmp_path: Path) -> None:
    results = {
        "SGD": {"accuracy": 0.91, "nll": 0.35, "ece": 0.05},
        "SWAG": {"accuracy": 0.93, "nll": 0.22, "ece": 0.01, "mce": 0.1},
    }
    fig = compare_methods(results)
    assert [ax.get_title() for ax in fig.axes] == ["accuracy", "nll", "ece"]
    nll_ax = fig.axes[1]
    (xs, ys) = nll_ax.lines[0].get_data()
    assert list(xs) == pytest.approx([0.35, 0.22])
    assert list(ys) == [1, 0]  # methods as rows, the first on top
    labels = fig.axes[0].get_yticklabels()  # the other panels share them
    assert [t.get_text() for t in labels] == ["SGD", "SWAG"]
    lo, hi = fig.axes[0].get_xlim()
    assert 0.85 < lo < 0.91 and 0.93 < hi < 1.0  # zoomed to the values, not from 0
    assert_png(fig, tmp_path / "compare.png")
    assert [ax.get_title() for ax in compare_methods(results, metrics=["ece"]).axes] == ["ece"]


def test_compare_methods_error_bars_titles_and_nan(tmp_path: Path) -> None:
    results = {"SGD": {"nll": 0.35, "mi": math.nan}, "SWAG": {"nll": 0.22, "mi": 0.8}}
    errors = {"SGD": {"nll": 0.01}, "SWAG": {"nll": 0.02}}
    fig = compare_methods(results, errors=errors, titles={"nll": "NLL ↓"}, ncols=1, reference="SGD")
    assert [ax.get_title() for ax in fig.axes] == ["NLL ↓", "mi"]
    bars = fig.axes[0].collections[0].get_segments()
    assert [seg[1][0] - seg[0][0] for seg in bars] == pytest.approx([0.02, 0.04])
    assert list(fig.axes[1].lines[0].get_data()[0]) == [0.8]  # NaN: no dot
    assert list(fig.axes[0].lines[-1].get_xdata()) == [0.35, 0.35]  # the reference line
    assert_png(fig, tmp_path / "compare_err.png")


def test_compare_methods_errors() -> None:
    with pytest.raises(ValueError, match="at least one method"):
        compare_methods({})
    with pytest.raises(ValueError, match=r"method 'SGD' has no value for metrics \['mce'\]"):
        compare_methods({"SGD": {"nll": 1.0}, "SWAG": {"mce": 0.1}}, metrics=["mce"])
    with pytest.raises(ValueError, match="no metric to plot"):
        compare_methods({"SGD": {"nll": 1.0}, "SWAG": {"mce": 0.1}})


def test_plots_never_import_pyplot(tmp_path: Path) -> None:
    code = (
        "import sys, torch\n"
        "from swag.plots import reliability_diagram\n"
        "p = torch.full((4, 2), 0.5)\n"
        f"reliability_diagram(p, torch.tensor([0, 1, 0, 1])).savefig({str(tmp_path / 'x.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {"PATH": "", "MPLBACKEND": "", "HOME": str(tmp_path)}  # no DISPLAY
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parents[1])
    assert (tmp_path / "x.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("given_axes", [False, True])
def test_reliability_diagram_labels_x_and_keeps_its_legend_off_the_bars(given_axes: bool) -> None:
    # underconfident at low confidence (a tall bar in the upper left, where the legend used to
    # be) and confident bins filling the lower right: no corner inside the axes is free
    conf = torch.tensor([0.15] * 50 + [0.95] * 200)
    probs = torch.stack([conf, 1.0 - conf], 1)
    targets = torch.zeros(250, dtype=torch.long)
    if given_axes:
        fig = Figure(layout="constrained")
        ax = fig.add_subplot()
        reliability_diagram(probs, targets, n_bins=10, ax=ax)
    else:
        fig = reliability_diagram(probs, targets, n_bins=10)
        ax = fig.axes[0]
    assert ax.get_xlabel() == "confidence" and ax.get_ylabel() == "accuracy"
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend is not None
    box = legend.get_window_extent()
    bars = [p.get_window_extent() for p in ax.patches]
    assert max(b.y1 for b in bars) > ax.get_window_extent().y0 + 0.9 * ax.get_window_extent().height
    assert not any(box.overlaps(b) for b in bars)
    assert box.x0 >= ax.get_window_extent().x1  # outside the plotting area altogether


def test_every_legend_in_the_plots_has_an_explicit_loc() -> None:
    # loc="best" (the default) measures overlaps and warns "slow" under load; with
    # filterwarnings=error that made tests/test_bench.py flaky
    import swag.evaluation.plots

    tree = ast.parse(Path(swag.evaluation.plots.__file__).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "legend"
    ]
    assert len(calls) >= 5
    for call in calls:
        locs = [k.value for k in call.keywords if k.arg == "loc"]
        assert locs and isinstance(locs[0], ast.Constant) and locs[0].value != "best", call.lineno

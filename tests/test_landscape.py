"""Loss-surface evaluation (swag.landscape) and its plots (swag.plots.loss_line / loss_plane)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

import swag
from swag.landscape import Plane, evaluate_points, scan_line, scan_plane
from swag.plots import loss_line, loss_plane
from tests.test_guarantee_misuse_analysis import LAYOUT, LOADERS, MODEL, SUB


def data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_plane_through_three_points_has_their_coordinates() -> None:
    g = torch.Generator().manual_seed(1)
    w0, w1, w2 = (torch.randn(7, generator=g, dtype=torch.float64) for _ in range(3))
    plane = Plane.through(w0, w1, w2)
    torch.testing.assert_close(plane.coords(w0), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(plane.coords(w1), torch.tensor([1.0, 0.0], dtype=torch.float64))
    c = plane.coords(w2)
    assert c[1] == pytest.approx(1.0) and float(plane.u @ plane.v) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(plane.point(float(c[0]), float(c[1])), w2)
    with pytest.raises(ValueError, match="collinear"):
        Plane.through(w0, w1, 2 * w1 - w0)


def test_plane_gaussian_matches_the_dense_projection() -> None:
    model = nn.Linear(3, 2)
    collector = swag.Collector(model, max_rank=4)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(7):
            model.weight.add_(0.1 * torch.randn(2, 3, generator=g))
            model.bias.add_(0.1 * torch.randn(2, generator=g))
            collector.collect()
    post = collector.posterior()
    sub = swag.subspace.Subspace.pca(post, 2)
    plane = Plane.from_subspace(sub)
    centre, cov = plane.gaussian(post, scale=0.5)
    # oracle: the dense P × P covariance from torch's LowRankMultivariateNormal, projected
    dense = post.to_distribution(scale=0.5).covariance_matrix.double()
    e = torch.stack([plane.u, plane.v]).double()
    a = torch.linalg.pinv(e.T)
    # the dense oracle is float32 (relative error ~1e-7 per entry, summed over P = 8 terms)
    torch.testing.assert_close(cov, a @ dense @ a.T, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(centre, torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)


def test_evaluate_points_matches_a_hand_loop() -> None:
    model = nn.Linear(3, 4)
    layout = swag.ParamLayout.from_model(model)
    x, y = data()
    thetas = [torch.randn(16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    out = evaluate_points(model, layout, thetas, {"train": [(x[:10], y[:10]), (x[10:], y[10:])]})
    for i, theta in enumerate(thetas):
        w, b = theta[:12].view(4, 3), theta[12:]
        logits = x @ w.T + b
        loss = nn.functional.cross_entropy(logits, y)
        assert float(out["train_loss"][i]) == pytest.approx(float(loss), rel=1e-5)
        assert float(out["train_error"][i]) == pytest.approx(
            float((logits.argmax(1) != y).double().mean())
        )


def test_batchnorm_is_refreshed_and_required() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 4))
    layout = swag.ParamLayout.from_model(model)
    x, y = data()
    theta = swag.PointPosterior.from_model(model).mean * 1.5
    with pytest.raises(ValueError, match="BNRefresh"):
        evaluate_points(model, layout, [theta], {"test": [(x, y)]})
    out = evaluate_points(
        model,
        layout,
        [theta],
        {"test": [(x, y)]},
        options=swag.PredictOptions(bn=swag.BNRefresh([x])),
    )
    ref = swag.PointPosterior(theta, layout).to_model(model)
    swag.update_bn([x], ref)
    ref.eval()
    expected = nn.functional.cross_entropy(ref(x), y).detach()
    assert float(out["test_loss"][0]) == pytest.approx(float(expected), rel=1e-5)
    assert model[1].running_mean.abs().sum() == 0  # the model itself is untouched


def test_scans_and_plots() -> None:
    model = nn.Linear(3, 4)
    layout = swag.ParamLayout.from_model(model)
    x, y = data()
    start, end = torch.zeros(16), torch.randn(16, generator=torch.Generator().manual_seed(3))
    loaders = {"train": [(x, y)], "test": [(x[:8], y[:8])]}
    line = scan_line(model, layout, start, end, loaders, ts=[0.0, 0.5, 1.0])
    ends = evaluate_points(model, layout, [start, end], loaders)
    torch.testing.assert_close(line.metrics["train_loss"][[0, 2]], ends["train_loss"])
    fig = loss_line(line.ts, line.metrics["train_loss"], line.metrics["test_error"])
    assert isinstance(fig, Figure)
    plane = Plane.through(start, end, torch.ones(16))
    scan = scan_plane(model, layout, plane, loaders, as_=[-0.5, 0.5, 1.5], bs=[0.0, 1.0])
    assert scan.metrics["train_loss"].shape == (2, 3)
    torch.testing.assert_close(scan.metrics["train_loss"][0, 1], line.metrics["train_loss"][1])
    cov = torch.tensor([[0.2, 0.05], [0.05, 0.1]])
    fig = loss_plane(
        scan.as_,
        scan.bs,
        scan.metrics["train_loss"],
        points={"start": (0.0, 0.0)},
        gaussian=(torch.tensor([0.5, 0.5]), cov),
    )
    # the solid ring is the 1σ contour: every point on it is at Mahalanobis distance 1
    ring = next(line for line in fig.axes[0].get_lines() if line.get_linestyle() == "-")
    pts = np.stack([ring.get_xdata(), ring.get_ydata()], 1) - 0.5
    maha = np.einsum("ni,ij,nj->n", pts, np.linalg.inv(cov.numpy()), pts)
    np.testing.assert_allclose(maha, 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="values must have shape"):
        loss_plane([0.0, 1.0], [0.0, 1.0, 2.0], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="1-D of one length"):
        loss_line([0.0, 1.0], [1.0], [0.5, 0.5])


DTYPES = [torch.float32, torch.float64]


def points(dtype: torch.dtype, size: int = 200) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(4)
    w0 = (10 * torch.randn(size, generator=g, dtype=torch.float64)).to(dtype)
    return w0, w0 + torch.randn(size, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [-1.5, 0.37, 3.0, 1e3])
def test_numerically_collinear_points_are_refused_naming_them(dtype: torch.dtype, t: float) -> None:
    w0, w1 = points(dtype)
    w2 = w0 + t * (w1 - w0)  # on the line, up to the dtype's rounding
    with pytest.raises(ValueError, match="w0, w1 and w2 are collinear"):
        Plane.through(w0, w1, w2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", [(0, 1), (0, 2), (1, 2)])
def test_equal_points_are_refused_naming_them(dtype: torch.dtype, pair: tuple[int, int]) -> None:
    w0, w1 = points(dtype)
    ws = [w0, w1, w0 + torch.ones_like(w0)]
    ws[pair[1]] = ws[pair[0]].clone()
    with pytest.raises(ValueError, match=f"w{pair[0]} and w{pair[1]} are equal"):
        Plane.through(*ws)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_thin_but_real_plane_is_kept(dtype: torch.dtype) -> None:
    # w2 off the line by 1e-3 of the points' norms: far above float32 rounding (1e-7)
    w0, w1 = points(dtype)
    off = torch.zeros_like(w0)
    off[0] = 1e-3 * float(w0.norm())
    plane = Plane.through(w0, w1, w0 + 0.5 * (w1 - w0) + off)
    assert plane.u.dtype == plane.v.dtype == dtype
    coords = plane.coords(w0 + 0.5 * (w1 - w0) + off)
    torch.testing.assert_close(
        coords, torch.tensor([0.5, 1.0], dtype=torch.float64), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_directions_and_equal_line_ends_are_refused(dtype: torch.dtype) -> None:
    w0, w1 = points(dtype)
    u = w1 - w0
    with pytest.raises(ValueError, match="u and v are parallel"):
        Plane(w0, u, (u * 3.0) * (1 + torch.finfo(dtype).eps))
    with pytest.raises(ValueError, match="start and end are equal"):
        scan_line(MODEL, LAYOUT, SUB.shift.to(dtype), SUB.shift.to(dtype).clone(), LOADERS)


class Logits(nn.Module):
    """A model returning fixed logits, with one parameter so it has a layout."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.logits = logits

    def forward(self, x: Tensor) -> Tensor:
        return self.logits[: len(x)] + self.w


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_weights_give_nan_loss_and_error(bad: float) -> None:
    theta = SUB.shift.clone()
    theta[0] = bad
    out = evaluate_points(MODEL, LAYOUT, [theta, SUB.shift], LOADERS)
    for key in ("train_loss", "train_error"):
        assert math.isnan(float(out[key][0])), (key, out[key])
        assert math.isfinite(float(out[key][1]))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_or_inf_logit_in_one_row_gives_nan(bad: float) -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    logits[1, 1] = bad
    model = Logits(logits)
    layout = swag.ParamLayout.from_model(model)
    batches = [(torch.zeros(3, 1), torch.tensor([0, 1, 0]))]
    out = evaluate_points(model, layout, [torch.zeros(1)], {"t": batches})
    assert math.isnan(float(out["t_loss"][0])) and math.isnan(float(out["t_error"][0]))
    good = evaluate_points(
        Logits(logits.nan_to_num(3.0, posinf=3.0)), layout, [torch.zeros(1)], {"t": batches}
    )
    assert float(good["t_error"][0]) == 0.0  # every row right: the NaN is what made it NaN


def test_scan_plane_memory_is_o_p() -> None:
    from benchmarks.timing import allocations

    torch.manual_seed(0)
    model = nn.Linear(1000, 100)  # P = 100_100, 400 kB a point
    layout = swag.ParamLayout.from_model(model)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = torch.Generator().manual_seed(1)
    plane = Plane(
        theta, torch.randn(layout.size, generator=g), torch.randn(layout.size, generator=g)
    )
    loaders = {"t": [(torch.randn(2, 1000), torch.tensor([0, 1]))]}
    grid = torch.linspace(-1, 1, 11)  # 121 points: 48 MB if they were all built first
    result = allocations(
        lambda: scan_plane(model, layout, plane, loaders, as_=grid, bs=grid), torch.device("cpu")
    )
    if result is None:
        pytest.skip("this torch build's profiler does not record CPU allocations")
    peak, _ = result
    point = 4 * layout.size
    # the working copy of the model, one point and its two partial sums, a little slack
    assert peak < 8 * point, f"peak extra {peak / 1e6:.1f} MB = {peak / point:.1f} points"

"""Loss-surface evaluation (swag.landscape) and its plots (swag.plots.loss_line / loss_plane)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import swag
from swag.landscape import Plane, evaluate_points, scan_line, scan_plane
from swag.plots import loss_line, loss_plane


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

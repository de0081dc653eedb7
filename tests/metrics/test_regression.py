"""Regression metrics against scipy.stats.norm, scikit-learn and explicit counting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import root_mean_squared_error

from swag.metrics import gaussian_mixture_nll, gaussian_nll, interval_coverage, rmse


def make_regression(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Means, variances and targets drawn from N(mean, var), so the model is calibrated."""
    g = torch.Generator().manual_seed(seed)
    mean = 3.0 * torch.randn(n, generator=g, dtype=torch.float64)
    var = 0.1 + torch.rand(n, generator=g, dtype=torch.float64) * 2.0
    target = mean + var.sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    return mean, var, target


@pytest.mark.parametrize("n", [1, 10, 1000])
def test_gaussian_nll_matches_scipy(n: int, device: torch.device) -> None:
    mean, var, target = make_regression(n, seed=n)
    expected = -scipy.stats.norm.logpdf(target.numpy(), mean.numpy(), np.sqrt(var.numpy())).mean()
    result = gaussian_nll(mean.to(device), var.to(device), target.to(device))
    assert result == pytest.approx(expected, rel=1e-12)


def test_gaussian_nll_matches_torch_full_loss() -> None:
    mean, var, target = make_regression(200, seed=1)
    expected = torch.nn.functional.gaussian_nll_loss(mean, target, var, full=True, eps=0.0)
    assert gaussian_nll(mean, var, target) == pytest.approx(expected.item(), rel=1e-12)


def test_gaussian_nll_standard_normal_at_the_mean() -> None:
    assert gaussian_nll(torch.zeros(3), torch.ones(3), torch.zeros(3)) == pytest.approx(
        0.5 * math.log(2 * math.pi), rel=1e-15
    )


@pytest.mark.parametrize("n", [1, 10, 1000])
def test_rmse_matches_sklearn(n: int, device: torch.device) -> None:
    mean, _, target = make_regression(n, seed=n + 1)
    expected = root_mean_squared_error(target.numpy(), mean.numpy())
    assert rmse(mean.to(device), target.to(device)) == pytest.approx(expected, rel=1e-12)


LEVELS = (0.1, 0.5, 0.9, 0.95, 0.99)


@pytest.mark.parametrize("n", [1, 10, 1000])
def test_interval_coverage_matches_explicit_counting(n: int, device: torch.device) -> None:
    mean, var, target = make_regression(n, seed=n + 2)
    result = interval_coverage(mean.to(device), var.to(device), target.to(device), levels=LEVELS)
    assert list(result) == list(LEVELS)
    for level in LEVELS:
        inside = 0
        for m, v, y in zip(mean.tolist(), var.tolist(), target.tolist(), strict=True):
            lo, hi = scipy.stats.norm.interval(level, loc=m, scale=math.sqrt(v))
            inside += lo <= y <= hi
        assert result[level] == inside / n


def test_calibrated_model_covers_nominal_levels() -> None:
    n = 20_000
    mean, var, target = make_regression(n, seed=3)
    for level, coverage in interval_coverage(mean, var, target, levels=LEVELS).items():
        assert abs(coverage - level) < 4.0 * math.sqrt(level * (1 - level) / n)


def test_coverage_boundary_is_included() -> None:
    z = torch.special.ndtri(torch.tensor(0.95, dtype=torch.float64))  # edge of the 90% interval
    result = interval_coverage(torch.zeros(2), torch.ones(1), torch.stack([z, -z]), levels=(0.9,))
    assert result == {0.9: 1.0}


def test_broadcast_scalar_variance_and_shapes() -> None:
    mean, _, target = make_regression(60, seed=4)
    grid = (mean.reshape(3, 20), target.reshape(3, 20))
    scalar = gaussian_nll(grid[0], torch.tensor(0.7), grid[1])
    assert scalar == pytest.approx(gaussian_nll(mean, torch.full((60,), 0.7), target), rel=1e-15)
    assert rmse(torch.tensor(0.0), target) == pytest.approx(target.square().mean().sqrt().item())


def test_float32_inputs_are_computed_in_float64() -> None:
    mean, var, target = (x.float() for x in make_regression(500, seed=5))
    expected = -scipy.stats.norm.logpdf(
        target.double().numpy(), mean.double().numpy(), np.sqrt(var.double().numpy())
    ).mean()
    assert gaussian_nll(mean, var, target) == pytest.approx(expected, rel=1e-12)


def test_invalid_inputs() -> None:
    x = torch.zeros(4)
    with pytest.raises(ValueError, match=r"var must be > 0.*got 0"):
        gaussian_nll(x, torch.zeros(4), x)
    with pytest.raises(
        ValueError, match=r"mean of shape \(3,\) does not broadcast to the target shape \(4,\)"
    ):
        rmse(torch.zeros(3), x)
    with pytest.raises(ValueError, match=r"var of shape \(2, 4\) does not broadcast"):
        interval_coverage(x, torch.ones(2, 4), x)
    with pytest.raises(ValueError, match="target contains NaN or inf"):
        rmse(x, torch.tensor([0.0, float("inf"), 0.0, 0.0]))
    with pytest.raises(TypeError, match="floating-point"):
        rmse(torch.zeros(4, dtype=torch.int64), x)
    with pytest.raises(ValueError, match="non-empty"):
        rmse(torch.zeros(0), torch.zeros(0))
    for levels in ((), (0.5, 1.0), (0.0,)):
        with pytest.raises(ValueError, match="levels must be a non-empty sequence"):
            interval_coverage(x, torch.ones(4), x, levels=levels)


@pytest.mark.parametrize(("s", "n"), [(1, 7), (5, 1), (30, 200)])
def test_gaussian_mixture_nll_matches_scipy(s: int, n: int, device: torch.device) -> None:
    g = torch.Generator().manual_seed(s * 1000 + n)
    means = 3.0 * torch.randn(s, n, generator=g, dtype=torch.float64)
    variances = 0.05 + torch.rand(s, n, generator=g, dtype=torch.float64)
    target = torch.randn(n, generator=g, dtype=torch.float64) * 3.0
    density = scipy.stats.norm.pdf(target.numpy(), means.numpy(), np.sqrt(variances.numpy()))
    expected = -np.log(density.mean(axis=0)).mean()  # plain float64 loop over components
    result = gaussian_mixture_nll(means.to(device), variances.to(device), target.to(device))
    assert result == pytest.approx(expected, rel=1e-10)


def test_gaussian_mixture_nll_of_one_component_is_gaussian_nll() -> None:
    mean, var, target = make_regression(50, seed=3)
    expected = gaussian_nll(mean, var, target)
    assert gaussian_mixture_nll(mean[None], var[None], target) == pytest.approx(expected, rel=1e-12)


def test_gaussian_mixture_nll_far_tail_is_finite() -> None:
    # every component gives density ~exp(-5000): a log-sum-exp keeps it finite, a naive mean of
    # densities would underflow to log(0) = -inf
    means = torch.zeros(3, 1, dtype=torch.float64)
    result = gaussian_mixture_nll(
        means, torch.full((3, 1), 0.01, dtype=torch.float64), torch.tensor([10.0])
    )
    assert result == pytest.approx(0.5 * math.log(2 * math.pi * 0.01) + 100.0 / 0.02, rel=1e-12)


def test_gaussian_mixture_nll_needs_a_sample_dimension() -> None:
    mean, var, target = make_regression(5, seed=0)
    with pytest.raises(ValueError, match=r"leading sample dimension.*use gaussian_nll"):
        gaussian_mixture_nll(mean, var, target)
    with pytest.raises(ValueError, match="variances must be > 0"):
        gaussian_mixture_nll(mean[None], torch.zeros(1, 5), target)


def test_gaussian_mixture_nll_rejects_non_tensors() -> None:
    with pytest.raises(TypeError, match=r"means must be a torch\.Tensor, got list"):
        gaussian_mixture_nll([[0.0]], torch.ones(1, 1), torch.zeros(1))  # type: ignore[arg-type]

"""SWAGPosterior: covariance, density and samples against dense float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from swag import Collector, SWAGPosterior
from tests.reference import random_walk, swag_covariance


def small_posterior(
    steps: int = 8, max_rank: int = 4, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[SWAGPosterior, nn.Module]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)).to(dtype)  # P = 14
    collector = Collector(model, max_rank=max_rank, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        random_walk(model, 1, g, step_size=0.3)
        collector.collect()
    return collector.posterior(), model


def dense(post: SWAGPosterior, scale: float, diagonal: bool = False) -> np.ndarray:
    return swag_covariance(
        post.variance.double().numpy(), post.deviations.double().numpy(), scale, diagonal
    )


@pytest.mark.parametrize("scale", [0.5, 1.0])
@pytest.mark.parametrize("diagonal", [False, True])
def test_distribution_covariance_matches_formula(scale: float, diagonal: bool) -> None:
    post, _ = small_posterior()
    dist = post.to_distribution(scale=scale, diagonal=diagonal)
    np.testing.assert_allclose(
        dist.covariance_matrix.numpy(), dense(post, scale, diagonal), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(dist.mean.numpy(), post.mean.numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("steps", [1, 2, 3, 9])  # K = 1 (no low-rank term), 2, 3, full ring
def test_low_rank_uses_deviations_actually_stored(steps: int) -> None:
    post, _ = small_posterior(steps=steps, max_rank=4)
    assert post.rank == min(steps, 4)
    d = post.deviations.numpy()
    expected = np.diag(post.variance.numpy())
    if post.rank >= 2:
        expected = expected + d.T @ d / (post.rank - 1)  # K − 1 with K = stored, not max_rank
    np.testing.assert_allclose(
        post.to_distribution(scale=1.0).covariance_matrix.numpy(), expected, rtol=1e-12, atol=1e-15
    )


def test_log_prob_matches_scipy() -> None:
    post, _ = small_posterior(steps=10)
    g = torch.Generator().manual_seed(3)
    theta = post.sample(5, generator=g)
    ref = stats.multivariate_normal(post.mean.numpy(), dense(post, 0.5)).logpdf(theta.numpy())
    np.testing.assert_allclose(post.log_prob(theta).numpy(), ref, rtol=1e-9)


def test_sample_moments_within_monte_carlo_error() -> None:
    post, _ = small_posterior(steps=10)
    cov = dense(post, 0.5)
    n = 100_000
    x = post.sample(n, generator=torch.Generator().manual_seed(0)).numpy()
    # Mean: each coordinate's standard error is sqrt(Σ_jj / n); allow 5 of them.
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - post.mean.numpy()) < 5 * se)
    # Covariance: Var(x_i x_j) = Σ_ii Σ_jj + Σ_ij² for Gaussians; allow 5 standard errors.
    emp = np.cov(x, rowvar=False)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(emp - cov) < 5 * se_cov)


def test_blockwise_covariance_is_block_diagonal_low_rank() -> None:
    post, _ = small_posterior(steps=10)
    x = post.sample(100_000, blockwise=True, generator=torch.Generator().manual_seed(1)).numpy()
    d, k = post.deviations.numpy(), post.rank
    cov = np.diag(post.variance.numpy())
    for o, m in zip(post.layout.offsets, post.layout.numels, strict=True):
        blk = d[:, o : o + m]
        cov[o : o + m, o : o + m] += blk.T @ blk / (k - 1)
    cov *= 0.5
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / len(x))
    assert np.all(np.abs(np.cov(x, rowvar=False) - cov) < 5 * se_cov)


def test_sampling_formula_pinned() -> None:
    # θ = θ̄ + √scale (σ ⊙ z1 + Dᵀ z2 / √(K−1)); z2 is drawn before z1 from the generator.
    post, _ = small_posterior(steps=10)
    scale = 0.3
    g = torch.Generator().manual_seed(7)
    z2 = torch.randn(1, 1, post.rank, generator=g, dtype=torch.float64)[0, 0]
    z1 = torch.randn(1, post.layout.size, generator=g, dtype=torch.float64)[0]
    expected = post.mean + math.sqrt(scale) * (
        post.std * z1 + post.deviations.t() @ z2 / math.sqrt(post.rank - 1)
    )
    got = post.sample(scale=scale, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_same_seed_same_samples_and_shapes() -> None:
    post, _ = small_posterior(dtype=torch.float32)
    a = post.sample((2, 3), generator=torch.Generator().manual_seed(5))
    b = post.sample((2, 3), generator=torch.Generator().manual_seed(5))
    c = post.sample((2, 3), generator=torch.Generator().manual_seed(6))
    assert a.shape == (2, 3, post.layout.size)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert post.sample().shape == (post.layout.size,)


def test_scale_zero_gives_the_mean() -> None:
    post, _ = small_posterior()
    assert torch.equal(post.sample(scale=0.0), post.mean)


def test_apply_and_to_model_write_parameters() -> None:
    post, model = small_posterior()
    theta = post.sample(generator=torch.Generator().manual_seed(0))
    copy = post.to_model(model, theta)
    flat = torch.cat([p.detach().reshape(-1) for p in copy.parameters()])
    assert torch.equal(flat, theta)
    assert copy is not model
    swa = post.to_model(model)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in swa.parameters()]), post.mean)
    post.apply_(model, theta)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), theta)


def test_subset_posterior_leaves_other_parameters_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    collector = Collector(model, max_rank=2, params="1")
    collector.collect()
    first = model[0].weight.detach().clone()
    sampled = collector.posterior().to_model(model, collector.posterior().sample(scale=1.0))
    assert torch.equal(sampled[0].weight, first)


def test_to_device_and_dtype(device: torch.device) -> None:
    post, _ = small_posterior()
    moved = post.to(device, torch.float32)
    assert moved.mean.device.type == device.type and moved.deviations.dtype == torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    assert moved.sample(3, generator=g).shape == (3, post.layout.size)


def test_errors() -> None:
    post, model = small_posterior()
    with pytest.raises(ValueError, match="scale must be >= 0"):
        post.sample(scale=-1.0)
    with pytest.raises(ValueError, match="scale must be > 0 for a proper distribution"):
        post.to_distribution(scale=0.0)
    with pytest.raises(ValueError, match=r"theta must have shape \(14,\), got \(13,\)"):
        post.apply_(model, torch.zeros(13, dtype=torch.float64))
    zero = SWAGPosterior(post.mean, torch.zeros_like(post.std), post.deviations, post.layout, 3)
    with pytest.raises(ValueError, match="some variances are 0"):
        zero.log_prob(post.mean)
    with pytest.raises(ValueError, match=r"mean and std must have shape \(14,\)"):
        SWAGPosterior(post.mean[:3], post.std, post.deviations, post.layout, 3)
    with pytest.raises(ValueError, match=r"deviations must have shape \(K, 14\)"):
        SWAGPosterior(post.mean, post.std, post.deviations[:, :3], post.layout, 3)


def test_zero_dim_parameters_are_sampled_and_written_back() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.tensor(1.5))  # 0-dim: shape ()
            self.linear = nn.Linear(2, 2)

    model = Scaled()
    collector = Collector(model, max_rank=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        collector.collect()
    post = collector.posterior()
    theta = post.sample(generator=torch.Generator().manual_seed(1))
    copy = post.to_model(model, theta)
    assert copy.gain.shape == () and copy.gain.item() == theta[0].item()  # own params come first
    assert torch.equal(copy.linear.weight.flatten(), theta[1:5])

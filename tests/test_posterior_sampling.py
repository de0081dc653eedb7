"""Sampling arguments: scale (refused when non-finite or negative; its per-mode default),
sample_shape, and MultiSWAG's random remainder (issue 10, items 3, 8, 10 and 12)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor, nn

from swag import Collector, MultiSWAG, ParamLayout, PointPosterior, SWAGPosterior, predict
from tests.reference import random_walk, swag_covariance


def swag_post(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[SWAGPosterior, nn.Module]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)  # P = 26
    collector = Collector(model, max_rank=4, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    for _ in range(8):
        random_walk(model, 1, g, step_size=0.3)
        collector.collect()
    return collector.posterior(), model


def callers() -> dict[str, Callable[..., Any]]:
    """Every public entry point that takes a scale, as ``f(scale=..., diagonal=...)``."""
    post, model = swag_post()
    point = PointPosterior.from_model(model)
    mix = MultiSWAG([post, swag_post(1)[0]])
    xs = [torch.randn(5, 3, dtype=torch.float64)]
    return {
        "SWAGPosterior.sample": post.sample,
        "SWAGPosterior.to_distribution": post.to_distribution,
        "SWAGPosterior.log_prob": lambda **kw: post.log_prob(post.mean, **kw),
        "PointPosterior.sample": point.sample,
        "MultiSWAG.sample": mix.sample,
        "predict": lambda **kw: predict(post, model, xs, num_samples=2, **kw),
    }


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.5, np.float32("nan")])
@pytest.mark.parametrize("caller", list(callers()))
def test_non_finite_or_negative_scale_is_refused_everywhere(caller: str, bad: float) -> None:
    with pytest.raises(ValueError, match=r"scale must be >= 0 and finite, got"):
        callers()[caller](scale=bad)


@pytest.mark.parametrize("bad", ["0.5", True, torch.tensor(0.5), [0.5]])
def test_a_scale_that_is_not_a_real_number_is_a_type_error(bad: object) -> None:
    for name, call in callers().items():
        with pytest.raises(TypeError, match="scale must be a real number"):
            call(scale=bad)
        assert name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-6, 0.01, 0.5, 1.0, 3.0, 1e3])
@pytest.mark.parametrize("diagonal", [False, True])
def test_to_distribution_with_a_valid_scale_factors_and_matches_the_dense_covariance(
    dtype: torch.dtype, scale: float, diagonal: bool
) -> None:
    post, _ = swag_post(dtype=dtype)
    dist = post.to_distribution(scale=scale, diagonal=diagonal)
    expected = swag_covariance(
        post.variance.double().numpy(), post.deviations.double().numpy(), scale, diagonal
    )
    # float32: the statistics and the factor are rounded to 2^-24 relative; 1e-5 is ~100 ulp
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(
        dist.covariance_matrix.double().numpy(), expected, rtol=rtol, atol=rtol * expected.max()
    )
    theta = post.sample((4,), scale=scale, diagonal=diagonal)
    want = stats.multivariate_normal(post.mean.double().numpy(), expected).logpdf(
        theta.double().numpy()
    )
    got = post.log_prob(theta, scale=scale, diagonal=diagonal).double().numpy()
    # the log-density is O(P · |log scale|); float32 keeps ~1e-6 of it relative
    np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == torch.float32 else 1e-9)


def test_scale_zero_samples_the_mean_but_has_no_density() -> None:
    post, _ = swag_post()
    assert torch.equal(post.sample(scale=0), post.mean)
    with pytest.raises(ValueError, match="point mass at the mean"):
        post.to_distribution(scale=0.0)
    with pytest.raises(ValueError, match="point mass at the mean"):
        post.log_prob(post.mean, scale=0.0)


@pytest.mark.parametrize(("std", "dev"), [(1e-15, 1e3), (1e-20, 1.0), (1.0, 1e18)])
@pytest.mark.parametrize("scale", [1e-30, 1e-6, 0.5, 1e30])
def test_extreme_statistics_give_a_density_or_a_clear_value_error(
    std: float, dev: float, scale: float
) -> None:
    """float32 statistics far outside its range: never a Cholesky error, never a NaN density."""
    layout = ParamLayout.from_model(nn.Linear(20, 10))
    g = torch.Generator().manual_seed(0)
    size = layout.size
    post = SWAGPosterior(
        torch.zeros(size),
        torch.full((size,), std),
        torch.randn(5, size, generator=g) * dev,
        layout,
        n=10,
    )
    try:
        log_p = post.log_prob(post.sample(scale=scale, generator=g), scale=scale)
    except ValueError as err:
        assert "float64" in str(err), "the message must name the fix"
        assert "cholesky" not in str(err).lower()
    else:
        assert not bool(torch.isnan(log_p))


# item 12: the default scale follows the mode --------------------------------------------------


def test_default_scale_is_half_for_swag_and_one_for_swag_diag() -> None:
    post, model = swag_post()
    for diagonal, scale in ((False, 0.5), (True, 1.0)):
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        torch.testing.assert_close(
            post.sample((3,), diagonal=diagonal, generator=g1),
            post.sample((3,), scale=scale, diagonal=diagonal, generator=g2),
            rtol=0,
            atol=0,
        )
        default = post.to_distribution(diagonal=diagonal).covariance_matrix
        explicit = post.to_distribution(scale=scale, diagonal=diagonal).covariance_matrix
        torch.testing.assert_close(default, explicit, rtol=0, atol=0)
        xs = [torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)]
        view = post.diagonal() if diagonal else post
        torch.testing.assert_close(
            predict(view, model, xs, num_samples=3, generator=g1),
            predict(view, model, xs, num_samples=3, scale=scale, generator=g2),
            rtol=0,
            atol=0,
        )
    mix = MultiSWAG([post, post])
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    torch.testing.assert_close(
        mix.diagonal().sample((4,), generator=g1),
        mix.diagonal().sample((4,), scale=1.0, generator=g2),
        rtol=0,
        atol=0,
    )


def test_swag_diag_default_variance_is_sigma_squared() -> None:
    """Empirical variance of SWAG-Diag default draws is σ² (scale 1), not σ²/2."""
    post, _ = swag_post()
    draws = post.sample((20000,), diagonal=True, generator=torch.Generator().manual_seed(0))
    ratio = draws.var(0) / post.variance
    # var of a sample variance over n = 20000 normals: 2/n, so each ratio has sd 0.01; the
    # mean of 26 of them has sd 0.002, and 0.5 (the old default) is 250 sd away
    assert abs(float(ratio.mean()) - 1.0) < 0.01


# item 10: sample_shape ------------------------------------------------------------------------


def samplers() -> dict[str, Callable[..., Tensor]]:
    post, model = swag_post()
    return {
        "SWAGPosterior": post.sample,
        "PointPosterior": PointPosterior.from_model(model).sample,
        "MultiSWAG": MultiSWAG([post, post]).sample,
    }


@pytest.mark.parametrize("sampler", list(samplers()))
def test_numpy_integers_are_accepted_as_sample_shape(sampler: str) -> None:
    draw = samplers()[sampler]
    assert draw(np.int64(3)).shape[:-1] == (3,)
    assert draw((np.int32(2), np.int64(2))).shape[:-1] == (2, 2)
    assert draw(np.array(2)).shape[:-1] == (2,)
    assert draw(torch.Size([2, 1])).shape[:-1] == (2, 1)


@pytest.mark.parametrize("sampler", list(samplers()))
@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (-1, ValueError),
        ((2, -3), ValueError),
        (np.int64(-2), ValueError),
        (2.0, TypeError),
        ((2, 1.5), TypeError),
        ("3", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_bad_sample_shapes_are_refused(sampler: str, bad: object, error: type) -> None:
    with pytest.raises(error, match="sample_shape"):
        samplers()[sampler](bad)


# item 8: MultiSWAG's remainder draws pick members at random ---------------------------------


def test_single_draws_cover_every_member_uniformly() -> None:
    """``sample()`` of M = 3 members, 3000 times from one generator: counts ~ Multinomial(1/3).

    Pearson's X² has 2 degrees of freedom, P(X² > 27.6) = exp(-13.8) = 1e-6 under uniformity,
    so the bound is not flaky for any seed; always member 0 (the old behaviour) gives X² = 6000.
    """
    members = [PointPosterior.from_model(nn.Linear(3, 2)) for _ in range(3)]
    mix = MultiSWAG(members)
    g = torch.Generator().manual_seed(0)
    n = 3000
    counts = np.zeros(3)
    for _ in range(n):
        draw = mix.sample(generator=g)
        counts[next(i for i, m in enumerate(members) if torch.equal(draw, m.mean))] += 1
    chi2 = float(((counts - n / 3) ** 2 / (n / 3)).sum())
    assert chi2 < 27.6, counts


def test_remainder_of_two_over_three_picks_distinct_members_two_thirds_each() -> None:
    """S = 2 over M = 3: each member is in a draw with probability 2/3, never twice.

    Over 1500 calls each member's count is Binomial(1500, 2/3): sd = √(1500·2/9) = 18.3; the
    bound of 5 sd (92) fails with probability < 1e-6 per member.
    """
    members = [PointPosterior.from_model(nn.Linear(3, 2)) for _ in range(3)]
    mix = MultiSWAG(members)
    g = torch.Generator().manual_seed(1)
    n = 1500
    counts = np.zeros(3)
    for _ in range(n):
        drawn = [
            next(i for i, m in enumerate(members) if torch.equal(d, m.mean))
            for d in mix.sample((2,), generator=g)
        ]
        assert len(set(drawn)) == 2 and drawn == sorted(drawn)
        counts[drawn] += 1
    assert np.all(np.abs(counts - n * 2 / 3) < 5 * math.sqrt(n * 2 / 9)), counts


def test_looping_over_single_draws_averages_the_whole_mixture() -> None:
    """The natural Posterior-protocol loop: mean of 600 ``sample()`` ≈ the mixture mean."""
    members = [PointPosterior.from_model(nn.Linear(3, 2)) for _ in range(4)]
    mix = MultiSWAG(members)
    g = torch.Generator().manual_seed(2)
    avg = torch.stack([mix.sample(generator=g) for _ in range(600)]).mean(0)
    spread = torch.stack([m.mean for m in members]).std(0)
    # each entry: mean of 600 draws from 4 values, sd = spread·√(3/4)/√600 ≤ 0.036·spread
    assert bool(((avg - mix.mean).abs() <= 5 * 0.036 * spread + 1e-6).all())

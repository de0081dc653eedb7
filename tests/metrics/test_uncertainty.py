"""Entropy, mutual information and max probability against naive float64 loops and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from swag.metrics import expected_entropy, max_probability, mutual_information, predictive_entropy


def make_samples(s: int, n: int, c: int, seed: int) -> torch.Tensor:
    """``(S, N, C)`` per-sample probabilities that disagree more on some inputs than others."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, n, c, generator=g, dtype=torch.float64)
    spread = torch.rand(1, n, 1, generator=g, dtype=torch.float64) * 3.0
    noise = torch.randn(s, n, c, generator=g, dtype=torch.float64)
    return torch.softmax(2.0 * shared + spread * noise, dim=-1)


def naive_entropy(p: np.ndarray) -> float:
    return -sum(float(x) * math.log(float(x)) for x in p if x > 0)


SHAPES = [(1, 1, 2), (5, 3, 4), (30, 100, 10)]


@pytest.mark.parametrize(("s", "n", "c"), SHAPES)
def test_decomposition_matches_naive_loops(s: int, n: int, c: int, device: torch.device) -> None:
    probs = make_samples(s, n, c, seed=s * n * c)
    p = probs.numpy()
    total = np.array([naive_entropy(p[:, i].mean(axis=0)) for i in range(n)])
    aleatoric = np.array([np.mean([naive_entropy(p[k, i]) for k in range(s)]) for i in range(n)])
    probs = probs.to(device)
    for fn, expected in (
        (predictive_entropy, total),
        (expected_entropy, aleatoric),
        (mutual_information, np.maximum(total - aleatoric, 0.0)),
        (max_probability, p.mean(axis=0).max(axis=-1)),
    ):
        result = fn(probs)
        assert result.shape == (n,) and result.dtype == torch.float64
        assert result.device.type == device.type
        np.testing.assert_allclose(result.cpu().numpy(), expected, rtol=1e-12, atol=1e-13)


def test_entropy_matches_scipy() -> None:
    probs = make_samples(4, 50, 6, seed=1)
    expected = scipy.stats.entropy(probs.mean(0).numpy(), axis=-1)
    np.testing.assert_allclose(predictive_entropy(probs).numpy(), expected, rtol=1e-12)
    expected_each = scipy.stats.entropy(probs.numpy(), axis=-1).mean(axis=0)
    np.testing.assert_allclose(expected_entropy(probs).numpy(), expected_each, rtol=1e-12)


def test_mutual_information_is_nonnegative_and_bounded() -> None:
    probs = make_samples(20, 500, 5, seed=2)
    mi = mutual_information(probs)
    assert (mi >= 0).all() and (mi <= math.log(5) + 1e-12).all()
    assert mi.max() > 0.1  # the samples do disagree


def test_agreeing_samples_have_zero_mutual_information() -> None:
    one = make_samples(1, 40, 7, seed=3)
    probs = one.expand(8, 40, 7)
    mi = mutual_information(probs)
    assert (mi >= 0).all() and (mi < 1e-14).all()  # zero up to the rounding of the mean
    torch.testing.assert_close(predictive_entropy(probs), expected_entropy(probs))


def test_one_hot_and_uniform_extremes() -> None:
    one_hot = torch.eye(3).expand(4, 3, 3)
    assert torch.equal(predictive_entropy(one_hot), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(max_probability(one_hot), torch.ones(3, dtype=torch.float64))
    uniform = torch.full((2, 5, 4), 0.25)
    torch.testing.assert_close(
        predictive_entropy(uniform), torch.full((5,), math.log(4), dtype=torch.float64)
    )
    # Confident samples that disagree completely: all the uncertainty is epistemic.
    disagree = torch.eye(2)[:, None, :]  # (S=2, N=1, C=2)
    torch.testing.assert_close(
        mutual_information(disagree), torch.tensor([math.log(2)], dtype=torch.float64)
    )


def test_averaged_input_equals_single_sample() -> None:
    probs = make_samples(6, 20, 3, seed=4)
    mean = probs.mean(0)
    torch.testing.assert_close(
        predictive_entropy(mean), predictive_entropy(probs), rtol=1e-14, atol=1e-14
    )
    torch.testing.assert_close(
        max_probability(mean), max_probability(probs), rtol=1e-14, atol=1e-14
    )


def test_float32_input_is_computed_in_float64() -> None:
    probs = make_samples(3, 10, 4, seed=5).to(torch.float32)
    expected = [naive_entropy(row) for row in probs.to(torch.float64).mean(0).numpy()]
    np.testing.assert_allclose(predictive_entropy(probs).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("fn", "probs", "match"),
    [
        (expected_entropy, torch.full((3, 2), 0.5), r"shape \(S, N, C\), got \(3, 2\)"),
        (mutual_information, torch.full((3, 2), 0.5), r"shape \(S, N, C\)"),
        (predictive_entropy, torch.full((2,), 0.5), r"\(N, C\) or \(S, N, C\)"),
        (max_probability, torch.full((1, 1, 1, 2), 0.5), r"\(N, C\) or \(S, N, C\)"),
        (predictive_entropy, torch.full((2, 3, 2), 0.6), "sum to 1"),
        (mutual_information, torch.full((2, 3, 2), -0.5), r"\[0, 1\]"),
    ],
)
def test_invalid_inputs(fn: object, probs: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(probs)  # type: ignore[operator]

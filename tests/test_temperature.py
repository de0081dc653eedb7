"""Temperature scaling: recovering a known T, lowering NLL, agreeing with a brute-force grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from swag.evaluation.temperature import apply_temperature, fit_temperature
from swag.metrics import nll


def sample_labels(logits: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.multinomial(torch.softmax(logits, dim=1), 1, generator=g).squeeze(1)


def numpy_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_recovers_known_temperature(t_true: float, device: torch.device) -> None:
    # N = 200k labels from softmax(z / T): the MLE's standard error is about 0.4% of T here,
    # so a 2% tolerance is five standard errors.
    g = torch.Generator().manual_seed(int(10 * t_true))
    z = 3.0 * torch.randn(200_000, 10, generator=g)
    y = sample_labels(z / t_true, g)
    assert fit_temperature(z.to(device), y.to(device)) == pytest.approx(t_true, rel=0.02)


def test_lowers_nll_of_an_overconfident_model() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5000, 5, generator=g, dtype=torch.float64)
    y = sample_labels(z, g)
    overconfident = 3.0 * z
    t = fit_temperature(overconfident, y)
    before = nll(overconfident.softmax(1), y)
    after = nll(apply_temperature(overconfident, t).softmax(1), y)
    assert t > 2.0 and after < before - 0.1


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_matches_brute_force_grid(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(400, 4, generator=g, dtype=torch.float64)
    y = sample_labels(z / (0.5 + seed / 2), g)
    zn, yn = z.numpy(), y.numpy()
    log_grid = np.linspace(math.log(0.05), math.log(20.0), 4001)
    losses = [numpy_nll(zn, yn, math.exp(u)) for u in log_grid]
    best = int(np.argmin(losses))
    t = fit_temperature(z, y)
    assert abs(math.log(t) - log_grid[best]) <= log_grid[1] - log_grid[0]
    assert numpy_nll(zn, yn, t) <= losses[best] + 1e-12


def test_averaged_logits_with_zero_probabilities() -> None:
    # log of BMA probabilities with an impossible class: -inf there. A class of probability 0 at
    # every T changes nothing, so the fit equals the fit with that class removed.
    g = torch.Generator().manual_seed(5)
    members = torch.softmax(2.0 * torch.randn(8, 1000, 4, generator=g, dtype=torch.float64), -1)
    bma = members.mean(0)
    y = sample_labels(bma.log(), g)
    log_bma = torch.cat([bma.log(), torch.full((1000, 1), -math.inf, dtype=torch.float64)], 1)
    t = fit_temperature(log_bma, y)
    assert t == pytest.approx(fit_temperature(bma.log(), y), rel=1e-9)
    assert torch.isfinite(apply_temperature(log_bma, t).softmax(1)).all()


def test_deterministic_and_order_invariant() -> None:
    g = torch.Generator().manual_seed(6)
    z = torch.randn(3000, 6, generator=g)
    y = sample_labels(1.7 * z, g)
    t = fit_temperature(z, y)
    assert fit_temperature(z, y) == t
    perm = torch.randperm(3000, generator=g)
    assert fit_temperature(z[perm], y[perm]) == pytest.approx(t, rel=1e-9)
    assert fit_temperature(z.double(), y) == pytest.approx(t, rel=1e-9)


def test_flat_logits_give_one() -> None:
    z = torch.arange(5.0)[:, None].expand(5, 3)  # each row constant
    assert fit_temperature(z, torch.tensor([0, 1, 2, 0, 1])) == 1.0


def test_optimum_outside_bounds_warns_and_returns_the_bound() -> None:
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 3, (100,), generator=g)
    separable = 5.0 * torch.nn.functional.one_hot(y, 3).float()
    with pytest.warns(RuntimeWarning, match="lower bound T=0.01.*separable"):
        assert fit_temperature(separable, y) == 0.01
    unrelated = 5.0 * torch.randn(2000, 3, generator=g)
    labels = torch.randint(0, 3, (2000,), generator=g)
    with pytest.warns(RuntimeWarning, match="upper bound T=1.5"):
        assert fit_temperature(unrelated, labels, bounds=(0.1, 1.5)) == 1.5


def test_not_converging_warns() -> None:
    g = torch.Generator().manual_seed(8)
    z = torch.randn(500, 4, generator=g)
    y = sample_labels(4.0 * z, g)
    with pytest.warns(RuntimeWarning, match="did not converge in max_iter=1"):
        fit_temperature(z, y, max_iter=1)


def test_apply_temperature_divides() -> None:
    z = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float16)
    out = apply_temperature(z, 2.0)
    assert out.dtype == torch.float16 and torch.equal(out, z / 2.0)


def test_invalid_inputs() -> None:
    z, y = torch.randn(4, 3, generator=torch.Generator().manual_seed(9)), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"logits\[1, targets\[1\]\] is -inf"):
        fit_temperature(torch.tensor([[0.0, 1.0], [0.0, -math.inf]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        fit_temperature(torch.tensor([[0.0, math.nan]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"shape \(N, C\), got \(4,\)"):
        fit_temperature(z[:, 0], y)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\]"):
        fit_temperature(z, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="bounds must satisfy"):
        fit_temperature(z, y, bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1, got 0"):
        fit_temperature(z, y, max_iter=0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        fit_temperature(z, y, tol=0.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature must be finite and > 0"):
            apply_temperature(z, bad)
    with pytest.raises(TypeError, match="floating-point"):
        apply_temperature(torch.ones(2, dtype=torch.int64), 1.0)


def test_probabilities_instead_of_logits_warn() -> None:
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randint(4, (50,), generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="probabilities, not logits"):
        fit_temperature(z.softmax(-1), y)

"""Regression metrics for Gaussian predictive distributions ``N(mean, var)``.

``mean`` and ``var`` broadcast to the shape of ``target`` (a scalar ``var`` is a homoscedastic
noise level); every element counts as one observation. Computed in float64, returned as floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from swag.evaluation.metrics._validation import check_float, is_real

__all__ = ["gaussian_mixture_nll", "gaussian_nll", "interval_coverage", "rmse"]


def gaussian_nll(mean: Tensor, var: Tensor, target: Tensor) -> float:
    """Mean Gaussian negative log-likelihood in nats, constant included.

    ``1/N sum_i [log(2 pi var_i) + (y_i - mean_i)^2 / var_i] / 2``.

    Args:
        mean: Predictive means, broadcastable to ``target.shape``.
        var: Predictive variances (not standard deviations), > 0, broadcastable to ``target.shape``.
        target: Observed values, any shape.
    """
    y = check_float(target, "target")
    mu, v = _check_like("mean", mean, y), _check_var(var, y)
    return (0.5 * (torch.log(2.0 * math.pi * v) + (y - mu).square() / v)).mean().item()


def gaussian_mixture_nll(means: Tensor, variances: Tensor, target: Tensor) -> float:
    """Mean negative log-likelihood in nats of an equal-weight mixture of S Gaussians per target.

    ``-1/N sum_i log(1/S sum_s N(y_i; mean_si, var_si))``, the score of sampled predictions
    (``predict(..., output="gaussian", reduce=False)``) used by the SWAG paper's regression code.
    It differs from :func:`gaussian_nll` of the moment-matched Gaussian (the reduced output of
    ``predict``) because a mixture has heavier tails; for S = 1 the two are equal.

    Args:
        means: ``(S, *target.shape)`` means of the S components (or broadcastable to it).
        variances: ``(S, *target.shape)`` variances, > 0 (or broadcastable to it).
        target: Observed values, any shape.
    """
    y = check_float(target, "target")
    check_float(means, "means")
    if means.dim() <= y.dim():
        raise ValueError(
            f"means must have a leading sample dimension: shape (S, {', '.join(map(str, y.shape))})"
            f", got {tuple(means.shape)}; for one Gaussian per target use gaussian_nll"
        )
    shape = (means.shape[0], *y.shape)
    mu = _check_like("means", means, y.expand(shape))
    v = _check_var(variances, mu, "variances")
    log_p = -0.5 * (torch.log(2.0 * math.pi * v) + (y - mu).square() / v)
    log_mixture = log_p.logsumexp(0) - math.log(shape[0])
    return -log_mixture.mean().item()


def rmse(mean: Tensor, target: Tensor) -> float:
    """Root mean squared error ``sqrt(1/N sum_i (y_i - mean_i)^2)``, in the units of ``target``.

    Args:
        mean: Predictions, broadcastable to ``target.shape``.
        target: Observed values, any shape.
    """
    y = check_float(target, "target")
    mu = _check_like("mean", mean, y)
    return (y - mu).square().mean().sqrt().item()


def interval_coverage(
    mean: Tensor, var: Tensor, target: Tensor, levels: Sequence[float] = (0.5, 0.9, 0.95)
) -> dict[float, float]:
    """Fraction of targets inside the central Gaussian interval of each level.

    The level-``a`` interval is ``mean +- z * sqrt(var)`` with ``z = Phi^-1((1 + a) / 2)``
    (boundaries included); a calibrated model covers a fraction ``a``.

    Args:
        mean: Predictive means, broadcastable to ``target.shape``.
        var: Predictive variances, > 0, broadcastable to ``target.shape``.
        target: Observed values, any shape.
        levels: Nominal coverage levels, each in ``(0, 1)``.

    Returns:
        ``{level: empirical coverage}``.

    Example:
        >>> interval_coverage(torch.zeros(4), torch.ones(4), torch.tensor([0.1, -0.5, 1.0, 3.0]))
        {0.5: 0.5, 0.9: 0.75, 0.95: 0.75}
    """
    if (
        isinstance(levels, (str, bytes))
        or not isinstance(levels, Sequence)
        or not all(is_real(a) for a in levels)
    ):
        raise TypeError(f"levels must be a non-empty sequence of numbers in (0, 1), got {levels!r}")
    if len(levels) == 0 or any(not 0.0 < a < 1.0 for a in levels):
        raise ValueError(f"levels must be a non-empty sequence of values in (0, 1), got {levels}")
    y = check_float(target, "target")
    mu, v = _check_like("mean", mean, y), _check_var(var, y)
    dist = (y - mu).abs() / v.sqrt()
    a = torch.tensor(list(levels), dtype=torch.float64, device=dist.device)
    z = torch.special.ndtri((1.0 + a) / 2.0)
    covered = (dist.reshape(-1, 1) <= z).to(torch.float64).mean(dim=0)
    return dict(zip(levels, covered.tolist(), strict=True))


def _check_var(var: Tensor, y: Tensor, name: str = "var") -> Tensor:
    v = _check_like(name, var, y)
    if (v <= 0).any():
        raise ValueError(
            f"{name} must be > 0 (variances, not log-variances), got {v.min().item():.3g}"
        )
    return v


def _check_like(name: str, x: Tensor, y: Tensor) -> Tensor:
    """Validates ``x`` and returns it as float64, expanded to the shape of the target ``y``."""
    x64 = check_float(x, name).to(y.device)
    try:
        return x64.expand_as(y)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to the target shape "
            f"{tuple(y.shape)}"
        ) from None

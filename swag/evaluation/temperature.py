"""Temperature scaling (Guo et al., 2017): one scalar ``T > 0`` fitted by NLL on held-out data.

Calibrated probabilities are ``softmax(logits / T)``; ``T > 1`` softens overconfident predictions.
For a Bayesian model average (SWAG, MultiSWAG, ensembles) pass the *averaged logits*
``log(mean_s softmax(f_s(x)))``, i.e. the log of the BMA probabilities: ``softmax(log p / T)`` is
``p^(1/T)`` renormalised. Entries of ``-inf`` (classes with probability exactly 0) are allowed,
except at the target class.

Example:
    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    >>> T = fit_temperature(logits, torch.tensor([0, 1, 1]))
    >>> probs = apply_temperature(logits, T).softmax(-1)
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from swag.evaluation.metrics._validation import (
    as_float64,
    check_targets,
    is_real,
    looks_like_probabilities,
)

__all__ = ["apply_temperature", "fit_temperature"]


def fit_temperature(
    logits: Tensor,
    targets: Tensor,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
    max_iter: int = 100,
    tol: float = 1e-10,
) -> float:
    """Temperature minimising ``NLL(T) = 1/N sum_n [logsumexp(z_n / T) - z_{n, y_n} / T]``.

    The NLL is convex in ``beta = 1/T`` with derivative ``mean_n(E_q[z_n] - z_{n, y_n})`` and
    second derivative ``mean_n Var_q[z_n]`` (``q = softmax(beta z_n)``). The root of the derivative
    is found by Newton's method safeguarded by bisection in ``log T`` inside ``bounds``: exact,
    deterministic, about ten passes over the data, computed in float64.

    Args:
        logits: ``(N, C)`` logits, or averaged logits ``log p_BMA`` (``-inf`` allowed off-target).
        targets: ``(N,)`` integer class indices.
        bounds: Search interval ``(T_min, T_max)``; if the optimum lies outside it, the nearest
            bound is returned with a ``RuntimeWarning`` (e.g. separable data drives ``T`` to 0).
        max_iter: Maximum number of Newton/bisection steps, >= 1.
        tol: Convergence tolerance on ``log T``.

    Returns:
        The fitted temperature; 1.0 when the NLL does not depend on ``T`` (constant logit rows).
    """
    wrong = f"bounds must satisfy 0 < T_min < T_max < inf (a pair of numbers), got {bounds!r}"
    if not isinstance(bounds, (tuple, list)) or not all(is_real(b) for b in bounds):
        raise TypeError(wrong)
    if len(bounds) != 2 or not 0.0 < bounds[0] < bounds[1] < math.inf:
        raise ValueError(wrong)
    t_min, t_max = bounds
    if isinstance(max_iter, bool) or not isinstance(max_iter, int):
        raise TypeError(f"max_iter must be an integer >= 1, got {type(max_iter).__name__}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not is_real(tol):
        raise TypeError(f"tol must be a real number > 0, got {type(tol).__name__} {tol!r}")
    if not 0.0 < tol < math.inf:
        raise ValueError(f"tol must be > 0 and finite, got {tol!r}")
    z, z_target = _check_logits(logits, targets)
    if looks_like_probabilities(z):
        warnings.warn(
            "fit_temperature got rows that are non-negative and sum to 1: probabilities, not "
            "logits. Pass logits, or log-probabilities (probs.log()) for an averaged prediction",
            UserWarning,
            stacklevel=2,
        )
    if _flat(z):
        return 1.0

    beta_lo, beta_hi = 1.0 / t_max, 1.0 / t_min
    if _derivatives(z, z_target, beta_hi)[0] <= 0.0:
        _warn_at_bound(t_min, "lower", "separable logits push T towards 0")
        return t_min
    if _derivatives(z, z_target, beta_lo)[0] >= 0.0:
        _warn_at_bound(t_max, "upper", "logits unrelated to the labels push T towards inf")
        return t_max
    beta = 1.0 if beta_lo < 1.0 < beta_hi else math.sqrt(beta_lo * beta_hi)
    for _ in range(max_iter):
        slope, curvature = _derivatives(z, z_target, beta)
        if slope == 0.0:
            return 1.0 / beta
        if slope > 0.0:
            beta_hi = beta
        else:
            beta_lo = beta
        newton = beta - slope / curvature if curvature > 0.0 else math.nan
        new = newton if beta_lo < newton < beta_hi else math.sqrt(beta_lo * beta_hi)
        if abs(math.log(new / beta)) < tol:
            return 1.0 / new
        beta = new
    warnings.warn(
        f"fit_temperature did not converge in max_iter={max_iter} steps; "
        f"returning T={1.0 / beta:.6g}. Increase max_iter or tol.",
        RuntimeWarning,
        stacklevel=2,
    )
    return 1.0 / beta


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Scaled logits ``logits / T`` (same shape, dtype and device); softmax them for probabilities.

    Args:
        logits: Logits or averaged logits of any shape, classes last.
        temperature: ``T > 0``, e.g. from :func:`fit_temperature`.

    Raises:
        TypeError: if ``logits`` is not a floating-point tensor.
        ValueError: for empty logits, NaN or +inf in them (-inf is allowed), or a ``temperature``
            that is not a finite number > 0.
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.numel() == 0:
        raise ValueError(f"logits must be non-empty, got shape {tuple(logits.shape)}")
    if bool(torch.isnan(logits).any()) or bool((logits == math.inf).any()):
        raise ValueError("logits contain NaN or +inf; check the model outputs")
    if not is_real(temperature):
        raise TypeError(
            f"temperature must be a real number, got {type(temperature).__name__} {temperature!r}"
        )
    if not 0.0 < temperature < math.inf:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return logits / temperature


def _check_logits(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Validates ``(N, C)`` logits and targets; returns float64 logits and the target logits."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.numel() == 0:
        raise ValueError(f"logits must have non-empty shape (N, C), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    z = as_float64(logits)
    if torch.isnan(z).any() or (z == math.inf).any():
        raise ValueError("logits contain NaN or +inf; check the model outputs")
    y = check_targets(targets, z.shape[0], z.shape[1], z.device)
    z_target = z.gather(1, y[:, None]).squeeze(1)
    if torch.isinf(z_target).any():
        n = int(torch.nonzero(torch.isinf(z_target))[0, 0])
        raise ValueError(
            f"logits[{n}, targets[{n}]] is -inf: the target class has probability 0, so the NLL is "
            "infinite at every T; clamp before the log, e.g. probs.clamp_min(1e-12).log()"
        )
    return z, z_target


def _flat(z: Tensor) -> bool:
    """True when every row's finite logits are equal, so the NLL does not depend on ``T``."""
    finite = torch.isfinite(z)
    row_max = torch.where(finite, z, -math.inf).max(dim=1).values
    row_min = torch.where(finite, z, math.inf).min(dim=1).values
    return bool((row_max == row_min).all())


def _derivatives(z: Tensor, z_target: Tensor, beta: float) -> tuple[float, float]:
    """First and second derivative of the NLL in ``beta = 1/T``."""
    q = torch.softmax(beta * z, dim=1)
    z_finite = z.nan_to_num(neginf=0.0)
    mean = (q * z_finite).sum(dim=1)
    var = (q * (z_finite - mean[:, None]).square()).sum(dim=1)
    return (mean - z_target).mean().item(), var.mean().item()


def _warn_at_bound(bound: float, side: str, hint: str) -> None:
    warnings.warn(
        f"the NLL-optimal temperature is at or beyond the {side} bound T={bound:g}; returning it. "
        f"Widen bounds=, or check the data ({hint}).",
        RuntimeWarning,
        stacklevel=3,
    )

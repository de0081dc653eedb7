"""Per-example uncertainty from the per-sample predictive probabilities of a posterior.

``probs`` has shape ``(S, N, C)``: ``S`` posterior samples (or ensemble members), ``N`` inputs,
``C`` classes. All entropies are in nats with ``0 log 0 = 0``; results are float64 tensors of shape
``(N,)`` on the device of ``probs``. Decomposition (Depeweg et al., 2018):
``predictive_entropy = expected_entropy + mutual_information``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from swag.evaluation.metrics._validation import as_float64, check_probs, is_real

__all__ = [
    "energy",
    "expected_entropy",
    "max_logit",
    "max_probability",
    "mutual_information",
    "predictive_entropy",
]


def predictive_entropy(probs: Tensor) -> Tensor:
    """Entropy of the mean prediction, ``H[p̄] = -sum_c p̄_c log p̄_c`` with ``p̄ = mean_s p_s``.

    Args:
        probs: ``(S, N, C)`` per-sample probabilities, or ``(N, C)`` already averaged ones.

    Returns:
        ``(N,)`` float64 total uncertainty, in ``[0, log C]``.
    """
    return _entropy(_mean_probs(check_probs(probs, ndims=(2, 3))))


def expected_entropy(probs: Tensor) -> Tensor:
    """Mean entropy of the samples, ``E_s[H[p_s]]`` (aleatoric part).

    Args:
        probs: ``(S, N, C)`` per-sample probabilities.

    Returns:
        ``(N,)`` float64, in ``[0, log C]``.
    """
    return _entropy(check_probs(probs, ndims=(3,))).mean(dim=0)


def mutual_information(probs: Tensor) -> Tensor:
    """Mutual information between label and parameters, ``H[p̄] - E_s[H[p_s]]`` (epistemic part).

    Non-negative by Jensen's inequality; rounding below zero is clamped to 0.

    Args:
        probs: ``(S, N, C)`` per-sample probabilities.

    Returns:
        ``(N,)`` float64, in ``[0, log C]``; 0 when all samples agree.
    """
    p = check_probs(probs, ndims=(3,))
    return (_entropy(p.mean(dim=0)) - _entropy(p).mean(dim=0)).clamp_min(0.0)


def max_probability(probs: Tensor) -> Tensor:
    """Confidence of the mean prediction, ``max_c p̄_c`` (maximum softmax probability).

    Args:
        probs: ``(S, N, C)`` per-sample probabilities, or ``(N, C)`` already averaged ones.

    Returns:
        ``(N,)`` float64, in ``[1/C, 1]``; high means confident (negate it as an OOD score).
    """
    return _mean_probs(check_probs(probs, ndims=(2, 3))).max(dim=-1).values


def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Free energy ``-T logsumexp_c(z_c / T)`` (Liu et al., 2020); higher means more OOD.

    For ``(S, N, C)`` logits of posterior samples or ensemble members it is the mean of the
    per-sample energies (the energy of the averaged probabilities, ``log p̄``, is 0 at ``T = 1``).

    Args:
        logits: ``(N, C)`` logits, or ``(S, N, C)`` per-sample logits.
        temperature: ``T > 0``.

    Returns:
        ``(N,)`` float64 energies, usable as they are as OOD scores.
    """
    if not is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    z = _check_logits(logits)
    e = -temperature * torch.logsumexp(z / temperature, dim=-1)
    return e.mean(dim=0) if z.ndim == 3 else e


def max_logit(logits: Tensor) -> Tensor:
    """Maximum logit ``max_c z_c`` (Hendrycks et al., 2022); high means confident (negate for OOD).

    Args:
        logits: ``(N, C)`` logits, or ``(S, N, C)`` per-sample logits (averaged over samples).

    Returns:
        ``(N,)`` float64.
    """
    m = _check_logits(logits).max(dim=-1).values
    return m.mean(dim=0) if m.ndim == 2 else m


def _check_logits(logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim not in (2, 3) or logits.numel() == 0:
        raise ValueError(
            f"logits must be a non-empty (N, C) or (S, N, C) tensor, got {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    z = as_float64(logits)
    if not torch.isfinite(z).all():
        raise ValueError("logits contains NaN or inf; check the model outputs")
    return z


def _mean_probs(p: Tensor) -> Tensor:
    return p.mean(dim=0) if p.ndim == 3 else p


def _entropy(p: Tensor) -> Tensor:
    return -torch.xlogy(p, p).sum(dim=-1)

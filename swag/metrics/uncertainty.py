"""Per-example uncertainty from the per-sample predictive probabilities of a posterior.

``probs`` has shape ``(S, N, C)``: ``S`` posterior samples (or ensemble members), ``N`` inputs,
``C`` classes. All entropies are in nats with ``0 log 0 = 0``; results are float64 tensors of shape
``(N,)`` on the device of ``probs``. Decomposition (Depeweg et al., 2018):
``predictive_entropy = expected_entropy + mutual_information``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from swag.metrics._validation import check_probs

__all__ = ["expected_entropy", "max_probability", "mutual_information", "predictive_entropy"]


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


def _mean_probs(p: Tensor) -> Tensor:
    return p.mean(dim=0) if p.ndim == 3 else p


def _entropy(p: Tensor) -> Tensor:
    return -torch.xlogy(p, p).sum(dim=-1)

"""Selective prediction: risk-coverage curves, AURC, AUGRC and selective accuracy.

A selective classifier predicts ``argmax_c probs[n, c]`` when its confidence ``kappa_n`` reaches a
threshold and abstains otherwise. ``kappa`` defaults to the maximum softmax probability; pass any
``(N,)`` score with **higher = more confident** as ``confidence=`` (e.g. ``-mutual_information``).
The loss is the 0/1 error of the prediction. Tied confidences are accepted or rejected together
(one threshold per distinct value), so no result depends on the input order. Definitions:
``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from swag.evaluation.metrics._validation import as_float64, check_classification, is_real

__all__ = ["RiskCoverage", "augrc", "aurc", "risk_coverage_curve", "selective_accuracy"]


class RiskCoverage(NamedTuple):
    """Risk-coverage curve at the distinct confidence thresholds, most confident first.

    Attributes:
        coverage: ``(K,)`` float64 fraction accepted, ``#{kappa >= t_k} / N``, increasing to 1.
        risk: ``(K,)`` float64 selective risk, error rate among the accepted.
        generalized_risk: ``(K,)`` float64 errors among the accepted divided by ``N``.
        threshold: ``(K,)`` float64 distinct confidences ``t_k``, decreasing.
    """

    coverage: Tensor
    risk: Tensor
    generalized_risk: Tensor
    threshold: Tensor


def risk_coverage_curve(
    probs: Tensor, targets: Tensor, *, confidence: Tensor | None = None
) -> RiskCoverage:
    """Selective risk against coverage, one point per distinct confidence.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        confidence: Optional ``(N,)`` real scores, higher = more confident; default ``max_c probs``.

    Returns:
        A :class:`RiskCoverage` of float64 tensors on the device of ``probs``.
    """
    kappa, error = _checked(probs, targets, confidence)
    return _curve(kappa, error)


def aurc(probs: Tensor, targets: Tensor, *, confidence: Tensor | None = None) -> float:
    """Area under the risk-coverage curve (Geifman et al., 2018), lower is better.

    Step area ``sum_k (c_k - c_{k-1}) r_k`` with ``c_0 = 0``; without ties it is
    ``1/N sum_{k=1}^{N} risk(k most confident)``.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        confidence: Optional ``(N,)`` scores, higher = more confident; default ``max_c probs``.

    Returns:
        AURC in ``[0, 1]``.
    """
    curve = _curve(*_checked(probs, targets, confidence))
    widths = torch.diff(curve.coverage, prepend=curve.coverage.new_zeros(1))
    return (widths * curve.risk).sum().item()


def augrc(probs: Tensor, targets: Tensor, *, confidence: Tensor | None = None) -> float:
    """Area under the generalized risk-coverage curve (Traub et al., 2024), lower is better.

    Trapezoidal area of ``(c_k, g_k)`` from ``(0, 0)``, ``g_k`` the errors among the accepted
    over ``N``. It equals ``(1 - acc) acc (1 - AUROC_f) + (1 - acc)^2 / 2``, with ``AUROC_f`` the
    AUROC of ``-confidence`` for separating wrong from right predictions (ties count one half).

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        confidence: Optional ``(N,)`` scores, higher = more confident; default ``max_c probs``.

    Returns:
        AUGRC in ``[0, 0.5]``.
    """
    curve = _curve(*_checked(probs, targets, confidence))
    c = torch.cat([curve.coverage.new_zeros(1), curve.coverage])
    g = torch.cat([curve.generalized_risk.new_zeros(1), curve.generalized_risk])
    return torch.trapezoid(g, c).item()


def selective_accuracy(
    probs: Tensor,
    targets: Tensor,
    coverages: Sequence[float] = (0.5, 0.8, 0.9, 0.95, 1.0),
    *,
    confidence: Tensor | None = None,
) -> dict[float, float]:
    """Accuracy on the ``ceil(c N)`` most confident inputs, for each coverage ``c``.

    When the cut falls inside a group of tied confidences, the group contributes its mean
    correctness for the places left (the expectation over random tie-breaking).

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        coverages: Coverages in ``(0, 1]``.
        confidence: Optional ``(N,)`` scores, higher = more confident; default ``max_c probs``.

    Returns:
        ``{coverage: accuracy}``.
    """
    if isinstance(coverages, (str, bytes)) or not isinstance(coverages, Sequence):
        raise TypeError(f"coverages must be a sequence of floats, got {type(coverages).__name__}")
    for c in coverages:
        if not is_real(c) or not 0.0 < c <= 1.0:
            raise ValueError(f"coverages must lie in (0, 1], got {c!r}")
    kappa, error = _checked(probs, targets, confidence)
    correct = 1.0 - error
    n = kappa.numel()
    sorted_kappa = torch.sort(kappa, descending=True).values
    out = {}
    for c in coverages:
        k = max(1, math.ceil(float(c) * n - 1e-9))
        cut = sorted_kappa[k - 1]
        above, tie = kappa > cut, kappa == cut
        n_above = int(above.sum().item())
        tie_rate = correct[tie].mean()
        out[float(c)] = ((correct[above].sum() + (k - n_above) * tie_rate) / k).item()
    return out


def _checked(probs: Tensor, targets: Tensor, confidence: Tensor | None) -> tuple[Tensor, Tensor]:
    """Returns float64 confidence ``(N,)`` and 0/1 error ``(N,)`` of the argmax prediction."""
    p, y = check_classification(probs, targets)
    error = (p.argmax(dim=1) != y).to(torch.float64)
    if confidence is None:
        return p.max(dim=1).values, error
    if not isinstance(confidence, Tensor):
        raise TypeError(f"confidence must be a torch.Tensor, got {type(confidence).__name__}")
    if confidence.shape != (p.shape[0],):
        raise ValueError(
            f"confidence must have shape ({p.shape[0]},) to match probs, "
            f"got {tuple(confidence.shape)}"
        )
    if confidence.is_complex() or confidence.dtype == torch.bool:
        raise TypeError(f"confidence must hold real scores, got dtype {confidence.dtype}")
    kappa = as_float64(confidence).to(p.device)
    if torch.isnan(kappa).any():
        raise ValueError("confidence contains NaN; drop or replace those scores first")
    return kappa, error


def _curve(kappa: Tensor, error: Tensor) -> RiskCoverage:
    kappa, order = torch.sort(kappa, descending=True, stable=True)
    error = error[order]
    group_end = torch.ones_like(kappa, dtype=torch.bool)
    group_end[:-1] = kappa[1:] != kappa[:-1]
    accepted = torch.arange(1, kappa.numel() + 1, dtype=torch.float64, device=kappa.device)
    errors = error.cumsum(0)[group_end]
    accepted = accepted[group_end]
    n = kappa.numel()
    return RiskCoverage(
        coverage=accepted / n,
        risk=errors / accepted,
        generalized_risk=errors / n,
        threshold=kappa[group_end],
    )

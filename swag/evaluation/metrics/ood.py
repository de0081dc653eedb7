"""Out-of-distribution detection metrics from scalar scores.

The scores are keyword-only (``auroc(scores_in=..., scores_out=...)``): swapped positional
arguments would silently give ``1 - AUROC``, and scikit-learn's order is ``(y_true, score)``.

Convention, for every function here: **a higher score means more out-of-distribution** (use
predictive entropy or mutual information as they are; negate a confidence such as
:func:`~swag.metrics.max_probability`). OOD is the positive class for :func:`auroc`,
:func:`aupr_out` and :func:`fpr_at_tpr`; :func:`aupr_in` makes in-distribution the positive class
and negates the scores. Ties are handled as in scikit-learn's ``roc_auc_score`` (trapezoid, i.e.
a tie counts one half) and ``average_precision_score`` (one threshold per distinct score).
"""

from __future__ import annotations

import torch
from torch import Tensor

from swag.evaluation.metrics._validation import as_float64, is_real

__all__ = ["aupr_in", "aupr_out", "auroc", "fpr_at_tpr", "ood_summary"]


def auroc(*, scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve with OOD as positive: ``P(s_out > s_in) + P(s_out = s_in) / 2``.

    Args:
        scores_in: ``(N_in,)`` scores of in-distribution inputs.
        scores_out: ``(N_out,)`` scores of out-of-distribution inputs.

    Returns:
        AUROC in ``[0, 1]``; 0.5 is chance, 1 is perfect separation.

    Example:
        >>> auroc(scores_in=torch.tensor([0.1, 0.2]), scores_out=torch.tensor([0.2, 0.9]))
        0.875
    """
    s_in, s_out = _check_scores(scores_in, scores_out)
    tp, fp = _roc_counts(s_out, s_in)
    tp0, fp0 = _prepend_zero(tp), _prepend_zero(fp)
    area = ((fp0[1:] - fp0[:-1]) * (tp0[1:] + tp0[:-1])).sum() / 2.0
    return (area / (tp[-1] * fp[-1])).item()


def aupr_out(*, scores_in: Tensor, scores_out: Tensor) -> float:
    """Average precision with OOD as positive: ``sum_k (R_k - R_{k-1}) P_k``.

    ``P_k`` and ``R_k`` are precision and recall when flagging ``score >= t_k``, over the distinct
    scores ``t_k`` in decreasing order (scikit-learn's ``average_precision_score``).

    Args:
        scores_in: ``(N_in,)`` scores of in-distribution inputs.
        scores_out: ``(N_out,)`` scores of out-of-distribution inputs.

    Returns:
        AUPR-out in ``[0, 1]``; chance level is ``N_out / (N_in + N_out)``.
    """
    s_in, s_out = _check_scores(scores_in, scores_out)
    return _average_precision(s_out, s_in)


def aupr_in(*, scores_in: Tensor, scores_out: Tensor) -> float:
    """Average precision with in-distribution as positive and negated scores.

    Args:
        scores_in: ``(N_in,)`` scores of in-distribution inputs (higher = more OOD).
        scores_out: ``(N_out,)`` scores of out-of-distribution inputs.

    Returns:
        AUPR-in in ``[0, 1]``; chance level is ``N_in / (N_in + N_out)``.
    """
    s_in, s_out = _check_scores(scores_in, scores_out)
    return _average_precision(-s_in, -s_out)


def fpr_at_tpr(*, scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> float:
    """Fraction of in-distribution inputs flagged as OOD when ``tpr`` of the OOD inputs are caught.

    The threshold ``t`` is the largest score with ``#{s_out >= t} / N_out >= tpr``; the result is
    ``#{s_in >= t} / N_in`` (the first point of scikit-learn's ``roc_curve`` reaching ``tpr``).

    Args:
        scores_in: ``(N_in,)`` scores of in-distribution inputs.
        scores_out: ``(N_out,)`` scores of out-of-distribution inputs.
        tpr: Required true-positive rate (OOD recall), in ``(0, 1]``; 0.95 gives FPR@95.

    Returns:
        False-positive rate in ``[0, 1]``; lower is better.
    """
    if not is_real(tpr):
        raise TypeError(f"tpr must be a real number in (0, 1], got {type(tpr).__name__} {tpr!r}")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s_in, s_out = _check_scores(scores_in, scores_out)
    tp, fp = _roc_counts(s_out, s_in)
    first = torch.nonzero(tp / tp[-1] >= tpr)[0, 0]
    return (fp[first] / fp[-1]).item()


def ood_summary(*, scores_in: Tensor, scores_out: Tensor) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR@95 of one score at once.

    Args:
        scores_in: ``(N_in,)`` scores of in-distribution inputs (higher = more OOD).
        scores_out: ``(N_out,)`` scores of out-of-distribution inputs.

    Returns:
        ``{"auroc", "aupr_in", "aupr_out", "fpr95"}`` mapped to floats.
    """
    return {
        "auroc": auroc(scores_in=scores_in, scores_out=scores_out),
        "aupr_in": aupr_in(scores_in=scores_in, scores_out=scores_out),
        "aupr_out": aupr_out(scores_in=scores_in, scores_out=scores_out),
        "fpr95": fpr_at_tpr(scores_in=scores_in, scores_out=scores_out, tpr=0.95),
    }


def _check_scores(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    """Validates two non-empty 1-D real score tensors; returns float64 on the first's device."""
    checked = []
    for name, s in (("scores_in", scores_in), ("scores_out", scores_out)):
        if not isinstance(s, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(s).__name__}")
        if s.ndim != 1 or s.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(s.shape)}")
        if s.is_complex() or s.dtype == torch.bool:
            raise TypeError(f"{name} must hold real scores, got dtype {s.dtype}")
        s64 = as_float64(s)
        if torch.isnan(s64).any():
            raise ValueError(f"{name} contains NaN; drop or replace those scores first")
        checked.append(s64)
    return checked[0], checked[1].to(checked[0].device)


def _roc_counts(positives: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
    """True/false positive counts when flagging ``score >= t``, over distinct ``t`` descending.

    Returns:
        Two float64 tensors ``(K,)`` (integer-valued), ending at ``N_pos`` and ``N_neg``.
    """
    scores = torch.cat([positives, negatives])
    is_pos = torch.cat([torch.ones_like(positives), torch.zeros_like(negatives)])
    scores, order = torch.sort(scores, descending=True, stable=True)
    is_pos = is_pos[order]
    group_end = torch.ones_like(scores, dtype=torch.bool)
    group_end[:-1] = scores[1:] != scores[:-1]
    tp = is_pos.cumsum(0)[group_end]
    fp = (1.0 - is_pos).cumsum(0)[group_end]
    return tp, fp


def _average_precision(positives: Tensor, negatives: Tensor) -> float:
    tp, fp = _roc_counts(positives, negatives)
    recall = _prepend_zero(tp / tp[-1])
    return ((recall[1:] - recall[:-1]) * tp / (tp + fp)).sum().item()


def _prepend_zero(x: Tensor) -> Tensor:
    return torch.cat([x.new_zeros(1), x])

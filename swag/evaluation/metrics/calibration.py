"""Classification metrics on predicted probabilities: accuracy, NLL, Brier, ECE/MCE, reliability.

Every function takes ``probs`` of shape ``(N, C)`` (rows on the simplex, any float dtype and device)
and ``targets`` of shape ``(N,)`` (integer class indices), computes in float64 and returns a Python
float. The prediction is ``argmax_c probs[n, c]`` (first index on ties) and the confidence is
``max_c probs[n, c]``. Formulas and conventions: ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from swag.evaluation.metrics._validation import check_classification, check_n_bins

__all__ = [
    "PROB_FLOOR",
    "ReliabilityCurve",
    "accuracy",
    "adaptive_ece",
    "brier",
    "classwise_ece",
    "ece",
    "mce",
    "nll",
    "reliability_curve",
    "summary",
]

PROB_FLOOR = 1e-12
"""Probabilities are clamped to at least this before the log in :func:`nll` (at most 27.6 nats)."""


class ReliabilityCurve(NamedTuple):
    """Per-bin statistics of equal-width confidence bins ``(edges[b], edges[b + 1]]``.

    Attributes:
        confidence: ``(n_bins,)`` float64 mean confidence per bin, NaN for empty bins.
        accuracy: ``(n_bins,)`` float64 fraction correct per bin, NaN for empty bins.
        counts: ``(n_bins,)`` int64 number of predictions per bin.
        edges: ``(n_bins + 1,)`` float64 bin edges ``b / n_bins``.
    """

    confidence: Tensor
    accuracy: Tensor
    counts: Tensor
    edges: Tensor


def accuracy(probs: Tensor, targets: Tensor) -> float:
    """Fraction of predictions whose argmax equals the target.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
    """
    p, y = check_classification(probs, targets)
    return _top1(p, y)[1].mean().item()


def nll(probs: Tensor, targets: Tensor) -> float:
    """Mean negative log-likelihood in nats: ``-1/N sum_n log max(p[n, y_n], 1e-12)``.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
    """
    p, y = check_classification(probs, targets)
    return _nll(p, y)


def brier(probs: Tensor, targets: Tensor) -> float:
    """Multi-class Brier score ``1/N sum_n sum_c (p[n, c] - 1[y_n = c])^2``, in ``[0, 2]``.

    Summed over classes (Brier, 1950); for two classes it is twice scikit-learn's binary
    ``brier_score_loss``.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
    """
    p, y = check_classification(probs, targets)
    return _brier(p, y)


def reliability_curve(probs: Tensor, targets: Tensor, *, n_bins: int = 15) -> ReliabilityCurve:
    """Mean confidence, accuracy and count in ``n_bins`` equal-width confidence bins.

    Bin ``b`` holds the predictions with confidence in ``(b / n_bins, (b + 1) / n_bins]``.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        n_bins: Number of bins, >= 1.

    Returns:
        A :class:`ReliabilityCurve` of tensors on the device of ``probs``.
    """
    _, _, conf, correct = _checked(probs, targets, n_bins)
    conf_sum, correct_sum, count = _bin_sums(conf, correct, _equal_width_bin(conf, n_bins), n_bins)
    nonempty = count > 0
    nan = torch.full_like(conf_sum, float("nan"))
    return ReliabilityCurve(
        confidence=torch.where(nonempty, conf_sum / count.clamp_min(1), nan),
        accuracy=torch.where(nonempty, correct_sum / count.clamp_min(1), nan),
        counts=count,
        edges=torch.arange(n_bins + 1, dtype=torch.float64, device=conf.device) / n_bins,
    )


def ece(probs: Tensor, targets: Tensor, *, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins (Guo et al., 2017).

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` over the bins of :func:`reliability_curve`.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        n_bins: Number of bins, >= 1.
    """
    _, _, conf, correct = _checked(probs, targets, n_bins)
    return _gap_sum(conf, correct, _equal_width_bin(conf, n_bins), n_bins)


def adaptive_ece(probs: Tensor, targets: Tensor, *, n_bins: int = 15) -> float:
    """ECE with equal-mass bins (Nixon et al., 2019).

    Predictions are sorted by confidence (ties: incorrect before correct, so the value does not
    depend on input order) and split into ``n_bins`` contiguous bins whose sizes differ by at most
    one, the larger ones first; then ``sum_b (n_b / N) |acc_b - conf_b|``.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        n_bins: Number of bins, >= 1 (bins stay empty when ``n_bins > N``).
    """
    _, _, conf, correct = _checked(probs, targets, n_bins)
    return _gap_sum(conf, correct, _equal_mass_bin(conf, correct, n_bins), n_bins)


def classwise_ece(probs: Tensor, targets: Tensor, *, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al., 2019): the mean over classes of a one-vs-rest ECE.

    For class ``c`` the confidences ``p[n, c]`` go to the equal-width bins of :func:`ece`
    (probability 0 to bin 0) and are compared with the frequency of ``y_n = c``:
    ``1/C sum_c sum_b (n_cb / N) |freq_cb - conf_cb|``.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        n_bins: Number of bins, >= 1.
    """
    check_n_bins(n_bins)
    p, y = check_classification(probs, targets)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)
    total = sum(
        _gap_sum(p[:, c], onehot[:, c], _equal_width_bin(p[:, c].contiguous(), n_bins), n_bins)
        for c in range(p.shape[1])
    )
    return total / p.shape[1]


def mce(probs: Tensor, targets: Tensor, *, n_bins: int = 15) -> float:
    """Maximum calibration error: ``max_b |acc_b - conf_b|`` over non-empty equal-width bins.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        n_bins: Number of bins, >= 1.
    """
    _, _, conf, correct = _checked(probs, targets, n_bins)
    return _max_gap(conf, correct, _equal_width_bin(conf, n_bins), n_bins)


def summary(probs: Tensor, targets: Tensor, *, n_bins: int = 15) -> dict[str, float]:
    """All classification metrics at once, validating the inputs a single time.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` integer class indices.
        n_bins: Number of bins for ``ece``, ``adaptive_ece`` and ``mce``.

    Returns:
        ``{"accuracy", "nll", "brier", "ece", "adaptive_ece", "mce"}`` mapped to floats.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        >>> summary(probs, torch.tensor([0, 0]))["accuracy"]
        0.5
    """
    p, y, conf, correct = _checked(probs, targets, n_bins)
    width_bin = _equal_width_bin(conf, n_bins)
    return {
        "accuracy": correct.mean().item(),
        "nll": _nll(p, y),
        "brier": _brier(p, y),
        "ece": _gap_sum(conf, correct, width_bin, n_bins),
        "adaptive_ece": _gap_sum(conf, correct, _equal_mass_bin(conf, correct, n_bins), n_bins),
        "mce": _max_gap(conf, correct, width_bin, n_bins),
    }


def _checked(probs: Tensor, targets: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validates once; returns float64 probs, int64 targets, confidence and correctness."""
    check_n_bins(n_bins)
    p, y = check_classification(probs, targets)
    return (p, y, *_top1(p, y))


def _top1(p: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Confidence ``max_c p`` and correctness (float64 0/1) of the argmax prediction."""
    conf = p.max(dim=1).values
    return conf, (p.argmax(dim=1) == y).to(torch.float64)


def _nll(p: Tensor, y: Tensor) -> float:
    return -p.gather(1, y[:, None]).clamp_min(PROB_FLOOR).log().mean().item()


def _brier(p: Tensor, y: Tensor) -> float:
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)
    return (p - onehot).square().sum(dim=1).mean().item()


def _equal_width_bin(conf: Tensor, n_bins: int) -> Tensor:
    """Index ``b`` with ``b / n_bins < conf <= (b + 1) / n_bins`` (confidence 0 goes to bin 0)."""
    edges = torch.arange(n_bins + 1, dtype=conf.dtype, device=conf.device) / n_bins
    return (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)


def _equal_mass_bin(conf: Tensor, correct: Tensor, n_bins: int) -> Tensor:
    """Bin index per prediction for contiguous equal-mass bins of the sorted confidences."""
    n = conf.numel()
    order = torch.argsort(correct, stable=True)
    order = order[torch.argsort(conf[order], stable=True)]
    sizes = torch.full((n_bins,), n // n_bins, dtype=torch.int64, device=conf.device)
    sizes[: n % n_bins] += 1
    sorted_bin = torch.repeat_interleave(torch.arange(n_bins, device=conf.device), sizes)
    return torch.empty_like(sorted_bin).scatter_(0, order, sorted_bin)


def _bin_sums(
    conf: Tensor, correct: Tensor, bin_index: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin sums of confidence and correctness, and counts, each ``(n_bins,)``."""
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    correct_sum = torch.zeros_like(conf_sum)
    conf_sum.index_add_(0, bin_index, conf)
    correct_sum.index_add_(0, bin_index, correct)
    return conf_sum, correct_sum, torch.bincount(bin_index, minlength=n_bins)


def _gap_sum(conf: Tensor, correct: Tensor, bin_index: Tensor, n_bins: int) -> float:
    """``sum_b (n_b / N) |acc_b - conf_b| = sum_b |sum correct - sum conf| / N``."""
    conf_sum, correct_sum, _ = _bin_sums(conf, correct, bin_index, n_bins)
    return ((correct_sum - conf_sum).abs().sum() / conf.numel()).item()


def _max_gap(conf: Tensor, correct: Tensor, bin_index: Tensor, n_bins: int) -> float:
    conf_sum, correct_sum, count = _bin_sums(conf, correct, bin_index, n_bins)
    nonempty = count > 0
    return ((correct_sum - conf_sum)[nonempty].abs() / count[nonempty]).max().item()

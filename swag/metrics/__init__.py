"""Evaluation metrics: pure functions on tensors (definitions in ``docs/metrics.md``).

- classification (``probs (N, C)``, ``targets (N,)``): :func:`accuracy`, :func:`nll`,
  :func:`brier`, :func:`ece`, :func:`adaptive_ece`, :func:`mce`, :func:`reliability_curve`,
  :func:`summary`;
- uncertainty (``probs (S, N, C)``): :func:`predictive_entropy`, :func:`expected_entropy`,
  :func:`mutual_information`, :func:`max_probability`;
- OOD detection (higher score = more OOD): :func:`auroc`, :func:`aupr_in`, :func:`aupr_out`,
  :func:`fpr_at_tpr`;
- regression: :func:`gaussian_nll`, :func:`gaussian_mixture_nll`, :func:`rmse`,
  :func:`interval_coverage`.
"""

from swag.metrics.calibration import (
    PROB_FLOOR,
    ReliabilityCurve,
    accuracy,
    adaptive_ece,
    brier,
    ece,
    mce,
    nll,
    reliability_curve,
    summary,
)
from swag.metrics.ood import aupr_in, aupr_out, auroc, fpr_at_tpr
from swag.metrics.regression import gaussian_mixture_nll, gaussian_nll, interval_coverage, rmse
from swag.metrics.uncertainty import (
    expected_entropy,
    max_probability,
    mutual_information,
    predictive_entropy,
)

__all__ = [
    "PROB_FLOOR",
    "ReliabilityCurve",
    "accuracy",
    "adaptive_ece",
    "aupr_in",
    "aupr_out",
    "auroc",
    "brier",
    "ece",
    "expected_entropy",
    "fpr_at_tpr",
    "gaussian_mixture_nll",
    "gaussian_nll",
    "interval_coverage",
    "max_probability",
    "mce",
    "mutual_information",
    "nll",
    "predictive_entropy",
    "reliability_curve",
    "rmse",
    "summary",
]

"""Evaluation metrics: pure functions on tensors (definitions in ``docs/metrics.md``).

- classification (``probs (N, C)``, ``targets (N,)``): :func:`accuracy`, :func:`nll`,
  :func:`brier`, :func:`ece`, :func:`adaptive_ece`, :func:`classwise_ece`, :func:`mce`,
  :func:`reliability_curve`, :func:`summary`;
- selective prediction: :func:`risk_coverage_curve`, :func:`aurc`, :func:`augrc`,
  :func:`selective_accuracy`;
- uncertainty (``probs (S, N, C)``): :func:`predictive_entropy`, :func:`expected_entropy`,
  :func:`mutual_information`, :func:`max_probability`; from logits: :func:`energy`,
  :func:`max_logit`;
- OOD detection (higher score = more OOD): :func:`auroc`, :func:`aupr_in`, :func:`aupr_out`,
  :func:`fpr_at_tpr`, :func:`ood_summary`;
- regression: :func:`gaussian_nll`, :func:`gaussian_mixture_nll`, :func:`rmse`,
  :func:`interval_coverage`.
"""

from swag.evaluation.metrics.calibration import (
    PROB_FLOOR,
    ReliabilityCurve,
    accuracy,
    adaptive_ece,
    brier,
    classwise_ece,
    ece,
    mce,
    nll,
    reliability_curve,
    summary,
)
from swag.evaluation.metrics.ood import aupr_in, aupr_out, auroc, fpr_at_tpr, ood_summary
from swag.evaluation.metrics.regression import (
    gaussian_mixture_nll,
    gaussian_nll,
    interval_coverage,
    rmse,
)
from swag.evaluation.metrics.selective import (
    RiskCoverage,
    augrc,
    aurc,
    risk_coverage_curve,
    selective_accuracy,
)
from swag.evaluation.metrics.uncertainty import (
    energy,
    expected_entropy,
    max_logit,
    max_probability,
    mutual_information,
    predictive_entropy,
)

__all__ = [
    "PROB_FLOOR",
    "ReliabilityCurve",
    "RiskCoverage",
    "accuracy",
    "adaptive_ece",
    "augrc",
    "aupr_in",
    "aupr_out",
    "aurc",
    "auroc",
    "brier",
    "classwise_ece",
    "ece",
    "energy",
    "expected_entropy",
    "fpr_at_tpr",
    "gaussian_mixture_nll",
    "gaussian_nll",
    "interval_coverage",
    "max_logit",
    "max_probability",
    "mce",
    "mutual_information",
    "nll",
    "ood_summary",
    "predictive_entropy",
    "reliability_curve",
    "risk_coverage_curve",
    "rmse",
    "selective_accuracy",
    "summary",
]

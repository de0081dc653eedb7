"""Averaging rules for :class:`swag.Collector` (``average=``): EMA, power-function EMA, LAWA."""

from swag.averaging._posthoc import PostHocEMA
from swag.averaging._rules import (
    EMA,
    LAWA,
    AveragingRule,
    PowerEMA,
    gamma_to_sigma_rel,
    sigma_rel_to_gamma,
)

__all__ = [
    "EMA",
    "LAWA",
    "AveragingRule",
    "PostHocEMA",
    "PowerEMA",
    "gamma_to_sigma_rel",
    "sigma_rel_to_gamma",
]

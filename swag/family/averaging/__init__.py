"""Averaging rules for :class:`swag.Collector` (``average=``): EMA, power-function EMA, LAWA."""

from swag.core._averaging_rules import (
    EMA,
    LAWA,
    AveragingRule,
    PowerEMA,
    gamma_to_sigma_rel,
    sigma_rel_to_gamma,
)
from swag.family.averaging._posthoc import PostHocEMA
from swag.family.averaging._soup import greedy_soup

__all__ = [
    "EMA",
    "LAWA",
    "AveragingRule",
    "PostHocEMA",
    "PowerEMA",
    "gamma_to_sigma_rel",
    "greedy_soup",
    "sigma_rel_to_gamma",
]

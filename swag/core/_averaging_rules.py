"""Averaging rules: how the Collector weights its iterates (EMA, power-function EMA, LAWA).

A rule is a frozen description; :meth:`AveragingRule.bind` gives the :class:`BoundRule` that a
:class:`~swag.Collector` owns (a submodule: its buffers follow ``.to()`` and ``state_dict``).

Every rule keeps the weighted mean θ̄_n = Σ_i w_i θ_i and the weighted variance
σ²_n = Σ_i w_i (θ_i − θ̄_n)² under the same normalised weights (Σ_i w_i = 1); the collector
stores ``m2`` with σ²_n = ``m2 / divisor(n)`` and the ring of deviations θ_n − θ̄_n. For a
rule that moves the mean by θ̄_n = θ̄_{n−1} + α_n (θ_n − θ̄_{n−1}) (equal: α_n = 1/n; EMA:
α_n = 1 − β_n), the variance follows σ²_n = (1 − α_n) σ²_{n−1} + α_n/(1 − α_n) · d_n² with
d_n = θ_n − θ̄_n (derivation in docs/concepts.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from swag.core._initdoc import document_init

__all__ = ["EMA", "LAWA", "AveragingRule", "BoundRule", "PowerEMA", "sigma_rel_to_gamma"]


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


class BoundRule(nn.Module):
    """A rule bound to one collector's statistics (``P`` entries on one device)."""

    def __init__(self, rule: AveragingRule) -> None:
        super().__init__()
        self.rule = rule

    @abstractmethod
    def update(self, n: int, span: slice, x: Tensor, mean: Tensor, m2: Tensor, dev: Tensor) -> None:
        """Fold iterate ``n ≥ 2`` into one chunk of the statistics.

        Args:
            n: the iterate's 1-based index.
            span: the chunk's entries in the flat statistics.
            x: ``(C,)`` θ_n − θ_1 over the chunk (may be overwritten, may alias ``dev``).
            mean: ``(C,)`` θ̄ − θ_1, updated in place.
            m2: ``(C,)`` the variance accumulator, updated in place.
            dev: ``(C,)`` receives θ_n − θ̄_n.
        """

    @abstractmethod
    def divisor(self, n: int) -> float:
        """σ²_n = ``m2 / divisor(n)``."""


class _LerpBound(BoundRule):
    """Rules of the form θ̄_n = lerp(θ̄_{n−1}, θ_n, α_n); ``m2`` holds σ² itself."""

    rule: LerpRule

    def update(self, n: int, span: slice, x: Tensor, mean: Tensor, m2: Tensor, dev: Tensor) -> None:
        a = self.rule.alpha(n)
        mean.lerp_(x, a)
        torch.sub(x, mean, out=dev)
        if a >= 1.0:
            m2.zero_()  # the iterate is copied: no spread left
            return
        m2.mul_(1.0 - a).addcmul_(dev, dev, value=a / (1.0 - a))

    def divisor(self, n: int) -> float:
        return 1.0


class AveragingRule(ABC):
    """How iterates are weighted. Pass one as ``Collector(model, average=RULE)``."""

    @abstractmethod
    def bind(self, size: int, device: torch.device, dtype: torch.dtype) -> BoundRule:
        """The rule's state for ``size`` statistics entries."""


class LerpRule(AveragingRule):
    """A rule that moves the mean toward each iterate by a factor α_n (α_1 = 1: a copy)."""

    @abstractmethod
    def alpha(self, n: int) -> float:
        """α_n ∈ [0, 1], the weight of iterate ``n`` (1-based) in θ̄_n; α_1 = 1."""

    def bind(self, size: int, device: torch.device, dtype: torch.dtype) -> BoundRule:
        return _LerpBound(self)


@document_init
@dataclass(frozen=True)
class EMA(LerpRule):
    """Exponential moving average θ̄_n = β_n θ̄_{n−1} + (1 − β_n) θ_n, θ̄_1 = θ_1.

    Without warmup β_n = ``decay``: on the mean-only path (``max_rank=0, variance=False``) the
    mean is bit-identical to ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))``
    updated at the same steps. With ``warmup=True`` the decay follows timm's ``ModelEmaV3``
    schedule at step ``t = n − 1`` (collects since the first):
    β = clamp(1 − (1 + t/warmup_gamma)^(−warmup_power), min_decay, decay), β = 0 at t = 0.

    Args:
        decay: β in [0, 1].
        warmup: ramp the decay up as timm does (default off).
        warmup_gamma: timm's ``warmup_gamma`` (> 0).
        warmup_power: timm's ``warmup_power`` (> 0).
        min_decay: timm's ``min_decay``, in [0, decay].
    """

    decay: float
    warmup: bool = False
    warmup_gamma: float = 1.0
    warmup_power: float = 2.0 / 3.0
    min_decay: float = 0.0

    def __post_init__(self) -> None:
        decay = _number("decay", self.decay)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {self.decay!r}")
        if not isinstance(self.warmup, bool):
            raise TypeError(f"warmup must be True or False, got {self.warmup!r}")
        for name in ("warmup_gamma", "warmup_power"):
            if _number(name, getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= _number("min_decay", self.min_decay) <= decay:
            raise ValueError(f"min_decay must be in [0, decay={decay}], got {self.min_decay!r}")

    def beta(self, n: int) -> float:
        """β_n, the decay applied at iterate ``n`` (1-based)."""
        t = n - 1
        if t <= 0:
            return 0.0
        if not self.warmup:
            return self.decay
        ramp = 1.0 - math.pow(1.0 + t / self.warmup_gamma, -self.warmup_power)
        return max(min(ramp, self.decay), self.min_decay)

    def alpha(self, n: int) -> float:
        return 1.0 - self.beta(n)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """EDM2's exponent γ for a relative standard deviation σ_rel of the power-function profile.

    σ_rel² = (γ + 1) / ((γ + 2)² (γ + 3)), i.e. the largest real root of
    γ³ + 7γ² + (16 − σ_rel⁻²) γ + (12 − σ_rel⁻²) = 0.

    Raises:
        ValueError: unless 0 < σ_rel < σ_rel(γ=0) = 12^(−1/2) ≈ 0.2887.
    """
    s = _number("sigma_rel", sigma_rel)
    if not 0.0 < s < 12**-0.5:
        raise ValueError(f"sigma_rel must be in (0, 0.2887) (γ > 0), got {sigma_rel!r}")
    t = s**-2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    """The inverse of :func:`sigma_rel_to_gamma`: σ_rel = √((γ+1) / ((γ+2)² (γ+3)))."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


@document_init
@dataclass(frozen=True)
class PowerEMA(LerpRule):
    """EDM2's power-function EMA: β_n = (1 − 1/n)^(γ+1), so θ̄_n weights θ_i ∝ i^γ.

    Give exactly one of ``gamma`` (> 0) or ``sigma_rel`` (the averaging window's width relative
    to training time, in (0, 0.2887)); the length scales with training, so no warmup is needed.

    Args:
        gamma: γ > 0, the exponent of the weights i^γ (γ ≈ 6.94 is σ_rel = 0.10).
        sigma_rel: the relative width σ_rel in (0, 0.2887) instead; converted to γ with
            :func:`~swag.averaging.sigma_rel_to_gamma`.
    """

    gamma: float | None = None
    sigma_rel: float | None = None

    def __post_init__(self) -> None:
        if (self.gamma is None) == (self.sigma_rel is None):
            raise ValueError("give exactly one of gamma= or sigma_rel=")
        if self.gamma is not None and _number("gamma", self.gamma) <= 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma!r}")
        if self.sigma_rel is not None:
            object.__setattr__(self, "gamma", sigma_rel_to_gamma(self.sigma_rel))

    @property
    def exponent(self) -> float:
        """γ."""
        assert self.gamma is not None
        return self.gamma

    def alpha(self, n: int) -> float:
        return 1.0 - math.pow(1.0 - 1.0 / n, self.exponent + 1.0)


class _LawaBound(BoundRule):
    """The last ``window`` offsets θ_i − θ_1 in a ring; mean and variance recomputed from it."""

    rule: LAWA
    ring: Tensor

    def __init__(self, rule: LAWA, size: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(rule)
        self.register_buffer("ring", torch.zeros(rule.window, size, device=device, dtype=dtype))

    def update(self, n: int, span: slice, x: Tensor, mean: Tensor, m2: Tensor, dev: Tensor) -> None:
        w = self.rule.window
        rows = self.ring[: min(n, w), span]
        rows[(n - 1) % w].copy_(x)  # x is free from here on (dev may alias it)
        torch.sum(rows, 0, out=mean).div_(rows.shape[0])
        m2.zero_()
        for row in rows:
            torch.sub(row, mean, out=dev)
            m2.addcmul_(dev, dev)
        torch.sub(rows[(n - 1) % w], mean, out=dev)

    def divisor(self, n: int) -> float:
        return float(min(n, self.rule.window))


@document_init
@dataclass(frozen=True)
class LAWA(AveragingRule):
    """Latest-weight averaging: the equal average of the last ``window`` collected iterates.

    Holds ``window · P`` more entries (the iterates in the window); each collect costs
    ``O(window · P)``, since mean and variance are recomputed from the window (no drift).

    Args:
        window: how many of the latest collected iterates are averaged, an int >= 1.
    """

    window: int

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int):
            raise TypeError(f"window must be an int, got {self.window!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window!r}")

    def bind(self, size: int, device: torch.device, dtype: torch.dtype) -> BoundRule:
        return _LawaBound(self, size, device, dtype)

"""Split conformal prediction on top of any predictive distribution (definitions in
``docs/metrics.md``).

- :class:`SplitConformal`: prediction sets for classification from ``probs (N, C)`` (LAC, APS,
  RAPS), e.g. the Bayesian model average of a SWAG posterior;
- :class:`SplitConformalRegression`: intervals from a predictive mean, optionally normalised by the
  predictive standard deviation.

Both calibrate on held-out data exchangeable with the test data and then guarantee marginal
coverage ``P(y in set) >= 1 - alpha``. Scores and quantiles are computed in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from swag.evaluation.metrics._validation import (
    check_classification,
    check_float,
    check_probs,
    is_real,
)

__all__ = ["SplitConformal", "SplitConformalRegression", "conformal_quantile"]

_METHODS = ("lac", "aps", "raps")


def conformal_quantile(scores: Tensor, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``n`` calibration scores (inf beyond ``n``).

    Args:
        scores: ``(n,)`` conformity scores of the calibration set.
        alpha: Miscoverage level in ``(0, 1)``.
    """
    _check_alpha(alpha)
    n = scores.numel()
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)
    if k > n:
        return math.inf
    return torch.sort(scores.flatten()).values[k - 1].item()


class SplitConformal:
    """Split conformal classification sets: ``{c : s(x, c) <= q}`` with ``q`` fit on held-out data.

    Scores of label ``c`` (``pi`` the classes sorted by decreasing probability, first index on ties;
    ``u ~ U(0, 1)`` one draw per input when ``randomized``, else ``u = 1``):

    - ``"lac"``: ``1 - p_c`` (Sadinle et al., 2019; "THR");
    - ``"aps"``: mass of the classes ranked above ``c`` plus ``u p_c`` (Romano et al., 2020);
    - ``"raps"``: APS plus ``penalty * max(0, rank(c) - k_reg)`` (Angelopoulos et al., 2021).

    Args:
        method: ``"lac"``, ``"aps"`` or ``"raps"``.
        alpha: Miscoverage level in ``(0, 1)``; sets hold the label with probability
            ``>= 1 - alpha``.
        penalty: RAPS penalty ``lambda >= 0``.
        k_reg: RAPS rank from which the penalty applies, integer ``>= 0``.
        randomized: Draw ``u`` for APS/RAPS (smaller sets, still valid); needs no change for LAC.

    Example:
        >>> cp = SplitConformal("lac", alpha=0.1).fit(cal_probs, cal_targets)  # doctest: +SKIP
        >>> sets = cp.predict_sets(test_probs)  # (N, C) bool  # doctest: +SKIP
    """

    def __init__(
        self,
        method: str = "lac",
        alpha: float = 0.1,
        *,
        penalty: float = 0.01,
        k_reg: int = 1,
        randomized: bool = False,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        _check_alpha(alpha)
        if not is_real(penalty) or not math.isfinite(penalty) or penalty < 0:
            raise ValueError(f"penalty must be a finite number >= 0, got {penalty!r}")
        if isinstance(k_reg, bool) or not isinstance(k_reg, int) or k_reg < 0:
            raise ValueError(f"k_reg must be an integer >= 0, got {k_reg!r}")
        if not isinstance(randomized, bool):
            raise TypeError(f"randomized must be a bool, got {type(randomized).__name__}")
        if randomized and method == "lac":
            raise ValueError("randomized applies to 'aps' and 'raps' only; drop it for 'lac'")
        self.method = method
        self.alpha = float(alpha)
        self.penalty = float(penalty)
        self.k_reg = k_reg
        self.randomized = randomized
        self.quantile_: float | None = None

    def fit(
        self, probs: Tensor, targets: Tensor, *, generator: torch.Generator | None = None
    ) -> SplitConformal:
        """Sets ``quantile_`` from calibration data.

        Args:
            probs: ``(n, C)`` calibration probabilities.
            targets: ``(n,)`` integer calibration labels.
            generator: Random source for the randomized scores (torch's global one if None).

        Returns:
            ``self``.
        """
        p, y = check_classification(probs, targets)
        scores = self.scores(p, generator=generator).gather(1, y[:, None]).squeeze(1)
        self.quantile_ = conformal_quantile(scores, self.alpha)
        return self

    def predict_sets(self, probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Prediction sets as a boolean mask.

        Args:
            probs: ``(N, C)`` test probabilities.
            generator: Random source for the randomized scores (torch's global one if None).

        Returns:
            ``(N, C)`` bool, ``True`` where the class is in the set.
        """
        if self.quantile_ is None:
            raise RuntimeError("SplitConformal is not fitted; call .fit(probs, targets) first")
        return self.scores(check_probs(probs), generator=generator) <= self.quantile_

    def scores(self, probs: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Score ``s(x_n, c)`` of every label, ``(N, C)`` float64 (lower = more conforming)."""
        p = check_probs(probs)
        if self.method == "lac":
            return 1.0 - p
        order = torch.argsort(-p, dim=1, stable=True)
        sorted_p = p.gather(1, order)
        above = sorted_p.cumsum(1) - sorted_p  # mass of the classes ranked higher
        if self.randomized:
            u = torch.rand(p.shape[0], 1, generator=generator, dtype=torch.float64)
            sorted_s = above + u.to(p.device) * sorted_p
        else:
            sorted_s = above + sorted_p
        if self.method == "raps":
            rank = torch.arange(1, p.shape[1] + 1, dtype=torch.float64, device=p.device)
            sorted_s = sorted_s + self.penalty * (rank - self.k_reg).clamp_min(0.0)
        return torch.empty_like(sorted_s).scatter_(1, order, sorted_s)


class SplitConformalRegression:
    """Split conformal intervals ``mean +- q * scale`` for regression.

    ``method="absolute"``: score ``|y - mean|``, ``scale = 1`` (equal-width intervals);
    ``method="normalized"``: score ``|y - mean| / std`` with the predictive standard deviation,
    ``scale = std`` (intervals adapt to the posterior's uncertainty).

    Args:
        method: ``"absolute"`` or ``"normalized"``.
        alpha: Miscoverage level in ``(0, 1)``.
    """

    def __init__(self, method: str = "absolute", alpha: float = 0.1) -> None:
        if method not in ("absolute", "normalized"):
            raise ValueError(f"method must be 'absolute' or 'normalized', got {method!r}")
        _check_alpha(alpha)
        self.method = method
        self.alpha = float(alpha)
        self.quantile_: float | None = None

    def fit(
        self, mean: Tensor, target: Tensor, std: Tensor | None = None
    ) -> SplitConformalRegression:
        """Sets ``quantile_`` from calibration ``mean``, ``std`` and ``target``, each ``(n,)``."""
        y = _real("target", target)
        residual = (y - _real("mean", mean, like=y)).abs()
        self.quantile_ = conformal_quantile(residual / self._scale(std, y), self.alpha)
        return self

    def predict_intervals(self, mean: Tensor, std: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` float64 bounds, each of the shape of ``mean``."""
        if self.quantile_ is None:
            raise RuntimeError("SplitConformalRegression is not fitted; call .fit(...) first")
        mu = _real("mean", mean)
        half = self.quantile_ * self._scale(std, mu)
        return mu - half, mu + half

    def _scale(self, std: Tensor | None, like: Tensor) -> Tensor:
        if self.method == "absolute":
            if std is not None:
                raise ValueError("std is only used by method='normalized'; drop it or switch")
            return torch.ones_like(like)
        if std is None:
            raise ValueError("method='normalized' needs std, the predictive standard deviation")
        s = _real("std", std, like=like)
        if not (s > 0).all():
            raise ValueError("std must be > 0 everywhere; add a small floor")
        return s


def _real(name: str, x: Tensor, like: Tensor | None = None) -> Tensor:
    out = check_float(x, name)
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)}, got {tuple(x.shape)}")
    return out if like is None else out.to(like.device)


def _check_alpha(alpha: float) -> None:
    if not is_real(alpha) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")

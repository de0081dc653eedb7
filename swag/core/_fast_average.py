"""The mean-only path: one foreach lerp over the parameters, as torch's ``AveragedModel`` does."""

from __future__ import annotations

import torch
from torch import Tensor

from swag.core._averaging_rules import AveragingRule, LerpRule

__all__ = ["MeanOnly", "mean_only"]


class MeanOnly:
    """θ̄ kept directly (no shift, no variance): ``collect`` is ``_foreach_lerp_(θ̄, θ, α_n)``.

    ``mean`` is the collector's flat ``(P,)`` buffer; its per-parameter views are rebuilt when
    the buffer moves (``.to(device)``). No finiteness check per collect (it would read the
    parameters a second time): a NaN/inf iterate is caught when the mean is read.
    """

    def __init__(self, rule: AveragingRule | None, numels: tuple[int, ...]) -> None:
        if rule is not None and not isinstance(rule, LerpRule):
            raise ValueError(
                f"variance=False supports the equal average, EMA and PowerEMA, not {rule!r}; "
                "use variance=True for it"
            )
        self.rule = rule
        self.numels = list(numels)
        self._views: list[Tensor] = []
        self._key: tuple[int, torch.device] | None = None

    def views(self, mean: Tensor) -> list[Tensor]:
        key = (mean.data_ptr(), mean.device)
        if key != self._key:
            self._views, self._key = list(torch.split(mean, self.numels)), key
        return self._views

    def alpha(self, n: int) -> float:
        return 1.0 / n if self.rule is None else self.rule.alpha(n)

    def collect(self, mean: Tensor, flats: list[Tensor], n: int, direct: bool) -> None:
        """Fold iterate ``n`` (1-based) of ``flats`` (flat, one per parameter) into ``mean``."""
        views = self.views(mean)
        if not direct:
            flats = [f.to(device=mean.device, dtype=mean.dtype) for f in flats]
        if n == 1:
            torch._foreach_copy_(views, flats)
        else:
            torch._foreach_lerp_(views, flats, self.alpha(n))

    @staticmethod
    def read(mean: Tensor) -> Tensor:
        """A copy of ``mean``, refused if a NaN/inf iterate reached it (not checked per collect).

        Raises:
            ValueError: if ``mean`` has NaN or inf.
        """
        if not bool(mean.isfinite().all()):
            raise ValueError(
                "the mean has NaN or inf: an iterate with NaN/inf was collected (variance=False "
                "does not check each collect); lower the learning rate, or use variance=True to "
                "have such iterates refused when collected"
            )
        return mean.clone()

    @staticmethod
    def refuse_posterior() -> None:
        """Raises RuntimeError: a mean-only collector has no posterior, naming the fix."""
        raise RuntimeError(
            "this collector keeps only the mean (variance=False); read collector.mean, or "
            "create it with variance=True for a posterior"
        )


def mean_only(
    average: AveragingRule | None, variance: bool, max_rank: int, numels: tuple[int, ...]
) -> MeanOnly | None:
    """Check ``average`` and ``variance``; the mean-only path when no variance is wanted."""
    if average is not None and not isinstance(average, AveragingRule):
        raise TypeError(
            f"average must be None or a rule from swag.averaging (EMA, PowerEMA, LAWA), "
            f"got {average!r}"
        )
    if not isinstance(variance, bool):
        raise TypeError(f"variance must be True or False, got {variance!r}")
    if variance:
        return None
    if max_rank:
        raise ValueError(
            f"variance=False keeps only the mean, so max_rank must be 0, got {max_rank}"
        )
    return MeanOnly(average, numels)

"""The mean-only path: one foreach lerp over the parameters, as torch's ``AveragedModel`` does."""

from __future__ import annotations

import torch
from torch import Tensor

from swag.core._averaging_rules import AveragingRule, LerpRule

__all__ = ["MeanOnly"]


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

"""One rank's part of a sharded SWAG posterior (DDP with ``shard=True``, FSDP2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from swag._gaussian import draw
from swag._params import local_part
from swag._shard import ShardPlan, assemble
from swag.layout import ParamLayout
from swag.posterior import SampleShape, SWAGPosterior

__all__ = ["ShardedPosterior"]


@dataclass(frozen=True, eq=False)
class ShardedPosterior:
    """One rank's part of a SWAG posterior: its ``L`` entries of the mean, σ and D̂.

    Attributes:
        mean: ``(L,)`` this rank's entries of θ̄.
        std: ``(L,)`` of σ.
        deviations: ``(K, L)`` of D̂, oldest first.
        plan: which entries (``plan.layout`` covers the whole model).
        n: how many iterates were averaged.
        group: the process group that shares the posterior.
    """

    mean: Tensor
    std: Tensor
    deviations: Tensor
    plan: ShardPlan
    n: int
    group: dist.ProcessGroup | None = None

    @property
    def layout(self) -> ParamLayout:
        return self.plan.layout

    @property
    def rank(self) -> int:
        """K, the number of deviations held."""
        return self.deviations.shape[0]

    def sample_local(
        self,
        sample_shape: SampleShape = (),
        *,
        scale: float | None = None,
        diagonal: bool = False,
        blockwise: bool = False,
        generator: torch.Generator,
    ) -> Tensor:
        """This rank's entries ``(*sample_shape, L)`` of a sample; no communication.

        The same entries of :meth:`SWAGPosterior.sample` on the assembled posterior with a
        generator in the same state, up to the float rounding of the low-rank product D̂ᵀz₂
        (its BLAS kernel may sum the K terms in another order for ``L`` columns than for ``P``;
        ≤ 1 ulp seen): z₂ (K per block) is drawn whole, and so is z₁ (all ``P`` entries, of
        which this rank keeps its ``L``), in the same order, so the noise is identical. Pass a
        generator seeded the same on every rank.
        """
        spans = list(zip(self.plan.offsets, self.plan.numels, strict=True))
        return draw(
            self.mean,
            self.std,
            self.deviations,
            sample_shape,
            self.layout.size,
            spans,
            scale=scale,
            diagonal=diagonal,
            blockwise=blockwise,
            generator=generator,
            take=self.plan.take,
        )

    def sample(
        self,
        sample_shape: SampleShape = (),
        *,
        scale: float | None = None,
        diagonal: bool = False,
        blockwise: bool = False,
        generator: torch.Generator,
    ) -> Tensor:
        """Whole samples ``(*sample_shape, P)`` on every rank: :meth:`sample_local`, assembled."""
        local = self.sample_local(
            sample_shape, scale=scale, diagonal=diagonal, blockwise=blockwise, generator=generator
        )
        return self.assemble(local)

    def assemble(self, local: Tensor) -> Tensor:
        """Every rank's ``(..., L_r)`` as the whole ``(..., P)``, on every rank (one all_gather)."""
        lead = local.shape[:-1]
        full = assemble(local.reshape(-1, self.plan.size), self.plan, self.group)
        return full.view(*lead, self.layout.size)

    def full(self) -> SWAGPosterior:
        """The whole posterior on every rank (one all_gather of ``(K + 2) · P`` entries)."""
        rows = torch.cat([self.mean[None], self.std[None], self.deviations.to(self.mean.dtype)])
        whole = assemble(rows, self.plan, self.group)
        dev = whole[2:].to(self.deviations.dtype)
        return SWAGPosterior(whole[0], whole[1], dev, self.layout, self.n)

    @torch.no_grad()
    def apply_(self, model: nn.Module, theta: Tensor | None = None) -> nn.Module:
        """Write this rank's entries ``theta`` ``(L,)`` (default: the mean) into ``model``.

        An FSDP2 model takes them into its local shards, without communication; a whole model
        (plain or DDP) gets the assembled vector (one all_gather).
        """
        theta = self.mean if theta is None else theta
        if theta.shape != (self.plan.size,):
            raise ValueError(f"theta must have shape ({self.plan.size},), got {theta.shape}")
        params = self.layout.resolve(model)
        if all(hasattr(p, "device_mesh") for p in params):
            shards = [local_part(p) for p in params]
            torch._foreach_copy_(
                shards, [v.view_as(s) for v, s in zip(self.plan.views(theta), shards, strict=True)]
            )
        else:
            self.layout.scatter(self.assemble(theta), model)
        return model

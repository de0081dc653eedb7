"""One rank's part of a sharded SWAG posterior (DDP with ``shard=True``, FSDP2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from swag.core._checks import SampleShape, check_bool
from swag.core._gaussian import draw
from swag.core._params import local_part
from swag.core._posterior_base import Posterior, State
from swag.core._random import generator_for
from swag.core.distributed._shard import ShardPlan, assemble
from swag.core.layout import ParamLayout
from swag.core.posterior import SWAGPosterior

__all__ = ["ShardedPosterior"]


@dataclass(frozen=True, eq=False)
class ShardedPosterior(Posterior):
    """One rank's part of a SWAG posterior: its ``L`` entries of the mean, σ and D̂.

    :meth:`sample` gives whole ``(*sample_shape, P)`` vectors on every rank (one all_gather),
    and :meth:`apply_` takes them (or this rank's ``(L,)`` entries), so :func:`swag.predict`
    works at any world size. It is saved with :func:`swag.distributed.save` (DCP), or whole
    through :meth:`full`.

    Attributes:
        mean: ``(L,)`` this rank's entries of θ̄.
        std: ``(L,)`` of σ.
        deviations: ``(K, L)`` of D̂, oldest first.
        plan: which entries (``plan.layout`` covers the whole model).
        n: how many iterates were averaged.
        group: the process group that shares the posterior.
    """

    kind = "sharded_posterior"
    mean: Tensor
    std: Tensor
    deviations: Tensor
    plan: ShardPlan
    n: int
    group: dist.ProcessGroup | None = None
    diagonal_only: bool = False

    @property
    def layout(self) -> ParamLayout:  # type: ignore[override]
        return self.plan.layout

    def diagonal(self) -> ShardedPosterior:
        """SWAG-Diag: the same shard without its low-rank term, default scale 1.0."""
        return dataclasses.replace(self, diagonal_only=True)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ShardedPosterior:
        """A copy of this rank's part on another device and/or floating dtype."""
        mean, std, dev = (t.to(device, dtype) for t in (self.mean, self.std, self.deviations))
        return ShardedPosterior(mean, std, dev, self.plan, self.n, self.group, self.diagonal_only)

    def to_state(self) -> State:
        """Refused: one rank's part is saved by every rank together.

        Raises:
            TypeError: always; use ``swag.distributed.save(posterior, directory)`` (DCP) or
                ``swag.save(posterior.full(), path)``.
        """
        raise TypeError(
            "a ShardedPosterior holds one rank's part; save it with "
            "swag.distributed.save(posterior, directory) or swag.save(posterior.full(), path)"
        )

    @classmethod
    def from_state(
        cls, tensors: dict[str, Tensor], meta: dict[str, str], where: str
    ) -> ShardedPosterior:
        """Refused, as :meth:`to_state`; read with ``swag.distributed.load_posterior``."""
        raise TypeError(
            f"{where}: a ShardedPosterior is read with swag.distributed.load_posterior(directory)"
        )

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
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """This rank's entries ``(*sample_shape, L)`` of a sample; no communication.

        The same entries of :meth:`SWAGPosterior.sample` on the assembled posterior with a
        generator in the same state, up to the float rounding of the low-rank product D̂ᵀz₂
        (its BLAS kernel may sum the K terms in another order for ``L`` columns than for ``P``;
        ≤ 1 ulp seen): z₂ (K per block) is drawn whole, and so is z₁ (all ``P`` entries, of
        which this rank keeps its ``L``), in the same order, so the noise is identical. Pass a
        generator seeded the same on every rank (with None, the ranks' global RNGs must agree).
        """
        check_bool(diagonal, "diagonal")
        generator = generator_for(self.mean.device, generator)
        spans = list(zip(self.plan.offsets, self.plan.numels, strict=True))
        return draw(
            self.mean,
            self.std,
            self.deviations,
            sample_shape,
            self.layout.size,
            spans,
            scale=scale,
            diagonal=diagonal or self.diagonal_only,
            blockwise=blockwise,
            generator=generator,
            take=self.plan.take,
        )

    def sample(
        self,
        sample_shape: SampleShape = (),
        *,
        scale: float | None = None,
        generator: torch.Generator | None = None,
        diagonal: bool | None = None,
        blockwise: bool = False,
    ) -> Tensor:
        """Whole samples ``(*sample_shape, P)`` on every rank: :meth:`sample_local`, assembled.

        ``diagonal`` and ``blockwise`` are as for :meth:`SWAGPosterior.sample`.
        """
        check_bool(blockwise, "blockwise")
        if diagonal is not None:
            check_bool(diagonal, "diagonal")
        target = self.diagonal() if diagonal else self
        shape, value, gen = target._sample_args(sample_shape, scale, generator)
        local = target.sample_local(shape, scale=value, blockwise=blockwise, generator=gen)
        return target._checked(target.assemble(local), shape)

    def _sample(
        self, shape: tuple[int, ...], scale: float | None, generator: torch.Generator | None
    ) -> Tensor:
        return self.assemble(self.sample_local(shape, scale=scale, generator=generator))

    def assemble(self, local: Tensor) -> Tensor:
        """Every rank's ``(..., L_r)`` as the whole ``(..., P)``, on every rank (one all_gather)."""
        return assemble(local, self.plan, self.group)

    def full(self) -> SWAGPosterior:
        """The whole posterior on every rank (one all_gather of ``(K + 2) · P`` entries)."""
        rows = torch.cat([self.mean[None], self.std[None], self.deviations.to(self.mean.dtype)])
        whole = assemble(rows, self.plan, self.group)
        dev = whole[2:].to(self.deviations.dtype)
        return SWAGPosterior(whole[0], whole[1], dev, self.layout, self.n, self.diagonal_only)

    @torch.no_grad()
    def apply_(self, model: nn.Module, theta: Tensor | None = None) -> nn.Module:
        """Write ``theta`` into ``model``: a whole ``(P,)`` vector (what :meth:`sample` gives)
        or this rank's entries ``(L,)`` (default: the mean's).

        An FSDP2 model takes this rank's entries into its local shards, without communication;
        a whole model (plain or DDP) gets the whole vector (one all_gather for ``(L,)``). Pass
        the same kind on every rank (where ``L == P`` a vector is taken as whole).
        """
        is_whole = theta is not None and theta.shape == (self.layout.size,)
        theta = self.mean if theta is None else theta
        whole = self.layout.size
        if theta.shape not in ((self.plan.size,), (whole,)):
            raise ValueError(
                f"theta must have shape ({whole},) (a whole sample) or ({self.plan.size},) "
                f"(this rank's entries), got {tuple(theta.shape)}"
            )
        params = self.layout.resolve(model)
        if all(hasattr(p, "device_mesh") for p in params):
            shards = [local_part(p) for p in params]
            if is_whole:
                theta = self.plan.take(theta[None])[0]
            torch._foreach_copy_(
                shards, [v.view_as(s) for v, s in zip(self.plan.views(theta), shards, strict=True)]
            )
        else:
            self.layout.scatter(theta if is_whole else self.assemble(theta), model)
        return model

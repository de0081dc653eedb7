"""Sharded statistics: which entries of the flat vector a rank holds, and gathering them.

Every covered parameter is split along its first dimension as ``torch.chunk`` splits it, which
is also how FSDP2's ``Shard(0)`` places parameters: ``ceil(d₀ / W)`` rows per rank, the last
ranks getting fewer rows or none. A 0-dim parameter counts as one row. A rank's local vector
(length ``L``, about ``P / W``) is the concatenation of its rows of every parameter, in layout
order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.distributed as dist
from torch import Tensor

from swag.core._params import local_part
from swag.core.layout import ParamLayout


def rows_of(rows: int, rank: int, world: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of ``rows`` that ``rank`` of ``world`` holds (``torch.chunk``)."""
    per = -(-rows // world)
    lo = min(rank * per, rows)
    return lo, min(lo + per, rows)


@dataclass(frozen=True)
class ShardPlan:
    """This rank's part of every covered parameter.

    Attributes:
        layout: the covered parameters (global shapes).
        rank: this process's index, ``0 ≤ rank < world``.
        world: the number of processes sharing the statistics.
    """

    layout: ParamLayout
    rank: int
    world: int

    def of(self, rank: int) -> ShardPlan:
        """The plan of another rank of the same world."""
        return ShardPlan(self.layout, rank, self.world)

    @cached_property
    def rows(self) -> tuple[tuple[int, int], ...]:
        """``(lo, hi)`` rows held, per parameter."""
        return tuple(rows_of(s[0] if s else 1, self.rank, self.world) for s in self.layout.shapes)

    @cached_property
    def row_sizes(self) -> tuple[int, ...]:
        """Entries per row (``numel / d₀``), per parameter."""
        return tuple(math.prod(s[1:]) for s in self.layout.shapes)

    @cached_property
    def numels(self) -> tuple[int, ...]:
        """Entries held, per parameter."""
        return tuple((hi - lo) * r for (lo, hi), r in zip(self.rows, self.row_sizes, strict=True))

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Where each parameter's entries start in the local vector."""
        return tuple(sum(self.numels[:i]) for i in range(len(self.numels)))

    @property
    def size(self) -> int:
        """L, the number of entries held."""
        return sum(self.numels)

    @cached_property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """``(start, end)`` of each parameter's held entries within that parameter, flattened."""
        return tuple(
            (lo * r, hi * r) for (lo, hi), r in zip(self.rows, self.row_sizes, strict=True)
        )

    @cached_property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """``(start, end)`` of each parameter's held entries in the global flat vector."""
        return tuple(
            (o + a, o + b) for o, (a, b) in zip(self.layout.offsets, self.spans, strict=True)
        )

    def take(self, flat: Tensor) -> Tensor:
        """This rank's entries ``(..., L)`` of a global ``(..., P)`` tensor (a copy)."""
        return torch.cat([flat[..., a:b] for a, b in self.ranges], dim=-1)

    def put(self, local: Tensor, flat: Tensor) -> None:
        """Write this rank's entries ``(..., L)`` into a global ``(..., P)`` tensor."""
        for (a, b), o in zip(self.ranges, self.offsets, strict=True):
            flat[..., a:b] = local[..., o : o + b - a]

    def views(self, local: Tensor) -> list[Tensor]:
        """Per parameter, a view of ``local`` ``(..., L)`` as ``(..., rows, *shape[1:])``."""
        lead = local.shape[:-1]
        return [
            local[..., o : o + n].view(*lead, hi - lo, *s[1:])
            for o, n, (lo, hi), s in zip(
                self.offsets, self.numels, self.rows, self.layout.shapes, strict=True
            )
        ]


def shard_plan(
    layout: ParamLayout, tensors: list[Tensor], shard: bool, group: dist.ProcessGroup | None
) -> tuple[
    ShardPlan | None, dist.ProcessGroup | None, tuple[tuple[int, int], ...] | None, tuple[int, ...]
]:
    """This rank's plan and process group, where its entries are, and how many per parameter.

    The plan is None for a whole (unsharded) collector. The spans locate this rank's entries
    in each flat parameter when the model holds more than them (DDP, ``shard=True``), and are
    None when it holds exactly them (whole, or FSDP2's local shards).

    Raises:
        ValueError: for DTensor parameters not placed as FSDP2's default ``Shard(0)``.
        RuntimeError: for ``shard=True`` without an initialised process group.
    """
    meshes = [getattr(t, "device_mesh", None) for t in tensors]
    if any(m is not None for m in meshes):
        plain = [n for n, m in zip(layout.names, meshes, strict=True) if m is None]
        # equal meshes count as one: slicing a mesh (mesh["dp"]) makes a new, equal object
        if plain or len(set(meshes)) > 1:
            raise ValueError(
                "the covered parameters mix FSDP2 (DTensor) parameters of different meshes or "
                f"plain ones ({plain[:5]}); select one fully_shard'ed set with params="
            )
        mesh = meshes[0]
        assert mesh is not None
        for name, t in zip(layout.names, tensors, strict=True):
            placements = tuple(getattr(t, "placements", ()))
            if mesh.ndim != 1 or len(placements) != 1 or repr(placements[0]) != "Shard(dim=0)":
                raise ValueError(
                    f"{name} is placed {placements} on a {mesh.ndim}-D mesh; swag supports "
                    "FSDP2's default Shard(0) on a 1-D mesh (fully_shard without "
                    "shard_placement_fn, no HSDP or tensor parallelism)"
                )
        plan = ShardPlan(layout, mesh.get_local_rank(), mesh.size())
        for name, t, numel in zip(layout.names, tensors, plan.numels, strict=True):
            if local_part(t).numel() != numel:
                raise ValueError(
                    f"{name}: this rank's shard has {local_part(t).numel()} entries, expected "
                    f"{numel} (torch.chunk rows of dim 0); is the parameter padded or resharded?"
                )
        return plan, mesh.get_group(), None, plan.numels
    if not shard:
        return None, None, None, layout.numels
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "shard=True needs an initialised process group: call "
            "torch.distributed.init_process_group() first (torchrun sets its environment), "
            "or leave shard=False to keep the full statistics on this process"
        )
    group = group or dist.group.WORLD
    plan = ShardPlan(layout, dist.get_rank(group), dist.get_world_size(group))
    return plan, group, plan.spans, plan.numels


def assemble(local: Tensor, plan: ShardPlan, group: dist.ProcessGroup | None) -> Tensor:
    """The whole ``(..., P)`` from every rank's ``(..., L_r)``, with one ``all_gather``.

    Every rank of ``group`` must call it.
    """
    lead = local.shape[:-1]
    local = local.reshape(-1, plan.size)
    width = max(plan.of(r).size for r in range(plan.world))
    buf = local.new_zeros(local.shape[0], width)
    buf[:, : plan.size] = local
    parts = [torch.empty_like(buf) for _ in range(plan.world)]
    dist.all_gather(parts, buf, group=group)
    out = local.new_empty(local.shape[0], plan.layout.size)
    for r, part in enumerate(parts):
        plan.of(r).put(part, out)
    return out.view(*lead, plan.layout.size)


def shard_tag(plan: ShardPlan | None) -> str:
    """The shard a collector's state records: ``"none"`` (whole) or ``"rank/world"``."""
    return "none" if plan is None else f"{plan.rank}/{plan.world}"


def any_rank(flag: bool, device: torch.device, group: dist.ProcessGroup | None) -> bool:
    """Whether ``flag`` is set on any rank of ``group``: one ``all_reduce`` of one number."""
    both = torch.tensor(float(flag), device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    return bool(both.item())


def require_whole(plan: ShardPlan | None, action: str) -> None:
    """Refuse ``action`` (``"posterior"`` or ``"save"``) on a sharded collector, naming the fix.

    Raises:
        RuntimeError: on a sharded collector (its state, not an argument, is what is wrong).
    """
    if plan is None:
        return
    if action == "save":
        raise RuntimeError(
            f"this collector holds only rank {plan.rank} of {plan.world}'s part of the "
            "statistics; save it with swag.distributed.save(collector, directory)"
        )
    raise RuntimeError(
        "this collector is sharded: sharded_posterior() gives this rank's part, and "
        "sharded_posterior().full() the whole posterior on every rank (one all_gather)"
    )

"""Running at scale: sharded statistics (DDP, FSDP2), sharded checkpoints, parallel MultiSWAG.

Sharded statistics split every covered parameter along its first dimension as FSDP2's
``Shard(0)`` does (``torch.chunk``: ``ceil(d₀ / W)`` rows per rank), so a rank holds about
``P / W`` of every flat statistic. Collecting communicates one number (whether any rank saw
NaN/inf); assembling a sample, the full posterior or a MultiSWAG takes one ``all_gather``.
Checkpoints go through ``torch.distributed.checkpoint`` with each statistic stored per parameter
as a DTensor, so they load at any world size, or in a single process.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from swag.core.distributed import _dcp
from swag.core.distributed._shard import ShardPlan
from swag.core.distributed.sharded import ShardedPosterior
from swag.core.multiswag import MultiSWAG
from swag.core.posterior import SWAGPosterior
from swag.persistence import _io

if TYPE_CHECKING:
    from swag.core.collector import Collector

__all__ = [
    "ShardPlan",
    "ShardedPosterior",
    "gather_multiswag",
    "load_collector",
    "load_posterior",
    "save",
]

# -- checkpoints (torch.distributed.checkpoint) ----------------------------------------------


def _state(
    flat: dict[str, Tensor], plan: ShardPlan, group: dist.ProcessGroup | None
) -> dict[str, Any]:
    """Per-parameter views ``{stat}/{param}`` of flat ``(..., L)`` statistics, for DCP.

    Each view has the row shape ``(..., d₀, *shape[1:])`` (``d₀ = 1`` for a 0-dim parameter);
    sharded, it is a DTensor ``Shard`` along the rows, so DCP can reshard it.
    """
    from torch.distributed.tensor import DTensor, Shard

    sharded = plan.world > 1
    mesh = None
    if sharded:
        from torch.distributed.device_mesh import DeviceMesh

        device = next(iter(flat.values())).device.type
        mesh = DeviceMesh.from_group(cast(dist.ProcessGroup, group or dist.group.WORLD), device)
    out: dict[str, Any] = {}
    for stat, t in flat.items():
        lead = tuple(t.shape[:-1])
        for name, view, shape in zip(
            plan.layout.names, plan.views(t), plan.layout.shapes, strict=True
        ):
            rows = (*lead, shape[0] if shape else 1, *shape[1:])
            if mesh is None:
                out[f"{stat}/{name}"] = view
                continue
            stride = tuple(math.prod(rows[i + 1 :]) for i in range(len(rows)))
            out[f"{stat}/{name}"] = DTensor.from_local(
                view, mesh, [Shard(len(lead))], shape=torch.Size(rows), stride=stride
            )
    return out


def save(obj: Collector | ShardedPosterior | SWAGPosterior, path: _io.PathLike) -> None:
    """Write a collector or posterior, sharded or not, as a DCP checkpoint folder at ``path``.

    Sharded, every rank of the object's group calls it and writes its own part. Whole (not
    sharded), it is written by this process alone; in a distributed job call it on one rank.
    The layout, counts and a checksum of the tensors go to ``path/swag.json`` (JSON, written
    atomically by rank 0 once the tensors are down); the checksum costs one ``all_reduce``.
    """
    from swag.core._state import check_savable
    from swag.core.collector import Collector

    meta: dict[str, Any] = {"format": _io.FORMAT, "version": _io.VERSION}
    if isinstance(obj, Collector):
        check_savable(obj._meta())  # a file without its rule would resume as equal weights
        flat = {name: getattr(obj, name) for name in _dcp.STATS["collector"]}
        meta.update(kind="collector", **obj._meta())
        plan, group = obj.plan, obj.process_group
    else:
        flat = {"mean": obj.mean, "std": obj.std, "deviations": obj.deviations}
        meta.update(
            kind=SWAGPosterior.kind, n=obj.n, layout=obj.layout.to_json(), max_rank=obj.rank
        )
        plan, group = (obj.plan, obj.group) if isinstance(obj, ShardedPosterior) else (None, None)
    meta.update(dtype=str(flat["std" if "std" in flat else "m2"].dtype).removeprefix("torch."))
    meta["deviation_dtype"] = str(flat["deviations"].dtype).removeprefix("torch.")
    meta.pop("shard", None)
    whole = plan is None
    plan = ShardPlan(obj.layout, 0, 1) if plan is None else plan
    # An interrupted overwrite must not leave new tensors beside the old swag.json: remove it
    # first (a folder without it does not load), and record the count among the tensors too.
    if whole or dist.get_rank(group) == 0:
        (Path(path) / _dcp.META).unlink(missing_ok=True)
    if not whole:
        dist.barrier(group)
    state = _state(flat, plan, group) | {_dcp.COUNT: torch.tensor([int(meta["n"])])}
    with _quiet():
        dcp_save(state, checkpoint_id=path, no_dist=whole, process_group=group)
    meta[_io.CHECKSUM] = _dcp.checksum(meta, _dcp.digest(flat, plan, group))
    if whole or dist.get_rank(group) == 0:
        _io.write_atomic(Path(path) / _dcp.META, json.dumps(meta).encode())
    if not whole:
        dist.barrier(group)


def _load(
    path: _io.PathLike,
    flat: dict[str, Tensor],
    plan: ShardPlan,
    group: dist.ProcessGroup | None,
    header: _dcp.Header,
) -> None:
    """Fill the flat statistics ``flat`` (this rank's part, as ``plan`` says) from ``path``.

    The tensors must have been saved with the count and checksum that swag.json gives.
    """
    whole = plan.world == 1
    count = torch.tensor([-1])
    state = _state(flat, plan, group) | {_dcp.COUNT: count}
    try:
        with _quiet():
            reader = _dcp.SafeReader(Path(path), header.index)
            dcp_load(state, storage_reader=reader, no_dist=whole, process_group=group)
    except CheckpointException as exc:  # DCP wraps every failure of a rank's read in it
        raise ValueError(
            f"{path}: the saved tensors do not fit {_dcp.META} (shapes, or a damaged folder): {exc}"
        ) from None
    if int(count.item()) != header.n:
        raise ValueError(
            f"{path}: the tensors were saved after {int(count.item())} collects but {_dcp.META} "
            f"says {header.n}: they come from different saves (an interrupted overwrite?). "
            "Save again"
        )
    expected = header.meta.get(_io.CHECKSUM)
    if (
        expected is not None
        and _dcp.checksum(header.meta, _dcp.digest(flat, plan, group)) != expected
    ):
        raise ValueError(
            f"{path} fails its checksum: its tensors or {_dcp.META} changed after they were "
            "written (a damaged copy?)"
        )
    _io.check_statistics(flat, path)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that a single-process save or load is single-process: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def load_collector(
    path: _io.PathLike,
    model: nn.Module,
    *,
    shard: bool = False,
    process_group: dist.ProcessGroup | None = None,
    device: torch.device | str | None = None,
    compiled: bool = False,
) -> Collector:
    """Resume a collector written by :func:`save`, at any world size or in one process.

    ``shard``, ``process_group`` and ``compiled`` mean what they mean for
    :class:`~swag.Collector` (an FSDP2 model is always sharded). Continuing to collect gives the
    same numbers as a run that was never interrupted, at whatever world size it was saved. The
    folder is checked (swag.json's fields, the index's shapes and dtypes, the count and the
    checksum) and ``model`` is never written.

    Raises:
        ValueError: if ``model`` does not have the saved parameters, or the folder is damaged or
            foreign (naming the file and the field).
    """
    from swag.core.collector import Collector

    header = _dcp.read_header(path, "collector")
    try:
        collector = Collector(
            model,
            header.max_rank,
            params=list(header.layout.names),
            device=device,
            dtype=header.dtype,
            deviation_dtype=header.deviation_dtype,
            shard=shard,
            process_group=process_group,
            compiled=compiled,
        )
    except ValueError as e:
        raise ValueError(f"{path} does not fit this model: {e}") from None
    diff = collector.layout.mismatch(header.layout)
    if diff:
        raise ValueError(f"{path} does not fit this model: {diff}")
    plan = collector.plan or ShardPlan(header.layout, 0, 1)
    stats = {name: getattr(collector, name) for name in _dcp.STATS["collector"]}
    _load(path, stats, plan, collector.process_group, header)
    collector._n = header.n
    return collector


def load_posterior(
    path: _io.PathLike,
    *,
    shard: bool = False,
    process_group: dist.ProcessGroup | None = None,
    device: torch.device | str = "cpu",
) -> SWAGPosterior | ShardedPosterior:
    """Read a posterior written by :func:`save`: whole, or this rank's shard (``shard=True``).

    Raises:
        ValueError: if the folder is damaged or foreign (naming the file and the field);
            RuntimeError: ``shard=True`` without a group.
    """
    header = _dcp.read_header(path, SWAGPosterior.kind)
    layout = header.layout
    if shard and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("shard=True needs an initialised process group; or pass shard=False")
    group = (process_group or dist.group.WORLD) if shard else None
    plan = ShardPlan(layout, dist.get_rank(group), dist.get_world_size(group)) if shard else None
    plan = plan or ShardPlan(layout, 0, 1)
    kw: dict[str, Any] = {"device": device, "dtype": header.dtype}
    k = header.max_rank
    flat = {
        "mean": torch.zeros(plan.size, **kw),
        "std": torch.zeros(plan.size, **kw),
        "deviations": torch.zeros(k, plan.size, device=device, dtype=header.deviation_dtype),
    }
    _load(path, flat, plan, group, header)
    if not shard:
        return SWAGPosterior(flat["mean"], flat["std"], flat["deviations"], layout, header.n)
    return ShardedPosterior(flat["mean"], flat["std"], flat["deviations"], plan, header.n, group)


# -- MultiSWAG, one member per rank ------------------------------------------------------------


def gather_multiswag(
    posterior: SWAGPosterior, *, process_group: dist.ProcessGroup | None = None
) -> MultiSWAG:
    """Each rank's own posterior (one member each), gathered into one MultiSWAG on every rank.

    Members are in rank order. Tensors travel by collectives, the layout as JSON bytes (no
    pickle): two small ``all_gather`` for the descriptions, one of ``(K_max + 2) · P`` entries
    per member.

    Raises:
        ValueError: if a member covers other parameters or has other dtypes than this rank's.
    """
    group = process_group or dist.group.WORLD
    world = dist.get_world_size(group)
    dev = posterior.mean.device
    desc = {
        "layout": posterior.layout.to_json(),
        "dtype": str(posterior.mean.dtype),
        "deviation_dtype": str(posterior.deviations.dtype),
    }
    blob = json.dumps({**desc, "n": posterior.n, "k": posterior.rank}).encode()
    size = torch.tensor([len(blob)], device=dev)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    width = int(max(sizes).item())
    mine = torch.zeros(width, dtype=torch.uint8, device=dev)
    mine[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    blobs = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(blobs, mine, group=group)
    descs = [
        json.loads(bytes(b[: int(s.item())].tolist()).decode())
        for b, s in zip(blobs, sizes, strict=True)
    ]
    for r, d in enumerate(descs):
        if {key: d[key] for key in desc} != desc:
            raise ValueError(
                f"rank {r}'s posterior differs from this rank's in its layout or dtypes; build "
                "every member from the same architecture, params= and dtype"
            )
    k_max = max(int(d["k"]) for d in descs)
    rows = posterior.mean.new_zeros(k_max + 2, posterior.layout.size)
    rows[0], rows[1] = posterior.mean, posterior.std
    rows[2 : 2 + posterior.rank] = posterior.deviations
    parts = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(parts, rows, group=group)
    members = [
        SWAGPosterior(
            p[0],
            p[1],
            p[2 : 2 + int(d["k"])].to(posterior.deviations.dtype),
            posterior.layout,
            int(d["n"]),
        )
        for p, d in zip(parts, descs, strict=True)
    ]
    return MultiSWAG(members)

"""A collector's statistics as a plain dict of whole tensors, for a framework's checkpoint.

Frameworks write one checkpoint file from rank 0, but a sharded collector (``shard=True`` or an
FSDP2 model) holds only its rank's part. :func:`collector_state` therefore assembles the whole
statistics on every rank (one ``all_gather``; every rank must call it, as frameworks do when
they build a checkpoint), and :func:`load_collector_state` takes back this rank's part. The
state is the same whether it was written sharded or not, so a run can be resumed at another
world size, or unsharded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import swag
from swag import _io
from swag.sharded import ShardedPosterior

FORMAT = "swag-collector-state"
VERSION = 1
_STATS = _io.COLLECTOR_STATISTICS


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def collector_state(collector: swag.Collector) -> dict[str, Any]:
    """The whole statistics (new tensors) and what they fit: layout, K, dtypes, n.

    Sharded, every rank of the collector's group must call it (one ``all_gather`` of
    ``(K + 3) · P`` entries); each rank then briefly holds the whole statistics.
    """
    c = collector
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "n": c.n,
        "max_rank": c.max_rank,
        "layout": c.layout.to_json(),
        "dtype": _dtype_name(c.m2),
        "deviation_dtype": _dtype_name(c.deviations),
    }
    if c.plan is None:
        tensors = {name: getattr(c, name).detach().clone() for name in _STATS}
        return {"meta": meta, "tensors": tensors}
    # One all_gather of the (K + 3, L) rows; the ring is cast up and back exactly.
    rows = torch.cat([c.shift[None], c.shifted_mean[None], c.m2[None], c.deviations.to(c.m2.dtype)])
    whole = assemble(c, rows)
    tensors = {
        "shift": whole[0],
        "shifted_mean": whole[1],
        "m2": whole[2],
        "deviations": whole[3:].to(c.deviations.dtype),
    }
    return {"meta": meta, "tensors": tensors}


def assemble(collector: swag.Collector, local: Tensor) -> Tensor:
    """Every rank's ``(..., L_r)`` part of a sharded collector's vectors, whole ``(..., P)``.

    One ``all_gather`` over the collector's group; every rank must call it.
    """
    c = collector
    assert c.plan is not None
    part = ShardedPosterior(c.mean, c.m2, c.deviations, c.plan, c.n, c.process_group)
    return part.assemble(local)


def load_collector_state(collector: swag.Collector, state: dict[str, Any], where: str) -> None:
    """Put :func:`collector_state`'s output into ``collector`` (this rank's part when sharded).

    Raises:
        ValueError: naming what does not match (``where`` says where the state came from);
            nothing is changed then.
    """
    c = collector
    meta, tensors = state.get("meta"), state.get("tensors")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or tensors is None:
        raise ValueError(f"{where} holds no swag collector state")
    if _io.int_field(meta, "version", where, low=1) > VERSION:
        raise ValueError(f"{where} was written by a newer swag (state version {meta['version']})")
    mine = {
        "max_rank": c.max_rank,
        "dtype": _dtype_name(c.m2),
        "deviation_dtype": _dtype_name(c.deviations),
    }
    n = _io.int_field(meta, "n", where)
    if not isinstance(tensors, dict) or set(tensors) != set(_STATS):
        raise ValueError(f"{where}: the SWAG state must hold the tensors {list(_STATS)}")
    problem = c.layout.mismatch(_io.layout_field(meta, "layout", where))
    problem = f"parameter layout differs: {problem}" if problem else None
    for key, value in mine.items():
        if problem is None and meta[key] != value:
            problem = f"{key} is {meta[key]} in the checkpoint but {value} here"
    size, k = c.layout.size, c.max_rank
    for name in _STATS:
        shape = (k, size) if name == "deviations" else (size,)
        if problem is None and tuple(tensors[name].shape) != shape:
            problem = f"{name} has shape {tuple(tensors[name].shape)}, expected {shape}"
    if problem:
        raise ValueError(
            f"the SWAG state in {where} does not fit this callback: {problem}. Build the "
            "callback with the max_rank, params= and dtype of the run that saved it"
        )
    _io.check_statistics(tensors, where)
    with torch.no_grad():
        for name in _STATS:
            whole = tensors[name]
            getattr(c, name).copy_(whole if c.plan is None else c.plan.take(whole))
    c.set_extra_state({"n": n})

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

from swag.core.collector import Collector
from swag.core.distributed._shard import assemble
from swag.core.layout import ParamLayout
from swag.persistence import _io

FORMAT = "swag-collector-state"
VERSION = 1
_STATS = _io.COLLECTOR_STATISTICS
_META_INTS = {"version": 1, "n": 0, "max_rank": 0}  # field: its least value
CHECKSUM = "sha256"  # of the meta (less this field) and the tensors, as swag's files carry


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def collector_state(collector: Collector) -> dict[str, Any]:
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
        return {"meta": _sealed(meta, tensors), "tensors": tensors}
    # One all_gather of the (K + 3, L) rows; the ring is cast up and back exactly.
    rows = torch.cat([c.shift[None], c.shifted_mean[None], c.m2[None], c.deviations.to(c.m2.dtype)])
    whole = assemble(rows, c.plan, c.process_group)
    tensors = {
        "shift": whole[0],
        "shifted_mean": whole[1],
        "m2": whole[2],
        "deviations": whole[3:].to(c.deviations.dtype),
    }
    return {"meta": _sealed(meta, tensors), "tensors": tensors}


def _sealed(meta: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    """``meta`` with the SHA-256 of itself and the tensors (one copy of them to the CPU)."""
    return meta | {CHECKSUM: _io.checksum({k: t.cpu() for k, t in tensors.items()}, meta)}


def state_problem(state: object) -> str | None:
    """What is wrong with a :func:`collector_state` dict read back from a checkpoint, or None.

    Checks the fields and their types, the tensors' names, types, dtypes (those the meta
    records), finiteness (and ``m2 >= 0``), and the checksum when the state carries one (states
    written before it existed carry none). Shapes and the layout are checked against the
    collector by :func:`load_collector_state`.
    """
    if not isinstance(state, dict):
        return f"the state is a {type(state).__name__}, not a dict"
    meta, tensors = state.get("meta"), state.get("tensors")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return "it holds no swag collector state"
    for key, low in _META_INTS.items():
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 10**18:
            return f"the field {key!r} must be an int in [{low}, 10**18), got {value!r}"
    if meta["version"] > VERSION:
        return f"it was written by a newer swag (state version {meta['version']})"
    for key in ("layout", "dtype", "deviation_dtype"):
        if not isinstance(meta.get(key), str):
            return f"the field {key!r} must be a string, got {meta.get(key)!r}"
    try:
        ParamLayout.from_json(meta["layout"])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        return f"the field 'layout' is not a parameter layout: {meta['layout'][:80]!r}"
    if not isinstance(tensors, dict) or sorted(tensors) != sorted(_STATS):
        keys = sorted(tensors) if isinstance(tensors, dict) else type(tensors).__name__
        return f"the tensors must be exactly {list(_STATS)}, got {keys}"
    for name in _STATS:
        t = tensors[name]
        dtype = meta["deviation_dtype"] if name == "deviations" else meta["dtype"]
        if not isinstance(t, Tensor):
            return f"the tensor {name!r} is a {type(t).__name__}"
        if _dtype_name(t) != dtype:
            return f"the tensor {name!r} has dtype {_dtype_name(t)}, the state says {dtype}"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"the tensor {name!r} holds NaN or inf"
    if bool((tensors["m2"] < 0).any()):
        return "the tensor 'm2' holds negative sums of squares"
    seal = meta.get(CHECKSUM)
    if seal is not None:
        rest = {k: v for k, v in meta.items() if k != CHECKSUM}
        try:
            expected = _io.checksum({k: t.cpu() for k, t in tensors.items()}, rest)
        except (TypeError, ValueError) as exc:  # a meta value JSON cannot write
            return f"its checksum cannot be computed ({exc})"
        if seal != expected:
            return "its checksum does not match its contents: the checkpoint is damaged"
    return None


def load_collector_state(collector: Collector, state: dict[str, Any], where: str) -> None:
    """Put :func:`collector_state`'s output into ``collector`` (this rank's part when sharded).

    Raises:
        ValueError: naming what does not match (``where`` says where the state came from);
            nothing is changed then.
    """
    c = collector
    damage = state_problem(state)
    if damage is not None:
        raise ValueError(f"the SWAG state in {where} is refused: {damage}")
    meta, tensors = state["meta"], state["tensors"]
    mine = {
        "max_rank": c.max_rank,
        "dtype": _dtype_name(c.m2),
        "deviation_dtype": _dtype_name(c.deviations),
    }
    n = _io.int_field(meta, "n", where)
    if not isinstance(tensors, dict) or set(tensors) != set(_STATS):
        raise ValueError(f"{where}: the SWAG state must hold the tensors {list(_STATS)}")
    problem = c.layout.mismatch(ParamLayout.from_metadata(meta, "layout", where))
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

"""A collector's state as one record: its metadata, written and checked here, and its file.

``Collector`` keeps its state through :class:`CollectorState`; its ``save`` / ``load`` (and
``swag.distributed.save``) go through these functions. The file format itself (the atomic
writer, the validator) is :mod:`swag.persistence._io`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from swag.core._checks import check_statistics_dtype
from swag.core.distributed._shard import ShardPlan, shard_tag
from swag.core.layout import ParamLayout
from swag.persistence import _io
from swag.persistence._checked_state import CheckedState


def collector_meta(
    n: int,
    max_rank: int,
    layout: ParamLayout,
    dtypes: tuple[torch.dtype, torch.dtype],
    shard: str,
    rule: str,
) -> dict[str, Any]:
    """The collector's metadata, as files, DCP folders and ``state_dict`` record it.

    ``dtypes`` are the statistics' and the ring's; ``shard`` is ``"none"`` or ``"rank/world"``;
    ``rule`` the averaging rule's name (``"none"``: equal weights), recorded only with a rule.
    """
    return {
        "n": n,
        "max_rank": max_rank,
        "layout": layout.to_json(),
        "dtype": str(dtypes[0]).removeprefix("torch."),
        "deviation_dtype": str(dtypes[1]).removeprefix("torch."),
        "shard": shard,
        # only with a rule: files (which refuse rules) keep the fields their loaders check
        **({} if rule == "none" else {"average": rule}),
    }


def collector_mismatch(
    saved: Mapping[str, str], mine: Mapping[str, Any], layout: ParamLayout
) -> str | None:
    """Why the metadata ``saved`` does not fit a collector with metadata ``mine``; or None."""
    mine = {k: str(v) for k, v in mine.items()}
    if saved.get("shard", "none") != mine["shard"]:
        return (
            f"it is the statistics shard (rank/world) {saved.get('shard', 'none')}, this "
            f"collector holds {mine['shard']}; load it on that rank and world size, or "
            "reshard it with swag.distributed.save and swag.distributed.load_collector"
        )
    if saved.get("average", "none") != mine.get("average", "none"):
        return (
            f"it was collected with average={saved.get('average', 'none')}, this collector "
            f"has average={mine.get('average', 'none')}; create it with the same rule"
        )
    for key in ("max_rank", "dtype", "deviation_dtype"):
        if saved.get(key) != mine[key]:
            return f"{key} is {saved.get(key)} in the saved state but {mine[key]} here"
    try:
        _io.int_field(saved, "n", "the saved state")
        other = ParamLayout.from_metadata(saved, "layout", "the saved state")
    except ValueError as e:
        return str(e)
    diff = layout.mismatch(other)
    return f"parameter layout differs: {diff}" if diff else None


def check_savable(meta: Mapping[str, Any]) -> None:
    """Refuse to write a collector whose files would resume without its averaging rule."""
    if "average" in meta:
        raise ValueError(
            f"files do not yet record an averaging rule (average={meta['average']}); "
            "checkpoint this collector with torch.save(collector.state_dict()) instead"
        )


def save_collector(path: _io.PathLike, statistics: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write a collector's ``statistics`` (``COLLECTOR_STATISTICS``) and ``meta`` to ``path``."""
    check_savable(meta)
    _io.save_file(path, "collector", statistics, {k: str(v) for k, v in meta.items()})


@dataclass(frozen=True)
class CollectorFile:
    """What a collector file holds, checked: the arguments to rebuild it and its statistics."""

    layout: ParamLayout
    max_rank: int
    n: int
    dtype: torch.dtype
    deviation_dtype: torch.dtype
    meta: dict[str, str]
    statistics: dict[str, Tensor]


def read_collector(path: _io.PathLike) -> CollectorFile:
    """Read and check a collector file whole: fields, tensor shapes and dtypes, finiteness,
    and statistics in a dtype still accepted (not half precision).

    Raises:
        ValueError: naming the file and the field if it is damaged or foreign.
    """
    tensors, meta = _io.load_file(path, "collector")
    layout = ParamLayout.from_metadata(meta, "layout", path)
    dtype = _io.dtype_field(meta, "dtype", path)
    deviation_dtype = _io.dtype_field(meta, "deviation_dtype", path)
    k, n = _io.int_field(meta, "max_rank", path), _io.int_field(meta, "n", path)
    _io.expect_tensors(tensors, _io.COLLECTOR_STATISTICS, path)
    statistics = {
        name: _io.tensor_field(
            tensors,
            name,
            path,
            (k, layout.size) if name == "deviations" else (layout.size,),
            (deviation_dtype if name == "deviations" else dtype,),
        )
        for name in _io.COLLECTOR_STATISTICS
    }
    try:
        check_statistics_dtype(dtype)
    except ValueError as e:
        raise ValueError(f"{path} holds statistics that are no longer accepted: {e}") from None
    return CollectorFile(layout, k, n, dtype, deviation_dtype, meta, statistics)


class CollectorState(CheckedState):
    """What a :class:`~swag.Collector` records and resumes from: its statistics (the buffers
    named in ``COLLECTOR_STATISTICS``) and its metadata (:func:`collector_meta`).

    ``state_dict`` (the metadata as ``_extra_state``; ``load_state_dict`` checks the whole
    state before copying any of it), files (:func:`save_collector`, :func:`load_collector`)
    and ``swag.distributed`` folders all record the same :meth:`_meta`.
    """

    shift: Tensor
    shifted_mean: Tensor
    m2: Tensor
    deviations: Tensor
    layout: ParamLayout
    max_rank: int
    plan: ShardPlan | None
    _rule_name: str  # rule_tag(): statistics of one rule must not resume under another
    _n: int

    _state_name = "collector state"

    def get_extra_state(self) -> dict[str, Any]:
        return {"version": _io.VERSION, **self._meta()}

    def set_extra_state(self, state: Any) -> None:
        self._n = int(state["n"])  # checked (state_problem) before anything was copied

    def _statistics(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in _io.COLLECTOR_STATISTICS}

    def _state_problem(self, state_dict: dict[str, Any], prefix: str) -> str | None:
        return state_problem(state_dict, prefix, self._statistics(), self._describe_mismatch)

    def _meta(self) -> dict[str, Any]:
        dtypes, tag = (self.m2.dtype, self.deviations.dtype), shard_tag(self.plan)
        return collector_meta(self._n, self.max_rank, self.layout, dtypes, tag, self._rule_name)

    def _describe_mismatch(self, meta: dict[str, str]) -> str | None:
        return collector_mismatch(meta, self._meta(), self.layout)


def rule_tag(average: object | None, mean_only: bool) -> str:
    """The averaging rule as the state records it: ``"none"`` (equal weights) or its repr,
    with ``", mean only"`` for a collector that keeps only the mean."""
    return ("none" if average is None else repr(average)) + (", mean only" if mean_only else "")


C = TypeVar("C", bound=CollectorState)


def load_collector(path: _io.PathLike, make: Callable[..., C]) -> C:
    """The collector saved at ``path``, built by ``make(max_rank, params=, dtype=,
    deviation_dtype=)`` (the class, bound to the model and the caller's options), then filled.

    Raises:
        ValueError: naming the file and what does not fit the model, or the field if the file
            is damaged or foreign (:func:`read_collector`).
    """
    saved = read_collector(path)
    try:
        collector = make(
            saved.max_rank,
            params=list(saved.layout.names),
            dtype=saved.dtype,
            deviation_dtype=saved.deviation_dtype,
        )
    except ValueError as e:
        raise ValueError(f"{path} does not fit this model: {e}") from None
    problem = collector._describe_mismatch(saved.meta)
    if problem:
        raise ValueError(f"{path} does not fit this model: {problem}")
    for name, t in collector._statistics().items():
        t.copy_(saved.statistics[name])
    collector._n = saved.n
    return collector


def state_problem(
    state_dict: dict[str, Any],
    prefix: str,
    mine: dict[str, Tensor],
    describe_mismatch: Callable[[dict[str, str]], str | None],
) -> str | None:
    """What is wrong with ``state_dict`` as a collector's state; ``None`` if it fits.

    Checks the metadata (``describe_mismatch``: layout, ``max_rank``, dtypes, shard; and ``n``)
    and every statistic of ``mine`` (the collector's buffers by name): present, a tensor of the
    same shape and dtype, finite (``m2`` >= 0).
    """
    extra = state_dict.get(prefix + "_extra_state")
    if not isinstance(extra, dict):
        return "the state has no swag collector metadata"
    problem = describe_mismatch({k: str(v) for k, v in extra.items()})
    if problem:
        return problem
    n = extra.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return f"n must be an integer >= 0, got {n!r}"
    for name, buf in mine.items():
        key = prefix + name
        t = state_dict.get(key)
        if t is None:
            return f"{key} is missing (a partial state is never loaded)"
        if not isinstance(t, Tensor):
            return f"{key} is a {type(t).__name__}, not a tensor"
        if t.shape != buf.shape or t.dtype != buf.dtype:
            return (
                f"{key} has shape {tuple(t.shape)} {t.dtype}, expected "
                f"{tuple(buf.shape)} {buf.dtype}"
            )
        if not bool(t.isfinite().all()) or (name == "m2" and bool((t < 0).any())):
            return f"{key} holds NaN, inf or a negative M2: it is damaged"
    return None

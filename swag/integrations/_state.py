"""A callback's state: its collector's statistics as whole tensors, and its counters.

:func:`collector_state` gives the collector's part as a plain dict, for a framework's
checkpoint; :class:`CallbackState` adds the callback's schedule position and counters, and is
what ``swag.save(callback, path)`` writes and ``swag.load(path)`` gives back (one safetensors
file through :mod:`swag._io`'s writer and validator, then the checks here).

Frameworks write one checkpoint file from rank 0, but a sharded collector (``shard=True`` or an
FSDP2 model) holds only its rank's part. :func:`collector_state` therefore assembles the whole
statistics on every rank (one ``all_gather``; every rank must call it, as frameworks do when
they build a checkpoint), and :func:`load_collector_state` takes back this rank's part. The
state is the same whether it was written sharded or not, so a run can be resumed at another
world size, or unsharded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from swag.core.collector import Collector
from swag.core.distributed._shard import assemble
from swag.core.layout import ParamLayout
from swag.family.averaging import AveragingRule
from swag.persistence import _io

FORMAT = "swag-collector-state"
VERSION = 1
_STATS = _io.COLLECTOR_STATISTICS
_META_INTS = {"version": 1, "n": 0, "max_rank": 0}  # field: its least value
CHECKSUM = "sha256"  # of the meta (less this field) and the tensors, as swag's files carry
RULE = "average."  # the prefix of an averaging rule's tensors (LAWA's window) in the state
KIND = "callback-state"  # the file kind swag.save writes for a callback
FRAMEWORKS = ("lightning", "transformers")


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
    rule = c.get_extra_state().get("average")
    if rule is not None:  # only with a rule: states without one keep their fields (and seals)
        meta["average"] = rule
    buffers = {} if c.averaging is None else c.averaging.state_dict()
    if c.plan is None:
        tensors = {name: getattr(c, name).detach().clone() for name in _STATS}
        tensors |= {RULE + k: v.detach().clone() for k, v in buffers.items()}
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
    tensors |= {RULE + k: assemble(v, c.plan, c.process_group) for k, v in buffers.items()}
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
    if not isinstance(meta.get("average", ""), str):
        return f"the field 'average' must be a string, got {meta['average']!r}"
    try:  # the one layout parser of swag's files
        ParamLayout.from_metadata(meta, "layout", "the state")
    except ValueError as exc:
        return str(exc)
    if not isinstance(tensors, dict):
        return f"the tensors must be exactly {list(_STATS)}, got {type(tensors).__name__}"
    rule = sorted(k for k in tensors if isinstance(k, str) and k.startswith(RULE))
    if rule and "average" not in meta:
        return f"the tensors {rule} belong to an averaging rule, but none is recorded"
    if sorted(tensors) != sorted([*_STATS, *rule]):
        return f"the tensors must be exactly {list(_STATS)} (and a rule's), got {sorted(tensors)}"
    for name in [*_STATS, *rule]:
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
    buffers = {} if c.averaging is None else c.averaging.state_dict()
    names = [*_STATS, *(RULE + k for k in buffers)]
    problem = c.layout.mismatch(ParamLayout.from_metadata(meta, "layout", where))
    problem = f"parameter layout differs: {problem}" if problem else None
    rule, saved = c.get_extra_state().get("average", "none"), meta.get("average", "none")
    if problem is None and saved != rule:
        problem = f"it was collected with average={saved}, this callback has average={rule}"
    if problem is None and set(tensors) != set(names):
        problem = f"its tensors are {sorted(tensors)}, this callback's {sorted(names)}"
    for key, value in mine.items():
        if problem is None and meta[key] != value:
            problem = f"{key} is {meta[key]} in the checkpoint but {value} here"
    size, k = c.layout.size, c.max_rank
    shapes = {k: (*v.shape[:-1], size) for k, v in buffers.items()}
    for name in names:
        shape = shapes.get(name.removeprefix(RULE), (k, size) if name == "deviations" else (size,))
        if problem is None and tuple(tensors[name].shape) != shape:
            problem = f"{name} has shape {tuple(tensors[name].shape)}, expected {shape}"
    if problem:
        raise ValueError(
            f"the SWAG state in {where} does not fit this callback: {problem}. Build the "
            "callback with the max_rank, params=, dtype and average= of the run that saved it"
        )
    _io.check_statistics(tensors, where)
    targets = {name: getattr(c, name) for name in _STATS} | {
        RULE + k: v for k, v in buffers.items()
    }
    with torch.no_grad():
        for name, target in targets.items():
            whole = tensors[name]
            target.copy_(whole if c.plan is None else c.plan.take(whole))
    c.set_extra_state({"n": n})


def _count(value: object) -> bool:
    """Whether ``value`` is an int >= 0 (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value < 10**18


def lightning_fields_problem(fields: object) -> str | None:
    """What is wrong with the Lightning callback's fields (all but the collector), or None."""
    if not isinstance(fields, dict):
        return f"it is a {type(fields).__name__}, not a dict"
    for key in ("steps", "start", "swalr"):
        if key not in fields:
            return f"it lacks the field {key!r}"
    for key in ("steps", "first_optimizer_steps"):
        if not _count(fields.get(key, 0)):
            return f"the field {key!r} must be an int >= 0, got {fields[key]!r}"
    start = fields["start"]
    epoch_ok = isinstance(start, list | tuple) and len(start) == 2
    if not (epoch_ok and (start[0] is None or _count(start[0])) and _count(start[1])):
        return f"the field 'start' must be [epoch or None, step], got {start!r}"
    if fields["swalr"] is not None and not isinstance(fields["swalr"], dict):
        return f"the field 'swalr' must be a scheduler state dict or None, got {fields['swalr']!r}"
    return None


def transformers_fields_problem(fields: object) -> str | None:
    """What is wrong with the Hugging Face callback's fields, or None."""
    if not isinstance(fields, dict) or set(fields) != {"start_step"}:
        return f"the fields must be exactly ['start_step'], got {fields!r}"
    if not _count(fields["start_step"]):
        return f"the field 'start_step' must be an int >= 0, got {fields['start_step']!r}"
    return None


_FIELDS_PROBLEM = {
    "lightning": lightning_fields_problem,
    "transformers": transformers_fields_problem,
}


@dataclass(frozen=True, eq=False)
class CallbackState:
    """What a framework ``SWAGCallback`` needs to resume, as ``swag.save`` writes it.

    Get one with ``callback.callback_state()`` (or ``swag.load(path)``), give it back with
    ``callback.load_callback_state(state)`` before training resumes.

    Attributes:
        framework: ``"lightning"`` or ``"transformers"``, the callback that made it.
        collector: the collector's statistics, :func:`collector_state`'s dict: ``"meta"``
            (layout, ``n``, ``max_rank``, dtypes, averaging rule, checksum) and ``"tensors"``
            (whole ``(P,)`` and ``(K, P)`` statistics, and a rule's window).
        fields: the schedule position and counters (JSON values): Lightning's ``steps``,
            ``first_optimizer_steps``, ``start`` and ``swalr``; the Trainer's ``start_step``.
    """

    framework: str
    collector: dict[str, Any]
    fields: dict[str, Any]

    def problem(self) -> str | None:
        """What is wrong with the state (fields, tensors, checksum), or None."""
        if self.framework not in FRAMEWORKS:
            return f"framework must be one of {list(FRAMEWORKS)}, got {self.framework!r}"
        problem = _FIELDS_PROBLEM[self.framework](self.fields)
        return problem if problem is not None else state_problem(self.collector)

    def to_file(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The tensors and string metadata ``swag.save`` writes."""
        meta = {
            "framework": self.framework,
            "collector": json.dumps(self.collector["meta"]),
            "callback": json.dumps(self.fields),
        }
        return dict(self.collector["tensors"]), meta

    @classmethod
    def from_file(
        cls, tensors: dict[str, Tensor], meta: dict[str, str], where: _io.PathLike
    ) -> CallbackState:
        """Rebuild from :meth:`to_file`'s output, checked whole.

        Raises:
            ValueError: naming ``where`` and what is wrong.
        """
        state = cls(
            _io.require(meta, "framework", where),
            {"meta": _io.json_field(meta, "collector", where), "tensors": tensors},
            _io.json_field(meta, "callback", where),
        )
        problem = state.problem()
        if problem is not None:
            raise ValueError(f"{where}: the callback state is refused: {problem}")
        return state

    def to_collector(self, model: nn.Module, *, average: AveragingRule | None = None) -> Collector:
        """A :class:`swag.Collector` on ``model`` holding these statistics (to continue, or for
        ``posterior()``); ``average`` must be the rule the callback was built with.

        Raises:
            ValueError: if ``model`` or ``average`` does not fit the state, naming what differs.
        """
        meta = self.collector["meta"]
        collector = Collector(
            model,
            meta["max_rank"],
            params=list(ParamLayout.from_metadata(meta, "layout", "the state").names),
            dtype=_io.FLOAT_DTYPES[meta["dtype"]],
            deviation_dtype=_io.FLOAT_DTYPES[meta["deviation_dtype"]],
            average=average,
        )
        load_collector_state(collector, self.collector, "the callback state")
        return collector


def check_callback_state(state: object, framework: str) -> CallbackState:
    """``state``, checked to be an intact :class:`CallbackState` of ``framework``'s callback.

    Raises:
        TypeError: if ``state`` is not a :class:`CallbackState`.
        ValueError: naming what is wrong.
    """
    if not isinstance(state, CallbackState):
        raise TypeError(
            f"state must be a swag CallbackState (from swag.load), got {type(state).__name__}"
        )
    if state.framework != framework:
        raise ValueError(
            f"state was saved by the {state.framework} callback; a {framework} SWAGCallback "
            "cannot resume from it"
        )
    problem = state.problem()
    if problem is not None:
        raise ValueError(f"the callback state is refused: {problem}")
    return state

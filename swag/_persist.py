"""``swag.save`` / ``swag.load``: one entry point for every object swag writes to a file.

Posteriors of every kind (a MultiSWAG with members of any kinds included), collectors,
snapshots and the framework callbacks' state (``swag.integrations``' ``SWAGCallback``s, or
their ``CallbackState``) go through the one writer and validator in :mod:`swag._io`
(safetensors, atomic, checksummed, finiteness and ``m2``/``std`` >= 0 checked, layout
parsed by one parser; no pickle). Sharded state is written with :func:`swag.distributed.save`
(DCP), which uses the same validator.
"""

from __future__ import annotations

import torch
from torch import nn

from swag.core._posterior_base import Posterior
from swag.core.collector import Collector
from swag.core.distributed.sharded import ShardedPosterior
from swag.persistence import _io

__all__ = ["load", "save"]

Saveable = Posterior | Collector
_MODEL_KINDS = ("collector", "snapshots")


def save(obj: object, path: _io.PathLike) -> None:
    """Write ``obj`` to ``path``: any posterior, a :class:`~swag.Collector`, ``Snapshots``, or
    a framework ``SWAGCallback`` (its ``callback_state()``: what it needs to resume).

    A sharded callback (``shard=True``, FSDP2) assembles its state on every rank (one
    ``all_gather``): call it on every rank, with a ``path`` per rank or on one rank's only.

    Raises:
        TypeError: for an object swag does not write to one file (a ``ShardedPosterior``:
            use :func:`swag.distributed.save`), naming what to use.
    """
    from swag.family.snapshots import Snapshots
    from swag.integrations._state import KIND, CallbackState

    if callable(getattr(obj, "callback_state", None)):  # a framework callback
        obj = obj.callback_state()  # type: ignore[attr-defined]
    if isinstance(obj, CallbackState):
        _io.save_file(path, KIND, *obj.to_file())
        return
    if isinstance(obj, ShardedPosterior):
        obj.to_state()  # raises, naming swag.distributed.save
    if isinstance(obj, Posterior):
        _io.save_file(path, obj.kind, *obj.to_state())
    elif isinstance(obj, (Collector, Snapshots)):
        obj.save(path)
    else:
        raise TypeError(
            "swag.save writes posteriors, Collector and Snapshots (and the framework "
            f"SWAGCallbacks' state), got {type(obj).__name__}"
        )


def load(
    path: _io.PathLike,
    model: nn.Module | None = None,
    *,
    device: torch.device | str | None = None,
) -> object:
    """Read what :func:`save` wrote, of whatever kind the file says.

    Args:
        path: the file.
        model: the network a ``Collector`` or ``Snapshots`` is attached to (required for them,
            unused for posteriors and a callback's state).
        device: where the tensors go (default: the CPU).

    Returns:
        An object of the saved type; for a callback, its ``CallbackState`` (give it to
        ``callback.load_callback_state``).

    Raises:
        ValueError: if the file is damaged, foreign, of an unknown kind, or does not fit
            ``model``; or if a collector or snapshots file is read without ``model``.
    """
    from swag.integrations._state import KIND, CallbackState

    kind = _io.read_kind(path)
    if kind == KIND:
        return CallbackState.from_file(*_io.load_file(path, KIND, device), path)
    if kind in _MODEL_KINDS:
        if model is None:
            raise ValueError(f"{path} holds a {kind}: pass the model it is attached to, model=")
        if kind == "collector":
            return Collector.load(path, model, device=device)
        from swag.family.snapshots import Snapshots

        return Snapshots.load(path, model, device=device)
    cls = Posterior.kind_class(kind)
    if cls is None:
        known = sorted([*Posterior.kinds, *_MODEL_KINDS, KIND])
        raise ValueError(f"{path} holds a {kind!r}, which swag cannot read; known kinds: {known}")
    return cls.from_state(*_io.load_file(path, kind, device), str(path))

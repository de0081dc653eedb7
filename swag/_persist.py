"""``swag.save`` / ``swag.load``: one entry point for every object swag writes to a file.

Posteriors of every kind (a MultiSWAG with members of any kinds included), collectors and
snapshots go through the one writer and validator in :mod:`swag._io` (safetensors, atomic,
checksummed, finiteness and ``m2``/``std`` >= 0 checked, layout parsed by one parser; no pickle).
Sharded state is written with :func:`swag.distributed.save` (DCP), which uses the same
validator.
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
    """Write ``obj`` (any posterior, a :class:`~swag.Collector` or ``Snapshots``) to ``path``.

    Raises:
        TypeError: for an object swag does not write to one file (a ``ShardedPosterior``:
            use :func:`swag.distributed.save`), naming what to use.
    """
    from swag.family.snapshots import Snapshots

    if isinstance(obj, ShardedPosterior):
        obj.to_state()  # raises, naming swag.distributed.save
    if isinstance(obj, Posterior):
        _io.save_file(path, obj.kind, *obj.to_state())
    elif isinstance(obj, (Collector, Snapshots)):
        obj.save(path)
    else:
        raise TypeError(
            f"swag.save writes posteriors, Collector and Snapshots, got {type(obj).__name__}"
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
            unused for posteriors).
        device: where the tensors go (default: the CPU).

    Returns:
        An object of the saved type.

    Raises:
        ValueError: if the file is damaged, foreign, of an unknown kind, or does not fit
            ``model``; or if a collector or snapshots file is read without ``model``.
    """
    kind = _io.read_kind(path)
    if kind in _MODEL_KINDS:
        if model is None:
            raise ValueError(f"{path} holds a {kind}: pass the model it is attached to, model=")
        if kind == "collector":
            return Collector.load(path, model, device=device)
        from swag.family.snapshots import Snapshots

        return Snapshots.load(path, model, device=device)
    cls = Posterior.kind_class(kind)
    if cls is None:
        known = sorted([*Posterior.kinds, *_MODEL_KINDS])
        raise ValueError(f"{path} holds a {kind!r}, which swag cannot read; known kinds: {known}")
    return cls.from_state(*_io.load_file(path, kind, device), str(path))

"""Old module paths, kept importable: one table and one finder (``docs/architecture.md``).

The code lives in its part (``swag.core``, ``swag.evaluation``, ``swag.family``,
``swag.persistence``). Two kinds of old path point there:

- a **public namespace** (:data:`PUBLIC`, e.g. ``swag.metrics``, ``swag.subspace``): the path
  the docs teach for names that are not on the package face. It stays, silently, and so do its
  submodules (``swag.metrics.calibration``);
- a **moved module** (:data:`DEPRECATED`, e.g. ``swag.posterior``, ``swag.scale``): its first
  import raises one :class:`DeprecationWarning` naming the new path. These go in the next
  release.

Either way the old path gives the very module object of the new one (``sys.modules`` holds both
names), so ``isinstance`` checks, monkeypatching and pickles agree.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

PUBLIC: dict[str, str] = {
    "swag.averaging": "swag.family.averaging",
    "swag.bn": "swag.evaluation.bn",
    "swag.conformal": "swag.evaluation.conformal",
    "swag.corruptions": "swag.evaluation.corruptions",
    "swag.distributed": "swag.core.distributed",
    "swag.landscape": "swag.family.landscape",
    "swag.lowp": "swag.family.lowp",
    "swag.metrics": "swag.evaluation.metrics",
    "swag.optim": "swag.family.optim",
    "swag.plots": "swag.evaluation.plots",
    "swag.schedules": "swag.family.schedules",
    "swag.snapshots": "swag.family.snapshots",
    "swag.subspace": "swag.family.subspace",
    "swag.swap": "swag.family.swap",
}
"""Public namespaces: old path -> the module it names; silent, submodules included."""

DEPRECATED: dict[str, str] = {
    "swag._batches": "swag.evaluation._batches",
    "swag._checked_state": "swag.persistence._checked_state",
    "swag._checks": "swag.core._checks",
    "swag._dcp": "swag.core.distributed._dcp",
    "swag._dropout": "swag.evaluation._dropout",
    "swag._gaussian": "swag.core._gaussian",
    "swag._guards": "swag.core._checks",
    "swag._io": "swag.persistence._io",
    "swag._params": "swag.core._params",
    "swag._posterior_base": "swag.core._posterior_base",
    "swag._random": "swag.core._random",
    "swag._reduce": "swag.evaluation._reduce",
    "swag._shard": "swag.core.distributed._shard",
    "swag._step": "swag.core._step",
    "swag.averaging._fast": "swag.core._fast_average",
    "swag.averaging._rules": "swag.core._averaging_rules",
    "swag.collector": "swag.core.collector",
    "swag.layout": "swag.core.layout",
    "swag.multiswag": "swag.core.multiswag",
    "swag.point": "swag.core.point",
    "swag.posterior": "swag.core.posterior",
    "swag.predict": "swag.evaluation.predict",
    "swag.scale": "swag.evaluation.fit_scale",
    "swag.sharded": "swag.core.distributed.sharded",
    "swag.temperature": "swag.evaluation.temperature",
}
"""Moved modules: old path -> new path; the first import warns."""


def target(name: str) -> tuple[str, bool] | None:
    """The module an old path names and whether it is deprecated, or None (not an old path)."""
    if name in DEPRECATED:
        return DEPRECATED[name], True
    head, dot, tail = name, "", ""
    while head:
        if head in PUBLIC:
            return PUBLIC[head] + dot + tail, False
        head, _, last = head.rpartition(".")
        tail = last + dot + tail
        dot = "."
    return None


class _Loader(importlib.abc.Loader):
    """Hands out the already imported new module under the old name."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec; restore


class AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves the old paths of :data:`PUBLIC` and :data:`DEPRECATED` (first on the meta path)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target_: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        found = target(fullname)
        if found is None:
            return None
        new, deprecated = found
        if deprecated:
            warnings.warn(
                f"{fullname} is deprecated and goes in the next release: import {new}",
                DeprecationWarning,
                stacklevel=_caller_level(),
            )
        module = importlib.import_module(new)
        return importlib.machinery.ModuleSpec(fullname, _Loader(module))


def _caller_level() -> int:
    """The stack level of the first frame outside the import system and this file."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_code.co_filename == __file__ or "importlib" in frame.f_code.co_filename
    ):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


class Face(ModuleType):
    """The package ``swag``: an old submodule path never hides a face name.

    Importing ``swag.predict`` (the old module) makes the import system set ``swag.predict``
    to that module; the face keeps the function.
    """

    def __setattr__(self, name: str, value: object) -> None:
        current = self.__dict__.get(name)
        if isinstance(value, ModuleType) and not isinstance(current, (ModuleType, type(None))):
            return
        super().__setattr__(name, value)


def install(package: ModuleType) -> None:
    """Put the finder first on ``sys.meta_path`` (once) and give ``package`` the face's class."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
    package.__class__ = Face

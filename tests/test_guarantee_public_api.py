"""The public surface says what is public: every public module has an ``__all__`` that lists
every public name it defines, internals are prefixed, and every export is in the API docs."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import swag
from swag import _aliases

DOCS = Path(__file__).resolve().parents[1] / "docs"
# Public modules whose import needs an optional extra.
EXTRAS = {
    "swag.integrations.lightning": "lightning",
    "swag.integrations.transformers": "transformers",
}


def public_modules() -> list[str]:
    names = ["swag"]
    for info in pkgutil.walk_packages(swag.__path__, "swag."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def load(name: str) -> ModuleType:
    if name in EXTRAS:
        pytest.importorskip(EXTRAS[name])
    return importlib.import_module(name)


def documented() -> tuple[set[int], str]:
    """The ids of every object a ``::: target`` directive in docs/ renders, and the docs' text.

    A directive naming a module renders its ``__all__`` (or its public members).
    """
    text = "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")))
    ids: set[int] = set()
    for target in re.findall(r"^::: ([\w.]+)\s*$", text, flags=re.M):
        obj = resolve(target)
        ids.add(id(obj))
        if inspect.ismodule(obj):
            names = getattr(obj, "__all__", [n for n in vars(obj) if not n.startswith("_")])
            ids.update(id(getattr(obj, n)) for n in names)
    return ids, text


def resolve(target: str) -> object:
    """The object a dotted path names: a module, or an attribute of the longest module prefix."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        moved = _aliases.DEPRECATED.get(name, name)  # ::: swag.predict, a module's old path
        try:
            obj: object = load(moved)
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"docs name {target!r}, which does not import")


def is_documented(obj: object, name: str, ids: set[int], text: str) -> bool:
    """Rendered by a directive; a constant or type alias is enough when named in backticks."""
    if id(obj) in ids:
        return True
    return not (inspect.isfunction(obj) or inspect.isclass(obj)) and f"`{name}`" in text


@pytest.mark.parametrize("name", public_modules())
def test_public_module_has_a_complete_all(name: str) -> None:
    module = load(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"
    defined = [
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and v.__module__ == name
    ]
    unlisted = [n for n in defined if n not in exported]
    assert not unlisted, f"{name} defines public names outside __all__ (prefix them): {unlisted}"


@pytest.mark.parametrize("name", public_modules())
def test_every_export_is_documented(name: str) -> None:
    module = load(name)
    ids, text = documented()
    undocumented = [
        n
        for n in module.__all__
        if not n.startswith("__")
        and not inspect.ismodule(getattr(module, n))
        and not is_documented(getattr(module, n), n, ids, text)
    ]
    assert not undocumented, (
        f"{name} exports these without docs (add to docs/api.md): {undocumented}"
    )


def test_predicts_option_objects_are_exported() -> None:
    """predict's head and options (issue 20 item 1) are part of the package face."""
    from swag.evaluation.predict import (
        BNRefresh,
        Classification,
        GaussianRegression,
        PredictOptions,
    )

    for cls in (BNRefresh, Classification, GaussianRegression, PredictOptions):
        assert cls.__name__ in swag.__all__ and getattr(swag, cls.__name__) is cls
    assert len(inspect.signature(swag.predict).parameters) <= 8

"""Old module paths (issue 20): a moved module still imports, gives the very module of its new
path and warns once naming it; a public namespace imports silently; the face is unchanged."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import swag
from swag import _aliases

FACE = [
    "EMA", "LAWA", "Collector", "Density", "MultiSWAG", "ParamLayout", "PointPosterior",
    "PostHocEMA", "Posterior", "PowerEMA", "SWAGPosterior", "__version__", "apply_temperature",
    "fit_scale", "fit_temperature", "load", "metrics", "predict", "save", "update_bn",
    # added with predict's option objects (issue 20 item 1), not by the move:
    "BNRefresh", "Classification", "GaussianRegression", "PredictOptions",
]  # fmt: skip
"""``swag.__all__`` before the move (main at 908d54b), plus predict's option objects."""


@pytest.fixture
def fresh() -> Iterator[None]:
    """Forget the old paths, so that the next import of one goes through the finder again."""
    old = [n for n in sys.modules if _aliases.target(n) is not None]
    saved = {n: sys.modules.pop(n) for n in old}
    face = dict(vars(swag))
    yield
    for name in [n for n in sys.modules if _aliases.target(n) is not None]:
        del sys.modules[name]
    sys.modules.update(saved)
    for name in set(vars(swag)) - set(face):
        delattr(swag, name)


@pytest.mark.parametrize("old", sorted(_aliases.DEPRECATED))
def test_a_moved_module_warns_once_naming_its_new_path(old: str, fresh: None) -> None:
    new = _aliases.DEPRECATED[old]
    with pytest.warns(DeprecationWarning) as caught:
        module = importlib.import_module(old)
    assert [str(w.message) for w in caught] == [
        f"{old} is deprecated and goes in the next release: import {new}"
    ]
    assert module is importlib.import_module(new)
    assert module.__name__ == new and module.__spec__.name == new  # the new module is untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert importlib.import_module(old) is module  # once: then it is in sys.modules


@pytest.mark.parametrize("old", sorted(_aliases.PUBLIC))
def test_a_public_namespace_imports_silently(old: str, fresh: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = importlib.import_module(old)
    assert module is importlib.import_module(_aliases.PUBLIC[old])


def test_submodules_of_a_public_namespace_follow_it(fresh: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from swag.metrics.calibration import ece
        from swag.subspace import Subspace

    assert ece is importlib.import_module("swag.evaluation.metrics.calibration").ece
    assert Subspace is importlib.import_module("swag.family.subspace").Subspace


def test_the_old_spelling_of_the_users_imports_still_works(fresh: None) -> None:
    with pytest.warns(DeprecationWarning, match="swag.evaluation.fit_scale"):
        from swag.scale import fit_scale  # type: ignore[import-not-found]
    with pytest.warns(DeprecationWarning, match="swag.core.distributed.sharded"):
        from swag.sharded import ShardedPosterior  # type: ignore[import-not-found]
    assert fit_scale is swag.fit_scale
    assert ShardedPosterior is importlib.import_module("swag.distributed").ShardedPosterior


def test_an_old_module_path_does_not_hide_a_face_name(fresh: None) -> None:
    with pytest.warns(DeprecationWarning):
        import swag.predict  # the old module: the import system sets swag.predict to it
    assert callable(swag.predict) and swag.predict.__name__ == "predict"
    assert swag.predict is importlib.import_module("swag.evaluation.predict").predict


def test_the_face_is_unchanged() -> None:
    assert sorted(swag.__all__) == sorted(FACE)
    assert all(hasattr(swag, name) for name in FACE)


def test_every_old_path_names_a_module_that_exists() -> None:
    for new in [*_aliases.DEPRECATED.values(), *_aliases.PUBLIC.values()]:
        assert importlib.util.find_spec(new) is not None, new
    assert _aliases.target("swag.metrics.calibration") == (
        "swag.evaluation.metrics.calibration",
        False,
    )
    assert _aliases.target("swag.core.posterior") is None  # a new path is not an alias


def test_every_public_namespace_has_a_typing_stub() -> None:
    """Static tools (mypy, pyright) cannot see the run-time finder: each public namespace has a
    ``swag/<name>.pyi`` that re-exports its module whole, and no other stub exists."""
    root = Path(swag.__file__).parent
    stubs = {f"swag.{p.stem}": p for p in root.glob("*.pyi")}
    assert sorted(stubs) == sorted(_aliases.PUBLIC)
    for old, new in _aliases.PUBLIC.items():
        tree = ast.parse(stubs[old].read_text())
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert [(n.module, [a.name for a in n.names]) for n in imports] == [
            (new, ["*"]),
            (new, ["__all__"]),
        ], old

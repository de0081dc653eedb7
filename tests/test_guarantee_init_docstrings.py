"""``help(Class.__init__)`` documents every argument of each public class (issue 23 item 6)."""

from __future__ import annotations

import importlib
import inspect

import pytest

import swag
import swag.integrations

PUBLIC = [getattr(swag, name) for name in swag.__all__ if inspect.isclass(getattr(swag, name))]
PUBLIC.append(swag.integrations.ResumableSampler)
OPTIONAL = ["swag.integrations.lightning", "swag.integrations.transformers"]


def own_parameters(cls: type) -> list[str]:
    """The names ``cls(...)`` takes, from its ``__init__`` (abstract bases take none)."""
    params = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    return [
        p.name
        for p in params
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def check(cls: type) -> None:
    names = own_parameters(cls)
    if not names:  # Posterior, Density: object.__init__
        return
    doc = inspect.getdoc(cls.__init__) or ""  # type: ignore[misc]
    assert "Args:" in doc, f"{cls.__name__}.__init__ has no Args section"
    missing = [n for n in names if f"\n    {n}: " not in doc]
    assert not missing, f"{cls.__name__}.__init__'s docstring does not describe {missing}"


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_init_docstring_describes_every_argument(cls: type) -> None:
    check(cls)


@pytest.mark.parametrize("module", OPTIONAL)
def test_callback_init_docstring_describes_every_argument(module: str) -> None:
    pytest.importorskip(module.rsplit(".", 1)[1])
    check(importlib.import_module(module).SWAGCallback)


def test_the_classes_asked_for_are_covered() -> None:
    names = {c.__name__ for c in PUBLIC}
    assert {"Collector", "SWAGPosterior", "MultiSWAG", "PointPosterior", "EMA", "LAWA"} <= names
    assert {"PostHocEMA", "PowerEMA", "ParamLayout", "ResumableSampler"} <= names


def test_help_shows_the_arguments() -> None:
    text = pydoc_text(swag.Collector.__init__)
    assert "max_rank: K, the number of deviations kept" in text
    assert "Initialise the Collector" in text


def pydoc_text(obj: object) -> str:
    import pydoc

    return pydoc.render_doc(obj, renderer=pydoc.plaintext)

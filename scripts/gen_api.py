"""Write docs/reference.md: every public name of swag, its signature and its docstring's summary.

    python scripts/gen_api.py            # rewrite docs/reference.md
    python scripts/gen_api.py --check    # exit 1 if the committed page is stale

The page is plain Markdown, readable where users read it (GitHub, an editor, the docs site);
``docs/api.md`` renders the full docstrings with mkdocstrings. Public means: the names in
``swag.__all__``, then those in ``__all__`` of every module whose dotted path has no part
starting with ``_``. Each object appears once: under ``swag`` if exported there, else under the
shortest public module that exports it and contains its definition (so a deprecated alias
module that re-exports a moved one adds nothing). Classes list their own public methods and
properties. ``tests/test_api_reference.py`` fails when the committed page is stale.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference.md"
WIDTH = 96  # a signature longer than this is written one parameter per line

HEADER = """\
# API reference (Markdown)

Every public name of `swag` with its signature and the first paragraph of its docstring,
written by `scripts/gen_api.py` (do not edit by hand: `python scripts/gen_api.py` rewrites it,
and a test fails when it is stale). The full docstrings, with every argument, are on the
[API](api.md) page and in `help(...)`: `help(swag.Collector.__init__)` lists the arguments.
"""


def public_modules() -> list[str]:
    """``swag``, then every public module below it, in sorted order."""
    import swag
    from swag._aliases import PUBLIC

    found = (m.name for m in pkgutil.walk_packages(swag.__path__, "swag."))
    public = {n for n in found if not any(p.startswith("_") for p in n.split("."))}
    return ["swag", *sorted({_public_path(n, PUBLIC) for n in public})]


def _public_path(name: str, public: dict[str, str]) -> str:
    """``name`` under the public namespace users import it by (``swag.evaluation.metrics`` is
    taught as ``swag.metrics``), or itself."""
    for old, new in public.items():
        if name == new or name.startswith(new + "."):
            return old + name[len(new) :]
    return name


def owner(obj: object, candidates: list[str]) -> str:
    """Which of the modules exporting ``obj`` documents it (see the module docstring)."""
    defined = getattr(obj, "__module__", None) or ""
    ancestors = [m for m in candidates if defined == m or defined.startswith(m + ".")]
    return min(ancestors, key=lambda m: (m.count("."), m)) if ancestors else candidates[0]


def summary(obj: object) -> str:
    """The docstring's first paragraph, with Sphinx roles turned into Markdown code."""
    doc = inspect.getdoc(obj) or ""
    first = doc.split("\n\n", 1)[0].strip()
    first = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: f"`{m.group(1)}`", first)
    return first or "(no docstring)"


def annotation(value: Any) -> str:
    return value if isinstance(value, str) else inspect.formatannotation(value)


def signature(name: str, obj: Any, *, wrap: bool = True) -> str | None:
    """``name(params) -> return``, with annotations as written; None if it has none."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params, star_done = [], False
    for p in sig.parameters.values():
        if p.name in ("self", "cls") and p is next(iter(sig.parameters.values())):
            continue
        if p.kind is p.KEYWORD_ONLY and not star_done:
            params.append("*")
        star_done = star_done or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {annotation(p.annotation)}"
        if p.default is not p.empty:
            text += (" = " if p.annotation is not p.empty else "=") + default(p.default)
        params.append(text)
        if p.kind is p.POSITIONAL_ONLY and _last_positional_only(sig, p):
            params.append("/")
    ret = ""
    if sig.return_annotation is not sig.empty and not inspect.isclass(obj):
        ret = f" -> {annotation(sig.return_annotation)}"
    one_line = f"{name}({', '.join(params)}){ret}"
    if len(one_line) <= WIDTH or not wrap:
        return one_line
    return f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){ret}"


def _last_positional_only(sig: inspect.Signature, param: inspect.Parameter) -> bool:
    kinds = [p.kind for p in sig.parameters.values()]
    after = kinds[list(sig.parameters).index(param.name) + 1 :]
    return not after or after[0] is not param.POSITIONAL_ONLY


def default(value: object) -> str:
    text = repr(value)
    return re.sub(r" at 0x[0-9a-f]+", "", text)  # a function's address changes every run


def entry(qualified: str, short: str, obj: Any) -> list[str]:
    """The Markdown of one public name (a class with its own public members)."""
    lines = [f"### `{qualified}`", ""]
    sig = signature(short, obj) if callable(obj) else None
    if sig is not None:
        lines += ["```python", sig, "```", ""]
    elif not callable(obj) and not inspect.ismodule(obj):
        value = default(obj)
        shown = value if len(value) <= 60 else type(obj).__name__
        # a constant: its type's docstring ("Built-in immutable sequence.") would say nothing
        return [*lines, "```python", f"{short} = {shown}", "```", ""]
    lines += [summary(obj), ""]
    if inspect.isclass(obj):
        lines += members(obj)
    return lines


def members(cls: type) -> list[str]:
    """A class's own documented public methods and properties: signature, first docstring line.

    Overrides without a docstring of their own (``nn.Module.extra_repr``, say) are left out.
    """
    rows = []
    for name, raw in vars(cls).items():
        func = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        if name.startswith("_") or not getattr(func, "__doc__", None):
            continue
        if isinstance(raw, property):
            text = name
        elif inspect.isfunction(func):
            text = signature(name, getattr(cls, name), wrap=False) or name
        else:
            continue
        rows.append(f"- `{text}`: {' '.join(summary(func).split())}")
    return [*rows, ""] if rows else []


def render() -> str:
    """The whole page."""
    modules = {name: importlib.import_module(name) for name in public_modules()}
    exporters: dict[int, list[str]] = {}
    objects: dict[int, object] = {}
    for mod_name, module in modules.items():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            objects[id(obj)] = obj
            exporters.setdefault(id(obj), []).append(mod_name)
    top = {id(getattr(modules["swag"], n)) for n in modules["swag"].__all__}
    out = [HEADER]
    for mod_name, module in modules.items():
        names = [
            n
            for n in getattr(module, "__all__", ())
            if not n.startswith("__")
            and not inspect.ismodule(getattr(module, n))
            and (
                mod_name == "swag"
                if id(getattr(module, n)) in top
                else owner(getattr(module, n), exporters[id(getattr(module, n))]) == mod_name
            )
        ]
        if not names:
            continue
        out += [f"## `{mod_name}`", "", summary(module), ""]
        for n in names:
            out += entry(f"{mod_name}.{n}", n, getattr(module, n))
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/reference.md is stale")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        stale = not PAGE.exists() or PAGE.read_text() != page
        print("docs/reference.md is stale: run python scripts/gen_api.py" if stale else "ok")
        return int(stale)
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The architecture holds (issue 20): read from the source with ``ast``, nothing is run.

The parts, what each may import and which private modules a part offers to the others are the
tables in ``docs/architecture.md``: this file reads them there, so that the doc and the check
cannot drift. The rules:

- a part imports only the parts its row allows (every import: module level, ``TYPE_CHECKING``
  and inside functions);
- no import circles among swag's modules (module-level imports, ``TYPE_CHECKING`` included);
- no private name (``_x``) is imported from another module;
- a private module (``_x.py``) is imported only from its own part, or by a part that the
  internal-API table lists for it;
- inside swag, only the face imports the face (``import swag`` / ``from swag import X``);
- no copied helpers.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


# -- reading the source ---------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One imported module (and the names taken from it) at one place of one module."""

    source: str
    target: str
    names: tuple[str, ...]
    module_level: bool  # False inside a function (``TYPE_CHECKING`` counts as module level)
    line: int


def read_sources(root: Path = ROOT) -> dict[str, str]:
    """Every module of swag by dotted name -> its source."""
    sources = {}
    for path in sorted((root / "swag").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        sources[".".join(parts)] = path.read_text()
    return sources


def imports(sources: Mapping[str, str]) -> Iterator[Import]:
    """Every import of a swag module in ``sources``, resolved to the module it names."""
    packages = {m for m in sources if any(o.startswith(m + ".") for o in sources)}
    for source, text in sources.items():
        package = source if source in packages else source.rpartition(".")[0]
        for node, in_function in _walk(ast.parse(text), False):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "swag":
                        yield Import(source, alias.name, (), not in_function, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                if base.split(".")[0] != "swag":
                    continue
                plain = []
                for alias in node.names:
                    if f"{base}.{alias.name}" in sources:  # a submodule
                        yield Import(
                            source, f"{base}.{alias.name}", (), not in_function, node.lineno
                        )
                    else:
                        plain.append(alias.name)
                if plain:
                    yield Import(source, base, tuple(plain), not in_function, node.lineno)


def _walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
        yield child, inside
        yield from _walk(child, inside)


# -- the tables of docs/architecture.md -----------------------------------------------------


def table(name: str, text: str | None = None) -> list[list[str]]:
    """The rows of the markdown table between ``<!-- name -->`` and ``<!-- /name -->``."""
    text = DOC.read_text() if text is None else text
    found = re.search(rf"<!-- {name} -->(.*?)<!-- /{name} -->", text, flags=re.S)
    assert found, f"docs/architecture.md has no {name} table"
    rows = [line for line in found.group(1).strip().splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def names(cell: str) -> list[str]:
    """The backticked names of a table cell (``—`` for none)."""
    return re.findall(r"`([^`]+)`", cell)


def parts(text: str | None = None) -> dict[str, tuple[list[str], set[str]]]:
    """Part -> (its modules: dotted names, ``.*`` for a subpackage; the parts it may import)."""
    return {
        names(part)[0]: (names(modules), set(names(allowed)))
        for part, modules, allowed, *_ in table("parts", text)
    }


def internal_api(text: str | None = None) -> dict[str, set[str]]:
    """Private module -> the other parts that may import it."""
    return {names(module)[0]: set(names(users)) for module, users, *_ in table("internal", text)}


def part_of(module: str, layout: Mapping[str, tuple[list[str], set[str]]]) -> str:
    """The part ``module`` belongs to (the longest matching pattern wins)."""
    best, length = None, -1
    for part, (patterns, _) in layout.items():
        for pattern in patterns:
            prefix = pattern.removesuffix(".*")
            matches = module == prefix or (pattern.endswith(".*") and module.startswith(prefix))
            if matches and len(prefix) > length:
                best, length = part, len(prefix)
    assert best is not None, f"{module} is in no part: add it to docs/architecture.md"
    return best


def is_private(module: str) -> bool:
    return any(p.startswith("_") for p in module.split("."))


# -- the checks (functions, so that a synthetic violation can be shown to fail) -------------


def part_violations(sources: Mapping[str, str], text: str | None = None) -> list[str]:
    layout = parts(text)
    found = []
    for imp in imports(sources):
        mine, theirs = part_of(imp.source, layout), part_of(imp.target, layout)
        allowed = layout[mine][1]
        if mine != theirs and theirs not in allowed and "*" not in allowed:
            found.append(f"{imp.source}:{imp.line} ({mine}) imports {imp.target} ({theirs})")
    return found


def private_module_violations(sources: Mapping[str, str], text: str | None = None) -> list[str]:
    layout, offered = parts(text), internal_api(text)
    found = []
    for imp in imports(sources):
        mine, theirs = part_of(imp.source, layout), part_of(imp.target, layout)
        if "*" in layout[mine][1] or not is_private(imp.target) or mine == theirs:
            continue
        if mine not in offered.get(imp.target, ()):
            found.append(f"{imp.source}:{imp.line} ({mine}) imports {imp.target} ({theirs})")
    return found


def private_name_violations(sources: Mapping[str, str]) -> list[str]:
    return [
        f"{imp.source}:{imp.line} imports {name} from {imp.target}"
        for imp in imports(sources)
        for name in imp.names
        if name.startswith("_") and not name.startswith("__") and imp.target != imp.source
    ]


def face_violations(sources: Mapping[str, str], face: set[str]) -> list[str]:
    return [
        f"{imp.source}:{imp.line} imports the package face ({', '.join(imp.names) or 'swag'})"
        for imp in imports(sources)
        if imp.target == "swag" and imp.source not in face
    ]


def circles(sources: Mapping[str, str]) -> list[list[str]]:
    """The import circles (strongly connected components > 1) over module-level imports."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for imp in imports(sources):
        if imp.module_level and imp.target in graph and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floors(sources: Mapping[str, str]) -> int:
    """The longest chain of module-level imports among swag's modules (1: imports none)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for imp in imports(sources):
        if imp.module_level and imp.target in graph and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    depth: dict[str, int] = {}

    def height(v: str, seen: frozenset[str]) -> int:
        if v not in depth:
            depth[v] = 1 + max(
                (height(w, seen | {v}) for w in graph[v] if w not in seen), default=0
            )
        return depth[v]

    return max(height(m, frozenset()) for m in graph)


# -- the tests on swag ------------------------------------------------------------------------

SOURCES = read_sources()
FACE = set(parts()["face"][0])


def test_every_module_is_in_one_part() -> None:
    layout = parts()
    assert set(layout) >= {"core", "persistence", "evaluation", "family", "face"}
    for module in SOURCES:
        part_of(module, layout)  # raises for a module no row names


def test_parts_import_only_the_parts_their_row_allows() -> None:
    assert part_violations(SOURCES) == []


def test_the_allowed_imports_have_no_circle() -> None:
    layout = parts()
    graph = {p: allowed - {"*"} for p, (_, allowed) in layout.items() if p != "face"}
    assert circles({p: "".join(f"import {q}\n" for q in graph[p]) for p in graph}) == []


def test_no_import_circles() -> None:
    assert circles(SOURCES) == []


def test_no_private_name_is_imported_from_another_module() -> None:
    assert private_name_violations(SOURCES) == []


def test_a_private_module_is_imported_only_where_the_doc_says() -> None:
    assert private_module_violations(SOURCES) == []
    # and every entry of the internal-API table is used by every part it names
    layout = parts()
    used = {
        (imp.target, part_of(imp.source, layout))
        for imp in imports(SOURCES)
        if is_private(imp.target)
    }
    stale = [(m, p) for m, users in internal_api().items() for p in users if (m, p) not in used]
    assert stale == [], "docs/architecture.md offers private modules nobody imports"


def test_only_the_face_imports_the_face() -> None:
    assert face_violations(SOURCES, FACE) == []


def test_no_copied_helpers() -> None:
    defined: dict[str, list[str]] = {}
    for module, text in SOURCES.items():
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.setdefault(node.name, []).append(module)
    assert defined["has_batchnorm"] == ["swag.evaluation.bn"]
    assert defined["move_to"] == ["swag.evaluation._batches"]
    assert "to_device" not in defined  # subspace and the landscape use move_to
    assert len(defined["assemble"]) == 1  # the all_gather of a sharded vector, once


def test_the_lightning_callback_takes_its_schedule_from_the_schedules_module() -> None:
    lightning = [i for i in imports(SOURCES) if i.source == "swag.integrations.lightning"]
    assert any(i.target == "swag.family.schedules" and "CollectEvery" in i.names for i in lightning)
    tree = ast.parse(SOURCES["swag.integrations.lightning"])
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes.isdisjoint({"CollectEvery", "Cyclic", "SWAGDecay"})


# -- the checks fail on a violation -----------------------------------------------------------

SYNTHETIC = {
    "swag": "from swag.core.posterior import SWAGPosterior\n",
    "swag.core": "",
    "swag.core.posterior": "from swag.family.schedules import Cyclic\n",  # core -> family
    "swag.core._checks": "",
    "swag.core.layout": "from swag.core._params import unwrap\n",
    "swag.core._params": "from typing import TYPE_CHECKING\n"
    "if TYPE_CHECKING:\n    from swag.core.layout import ParamLayout\n",  # a circle
    "swag.family": "",
    "swag.family.schedules": "from swag.core.layout import _KIND\n",
    "swag.evaluation": "",
    "swag.evaluation.predict": (
        "def f():\n    from swag.core._checks import check_bool\n    import swag\n"
    ),
}
SYNTHETIC_DOC = """
<!-- parts -->
| part | modules | may import |
|---|---|---|
| `face` | `swag` | `*` |
| `core` | `swag.core.*` | — |
| `evaluation` | `swag.evaluation.*` | `core` |
| `family` | `swag.family.*` | `core`, `evaluation` |
<!-- /parts -->
<!-- internal -->
| private module | offered to |
|---|---|
| `swag.core._params` | `family` |
<!-- /internal -->
"""


def test_a_part_importing_one_it_must_not_fails() -> None:
    found = part_violations(SYNTHETIC, SYNTHETIC_DOC)
    assert found == [
        "swag.core.posterior:1 (core) imports swag.family.schedules (family)",
        "swag.evaluation.predict:3 (evaluation) imports swag (face)",
    ]


def test_a_circle_fails() -> None:
    assert circles(SYNTHETIC) == [["swag.core._params", "swag.core.layout"]]


def test_a_private_name_or_module_across_parts_fails() -> None:
    assert private_name_violations(SYNTHETIC) == [
        "swag.family.schedules:1 imports _KIND from swag.core.layout"
    ]
    assert private_module_violations(SYNTHETIC, SYNTHETIC_DOC) == [
        "swag.evaluation.predict:2 (evaluation) imports swag.core._checks (core)"
    ]  # a lazy import counts too; swag.core._params is offered, and only to family


def test_importing_the_face_inside_swag_fails() -> None:
    assert face_violations(SYNTHETIC, {"swag"}) == [
        "swag.evaluation.predict:3 imports the package face (swag)"
    ]


def test_floors_count_the_longest_chain() -> None:
    chain = {"swag.a": "import swag.b\n", "swag.b": "import swag.c\n", "swag.c": ""}
    assert floors(chain) == 3


def test_the_doc_has_a_section_per_part() -> None:
    text = DOC.read_text()
    missing = [p for p in parts() if not re.search(rf"^### `{p}`", text, flags=re.M)]
    assert missing == []

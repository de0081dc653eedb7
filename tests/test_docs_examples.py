"""Every docs page's Python examples run as written, and print what the page says they do."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the transformers page builds its model from a config

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

DOCS = Path(__file__).resolve().parents[1] / "docs"
# Pages whose ```python blocks cannot run in one pytest process, and why.
NOT_RUNNABLE = {
    "scale.md": "its blocks are launched with torchrun on several ranks",
    "reference.md": "its blocks are signatures, not programs (written by scripts/gen_api.py)",
}


# Recipe pages (docs/recipes/) are one program across their blocks, which share variables; each
# saves its plots under `out`, which SWAG_WRITE_DOCS=1 copies to docs/img/recipes/ for the page.
RECIPES = "recipes/"
SLOW = pytest.mark.slow  # a recipe trains a small model: each run takes 4-10 s
# Pages that need an optional package: skipped without it, naming the install.
NEEDS = {
    "lightning.md": ("lightning", "pip install 'swag-toolkit[lightning]'"),
    "transformers.md": ("transformers", "pip install 'swag-toolkit[transformers]'"),
    "recipes/lightning.md": ("lightning", "pip install 'swag-toolkit[lightning]'"),
}


def blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


def accuracies_above(threshold: float) -> Callable[[str], None]:
    """Every accuracy printed at a line's end is that of a network that learned the task."""

    def check(out: str) -> None:
        found = [float(a) for a in re.findall(r"(0\.\d+|1\.0)\s*$", out, flags=re.MULTILINE)]
        assert found and min(found) > threshold, out

    return check


def first_accuracy_above(threshold: float) -> Callable[[str], None]:
    def check(out: str) -> None:
        match = re.search(r"(?:accuracy: |SWAP: )([0-9.]+)", out)
        assert match is not None and float(match.group(1)) > threshold, out

    return check


def prints(text: str) -> Callable[[str], None]:
    def check(out: str) -> None:
        assert text in out, out

    return check


def nothing(out: str) -> None:
    """The example asserts its own claim (e.g. the recovered scale), or prints nothing to check."""


CHECKS: dict[str, Callable[[str], None]] = {
    "averaging.md": prints("variance > 0: True"),
    "schedules.md": accuracies_above(0.8),  # chance is 0.5
    "sam.md": accuracies_above(0.8),
    "swalp.md": first_accuracy_above(0.85),
    "swap.md": first_accuracy_above(0.85),
    "subspace.md": prints("passes over the data per ESS sample"),
    "fit_scale.md": nothing,
    "lightning.md": nothing,
    "transformers.md": nothing,
    "recipes/plain_loop.md": prints("fresh process: bit-identical predictions"),
    "recipes/lightning.md": prints("resumed run: bit-identical posterior"),
    "recipes/ood.md": prints("FPR95"),
}


def test_every_page_with_python_is_run() -> None:
    pages = (p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    with_code = {page for page in pages if blocks(page)}
    assert with_code - set(NOT_RUNNABLE) == set(CHECKS)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One thread, restored afterwards: the examples are tiny and CI's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Lightning 2.6 calls torch's deprecated pytree LeafSpec, and advises loader workers that an
# in-memory example does not need: neither warning is the example's to fix.
@pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers")
@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=SLOW) if p.startswith(RECIPES) else p for p in sorted(CHECKS)],
)
def test_page_examples_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    if page in NEEDS:
        module, install = NEEDS[page]
        pytest.importorskip(module, reason=f"docs/{page} needs {module}: {install}")
    code = blocks(page)
    assert code, f"docs/{page} has no ```python block"
    shared: dict[str, object] = {}
    try:
        for i, block in enumerate(code):
            namespace = shared if page.startswith(RECIPES) else {}
            exec(compile(block, f"docs/{page} block {i}", "exec"), namespace)
    finally:
        if dist.is_initialized():  # the SWAP example's one-process group, if it failed midway
            dist.destroy_process_group()
    CHECKS[page](capsys.readouterr().out)
    if page.startswith(RECIPES):
        check_recipe_plots(page, Path(str(shared["out"])))


def check_recipe_plots(page: str, out: Path) -> None:
    """Every plot the recipe wrote is shown on its page, from docs/img/recipes/."""
    written = sorted(p.name for p in out.glob("*.png"))
    assert written, f"docs/{page} wrote no plot into out"
    text = (DOCS / page).read_text()
    for name in written:
        assert f"](../img/recipes/{name})" in text, f"docs/{page} does not show {name}"
        if os.environ.get("SWAG_WRITE_DOCS") == "1":
            shutil.copyfile(out / name, DOCS / "img" / "recipes" / name)
        assert (DOCS / "img" / "recipes" / name).is_file(), f"rerun with SWAG_WRITE_DOCS=1: {name}"

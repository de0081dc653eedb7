"""docs/schedules.md and docs/sam.md: their Python examples run as written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ("schedules.md", "sam.md")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One thread, restored afterwards: these runs are tiny, and the CI's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("page", PAGES)
def test_page_example_runs(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(page)
    assert blocks, f"docs/{page} has no ```python block"
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/{page} block {i}", "exec"), {})
    out = capsys.readouterr().out
    # every printed accuracy is that of a network that learned the task (chance is 0.5)
    accuracies = [float(a) for a in re.findall(r"(0\.\d+|1\.0)\s*$", out, flags=re.MULTILINE)]
    assert accuracies and min(accuracies) > 0.8, out

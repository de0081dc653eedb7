"""The Python blocks of docs/subspace.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "subspace.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def test_page_has_an_example() -> None:
    assert blocks(), "docs/subspace.md has no ```python block"


@pytest.mark.parametrize("index", range(len(blocks())))
def test_block_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(blocks()[index], f"docs/subspace.md block {index}", "exec"), {})
    assert "passes over the data per ESS sample" in capsys.readouterr().out

"""The README's Python code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_a_quickstart() -> None:
    assert python_blocks(), "README.md has no ```python block"


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_block_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), {})
    out = capsys.readouterr().out
    if "summary(" in python_blocks()[index]:
        # the quickstart prints the metric summary: check it is a sane one
        accuracy = float(re.search(r"'accuracy': ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
        assert accuracy > 0.9

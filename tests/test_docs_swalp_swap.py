"""The runnable examples of docs/swalp.md and docs/swap.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch.distributed as dist

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("page", ["swalp.md", "swap.md"])
def test_page_examples_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = blocks(page)
    assert code, f"docs/{page} has no ```python block"
    try:
        for i, block in enumerate(code):
            exec(compile(block, f"docs/{page} block {i}", "exec"), {})
    finally:
        if dist.is_initialized():  # the SWAP example's one-process group, if it failed midway
            dist.destroy_process_group()
    out = capsys.readouterr().out
    accuracy = float(re.search(r"(?:accuracy: |SWAP: )([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.85

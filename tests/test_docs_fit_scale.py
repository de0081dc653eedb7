"""docs/fit_scale.md: its Python example runs as written and recovers the scale it claims."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "fit_scale.md"


def test_fit_scale_page_example_runs(capsys: object) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/fit_scale.md", "exec"), {})  # asserts the recovered scale

"""The integration pages' Python examples run as written (docs/lightning.md, transformers.md)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the transformers page builds its model from a config

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


# Lightning 2.6 calls torch's deprecated pytree LeafSpec; its advice on loader workers does not
# apply to an in-memory example. Neither is the example's to fix.
@pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers")
def test_lightning_page_runs() -> None:
    assert len(blocks("lightning.md")) == 1
    exec(compile(blocks("lightning.md")[0], "docs/lightning.md", "exec"), {})


def test_transformers_page_runs() -> None:
    assert len(blocks("transformers.md")) == 1
    exec(compile(blocks("transformers.md")[0], "docs/transformers.md", "exec"), {})

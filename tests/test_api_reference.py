"""docs/reference.md is what scripts/gen_api.py writes now (issue 23 item 6).

``SWAG_WRITE_DOCS=1`` rewrites the page; otherwise the test fails when it is stale.
"""

from __future__ import annotations

import inspect
import os
import runpy
from pathlib import Path

import pytest

import swag

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference.md"


@pytest.fixture(scope="module")
def page() -> str:
    for optional in ("lightning", "transformers"):  # their callbacks are on the page
        pytest.importorskip(optional)
    text: str = runpy.run_path(str(ROOT / "scripts" / "gen_api.py"))["render"]()
    return text


def test_reference_page_is_current(page: str) -> None:
    if os.environ.get("SWAG_WRITE_DOCS") == "1":
        PAGE.write_text(page)
    assert PAGE.read_text() == page, "docs/reference.md is stale: run python scripts/gen_api.py"


def test_every_public_name_is_on_the_page(page: str) -> None:
    for name in swag.__all__:
        if inspect.ismodule(getattr(swag, name)):  # swag.metrics: a section of its own
            assert f"## `swag.{name}`" in page, name
        elif name != "__version__":
            assert f"### `swag.{name}`" in page, name
    for name in ("swag.metrics.auroc", "swag.plots.reliability_diagram", "swag.data.load_sklearn"):
        assert f"### `{name}`" in page, name
    assert "### `swag.integrations.lightning.SWAGCallback`" in page


def test_signatures_are_rendered_with_their_annotations(page: str) -> None:
    assert "    max_rank: int = 20,\n" in page  # Collector, one parameter per line
    assert "auroc(*, scores_in: Tensor, scores_out: Tensor) -> float" in page
    assert " at 0x" not in page  # no object addresses: the page is the same on every run
    assert ":class:" not in page and ":func:" not in page  # Sphinx roles made Markdown

"""Regenerate tests/fixtures: one small file per kind that swag.save writes, in today's format.

The files are committed, and tests/test_guarantee_persistence.py checks that they keep loading
(and what they hold), so that a change of format that breaks old files fails CI. Regenerate only
when the format changes on purpose and old files are migrated: ``python scripts/make_fixtures.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import swag  # noqa: E402
from tests.kinds import fixture_objects  # noqa: E402


def main() -> None:
    folder = ROOT / "tests" / "fixtures"
    folder.mkdir(exist_ok=True)
    for name, obj in fixture_objects().items():
        swag.save(obj, folder / f"{name}.safetensors")
        print(f"wrote tests/fixtures/{name}.safetensors")


if __name__ == "__main__":
    main()

"""The frameworks are optional: the core never imports them, and a missing one names its extra."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys, swag, swag.distributed, swag.predict, swag.integrations
loaded = {"lightning", "transformers"} & set(sys.modules)
print("loaded by the core:", sorted(loaded))
for name in ("lightning", "transformers"):
    sys.modules[name] = None  # as if it were not installed: `import name` fails
    try:
        __import__(f"swag.integrations.{name}")
    except ImportError as exc:
        print(exc)
"""


def test_the_core_imports_no_framework_and_a_missing_one_names_its_extra() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "loaded by the core: []"
    assert "pip install 'swag-toolkit[lightning]'" in lines[1]
    assert "pip install 'swag-toolkit[transformers]'" in lines[2]

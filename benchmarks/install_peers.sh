#!/usr/bin/env bash
# Install the peers the benchmarks compare against into .peers/ (git-ignored), without their
# dependencies, so that nothing in the project's environment changes. swa-gaussian installs a
# top-level package named `swag`; benchmarks/peers.py loads it under another name.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m pip install --no-deps --target .peers/ \
    "swa-gaussian==0.1.9" \
    "torch-uncertainty==0.13.0" \
    "gpytorch==1.13" \
    "linear_operator==0.6.1" \
    "jaxtyping==0.2.19"

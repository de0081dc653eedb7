#!/usr/bin/env bash
# Create .venv (once) and install swag-toolkit with its test and data extras.
# torch is pinned to the CPU build that lies on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip_install() {  # pip, minus the noise of find-links folders that this machine lacks
  .venv/bin/python -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
pip_install --upgrade pip
pip_install "torch==${SWAG_TORCH_VERSION:-2.13.0}"
pip_install -e ".[dev]"
# The bench's Laplace and IVON rows (on by default, skipped when missing). laplace-torch's declared
# dependencies (torchvision among them) would replace the pinned torch, so it and the packages it
# imports go in without dependencies; SWAG_BASELINES=0 skips them.
if [ "${SWAG_BASELINES:-1}" != 0 ]; then
  { pip_install ivon-opt opt-einsum \
    && pip_install --no-deps laplace-torch backpack-for-pytorch einops unfoldNd einconv \
      curvlinops-for-pytorch asdfghjkl lightning-utilities linear_operator jaxtyping \
      wadler_lindig; } \
    || echo "setup: could not install the Laplace/IVON baselines; their bench rows are skipped" >&2
fi

# The benchmark's data: Fashion-MNIST from Debian's package (IDX files, no download at run time).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${SWAG_DATA_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "setup: could not install dataset-fashion-mnist; swag bench needs --data-dir" >&2
  else
    echo "setup: Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'" \
         "or set SWAG_DATA_DIR" >&2
  fi
fi

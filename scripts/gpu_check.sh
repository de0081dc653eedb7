#!/usr/bin/env bash
# The one command to run on a machine with a GPU (issue 19): scripts/gpu_check.sh OUTDIR
#
# Runs, each under its own time limit, with logs and a summary written to OUTDIR:
#   tests-cuda       the test suite's CUDA cases (DEVICES holds "cuda" when torch sees a GPU)
#                    and the contract, persistence and composability tests;
#   bench-smoke      swag bench --preset smoke --device cuda;
#   benchmarks-quick python -m benchmarks.run --quick --device cuda.
# Without a GPU it is a dry run: the CUDA parts are skipped by name in OUTDIR/summary.txt and
# the script exits 0. With one, it exits non-zero if any part failed. Budget: under 8 minutes.
set -uo pipefail
if [ "$#" -ne 1 ]; then
  echo "usage: scripts/gpu_check.sh OUTDIR" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
PY=${PYTHON:-python}
export MPLBACKEND=Agg PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
failed=0

"$PY" -c "import torch; print('torch', torch.__version__); print('cuda', torch.cuda.is_available());
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" \
  >"$OUT/env.txt" 2>&1
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

step() {  # step NAME SECONDS COMMAND...: run it (CUDA only), log it, record the outcome
  local name=$1 limit=$2
  shift 2
  if [ "$CUDA" != "1" ]; then
    echo "$name: skipped (no CUDA GPU visible to torch)" | tee -a "$SUMMARY"
    return
  fi
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  if [ "$rc" -eq 0 ]; then
    echo "$name: passed in ${took}s" | tee -a "$SUMMARY"
  else
    echo "$name: FAILED (exit $rc) in ${took}s; see $name.log" | tee -a "$SUMMARY"
    failed=1
  fi
}

step tests-cuda 200 "$PY" -m pytest -q -m "not slow" -p no:cacheprovider \
  -k "cuda or composability or contract or persistence" --junitxml="$OUT/tests-cuda.xml"
step bench-smoke 120 "$PY" -m swag.cli bench --preset smoke --device cuda --out "$OUT/bench"
step benchmarks-quick 150 "$PY" -m benchmarks.run --quick --device cuda \
  --no-peers --out "$OUT/benchmarks.json"
exit "$failed"

#!/usr/bin/env bash
# The whole GPU check in one command, for a CUDA machine (docs/gpu.md): benchmarks/gpu.py (≤ 8 min on an H100/H200,
# no downloads), then the CUDA-only tests. Writes benchmarks/results/gpu-<UTC date>.json (card inside) and a .log.
#   bash benchmarks/run_gpu.sh [python-with-CUDA-torch]
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-}}"
if [ -z "$PY" ]; then
  for candidate in .venv/bin/python python3 python; do
    if "$candidate" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      PY="$candidate"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "no Python with a CUDA build of torch found: pass one, e.g. bash benchmarks/run_gpu.sh ~/ComfyUI/venv/bin/python"
  exit 1
fi
mkdir -p benchmarks/results
stamp="$(date -u +%Y%m%d-%H%M)"
log="benchmarks/results/gpu-${stamp}.log"
"$PY" benchmarks/gpu.py --out "benchmarks/results/gpu-${stamp}.json" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if "$PY" -c "import pytest" 2>/dev/null; then
  "$PY" -m pytest tests/test_gpu.py tests/test_fp8_matmul.py -q -rs -p no:cacheprovider 2>&1 \
    | tee -a "$log"
  status=$(( status | PIPESTATUS[0] ))
else
  echo "pytest is not installed: CUDA tests not run (pip install -r requirements-test.txt)" | tee -a "$log"
fi
echo "results: benchmarks/results/gpu-${stamp}.json, log: $log"
exit "$status"

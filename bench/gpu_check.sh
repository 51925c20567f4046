#!/usr/bin/env bash
# The GPU check in one command (fits 8 minutes on one GPU): CUDA build, parity
# against jclip's CPU outputs, images/s fp32/fp16, heads, train.sh + test.sh on
# a generated contest-sized set; writes bench/RESULTS_gpu.md.
#   bash bench/gpu_check.sh                # on a GPU machine
#   bash bench/gpu_check.sh --device cpu   # tiny sizes on CPU (the fast tier runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" bench/gpu_check.py "$@"

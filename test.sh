#!/usr/bin/env bash
# Write result.txt for a test folder with the trained cascade.
#   bash test.sh [TEST_DIR] [CLASSES] [--result result.txt] [--config FILE] [--set KEY=VALUE ...]
# Defaults: Dataset/TestSetB and Dataset/classes_b.txt (from jclip/pipeline/default.json).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
args=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then args+=(--images "$1"); shift; fi
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then args+=(--classes "$1"); shift; fi
exec "$PY" -m jclip.pipeline test "${args[@]}" "$@"

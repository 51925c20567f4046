#!/usr/bin/env bash
# Measure the trained cascade on held-out training images, or tune it.
#   bash val.sh [report] [--config FILE] [--set KEY=VALUE ...]   # out/val_report/report.md
#   bash val.sh sweep [--write out/tuned.json] ...              # out/val_sweep/, then the tuned config
# Needs process.py's lists and train.sh's heads; never reads test images.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
cmd=report
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then cmd="$1"; shift; fi
exec "$PY" -m jclip.validate "$cmd" "$@"

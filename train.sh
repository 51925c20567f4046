#!/usr/bin/env bash
# Train the cascade's heads: LP++ on ViT-B/32 and RN101, the ConvNeXt-V2 dog head.
#   bash train.sh [--config jclip/pipeline/default.json] [--set lpp.epochs=100 ...]
# Needs the 4-shot list from process.py and the weights from convert.py.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec "$PY" -m jclip.pipeline train "$@"

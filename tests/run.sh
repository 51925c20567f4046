#!/usr/bin/env bash
# The test command: sets up the dev environment (first run: ~3 min for PyTorch,
# ~5 min for Jittor's one-time compile) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash setup.sh --dev
exec .venv/bin/python -m pytest tests -q "$@"

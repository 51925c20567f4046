#!/usr/bin/env bash
# Sets jclip up in ./.venv: the system oneDNN (Jittor's CPU kernels are ~50x
# slower without it), the runtime requirements and jclip itself (editable).
#   bash setup.sh         runtime only
#   bash setup.sh --dev   also the PyTorch references used by tests and benches
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ ! -f /usr/include/dnnl.hpp ] && [ ! -f /usr/local/include/dnnl.hpp ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "setup: installing oneDNN (libdnnl-dev)"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libdnnl-dev \
      || echo "setup: WARNING: could not install libdnnl-dev; Jittor will run without oneDNN (slow)"
  else
    echo "setup: WARNING: install oneDNN yourself (Debian/Ubuntu: apt-get install libdnnl-dev); without it CPU runs are slow"
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
REQ=requirements.txt
[ "${1:-}" = "--dev" ] && REQ=requirements-dev.txt
# pip's resolver is slow to say "already satisfied" for torch; check cheaply first.
if ! "$VPY" scripts/check_requirements.py "$REQ" 2>/dev/null; then
  "$VPY" -m pip install -q --disable-pip-version-check -r "$REQ"
fi
"$VPY" -c "import jclip" 2>/dev/null || "$VPY" -m pip install -q --disable-pip-version-check --no-deps -e .

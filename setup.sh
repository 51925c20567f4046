#!/usr/bin/env bash
# Sets jclip up in ./.venv: the system oneDNN (Jittor's CPU kernels are ~50x
# slower without it), the runtime requirements and jclip itself (editable).
#   bash setup.sh         runtime only
#   bash setup.sh --dev   also the PyTorch references used by tests and benches, and OpenMPI (mpirun)
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

# apt_install "what" PACKAGES...: install with apt-get where we may (root, or sudo without a password)
apt_install() {
  local what="$1"; shift
  local SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "setup: installing $what ($*)"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" && return 0
    echo "setup: WARNING: could not install $*"
  else
    echo "setup: WARNING: install $what yourself (Debian/Ubuntu: apt-get install $*)"
  fi
  return 1
}

if [ ! -f /usr/include/dnnl.hpp ] && [ ! -f /usr/local/include/dnnl.hpp ]; then
  apt_install "oneDNN" libdnnl-dev || echo "setup: without oneDNN Jittor's CPU kernels are ~50x slower"
fi
# --dev: OpenMPI, so the tests can start ranks with mpirun on CPU (Jittor builds
# its MPI ops when it finds mpicc); jclip itself runs without it
if [ "${1:-}" = "--dev" ] && ! { command -v mpirun >/dev/null && command -v mpicc >/dev/null; }; then
  apt_install "OpenMPI" openmpi-bin libopenmpi-dev || echo "setup: without OpenMPI the mpirun tests are skipped"
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
# Jittor compiles its core the first time it is imported from a new install
# path (~5 min on 2 cores): do it here, once, so the first command (or test)
# does not pay for it silently; on a warm cache this is a 3 s check that
# Jittor loads.
echo "setup: loading Jittor (its one-time compile in a new .venv takes ~5 min on 2 cores)"
"$VPY" -c "import jclip, jittor" || { echo "setup: ERROR: Jittor does not load (run: $VPY -c 'import jclip, jittor')"; exit 1; }

#!/usr/bin/env bash
# Builds the comparison environment for bench/bench_server.py: KServe's Python model server
# from PyPI with onnxruntime, in a venv of its own because KServe pins many dependencies.
# Usage: bench/setup_kserve.sh [VENV_DIR]   (default .venv-kserve at the repository root)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${root}/.venv-kserve}"
python="${PYTHON:-python3}"
if [[ ! -x "${venv}/bin/python" ]]; then
  "${python}" -m venv "${venv}"
fi
"${venv}/bin/pip" install --quiet --upgrade pip
# Pinned, so that every run compares against the same KServe (an unpinned install drifts with
# each release, and so does the ratio).
"${venv}/bin/pip" install --quiet kserve==0.21.0 onnxruntime==1.32.0 numpy
"${venv}/bin/python" -c "from importlib.metadata import version as v; print('kserve', v('kserve'), 'onnxruntime', v('onnxruntime'))"

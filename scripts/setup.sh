#!/usr/bin/env bash
# Sets up .venv with torch and the test tools, and builds genfast into it
# (editable). Safe to run again. Environment: PYTHON (default python3), and the
# build switches of setup.py (GENFAST_FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST, MAX_JOBS).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda  # torch's own guess can pick the wrong folder
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
# torch first: genfast builds against the torch installed in the environment.
"$VPY" -m pip install -q --disable-pip-version-check "torch>=2.4" setuptools wheel ninja
"$VPY" -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
"$VPY" -m genfast info

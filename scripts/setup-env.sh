#!/usr/bin/env bash
# Create .venv (once) and install CPU PyTorch and this package into it.
# Usage: scripts/setup-env.sh [pip install arguments for the package, default "."]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# The CPU build of PyTorch. On the developer machines `torch==2.13.0` resolves to a CPU wheel kept on
# disk; elsewhere set TORCH_SPEC (or PIP_INDEX_URL to PyTorch's CPU index) so that pip does not pull CUDA.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${@:-.}"

#!/usr/bin/env bash
# Set up (virtual environment, CPU PyTorch, the package in editable mode with test tools) and run
# the linter and the test suite. Extra arguments go to pytest (e.g. -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh -e ".[test]"
.venv/bin/ruff check BrainTumorSeg Testing benchmarks
.venv/bin/python -m pytest "$@"

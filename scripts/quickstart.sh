#!/usr/bin/env bash
# Set up (virtual environment, CPU PyTorch, the package) and segment the bundled sample case
# with the bundled default model. Outputs go to ./brain-tumor-seg-output.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh .
.venv/bin/brain-tumor-seg segment --sample --out brain-tumor-seg-output

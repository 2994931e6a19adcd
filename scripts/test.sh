#!/usr/bin/env bash
# Builds everything (scripts/setup.sh) and runs every test suite: GoogleTest through CTest (GPU
# tests skip with a message when no GPU is present) and pytest for the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

ctest --preset release

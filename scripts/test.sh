#!/usr/bin/env bash
# Builds everything (scripts/setup.sh) and runs every test suite: GoogleTest and the tool tests
# through CTest, then pytest for the Python package. Tests that need a GPU skip with a stated reason
# when none is present.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
export CCACHE_BASEDIR="$PWD"

ctest --preset release

# The Python package. Without a GPU its wheel is built CPU-only: the CUDA sources were already
# compiled (and their tests skipped) by the CMake build above.
python3 -m pip install -q --disable-pip-version-check -r requirements-test.txt
cuda_flag=()
if ! nvidia-smi -L >/dev/null 2>&1; then cuda_flag=(-Ccmake.define.PSA_CUDA=OFF); fi
python3 -m pip install -q --disable-pip-version-check --no-build-isolation "${cuda_flag[@]}" .
python3 -m pytest -q -rs tests/python

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

# The sanitizer job: AddressSanitizer and UBSan (the `debug` preset, CPU only; undefined behaviour
# aborts the test) over the CPU tests, the hostile-argument table (tests/cpu/hostile_args_test.cpp),
# the tool's hostile command lines (label `hostile`) and the preset reader's mutation test. About
# 6 minutes on 2 cores, most of it the build.
cmake --preset debug >/dev/null
cmake --build --preset debug
ctest --preset debug -L 'cpu|hostile'

# libFuzzer on the preset reader where clang can build it: 60 000 inputs grown from the preset
# files with a fixed seed, so that a run is reproducible (about 60 s here; 3 minutes at most); a
# failing input is saved as build/fuzz/crash-* and fails the job. About 2 more minutes in all.
if command -v clang++ >/dev/null 2>&1 &&
   echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
     clang++ -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz
  # The first corpus directory receives the inputs libFuzzer finds; the seeds stay untouched.
  rm -rf build/fuzz/corpus && mkdir -p build/fuzz/corpus
  if ! build/fuzz/tests/fuzz/psa_preset_fuzzer build/fuzz/corpus tests/data/presets presets \
      -dict=tests/fuzz/yaml.dict -seed=1 -runs=60000 -max_total_time=180 -timeout=10 \
      -artifact_prefix=build/fuzz/ \
      -print_final_stats=1 >build/fuzz/fuzz.log 2>&1; then
    tail -n 60 build/fuzz/fuzz.log
    echo "test.sh: the preset reader failed on an input; replay it with" \
         "build/fuzz/tests/fuzz/psa_preset_fuzzer build/fuzz/crash-*" >&2
    exit 1
  fi
  tail -n 6 build/fuzz/fuzz.log
else
  echo "test.sh: clang with libFuzzer not found; the preset reader's mutation test ran instead"
fi

# The Python package, under the default python3 and under Python 3.12 (the GPU machine's
# version). Each interpreter builds one wheel (CPU-only without a GPU: the CUDA sources were
# already compiled, and their tests skipped, by the CMake build above), installs it, and runs the
# suite, whose test_wheel.py checks that very wheel ($PSA_WHEEL) in a fresh virtual environment.
cuda_flag=()
if ! nvidia-smi -L >/dev/null 2>&1; then cuda_flag=(-Ccmake.define.PSA_CUDA=OFF); fi
python_suite() {
  local python=$1 wheelhouse wheel
  wheelhouse=build/wheelhouse/$("$python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')
  echo "test.sh: Python tests under" \
    "$("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  "$python" -m pip install -q --disable-pip-version-check -r requirements-test.txt
  rm -rf "$wheelhouse"
  "$python" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps \
    "${cuda_flag[@]}" -w "$wheelhouse" .
  wheel=$(ls "$PWD/$wheelhouse"/psa-*.whl)
  "$python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
  PSA_WHEEL="$wheel" "$python" -m pytest -q -rs tests/python
}

python_suite python3

# Python 3.12: $PSA_PYTHON312, else python3.12 on the PATH, else pyenv's (the CI image has
# pyenv's 3.12.1). Its packages, torch from PyPI as pinned in requirements-test.txt, go into a
# virtual environment under build/ (about 4 GB; a few minutes to download the first time).
python312=${PSA_PYTHON312:-}
if [ -z "$python312" ]; then
  for candidate in "$(command -v python3.12 || true)" \
      "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c '' 2>/dev/null; then
      python312=$candidate
      break
    fi
  done
fi
if [ -z "$python312" ]; then
  echo "test.sh: no Python 3.12 found (set PSA_PYTHON312)" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
else
  if [ ! -x build/venv-py312/bin/python ]; then
    "$python312" -m venv build/venv-py312
  fi
  python_suite "$PWD/build/venv-py312/bin/python"
fi

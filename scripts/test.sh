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

# The Python package. Without a GPU its wheel is built CPU-only: the CUDA sources were already
# compiled (and their tests skipped) by the CMake build above.
python3 -m pip install -q --disable-pip-version-check -r requirements-test.txt
cuda_flag=()
if ! nvidia-smi -L >/dev/null 2>&1; then cuda_flag=(-Ccmake.define.PSA_CUDA=OFF); fi
python3 -m pip install -q --disable-pip-version-check --no-build-isolation "${cuda_flag[@]}" .
python3 -m pytest -q -rs tests/python

#!/usr/bin/env bash
# GPU verification in one call on a machine with an NVIDIA GPU (Hopper): builds with CUDA, runs the
# CUDA tests, compute-sanitizer on small cases, `psa run --device cuda`, the Python GPU tests and the
# benchmark. Stages can be chosen: scripts/gpu_check.sh [build] [test] [sanitize] [run] [python]
# [bench] (default: all). Logs go to $OUT (default /tmp/psa_gpu_check); a summary prints last.
# PSA_DEPS may point at a prefix holding yaml-cpp/GTest/CLI11/nlohmann-json/libpng when the machine
# lacks them (CMAKE_PREFIX_PATH); PSA_WHEELS at a folder of extra wheels for the Python tests.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/psa_gpu_check}
mkdir -p "$OUT"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize run python bench)
want() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

BUILD=build/gpu
prefix_args=()
if [ -n "${PSA_DEPS:-}" ]; then
  prefix_args=(-DCMAKE_PREFIX_PATH="$PSA_DEPS")
  export LD_LIBRARY_PATH="$PSA_DEPS/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
summary=()
note() { summary+=("$1"); echo "== $1"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

if want build; then
  start=$(date +%s)
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPSA_CUDA=ON \
    "${prefix_args[@]}" > "$OUT/configure.log" 2>&1 &&
    cmake --build "$BUILD" -j "$(nproc)" > "$OUT/build.log" 2>&1
  note "build: rc=$? in $(( $(date +%s) - start )) s"
  grep -E "error|warning" "$OUT/build.log" | head -20
fi

if want test; then
  (cd "$BUILD" && ctest --output-on-failure -j 4 > "$OUT/ctest.log" 2>&1)
  note "ctest: $(grep -E 'tests passed|tests failed' "$OUT/ctest.log")"
  grep -E "Failed|\*\*\*" "$OUT/ctest.log" | head -20
fi

if want sanitize; then
  # Every CUDA test but the timing ones (sizes there are large); bounded so a slow tool cannot
  # eat the call.
  filter=${PSA_SANITIZE_FILTER:-'*-AuxTiming.*'}
  for tool in memcheck racecheck; do
    timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$BUILD/tests/psa_cuda_tests" --gtest_filter="$filter" > "$OUT/sanitizer_$tool.log" 2>&1
    note "compute-sanitizer $tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" | tail -1) ($(grep -c '^\[       OK' "$OUT/sanitizer_$tool.log") tests)"
  done
fi

if want run; then
  "$BUILD/tools/psa" run --device cuda > "$OUT/psa_run_cuda.txt" 2>&1
  note "psa run --device cuda: rc=$?"
  cat "$OUT/psa_run_cuda.txt"
  # A Wan-like preset on a larger grid (the CPU computes the dense reference, so not 480p).
  "$BUILD/tools/psa" run --device cuda --shape 8,30,52 --heads 4 --head-dim 128 \
    --preset Wan2.1_1.3b:psa_balanced --json > "$OUT/psa_run_cuda_wan.json" 2> "$OUT/psa_run_cuda_wan.err"
  note "psa run --device cuda (8x30x52, Wan2.1_1.3b:psa_balanced): rc=$? $(cat "$OUT/psa_run_cuda_wan.json")"
fi

if want python; then
  if [ -n "${PSA_WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/psa_site "$PSA_WHEELS"/*.whl
    export PYTHONPATH=/tmp/psa_site:${PYTHONPATH:-}
  fi
  start=$(date +%s)
  CMAKE_ARGS="${prefix_args[*]}" python3 -m pip install -q --no-build-isolation --no-deps \
    ${PSA_DEPS:+-Ccmake.define.CMAKE_PREFIX_PATH=$PSA_DEPS} . > "$OUT/pip.log" 2>&1
  note "pip install .: rc=$? in $(( $(date +%s) - start )) s"
  tail -5 "$OUT/pip.log"
  (cd /tmp && python3 -m pytest -q -rs "$OLDPWD/tests/python" > "$OUT/pytest.log" 2>&1)
  note "pytest: $(tail -1 "$OUT/pytest.log")"
  grep -E "FAILED|Error" "$OUT/pytest.log" | head -20
  python3 bench/wan_step.py --json "$OUT/wan_step.json" > "$OUT/wan_step.txt" 2>&1
  note "Wan2.1 1.3B and 14B transformer steps: rc=$? $(tail -8 "$OUT/wan_step.txt" | tr '\n' ' ')"
fi

if want bench; then
  python3 bench/bench.py --harness "$BUILD/bench/psa_bench" --json "$OUT/bench.json" \
    > "$OUT/bench.txt" 2>&1
  note "bench: rc=$?"
  cat "$OUT/bench.txt"
fi

echo
echo "==== summary ($(cat "$OUT/gpu.txt"))"
printf '%s\n' "${summary[@]}"

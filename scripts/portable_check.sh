#!/usr/bin/env bash
# The portable forward (the compute capability 8.x kernels, docs/design.md "The portable path")
# checked on a Hopper GPU in one device call: the CUDA tests on the Hopper path and, with
# PSA_FORCE_PORTABLE=1, on the portable path; compute-sanitizer memcheck and racecheck on the small
# portable cases; the portable attention kernel against cuDNN at density 0.15 on the three
# WORKLOADS.md shapes (bench/bench.py). A table prints last. Logs go to $OUT
# (default /tmp/psa_portable_check). Took 83-95 s on an H200 with prebuilt binaries (runs 24, 27).
#
#   scripts/portable_check.sh [BIN_DIR]
#
# BIN_DIR: a folder with prebuilt psa_cuda_tests and psa_bench (build/<preset>/tests and
# build/<preset>/bench), e.g. a carried .dev/ run with LD_LIBRARY_PATH set for their libraries.
# Without it the script builds build/portable first, with $PSA_CHECK_ARCHS (default: the release
# architectures plus sm_90 code of the portable kernels, so that a Hopper card runs them without
# JIT-compiling the compute_80 PTX; a default build works too, after a one-time JIT).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/psa_portable_check}
mkdir -p "$OUT"
summary=()
note() { summary+=("$1"); echo "== $1"; }

nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

if [ $# -ge 1 ]; then
  tests=$1/psa_cuda_tests
  bench=$1/psa_bench
else
  archs=${PSA_CHECK_ARCHS:-"80-real;86-real;89-real;90-real;90a-real;80-virtual"}
  start=$(date +%s)
  cmake -S . -B build/portable -G Ninja -DCMAKE_BUILD_TYPE=Release -DPSA_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$archs" -DPSA_BUILD_TOOLS=OFF > "$OUT/build.log" 2>&1 &&
    cmake --build build/portable -j "$(nproc)" --target psa_cuda_tests psa_bench \
      >> "$OUT/build.log" 2>&1
  note "build ($archs): rc=$? in $(( $(date +%s) - start )) s"
  grep -E "error|warning" "$OUT/build.log" | head -20
  tests=build/portable/tests/psa_cuda_tests
  bench=build/portable/bench/psa_bench
fi

# The CUDA tests on both paths. Success: every test passes; on the portable path the backward
# suites skip (the backward runs on Hopper only) and CudaBackward.PortablePathRefusesTheBackward
# passes.
passed() { grep -E '^\[  (PASSED|FAILED)  \]|tests? (passed|failed)|^\[  SKIPPED \] [0-9]' "$1" |
  tr '\n' ' '; }
start=$(date +%s)
"$tests" > "$OUT/tests_hopper.log" 2>&1
note "CUDA tests, Hopper path: rc=$? in $(( $(date +%s) - start )) s: $(passed "$OUT/tests_hopper.log")"
start=$(date +%s)
PSA_FORCE_PORTABLE=1 "$tests" > "$OUT/tests_portable.log" 2>&1
note "CUDA tests, portable path (PSA_FORCE_PORTABLE=1): rc=$? in $(( $(date +%s) - start )) s: $(passed "$OUT/tests_portable.log")"
grep -E '^\[  FAILED|Failure' "$OUT/tests_portable.log" | head -20
# The attention tests with the tile shapes of a 100 KiB-per-SM card (8.6 / 8.9).
attention='Sweep/CudaAttentionTest.*:CudaAttention.*:Cases/CudaAttentionNonFinite.*'
start=$(date +%s)
PSA_FORCE_PORTABLE=8.9 "$tests" --gtest_filter="$attention" > "$OUT/tests_portable_89.log" 2>&1
note "CUDA attention tests, 8.6 / 8.9 tiles (PSA_FORCE_PORTABLE=8.9): rc=$? in $(( $(date +%s) - start )) s: $(passed "$OUT/tests_portable_89.log")"
grep -E '^\[  FAILED|Failure' "$OUT/tests_portable_89.log" | head -20

# compute-sanitizer on the small portable cases: the attention sweep (every variant, causal,
# strided, GQA, Lq != Lk, empty rows), the malformed plan, non-finite inputs, the estimator cases
# but those of 65536 keys and more, the planner cases with the similarity cap; then the attention
# cases with the 8.6 / 8.9 tiles. Success: rc=0, "ERROR SUMMARY: 0 errors" and
# "RACECHECK SUMMARY: 0 hazards".
filter="$attention:Cases/AuxEstimator.*"
filter+=':Cases/AuxPlanner.*sim*'
filter+='-Cases/AuxEstimator.MatchesCpu/two_pass*:Cases/AuxEstimator.MatchesCpu/cluster8*'
filter+=':Cases/AuxEstimator.MatchesCpu/cluster_causal*'
# sanitize MODE LABEL FILTER LOG: memcheck and racecheck under PSA_FORCE_PORTABLE=MODE.
sanitize() {
  for tool in memcheck racecheck; do
    start=$(date +%s)
    PSA_FORCE_PORTABLE=$1 timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$tests" --gtest_filter="$3" > "$OUT/$4_$tool.log" 2>&1
    note "compute-sanitizer $tool ($2): rc=$? in $(( $(date +%s) - start )) s $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$4_$tool.log" | tail -1) ($(grep -c '^\[       OK' "$OUT/$4_$tool.log") tests)"
  done
}
sanitize 1 portable "$filter" sanitizer
sanitize 8.9 "8.6 / 8.9 tiles" "$attention" sanitizer_89

# The portable kernel against cuDNN in the same process run, density 0.15 (block 128 x 64), and
# the whole call (pyramid, portable estimator, planner, attention). Success: eff/cuDNN >= 0.45 on
# the d0.15 rows (issue 10).
start=$(date +%s)
PSA_FORCE_PORTABLE=1 python3 bench/bench.py --harness "$bench" --plans d0.15,call --block-n 64 \
  --json "$OUT/bench_portable.json" > "$OUT/bench_portable.txt" 2>&1
note "bench (portable): rc=$? in $(( $(date +%s) - start )) s"
cat "$OUT/bench_portable.txt"

echo
echo "==== summary ($(cat "$OUT/gpu.txt"))"
printf '%s\n' "${summary[@]}"
echo
echo "==== portable attention kernel vs cuDNN, density 0.15, bf16, block 128 x 64 (bar: eff/cuDNN >= 0.45)"
python3 - "$OUT/bench_portable.json" <<'EOF'
import json
import sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError, KeyError) as e:
    sys.exit(f"no benchmark results: {e}")
print(f"{'shape':<10} {'plan':<6} {'density':>7} {'cuDNN ms':>9} {'psa ms':>9} {'eff TF/s':>9} "
      f"{'eff/cuDNN':>9}")
for r in rows:
    print(f"{r['shape']:<10} {r['plan']:<6} {r['density']:>7.4f} {r['cudnn_ms']:>9.3f} "
          f"{r['median_ms']:>9.3f} {r['effective_tflops']:>9.1f} {r['effective_ratio']:>9.3f}")
EOF

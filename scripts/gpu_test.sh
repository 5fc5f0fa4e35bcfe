#!/usr/bin/env bash
# Runs the GPU tests of a bundled build on a GPU machine and prints the results; builds nothing.
# Build and bundle first, on a build machine:
#   cmake -S . -B build-cuda -G Ninja && cmake --build build-cuda && scripts/bundle.sh build-cuda dist-cuda
# Usage: scripts/gpu_test.sh [dist-dir] [--bench] [extra Catch2 arguments...]
#   --bench also runs the timings at the 700M shape (hidden test tag [gpu_bench]).
# Logs go to $OUT (when set, as on the device tool) or /tmp: gpu_test.log, gpu_bench.log.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dist="$repo/dist-cuda"
if [[ $# -gt 0 && "$1" != -* ]]; then
  dist="$1"
  shift
fi
bench=0
if [[ $# -gt 0 && "$1" == "--bench" ]]; then
  bench=1
  shift
fi
if [[ ! -x "$dist/moda_tests" ]]; then
  echo "gpu_test: no $dist/moda_tests; build, then run scripts/bundle.sh build-cuda dist-cuda" >&2
  exit 2
fi
# cuBLAS and the CUDA runtime come from the machine's toolkit when the bundle leaves them out.
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d "$dir" ]] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$dir"
done
logs="${OUT:-/tmp}"
# This script runs where a GPU should be: a test that sees none fails instead of skipping
# (a driver mismatch or a wrong CUDA_VISIBLE_DEVICES would otherwise pass as all-skipped).
export MODA_EXPECT_GPU=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
status=0
"$dist/moda_tests" "[gpu]" --durations yes "$@" 2>&1 | tee "$logs/gpu_test.log" || status=$?
if [[ $bench -eq 1 ]]; then
  "$dist/moda_tests" "[gpu_bench]" "$@" 2>&1 | tee "$logs/gpu_bench.log" || status=$?
fi
# Summary last: the measured errors of every check, then Catch2's verdict.
echo "---- summary ----"
grep -E "^moda gpu: model" "$logs/gpu_test.log" || true
grep -E "^bench:" "$logs/gpu_bench.log" 2>/dev/null || true
# Tests skipped for want of a second GPU or mpirun pass in Catch2's count: name them.
grep -E "moda: SKIPPED:" "$logs/gpu_test.log" || true
grep -E "^(All tests passed|test cases:)" "$logs/gpu_test.log" || true
exit "$status"

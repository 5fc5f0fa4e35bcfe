#!/usr/bin/env bash
# The op timings ([gpu_bench], or the Catch2 test spec SPEC, e.g. "cuda backend: QK-norm*") of
# two bundled builds, alternately, ROUNDS times each (default 2), so that both see the same machine
# state; prints the lines that match PATTERN (an extended regular expression, default: all timing
# lines).
# Usage: [SPEC=...] [ROUNDS=N] scripts/gpu_bench_ab.sh DIST_A DIST_B [PATTERN]
set -euo pipefail
a="${1:?usage: gpu_bench_ab.sh DIST_A DIST_B [PATTERN]}"
b="${2:?usage: gpu_bench_ab.sh DIST_A DIST_B [PATTERN]}"
pattern="${3:-bench:}"
source "$(dirname "$0")/gpu_env.sh"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for dist in "$a" "$b"; do
    echo "== $dist, round $round"
    "$dist/moda_tests" "${SPEC:-[gpu_bench]}" 2>&1 | grep -E "$pattern" || true
  done
done

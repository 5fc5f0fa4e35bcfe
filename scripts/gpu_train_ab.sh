#!/usr/bin/env bash
# End-to-end tokens/s of several bundled builds on the same runs, alternately, ROUNDS times each
# (default 2), so that all see the same machine state (the spread between device calls is 2-4%,
# larger than many changes). Each run is scripts/gpu_train_bench.sh's (its median tokens/s of steps
# 4.., the profile of step 3 where it prints one).
# Usage: [ROUNDS=N] [STEPS=N] [T6_MICRO=N] scripts/gpu_train_ab.sh "RUNS" DIST...
#   RUNS: gpu_train_bench.sh's run names, e.g. "moda_700m t6_moda_ffn_kv"
set -euo pipefail
runs="${1:?usage: gpu_train_ab.sh \"RUNS\" DIST...}"
shift
[[ $# -gt 0 ]] || { echo "usage: gpu_train_ab.sh \"RUNS\" DIST..." >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
read -r -a names <<< "$runs"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for dist in "$@"; do
    echo "==== $dist, round $round"
    OUT="/tmp/moda_train_ab/$(basename "$dist")_$round" \
      "$here/gpu_train_bench.sh" "$dist" "${STEPS:-16}" "${names[@]}"
  done
done

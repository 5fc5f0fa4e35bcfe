#!/usr/bin/env bash
# End-to-end tokens/s of several bundled builds on the same runs, alternately, ROUNDS times each
# (default 2), so that all see the same machine state (the spread between device calls is 2-4%,
# larger than many changes). Each run is scripts/gpu_train_bench.sh's (its median tokens/s of steps
# 4.., the profile of step 3 where it prints one). At the end a summary per build: each run's
# medians by round and their median, and MoDA over OLMo2 of the same size and round (the ratio of
# issue 5's end-to-end bars; a ratio of runs from one round, a median over rounds, since single
# runs of the 1.5B configs move by 2-3%).
# Usage: [ROUNDS=N] [STEPS=N] [ACCUM=N] [T6_MICRO=N] [AB_OUT=DIR]
#          scripts/gpu_train_ab.sh "RUNS" DIST...
#   RUNS: gpu_train_bench.sh's run names, e.g. "olmo2_1p5b moda_1p5b"
#   STEPS: optimizer steps a run (default 8). ACCUM: micro-batches per optimizer step of the 700M
#   and 1.5B runs (default 8; gpu_train_bench.sh's own default is 1). With 1 every step also pays
#   AdamW and the gradient norm, a constant that both models of a pair pay alike and that raises
#   MoDA's ratio (MoDA-1.5B 0.913x at 1 against 0.891x-0.905x at 8, twenty-sixth session in
#   docs/benchmarks.md); training at the configs' global batch pays it once per 256 or 512
#   micro-batches. The profile printed is then one of 8 micro-batches.
#   AB_OUT: an empty or new folder for the runs' logs (default: $OUT/train_ab where OUT is set, as
#   on the device tool, so that a call cut off by its time limit still brings back the logs of
#   the runs it finished; otherwise a new folder under /tmp). After each round but the last the
#   summary of the rounds so far is printed too. Device time: a 1.5B run of 8 steps of 8
#   micro-batches takes about 70 s (twenty-seventh session: 6 runs in about 430 s).
set -euo pipefail
runs="${1:?usage: gpu_train_ab.sh \"RUNS\" DIST...}"
shift
[[ $# -gt 0 ]] || { echo "usage: gpu_train_ab.sh \"RUNS\" DIST..." >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
read -r -a names <<< "$runs"
rounds="${ROUNDS:-2}"
export ACCUM="${ACCUM:-8}"
out="${AB_OUT:-${OUT:+$OUT/train_ab}}"
out="${out:-$(mktemp -d /tmp/moda_train_ab.XXXXXX)}"
mkdir -p "$out"
# Results of an earlier invocation would pass for runs of this one that failed.
[[ -z "$(ls -A "$out")" ]] || { echo "gpu_train_ab.sh: $out is not empty" >&2; exit 2; }
for round in $(seq 1 "$rounds"); do
  for dist in "$@"; do
    echo "==== $dist, round $round"
    OUT="$out/$(basename "$dist")_$round" \
      "$here/gpu_train_bench.sh" "$dist" "${STEPS:-8}" "${names[@]}"
  done
  if [[ "$round" -lt "$rounds" ]]; then
    echo "==== after round $round of $rounds"
    python3 "$here/train_ab_summary.py" "$out" "$round" "$runs" "$@"
  fi
done
echo "==== micro-batches per optimizer step: $ACCUM"
python3 "$here/train_ab_summary.py" "$out" "$rounds" "$runs" "$@"

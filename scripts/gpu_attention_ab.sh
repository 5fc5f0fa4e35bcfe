#!/usr/bin/env bash
# A/B of an attention kernel change on a GPU machine, from two bundled builds
# (scripts/bundle.sh): the new build's attention tests (CPU float64 reference, ragged shapes,
# repeatability) and a compute-sanitizer racecheck, then both builds and torch SDPA timed in one
# run (scripts/bench_attention.py --baseline) at the targets.md shapes, a head-size-128 shape and
# the Table 6 shapes. With two GPUs it also runs the kill-one-rank NCCL test of the new build.
# Usage: scripts/gpu_attention_ab.sh NEW_DIST BASE_DIST [reps]. Logs go to $OUT or /tmp/moda_ab.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
new="${1:?usage: gpu_attention_ab.sh NEW_DIST BASE_DIST [reps]}"
base="${2:?usage: gpu_attention_ab.sh NEW_DIST BASE_DIST [reps]}"
reps="${3:-20}"
out="${OUT:-/tmp/moda_ab}"
mkdir -p "$out"
# shellcheck source=gpu_env.sh
source "$repo/scripts/gpu_env.sh"
status=0
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader
echo "== attention tests (new build)"
CUDA_VISIBLE_DEVICES=0 "$new/moda_tests" "cuda backend: MoDA attention*" > "$out/attention_tests.log" 2>&1 \
  || status=$?
tail -4 "$out/attention_tests.log"
if command -v compute-sanitizer > /dev/null; then
  echo "== racecheck"
  CUDA_VISIBLE_DEVICES=0 LD_LIBRARY_PATH="$new/lib:/usr/local/cuda/lib64" timeout 300 \
    compute-sanitizer --tool racecheck "$new/bin/moda_tests" \
    "cuda backend: MoDA attention repeats bit for bit" > "$out/racecheck.log" 2>&1 || status=$?
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard|test cases" "$out/racecheck.log" | tail -5
fi
echo "== timing: new build, baseline build, torch SDPA"
shapes=("4,4096,16,8,64,0" "4,4096,16,8,64,36" "4,4096,16,8,64,72" "2,4096,16,8,128,0"
        "2,4096,16,8,128,32" "1,4096,64,8,64,0" "1,4096,64,8,64,64" "1,16384,64,8,64,0"
        "1,16384,64,8,64,64" "64,1024,6,2,64,0" "64,1024,6,2,64,47" "64,1024,6,2,64,94")
args=()
for s in "${shapes[@]}"; do args+=(--shape "$s"); done
CUDA_VISIBLE_DEVICES=0 python3 "$repo/scripts/bench_attention.py" --moda "$new/moda" --baseline "$base/moda" \
  --reps "$reps" --json "$out/attention_ab.jsonl" "${args[@]}" || status=$?
if [[ $(nvidia-smi -L 2> /dev/null | wc -l) -ge 2 && -x "$new/moda_tests" ]]; then
  echo "== NCCL: one rank killed mid-run, then resumed"
  timeout 300 "$new/moda_tests" "NCCL: one rank killed*" -s > "$out/nccl_kill.log" 2>&1 || status=$?
  grep -E "killed|signal|exited|resum|passed|failed|FAILED" "$out/nccl_kill.log" | tail -15
fi
echo "gpu_attention_ab: exit status $status"
exit "$status"

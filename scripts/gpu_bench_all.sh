#!/usr/bin/env bash
# Every timing on a GPU machine, from a bundled build (scripts/bundle.sh build dist-cuda), in one
# run: the 2-rank NCCL comparison when two GPUs are there, attention against torch SDPA
# (scripts/bench_attention.py), the per-kernel timings at the 700M shape ([gpu_bench]), and the
# trainer's own throughput, memory and per-phase profile (scripts/gpu_train_bench.sh).
# Usage: scripts/gpu_bench_all.sh [dist-dir] [train-steps]. Logs go to $OUT or /tmp/moda_bench.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dist="${1:-$repo/dist-cuda}"
steps="${2:-10}"
out="${OUT:-/tmp/moda_bench}"
mkdir -p "$out"
# shellcheck source=gpu_env.sh
source "$repo/scripts/gpu_env.sh"
status=0
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
gpus=$(nvidia-smi -L 2> /dev/null | wc -l)
if [[ $gpus -ge 2 ]]; then
  echo "== NCCL: 2 ranks on 2 GPUs against 1 GPU with twice the micro-batch"
  "$dist/moda_tests" "mpirun -np 2 on two GPUs gives the losses of one GPU with twice the micro-batch" \
    -s > "$out/nccl2.log" 2>&1 || status=$?
  grep -E "moda nccl|passed|failed|FAILED|warning" "$out/nccl2.log" | tail -12
fi
export CUDA_VISIBLE_DEVICES=0
echo "== attention: ours against torch SDPA"
python3 "$repo/scripts/bench_attention.py" --moda "$dist/moda" --reps 20 --json "$out/attention.jsonl" \
  || status=$?
echo "== kernels at the 700M shape"
"$dist/moda_tests" "[gpu_bench]" > "$out/gpu_bench.log" 2>&1 || status=$?
grep -E "^bench:" "$out/gpu_bench.log"
echo "== training throughput, memory, profile"
"$repo/scripts/gpu_train_bench.sh" "$dist" "$steps" || status=$?
echo "gpu_bench_all: exit status $status"
exit "$status"

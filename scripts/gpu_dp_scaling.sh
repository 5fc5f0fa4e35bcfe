#!/usr/bin/env bash
# Data-parallel throughput on the GPUs of one machine: one GPU with micro-batch M, then N ranks
# (mpirun, NCCL) with micro-batch M each, gradient buckets on (overlapped with the backward) and
# off (runtime.grad_bucket_mb 0: one all-reduce after the backward), and ZeRO-1. Prints the
# trainer's median tokens/s of the steps after the third and the efficiency against N x one GPU.
#   scripts/gpu_dp_scaling.sh [DIST=dist-cuda] [STEPS=12] [CONFIG=configs/paper/table3_row1_olmo2_36l.yaml]
# env: MICRO (default 4), RANKS (default: every GPU), OUT (logs; default /tmp/moda_dp),
#      BASE_DIST (a second bundle, e.g. an earlier build, timed the same way right after DIST).
# Runs on the embedded text with byte tokens (the model keeps its shapes). NVLink multicast
# stays off (NCCL_NVLS_ENABLE=0).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dist="${1:-$repo/dist-cuda}"
steps="${2:-12}"
config="${3:-$repo/configs/paper/table3_row1_olmo2_36l.yaml}"
micro="${MICRO:-4}"
gpus=$(nvidia-smi -L 2> /dev/null | wc -l)
ranks="${RANKS:-$gpus}"
out="${OUT:-/tmp/moda_dp}"
mkdir -p "$out"
# shellcheck source=gpu_env.sh
source "$repo/scripts/gpu_env.sh"
[[ $ranks -ge 2 ]] || { echo "gpu_dp_scaling: needs 2 or more GPUs (found $gpus)" >&2; exit 2; }
common=(--config "$config" --set "data.train=[embedded]" --set "data.val=[]" --set data.tokenizer=byte
        --set schedule.total_steps="$steps" --set schedule.warmup_steps=2 --set logging.val_interval=0
        --set logging.interval=1 --set logging.plot=false --set checkpoint.at_end=false --set batch.micro_batch="$micro")
median() {  # metrics.jsonl -> median tokens/s of steps > 3
  python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{statistics.median(r['tokens_per_s'] for r in rows if r['step'] > 3):.0f}")
PY
}
status=0
for d in "$dist" ${BASE_DIST:-}; do
  tag=$(basename "$d")
  CUDA_VISIBLE_DEVICES=0 "$d/moda" train "${common[@]}" --set batch.global_batch="$micro" \
    --set logging.dir="$out/$tag-1gpu" > "$out/$tag-1gpu.log" 2>&1 || { tail -5 "$out/$tag-1gpu.log"; status=1; continue; }
  one=$(median "$out/$tag-1gpu/metrics.jsonl")
  echo "$tag: 1 GPU, micro-batch $micro: $one tokens/s"
  for variant in "buckets:--set runtime.grad_bucket_mb=25" "no-overlap:--set runtime.grad_bucket_mb=0" \
                 "zero1:--set runtime.zero1=true"; do
    name="${variant%%:*}"
    # shellcheck disable=SC2086
    mpirun -np "$ranks" --bind-to none "$d/moda" train "${common[@]}" \
      --set batch.global_batch=$((micro * ranks)) --set runtime.comm=nccl ${variant#*:} \
      --set logging.dir="$out/$tag-$name" > "$out/$tag-$name.log" 2>&1 ||
      { tail -5 "$out/$tag-$name.log"; status=1; continue; }
    many=$(median "$out/$tag-$name/metrics.jsonl")
    python3 -c "print(f'$tag: $ranks ranks, $name: $many tokens/s, efficiency {$many / ($ranks * $one):.3f}')"
  done
done
exit $status

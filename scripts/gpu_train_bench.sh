#!/usr/bin/env bash
# End-to-end training throughput on one GPU: the tiny default, then the 700M and 1.5B OLMo2 and
# MoDA (+ FFN KV) configs of configs/paper/ for a few steps each, on the embedded corpus (byte
# tokens; the model keeps its full 100K vocabulary, so every layer costs what it costs on real
# data). Prints the trainer's own log lines; the steady-state tokens/s is the median of the
# steps after the first few. Each run also prints the trainer's memory line after step 1
# (prediction, allocation counter, cudaMemGetInfo), and the 700M, 1.5B and Table 6 MoDA + FFN KV
# runs the per-phase profile of one step (runtime.profile_step, CUDA events around each backend op).
# Usage: scripts/gpu_train_bench.sh [dist-dir] [steps] [run names...]
#   run names: any of tiny olmo2_700m moda_700m olmo2_1p5b moda_1p5b (default: all),
#   olmo2_700m_38l (Table 3 row 2: the 38-layer, 700.5M OLMo2 that the paper's Tables 4 and 5
#   take as the 700M baseline, parameter-matched to MoDA + FFN KV; not in the default), and the
#   Table 6 48-layer models at T = 1024, micro-batch ${T6_MICRO:-64}: t6_olmo2_pre t6_olmo2_post
#   t6_moda_post t6_moda_ffn_kv (not in the default; they plan scripts/reproduce_table6.sh's
#   token budget). With few steps (3: memory and profile only) a run costs seconds of device time.
#   ACCUM=N (default 1) gives the 700M and 1.5B runs a global batch of N micro-batches (gradient
#   accumulation): with N = 1 every step of 8K-16K tokens also pays a full AdamW pass over the
#   weights (2.8% of a 700M step), which training at a real global batch amortizes.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dist="${1:-$repo/dist-cuda}"
steps="${2:-12}"
shift $(( $# < 2 ? $# : 2 ))
only=" ${*:-tiny olmo2_700m moda_700m olmo2_1p5b moda_1p5b} "
accum="${ACCUM:-1}"
# The profiled step: 3 (after cuBLASLt's autotuning in step 1), or the last one of shorter runs.
profile_step=$(( steps < 3 ? steps : 3 ))
out="${OUT:-/tmp/moda_bench}"
mkdir -p "$out"
common=(--set runtime.device=cuda --set "data.train=[embedded]" --set "data.val=[]"
        --set data.tokenizer=byte --set schedule.total_steps="$steps" --set schedule.warmup_steps=2
        --set logging.val_interval=0 --set logging.val_batches=1 --set logging.interval=1
        --set logging.plot=false --set checkpoint.at_end=false)
run() {
  local name="$1"; shift
  [[ "$only" == *" $name "* ]] || return 0
  echo "== $name"
  "$dist/moda" train "$@" "${common[@]}" --set logging.dir="$out/$name" > "$out/$name.log" 2>&1 || {
    tail -5 "$out/$name.log"; return 0; }
  grep -E "backend:|model:|memory:" "$out/$name.log" | sed 's/^.*\] //'
  # The profile table spans several lines of one log message.
  sed -n '/profile of step/,/the five largest/p' "$out/$name.log" | sed 's/^.*\] //'
  # Median tokens/s over steps 4.. (the first steps include cuBLASLt autotuning).
  python3 "$repo/scripts/train_metrics.py" "$out/$name/metrics.jsonl"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null | head -1 || true
}
if [[ "$only" == *" tiny "* ]]; then
  "$dist/moda" train --set runtime.device=cuda --set logging.dir="$out/tiny" > "$out/tiny.log" 2>&1 && \
    grep -E "step +(1|50|100|150)/" "$out/tiny.log" | sed 's/^.*\] //'
fi
p="$repo/configs/paper"
run olmo2_700m --config "$p/table3_row1_olmo2_36l.yaml" --set batch.micro_batch=4 \
  --set batch.global_batch=$((4 * accum)) --set runtime.profile_step="$profile_step"
run olmo2_700m_38l --config "$p/table3_row2_olmo2_38l.yaml" --set batch.micro_batch=4 \
  --set batch.global_batch=$((4 * accum)) --set runtime.profile_step="$profile_step"
run moda_700m --config "$p/table3_row4_moda_ffn_kv.yaml" --set batch.micro_batch=4 \
  --set batch.global_batch=$((4 * accum)) --set runtime.profile_step="$profile_step"
run olmo2_1p5b --config "$p/olmo2_1p5b.yaml" --set batch.micro_batch=2 \
  --set batch.global_batch=$((2 * accum)) --set runtime.profile_step="$profile_step"
run moda_1p5b --config "$p/moda_1p5b.yaml" --set batch.micro_batch=2 \
  --set batch.global_batch=$((2 * accum)) --set runtime.profile_step="$profile_step"
t6="${T6_MICRO:-64}"
run t6_olmo2_pre --config "$p/table6_olmo2_48l_pre.yaml" --set batch.micro_batch="$t6" --set batch.global_batch="$t6"
run t6_olmo2_post --config "$p/table6_olmo2_48l_post.yaml" --set batch.micro_batch="$t6" --set batch.global_batch="$t6"
run t6_moda_post --config "$p/table6_moda_48l_post.yaml" --set batch.micro_batch="$t6" --set batch.global_batch="$t6"
run t6_moda_ffn_kv --config "$p/table6_moda_ffn_kv_48l_post.yaml" --set batch.micro_batch="$t6" \
  --set batch.global_batch="$t6" --set runtime.profile_step="$profile_step"

#!/usr/bin/env bash
# The Table 6 study (scripts/reproduce_table6.sh) spread over the GPUs of one machine, as run on
# the device tool's nvidia-h200-x2: unpacks the corpus carried by scripts/corpus_transfer.sh,
# runs one queue of runs per GPU at the same time, prints the table and packs the results (no
# checkpoints) into $OUT/table6.tgz.
#   scripts/gpu_table6.sh DIST TOKENS "RUNS FOR GPU 0" ["RUNS FOR GPU 1" ...]
# e.g. scripts/gpu_table6.sh dist-study 48000000 \
#        "olmo2_48l_pre_seed42 olmo2_48l_pre_seed43 olmo2_48l_post" "moda_48l_post moda_ffn_kv_48l_post"
# Run names are reproduce_table6.sh's RUNS: <config>[_seed<N>] for configs/paper/table6_<config>.yaml.
# Balance the queues by each model's tokens/s (docs/reproduction.md).
# env: MICRO (micro-batch, default 64 = the global batch: one micro-step per optimizer step),
#      CORPUS_PACKED (default .corpus-xz), OUT (results; default /tmp/table6_out), EXTRA (more
#      --set overrides for every run).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
[[ $# -ge 3 ]] || { echo "usage: $0 DIST TOKENS QUEUE0 [QUEUE1 ...]" >&2; exit 2; }
dist="$1" tokens="$2"
shift 2
out="${OUT:-/tmp/table6_out}"
mkdir -p "$out"
if ! ls data/corpus/gpt2/train-*.npy > /dev/null 2>&1; then
  scripts/corpus_transfer.sh unpack "${CORPUS_PACKED:-.corpus-xz}" data/corpus/gpt2
fi
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader || true
gpu=0
pids=()
for queue in "$@"; do
  echo "GPU $gpu: $queue"
  CUDA_VISIBLE_DEVICES=$gpu OUT=runs/table6 MODA="$dist/moda" RUNS="$queue" \
    EXTRA="--set batch.micro_batch=${MICRO:-64} --set logging.plot=false ${EXTRA:-}" \
    scripts/reproduce_table6.sh "$tokens" > "$out/gpu$gpu.log" 2>&1 &
  pids+=($!)
  gpu=$((gpu + 1))
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for log in "$out"/gpu*.log; do
  echo "== $log"
  grep -E "^== |step +[0-9]+/[0-9]+ .*val|error" "$log" | sed 's/^.*\] //' | tail -40
done
TABLE_ONLY=1 OUT=runs/table6 MODA="$dist/moda" scripts/reproduce_table6.sh "$tokens" || status=1
tar czf "$out/table6.tgz" --exclude=checkpoints -C runs table6
exit $status

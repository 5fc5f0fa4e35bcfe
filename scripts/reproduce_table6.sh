#!/usr/bin/env bash
# The small-scale study of Table 6 (docs/reproduction.md): OLMo2 pre-norm (two seeds), OLMo2
# post-norm, MoDA post-norm and MoDA post-norm + FFN KV, 48 layers (or 24 with LAYERS=24), each on
# the same token budget of the real corpus (scripts/prepare_corpus.sh), then a table of final
# validation losses next to the paper's.
#   scripts/reproduce_table6.sh [TOKENS]      default 100000000 tokens per run
# env: MODA (binary, default build/moda), LAYERS (48 or 24), SEEDS (baseline seeds, default "42 43"),
#      OUT (default runs/table6), EXTRA (more --set overrides for every run, e.g. micro-batch).
# Warmup is 10% of the steps (the paper's 2000 steps assume its 400B-token budget); the cosine
# schedule ends at the budget. Every run logs to OUT/<name>/ (metrics.jsonl, loss.png).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
tokens="${1:-100000000}"
moda="${MODA:-build/moda}"
layers="${LAYERS:-48}"
seeds="${SEEDS:-42 43}"
out="${OUT:-runs/table6}"
[[ -x "$moda" ]] || { echo "reproduce_table6: no binary $moda (build first, or set MODA)" >&2; exit 2; }
ls data/corpus/gpt2/train-*.npy > /dev/null 2>&1 ||
  { echo "reproduce_table6: no data/corpus/gpt2 shards; run scripts/prepare_corpus.sh" >&2; exit 2; }
# Tokens per optimizer step from the configs (seq_len x global_batch; all Table 6 configs agree).
per_step=$(( 1024 * 64 ))
steps=$(( (tokens + per_step - 1) / per_step ))
warmup=$(( steps / 10 > 0 ? steps / 10 : 1 ))
echo "reproduce_table6: $tokens tokens per run = $steps steps of $per_step tokens, warmup $warmup"
if [[ $layers == 48 ]]; then
  runs=("olmo2_48l_pre" "olmo2_48l_post" "moda_48l_post" "moda_ffn_kv_48l_post")
else
  runs=("olmo2_24l_post" "moda_24l_post" "moda_ffn_kv_24l_post")
fi
train() {  # name config seed
  local dir="$out/$1"
  if [[ -f "$dir/metrics.jsonl" ]] && grep -q "\"step\": $steps," "$dir/metrics.jsonl"; then
    echo "== $1: done already ($dir)"; return 0
  fi
  echo "== $1"
  # shellcheck disable=SC2086
  "$moda" train --config "configs/paper/table6_$2.yaml" --set schedule.total_steps="$steps" \
    --set schedule.warmup_steps="$warmup" --set logging.val_interval=$(( steps / 10 > 0 ? steps / 10 : 1 )) \
    --set runtime.seed="$3" --set logging.dir="$dir" ${EXTRA:-}
}
for r in "${runs[@]}"; do
  if [[ $r == olmo2_48l_pre || ($layers == 24 && $r == olmo2_24l_post) ]]; then
    for s in $seeds; do train "${r}_seed$s" "$r" "$s"; done
  else
    train "$r" "$r" 42
  fi
done
python3 - "$out" "$tokens" <<'PY'
import glob, json, os, sys
paper = {"olmo2_48l_pre": 3.3800, "olmo2_48l_post": 3.4062, "moda_48l_post": 3.3653,
         "moda_ffn_kv_48l_post": 3.3484}
print(f"\n| run | tokens | final val loss | paper (FineWeb-Edu, 48L) |\n|---|---|---|---|")
for d in sorted(glob.glob(os.path.join(sys.argv[1], "*"))):
    rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    name = os.path.basename(d)
    key = name.split("_seed")[0]
    print(f"| {name} | {rows[-1]['step'] * 65536:,} | {val[-1]:.4f} | {paper.get(key, '')} |")
PY

#!/usr/bin/env bash
# The small-scale study of Table 6 (docs/reproduction.md): OLMo2 pre-norm (two seeds), OLMo2
# post-norm, MoDA post-norm and MoDA post-norm + FFN KV, 48 layers (or 24 with LAYERS=24), each on
# the same token budget of the real corpus (scripts/prepare_corpus.sh), then a table of final
# validation losses next to the paper's.
#   scripts/reproduce_table6.sh [TOKENS]      default 100000000 tokens per run
# env: MODA (binary, default build/moda), LAYERS (48, 24 or "48 24"), SEEDS (baseline seeds, default
#      "42 43"), OUT (default runs/table6), EXTRA (more --set overrides for every run, e.g.
#      micro-batch), RUNS (run these instead of the default list, e.g. "moda_48l_pre
#      olmo2_48l_post_seed43": <config>[_seed<N>] for configs/paper/table6_<config>.yaml; to spread
#      the study over GPUs, one invocation per GPU with its own CUDA_VISIBLE_DEVICES and RUNS, as
#      scripts/gpu_table6.sh does), TABLE_ONLY=1 (print the table of what OUT holds and plot it).
# Warmup is 10% of the steps (the paper's 2000 steps assume its 400B-token budget); the cosine
# schedule ends at the budget. A seed sets both the initialization (runtime.seed) and the order of
# the training windows (data.seed). Every run logs to OUT/<name>/ (metrics.jsonl, loss.png).
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
# Run names: a config of configs/paper/table6_<config>.yaml, with "_seed<N>" for a seed other
# than 42 (the baseline of the default list always carries its seed, as it runs with several).
runs=()
if [[ -n "${RUNS:-}" ]]; then
  read -r -a runs <<< "$RUNS"
else
  for l in $layers; do
    case "$l" in
      48) base=olmo2_48l_pre others=("olmo2_48l_post" "moda_48l_post" "moda_ffn_kv_48l_post") ;;
      24) base=olmo2_24l_post others=("moda_24l_post" "moda_ffn_kv_24l_post") ;;
      *) echo "reproduce_table6: LAYERS must be 48, 24 or \"48 24\" (got $l)" >&2; exit 2 ;;
    esac
    for s in $seeds; do runs+=("${base}_seed$s"); done
    runs+=("${others[@]}")
  done
fi
for name in "${runs[@]}"; do
  config="${name%_seed*}"
  [[ -f "configs/paper/table6_$config.yaml" ]] ||
    { echo "reproduce_table6: run $name: no configs/paper/table6_$config.yaml" >&2; exit 2; }
done
train() {  # name config seed
  local dir="$out/$1"
  if [[ -f "$dir/metrics.jsonl" ]] && grep -q "\"step\": $steps," "$dir/metrics.jsonl"; then
    echo "== $1: done already ($dir)"; return 0
  fi
  echo "== $1"
  # shellcheck disable=SC2086
  "$moda" train --config "configs/paper/table6_$2.yaml" --set schedule.total_steps="$steps" \
    --set schedule.warmup_steps="$warmup" --set logging.val_interval=$(( steps / 20 > 0 ? steps / 20 : 1 )) \
    --set runtime.seed="$3" --set data.seed="$3" --set logging.dir="$dir" ${EXTRA:-}
}
if [[ -z "${TABLE_ONLY:-}" ]]; then
  for name in "${runs[@]}"; do
    seed=42
    [[ $name == *_seed* ]] && seed="${name##*_seed}"
    train "$name" "${name%_seed*}" "$seed"
  done
fi
python3 - "$out" "$tokens" <<'PY'
import glob, json, os, sys
paper = {"olmo2_48l_pre": 3.3800, "olmo2_48l_post": 3.4062, "moda_48l_pre": 3.3759, "moda_48l_post": 3.3653,
         "moda_ffn_kv_48l_pre": 3.3656,
         "moda_ffn_kv_48l_post": 3.3484, "olmo2_24l_post": 3.4740, "moda_24l_post": 3.4537,
         "moda_ffn_kv_24l_post": 3.4338}
print(f"\n| run | tokens | final val loss | paper (FineWeb-Edu) |\n|---|---|---|---|")
for d in sorted(glob.glob(os.path.join(sys.argv[1], "*"))):
    if not os.path.isfile(os.path.join(d, "metrics.jsonl")):
        continue
    rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    name = os.path.basename(d)
    key = name.split("_seed")[0]
    ref = f"{paper[key]:.4f}" if key in paper else ""
    final = f"{val[-1]:.4f}" if val else "(none yet)"
    print(f"| {name} | {rows[-1]['step'] * 65536:,} | {final} | {ref} |")
PY
# One image of every run's curves, when matplotlib is there (Debian: python3-matplotlib).
if python3 -c "import matplotlib" 2> /dev/null; then
  python3 tools/plot_runs.py "$out/curves.png" $(ls -d "$out"/*/ | sort) --title "Table 6 study, $tokens tokens per run"
fi

#!/usr/bin/env bash
# HF parity: for each model variant, train a tiny model (or, with INIT=1 or when training left no
# checkpoint, take a freshly initialized one with noise on every weight), export it with
# `moda export`, load the export in PyTorch (transformers: Olmo2ForCausalLM for OLMo2, the
# trust_remote_code modeling file for the others) and compare its logits on a fixed token batch
# with moda's (`moda eval --dump-logits`), on moda's CPU backend (fp32) and, when there is a GPU,
# its CUDA backend (bf16).
#
#   scripts/hf_parity.sh [WORKDIR]         env: MODA=path/to/moda  STEPS=30  INIT=0  PLAIN=0
#
# Tolerances (relative error ||hf - moda|| / ||moda|| over all logits):
#   fp32 export vs moda cpu (fp32)   1e-4   (two fp32 implementations; measured ~1e-6)
#   fp32 export vs moda cuda (bf16)  5e-2   (bf16 storage of weights and activations)
#   bf16 export vs moda cpu (fp32)   5e-2   (the export itself rounds the weights to bf16)
# PLAIN=1 loads modeling_moda.py without transformers (OLMo2 exports too): the check that runs on
# a machine with only torch. Exit status: the number of failed comparisons.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d /tmp/moda_hf_parity.XXXXXX)}
mkdir -p "$WORK"
if [[ -z "${MODA:-}" ]]; then
  for candidate in build-cuda/moda build/moda build-cpu/moda; do
    [[ -x $candidate ]] && MODA=$candidate && break
  done
fi
[[ -x "${MODA:-}" ]] || { echo "no moda binary (set MODA=...)" >&2; exit 2; }
STEPS=${STEPS:-30}
INIT=${INIT:-0}
PY=${PYTHON:-python3}
PLAIN_FLAG=()
[[ ${PLAIN:-0} == 1 ]] && PLAIN_FLAG=(--plain-torch)
HAVE_GPU=0
"$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && HAVE_GPU=1
DEVICE=$([[ $HAVE_GPU == 1 ]] && echo cuda || echo cpu)
echo "moda: $MODA   work: $WORK   torch device: $DEVICE   steps: $STEPS"

COMMON=(--set model.d_model=128 --set model.n_heads=4 --set model.mlp_hidden=256
        --set model.vocab_size=258 --set batch.seq_len=64 --set batch.micro_batch=4
        --set batch.global_batch=8 --set logging.plot=false --set logging.val_interval=0
        --set logging.interval=10 --set schedule.warmup_steps=5 --set optimizer.lr=3e-3)
# name | expected class | --set overrides
VARIANTS=(
  "olmo2|Olmo2ForCausalLM|model.n_layers=3 model.n_kv_heads=2 moda.enabled=false moda.ffn_kv=false model.norm_placement=reordered"
  "olmo2_tied_mha|Olmo2ForCausalLM|model.n_layers=2 model.n_kv_heads=4 moda.enabled=false moda.ffn_kv=false model.norm_placement=reordered model.tie_embeddings=true"
  "olmo2_pre|ModaForCausalLM|model.n_layers=3 model.n_kv_heads=2 moda.enabled=false moda.ffn_kv=false model.norm_placement=pre"
  "moda_post_ffnkv|ModaForCausalLM|model.n_layers=4 model.n_kv_heads=2 moda.enabled=true moda.ffn_kv=true model.norm_placement=post"
  "moda_reordered|ModaForCausalLM|model.n_layers=3 model.n_kv_heads=2 moda.enabled=true model.norm_placement=reordered"
  "moda_pre_all_g4|ModaForCausalLM|model.n_layers=3 model.n_kv_heads=1 moda.enabled=true moda.ffn_kv=true moda.attn_kv_proj=true model.norm_placement=pre"
  "moda_post_attnproj|ModaForCausalLM|model.n_layers=3 model.n_kv_heads=2 moda.enabled=true moda.attn_kv_proj=true model.norm_placement=post"
)

failures=0
compare() {  # export dump tol expect label
  local out
  out=$("$PY" tools/hf/parity.py --export "$1" --logits "$2" --tol "$3" --device "$DEVICE" \
        --expect "$4" "${PLAIN_FLAG[@]}" 2>&1)
  local rc=$?
  # The verdict and the tokenizer check, or the last lines when it failed before a verdict.
  if [[ $rc == 0 ]]; then
    echo "$out" | grep -E "rel err|tokenizer:" | sed "s/^/  [$5] /"
  else
    echo "$out" | grep -v -E "^\s*$" | tail -5 | sed "s/^/  [$5] /"
  fi
  [[ $rc == 0 ]] || failures=$((failures + 1))
}

for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name expect sets <<<"$v"
  dir="$WORK/$name"
  rm -rf "$dir"
  mkdir -p "$dir"
  overrides=("${COMMON[@]}")
  for s in $sets; do overrides+=(--set "$s"); done
  echo "== $name"
  ckpt=""
  if [[ $INIT != 1 ]]; then
    "$MODA" train "${overrides[@]}" --set schedule.total_steps="$STEPS" \
      --set logging.dir="$dir/run" >"$dir/train.log" 2>&1 || echo "  training failed: see $dir/train.log"
    ckpt=$(ls -d "$dir"/run/checkpoints/step-* 2>/dev/null | sort | tail -1)
    [[ -n $ckpt ]] || echo "  no checkpoint after training (trainer without checkpoints?): using an initialized model"
  fi
  if [[ -z $ckpt ]]; then
    "$MODA" export --init-checkpoint "$dir/init" --init-noise 0.05 "${overrides[@]}" \
      --set model.init_std=0.1 >"$dir/init.log" 2>&1 || { echo "  init failed"; cat "$dir/init.log"; failures=$((failures + 1)); continue; }
    ckpt="$dir/init/step-00000000"
  fi
  echo "  checkpoint $ckpt"
  "$MODA" export --checkpoint "$ckpt" --output "$dir/hf" >"$dir/export.log" 2>&1 \
    || { echo "  export failed"; cat "$dir/export.log"; failures=$((failures + 1)); continue; }
  "$MODA" export --checkpoint "$ckpt" --output "$dir/hf_bf16" --dtype bf16 >>"$dir/export.log" 2>&1
  "$MODA" eval --checkpoint "$ckpt" --device cpu --dump-logits "$dir/logits_cpu.safetensors" \
    --dump-batch 2 --dump-seq 48 >"$dir/eval.log" 2>&1 || { echo "  eval failed"; cat "$dir/eval.log"; failures=$((failures + 1)); continue; }
  compare "$dir/hf" "$dir/logits_cpu.safetensors" 1e-4 "$expect" "fp32 export vs moda cpu"
  compare "$dir/hf_bf16" "$dir/logits_cpu.safetensors" 5e-2 "$expect" "bf16 export vs moda cpu"
  if [[ $HAVE_GPU == 1 ]]; then
    if "$MODA" eval --checkpoint "$ckpt" --device cuda --dump-logits "$dir/logits_cuda.safetensors" \
      --dump-batch 2 --dump-seq 48 >>"$dir/eval.log" 2>&1; then
      compare "$dir/hf" "$dir/logits_cuda.safetensors" 5e-2 "$expect" "fp32 export vs moda cuda"
    else
      echo "  moda eval --device cuda failed (see $dir/eval.log)"
      failures=$((failures + 1))
    fi
  fi
done
echo "hf parity: $failures failed comparison(s); work dir $WORK"
exit "$failures"

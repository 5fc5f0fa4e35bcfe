#!/usr/bin/env bash
# Correctness on a GPU machine, from a bundled build (scripts/bundle.sh build dist-cuda):
#   1. every [gpu] test (scripts/gpu_test.sh), while the CPU trains the small default for 200 steps
#      beside it (the CPU half of the loss-curve comparison);
#   2. compute-sanitizer racecheck over the attention repeatability test;
#   3. the same 200 steps on the GPU, and both loss curves side by side;
#   4. HF parity of the exports (scripts/hf_parity.sh), when python3 has torch.
# Usage: scripts/gpu_verify.sh [dist-dir]. Logs go to $OUT (device tool) or /tmp/moda_verify.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dist="${1:-$repo/dist-cuda}"
out="${OUT:-/tmp/moda_verify}"
mkdir -p "$out"
# shellcheck source=gpu_env.sh
source "$repo/scripts/gpu_env.sh"
status=0
steps=200
curve=(--set schedule.total_steps=$steps --set logging.interval=25 --set logging.val_interval=50
       --set logging.plot=false)
"$dist/moda" train --set runtime.device=cpu "${curve[@]}" --set logging.dir="$out/curve_cpu" \
  > "$out/curve_cpu.log" 2>&1 &
cpu_pid=$!
"$repo/scripts/gpu_test.sh" "$dist" > "$out/gpu_test_console.log" 2>&1 || status=$?
tail -25 "$out/gpu_test_console.log"

echo "== racecheck (compute-sanitizer) on the attention repeatability test"
if command -v compute-sanitizer > /dev/null; then
  LD_LIBRARY_PATH="$dist/lib:/usr/local/cuda/lib64" timeout 300 compute-sanitizer --tool racecheck \
    "$dist/bin/moda_tests" "cuda backend: MoDA attention repeats bit for bit" > "$out/racecheck.log" 2>&1 \
    || status=$?
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard|test cases" "$out/racecheck.log" | tail -5
fi

echo "== $steps steps of the default config: CPU vs GPU"
"$dist/moda" train --set runtime.device=cuda "${curve[@]}" --set logging.dir="$out/curve_gpu" \
  > "$out/curve_gpu.log" 2>&1 || status=$?
wait "$cpu_pid" || status=$?
python3 - "$out/curve_cpu/metrics.jsonl" "$out/curve_gpu/metrics.jsonl" <<'PY'
import json, sys
cpu = {r["step"]: r for r in map(json.loads, open(sys.argv[1]))}
gpu = {r["step"]: r for r in map(json.loads, open(sys.argv[2]))}
fmt = lambda v: "" if v is None or v != v else f"{v:.3f}"
print("step  cpu train  gpu train   cpu val   gpu val")
for s in sorted(set(cpu) & set(gpu)):
    if s == 1 or s % 25 == 0:
        c, g = cpu[s], gpu[s]
        print(f"{s:>4} {fmt(c['loss']):>10} {fmt(g['loss']):>10} {fmt(c.get('val_loss')):>9} {fmt(g.get('val_loss')):>9}")
PY

if python3 -c "import torch, transformers" 2> /dev/null; then
  echo "== HF parity"
  MODA="$dist/moda" timeout 420 "$repo/scripts/hf_parity.sh" "$out/hf_parity" > "$out/hf_parity.log" 2>&1 \
    || status=$?
  tail -20 "$out/hf_parity.log"
fi
echo "gpu_verify: exit status $status"
exit "$status"

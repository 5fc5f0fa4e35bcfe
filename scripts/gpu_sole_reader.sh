#!/usr/bin/env bash
# Times the attention op with its slots' gradients formed in the backward (the layer as their only
# reader, the default of `moda bench attention`) against the same gradients pulled after it
# (--slot-gradients pulled), at the 700M, paper and Table 6 shapes, in both backward placements;
# then torch SDPA beside it (scripts/bench_attention.py). Logs go to $OUT (or /tmp).
# Usage: scripts/gpu_sole_reader.sh DIST
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
moda="${1:?usage: gpu_sole_reader.sh DIST}/moda"
logs="${OUT:-/tmp}"
shapes_700m=(--shape 4,4096,16,8,64,0 --shape 4,4096,16,8,64,36 --shape 4,4096,16,8,64,72)
shapes_paper=(--shape 1,4096,64,8,64,0 --shape 1,4096,64,8,64,64 --shape 1,8192,64,8,64,0
              --shape 1,8192,64,8,64,64 --shape 1,16384,64,8,64,0 --shape 1,16384,64,8,64,64)
shapes_t6=(--shape 64,1024,6,2,64,0 --shape 64,1024,6,2,64,47 --shape 64,1024,6,2,64,94)
for mode in sole-reader pulled; do
  for placement in automatic tail beside; do
    echo "---- --slot-gradients $mode --depth-backward $placement"
    "$moda" bench attention --slot-gradients "$mode" --depth-backward "$placement" \
      "${shapes_700m[@]}" "${shapes_paper[@]}" "${shapes_t6[@]}"
  done
done 2>&1 | tee "$logs/sole_reader.txt"
python3 "$repo/scripts/bench_attention.py" --moda "$moda" 2>&1 | tee "$logs/bench_attention.txt"

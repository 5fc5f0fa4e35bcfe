#!/usr/bin/env bash
# Nsight Compute's warp-stall sampling of one launch of a kernel, per SASS instruction: the report
# (PREFIX.ncu-rep) and its source page as CSV (PREFIX.sass.csv), which scripts/sass_stalls.py
# sums by instruction ranges and opcodes. Runs on the GPU machine.
# Usage: scripts/ncu_source.sh [dist-dir | variant-binary] B,T,Hq,Hk,d,S[:placement] KERNEL-REGEX PREFIX
#   e.g. scripts/ncu_source.sh .bench/v 4,4096,16,8,64,72:tail seq_backward_wgmma $OUT/bwd72
set -euo pipefail
target="${1:?usage: ncu_source.sh TARGET SHAPE KERNEL-REGEX PREFIX}"
shape="${2:?shape}"
kernel="${3:?kernel regex}"
prefix="${4:?output prefix}"
if [[ -f "$target" ]]; then
  run=("$target" "$shape")
else
  export LD_LIBRARY_PATH="$target/lib:/usr/local/cuda/lib64"
  placement="automatic"
  [[ "$shape" == *:* ]] && placement="${shape#*:}" && shape="${shape%%:*}"
  run=("$target/bin/moda" bench attention --shape "$shape" --reps 1 --depth-backward "$placement")
fi
timeout 300 ncu --kernel-name "regex:$kernel" --launch-skip 1 --launch-count 1 --import-source no \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight -f -o "$prefix" \
  "${run[@]}" > "$prefix.log" 2>&1 || { tail -5 "$prefix.log"; exit 1; }
ncu --import "$prefix.ncu-rep" --page source --print-source sass --csv > "$prefix.sass.csv"
ncu --import "$prefix.ncu-rep" --page details > "$prefix.details.txt"
echo "$prefix.sass.csv: $(($(wc -l < "$prefix.sass.csv") - 2)) instructions"

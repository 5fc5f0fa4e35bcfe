#!/usr/bin/env bash
# Times several stand-alone builds of the attention kernels (scripts/build_attention_variant.sh:
# each a 1 MB binary that calls cuda_time_attention, medians of 20 forward+backward rounds) one
# after the other, interleaved by shape, for A/B tests of kernel variants without full builds.
# Usage: scripts/gpu_attention_variants.sh "shape ..." binary...
set -uo pipefail
read -r -a shapes <<< "$1"
shift
for s in "${shapes[@]}"; do
  for exe in "$@"; do
    printf '%-16s ' "$(basename "$exe")"
    "$exe" "$s"
  done
done

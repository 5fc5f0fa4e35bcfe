#!/usr/bin/env bash
# Builds tools/sm_split_probe (a GEMM on fewer SMs beside a streaming kernel; see its header).
#   scripts/build_sm_split_probe.sh OUT
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: build_sm_split_probe.sh OUT}"
mkdir -p "$(dirname "$out")"
nvcc -O3 -std=c++17 "--generate-code=arch=compute_90a,code=sm_90a" \
  "$repo/tools/sm_split_probe/main.cu" -o "$out" -lcublasLt
echo "built $out"

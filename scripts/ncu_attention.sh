#!/usr/bin/env bash
# Nsight Compute sections (speed of light, occupancy, warp stalls, scheduler, compute and memory
# workload, L2 reductions) and the stall reasons of the sequence attention kernels, one launch
# each, from a bundled build or a variant timer of scripts/build_attention_variant.sh.
# Usage: scripts/ncu_attention.sh [dist-dir | variant-binary] [B,T,Hq,Hk,d,S] [kernel-regex ...]
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dist="${1:-$repo/dist-cuda}"
shape="${2:-4,4096,16,8,64,0}"
shift $(($# < 2 ? $# : 2))
kernels=("$@")
[[ ${#kernels[@]} -eq 0 ]] && kernels=(seq_backward_wgmma seq_forward_wgmma)
export LD_LIBRARY_PATH="$dist/lib:/usr/local/cuda/lib64"
if [[ -f "$dist" ]]; then
  run=("$dist" "$shape")
else
  run=("$dist/bin/moda" bench attention --shape "$shape" --reps 1)
fi
for k in "${kernels[@]}"; do
  echo "=== $k at $shape"
  timeout 300 ncu --kernel-name "regex:$k" --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --metrics lts__t_sectors_op_red.sum,lts__t_requests_op_red.sum,lts__t_sectors_op_red.sum.per_second \
    "${run[@]}" 2>&1 |
    sed -n '/Section:/,$p' | grep -vE '^ *-+ *-* *$|^ *$'
  echo "=== $k at $shape: warp cycles per issued instruction, by stall reason"
  timeout 300 ncu --kernel-name "regex:$k" --launch-skip 1 --launch-count 1 \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" "${run[@]}" 2>&1 |
    grep -E "stalled" | sort -k3 -g -r
done

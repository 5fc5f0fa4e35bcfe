#!/usr/bin/env bash
# ptxas serializes every wgmma of a kernel when it cannot keep their pipeline (other instructions
# touching the accumulators of MMAs in flight, C7514; MMAs across a call, ...), and says so only in
# an info line, "Potential Performance Loss". C7514 once cost the attention backward 15%
# (docs/kernels/moda_attention.md). This compiles each kernel file that issues wgmma for sm_90a,
# as the build does, and fails on any such line.
#   test_wgmma_serialization.sh NVCC REPO [FILE...]   (default: every kernels/*.cu using wgmma)
set -euo pipefail
nvcc="${1:?usage: test_wgmma_serialization.sh NVCC REPO [FILE...]}"
repo="${2:?usage: test_wgmma_serialization.sh NVCC REPO [FILE...]}"
shift 2
files=("$@")
if [[ ${#files[@]} -eq 0 ]]; then
  mapfile -t files < <(grep -l "wgmma::" "$repo"/kernels/*.cu)
fi
[[ ${#files[@]} -gt 0 ]] || { echo "no kernel file issues wgmma" >&2; exit 1; }
status=0
for f in "${files[@]}"; do
  log="$("$nvcc" -O3 -DNDEBUG --generate-code=arch=compute_90a,code=sm_90a \
    --expt-relaxed-constexpr -std=c++20 -I"$(dirname "$f")" -I"$repo/include" -I"$repo/kernels" \
    -c "$f" -o /dev/null 2>&1)" || { echo "$log"; exit 1; }
  if grep -q "Potential Performance Loss" <<< "$log"; then
    echo "$f: ptxas serialized wgmma instructions:"
    grep "Potential Performance Loss" <<< "$log"
    status=1
  else
    echo "$f: no serialized wgmma"
  fi
done
exit "$status"

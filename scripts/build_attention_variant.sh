#!/usr/bin/env bash
# Builds a stand-alone timer (tools/attention_variant/main.cpp) of one version of the attention
# kernels, for scripts/gpu_attention_variants.sh: SOURCE is an attention.cu (default the working
# tree's; e.g. `git show REV:kernels/attention.cu > /tmp/old/attention.cu` for an older one, with
# its wgmma.cuh beside it), FLAGS extra nvcc flags such as -DNAME=VALUE for a compile-time knob.
# Links against the CUDA build's libmoda_cuda.a (cmake -S . -B build && ninja -C build first).
#   scripts/build_attention_variant.sh OUT [SOURCE] [FLAGS...]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: build_attention_variant.sh OUT [SOURCE] [FLAGS...]}"
source_cu="${2:-$repo/kernels/attention.cu}"
shift $(($# < 2 ? $# : 2))
build="${BUILD:-$repo/build}"
[[ -f "$build/libmoda_cuda.a" ]] || { echo "no $build/libmoda_cuda.a: build with CUDA first" >&2; exit 2; }
nvcc_flags=(-O3 -DNDEBUG "--generate-code=arch=compute_90a,code=sm_90a" --expt-relaxed-constexpr
            -std=c++20 -I"$(dirname "$source_cu")" -I"$repo/include" -I"$repo/kernels")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
nvcc "${nvcc_flags[@]}" "$@" -c "$source_cu" -o "$work/attention.o"
nvcc "${nvcc_flags[@]}" -c "$repo/kernels/attention_timing.cu" -o "$work/timing.o"
nvcc "${nvcc_flags[@]}" -x cu -c "$repo/tools/attention_variant/main.cpp" -o "$work/main.o"
mkdir -p "$(dirname "$out")"
# The variant's attention.o comes before the library, so the library's copy is never pulled in.
nvcc -arch=sm_90a "$work/main.o" "$work/attention.o" "$work/timing.o" "$build/libmoda_cuda.a" \
  -o "$out" -lcudart
echo "built $out"

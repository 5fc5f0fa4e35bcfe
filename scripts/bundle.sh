#!/usr/bin/env bash
# Builds a self-contained folder (dist/) with the moda binary, the test binary and every shared
# library they need that a bare GPU machine (Ubuntu 24.04 + CUDA, no Debian -dev packages) lacks.
# Usage: scripts/bundle.sh [build-dir] [out-dir]
# env: BUNDLE_EXES (default "moda moda_tests"; "moda" alone leaves out the 10 MB test binary, for
#      device calls that carry data as well and must stay under the 64 MiB transfer limit).
# Run the result with: dist/moda ... (a wrapper that sets LD_LIBRARY_PATH to dist/lib, the CUDA
# toolkit's lib64 and the PyTorch wheel's NCCL, whichever of the last two holds libnccl.so.2).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build}"
out="${2:-$repo/dist}"
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
read -r -a exes <<< "${BUNDLE_EXES:-moda moda_tests}"
for exe in "${exes[@]}"; do
  [[ -x "$build/$exe" ]] && cp "$build/$exe" "$out/bin/"
done
# Libraries outside glibc, the C++ runtime and the CUDA driver: those the GPU machine has.
for exe in "$out"/bin/*; do
  ldd "$exe" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libstdc++.so*|libgcc_s.so*) ;;
      # The GPU machine has the CUDA toolkit's libraries (cuBLASLt alone is 541 MB).
      libcublas*|libcudart*|libnccl*) ;;
      *) cp -nL "$lib" "$out/lib/" ;;
    esac
  done
done
for exe in "${exes[@]}"; do
  [[ -x "$out/bin/$exe" ]] || continue
  cat > "$out/$exe" <<WRAP
#!/usr/bin/env bash
here="\$(cd "\$(dirname "\$0")" && pwd)"
nccl=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib
export LD_LIBRARY_PATH="\$here/lib:/usr/local/cuda/lib64:\$nccl\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "\$here/bin/$exe" "\$@"
WRAP
  chmod +x "$out/$exe"
done
du -sh "$out"

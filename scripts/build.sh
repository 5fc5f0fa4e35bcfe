#!/usr/bin/env bash
# Configures and builds moda into a build directory (default: build/). Extra arguments go to
# CMake, e.g. scripts/build.sh build-asan -DMODA_SANITIZE=ON -DMODA_CUDA=OFF
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-build}"
shift || true
"$repo/scripts/install_deps.sh"
cmake -S "$repo" -B "$repo/$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$repo/$build" -j "$(nproc)"

#!/usr/bin/env bash
# Builds moda and trains the embedded default (configs/tiny.yaml: a tiny MoDA model on the KJV
# excerpt, byte-level tokens) on the GPU if one is present, else on the CPU. Writes
# runs/tiny/metrics.jsonl and runs/tiny/loss.png. Extra arguments go to `moda train`,
# e.g. scripts/run.sh --set schedule.total_steps=300
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
"$repo/scripts/build.sh" build
cd "$repo"
exec "$repo/build/moda" train "$@"

#!/usr/bin/env bash
# Per-kernel breakdown of one training step under Nsight Systems: runs scripts/gpu_train_bench.sh
# for one run name, then prints scripts/nsys_step_summary.py's report of step STEP: each kernel
# name's launches and total time, the step's span, the time some kernel ran (the union over
# streams) and the time none did (launch gaps, host waits). The trainer's own
# per-family profile (runtime.profile_step) puts an event pair around every op; this one does not
# touch the run and names the kernels inside an op (the GEMMs, the attention's launches).
# Usage: scripts/nsys_train_step.sh DIST RUN [STEP] [TOP]   (on the GPU machine; needs nsys)
#   RUN: a gpu_train_bench.sh run name, e.g. moda_700m; STEP (default 5) of STEP + 1 steps run;
#   TOP: the kernel names listed (default 40)
#   NSYS_LIBS (env): a folder of libraries the trace importer needs (scripts/nsys_trace.sh)
#   LIST (env): a regex of kernel names whose every launch in the step is listed in order (e.g.
#   seq_forward to see the attention forward's time layer by layer)
set -euo pipefail
dist="${1:?usage: nsys_train_step.sh DIST RUN [STEP] [TOP]}"
run_name="${2:?usage: nsys_train_step.sh DIST RUN [STEP] [TOP]}"
step="${3:-5}"
top="${4:-40}"
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/nsys_trace.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
nsys_trace nsys_train_step "$work" env OUT="$work/bench" \
  "$here/gpu_train_bench.sh" "$dist" "$((step + 1))" "$run_name"
grep -E "tokens/s|median" "$work/run.log" | tail -3 || true
python3 "$here/nsys_step_summary.py" "$work/trace.sqlite" "$step" --top "$top" --list "${LIST:-}"

#!/usr/bin/env bash
# Kernel timeline of one attention variant timer run (scripts/build_attention_variant.sh) under
# Nsight Systems: for the last LAST kernel launches (default 12, i.e. about the last forward +
# backward round), each kernel's stream, start and end in us from the first of them, and its
# duration, so that kernels running side by side on two streams (the depth kernels beside the
# sequence kernels) show when each one ends.
# Usage: scripts/nsys_kernel_trace.sh TIMER SHAPE [LAST]   (on the GPU machine; needs nsys)
#   DROP (env): a regex of kernel names left out (default: the slot-gradient launches, 18 a round
#   at S 72, which would crowd out the attention kernels)
#   NSYS_LIBS (env): a folder of libraries the trace importer needs (scripts/nsys_trace.sh)
#   e.g. NSYS_LIBS=.bench/nsyslib scripts/nsys_kernel_trace.sh .bench/v-main 4,4096,16,8,64,72:beside
set -euo pipefail
timer="${1:?usage: nsys_kernel_trace.sh TIMER SHAPE [LAST]}"
shape="${2:?usage: nsys_kernel_trace.sh TIMER SHAPE [LAST]}"
last="${3:-12}"
source "$(dirname "$0")/nsys_trace.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
nsys_trace nsys_kernel_trace "$work" "$timer" "$shape"
grep -E "fwd|bwd" "$work/run.log" || true
DROP="${DROP-depth_slot_backward}" python3 - "$work/trace.sqlite" "$last" <<'PY'
import os, re, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute(
    "SELECT k.start, k.end, k.streamId, s.value FROM CUPTI_ACTIVITY_KIND_KERNEL k "
    "JOIN StringIds s ON s.id = k.shortName ORDER BY k.start").fetchall()
drop = os.environ["DROP"]
kernels = [r for r in rows if not (drop and re.search(drop, r[3]))][-int(sys.argv[2]):]
t0 = min(r[0] for r in kernels)
print(f"{'kernel':40s} {'stream':>6s} {'start us':>9s} {'end us':>9s} {'dur us':>8s}")
for start, end, stream, name in kernels:
    print(f"{name[:40]:40s} {stream:>6d} {(start - t0) / 1e3:9.1f} {(end - t0) / 1e3:9.1f} "
          f"{(end - start) / 1e3:8.1f}")
PY

#!/usr/bin/env bash
# Samples the GPU's SM clock, power draw and clock-event reasons with nvidia-smi while a command
# runs, and prints a summary of the samples taken while the GPU was busy: SM clock (median, 10th
# percentile, minimum), power (median, maximum, the limit) and how often each clock-event reason
# was active. For telling whether two kernels that share the GPU slow each other through the
# memory system or through the power limit (the clocks drop). Reads the card's state only.
# Usage: scripts/gpu_clock_trace.sh COMMAND [ARGS...]   (on the GPU machine)
#   PERIOD_MS (env): the sampling period, default 20
#   BUSY (env): the least utilization.gpu (%) of a sample counted as busy, default 90
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: gpu_clock_trace.sh COMMAND [ARGS...]" >&2; exit 2; }
command -v nvidia-smi > /dev/null || { echo "gpu_clock_trace: no nvidia-smi" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
nvidia-smi --query-gpu=utilization.gpu,clocks.sm,power.draw,power.limit,clocks_event_reasons.active \
  --format=csv,noheader,nounits -lms "${PERIOD_MS:-20}" > "$work/samples.csv" &
sampler=$!
status=0
"$@" || status=$?
kill "$sampler" 2> /dev/null || true
wait "$sampler" 2> /dev/null || true
python3 - "$work/samples.csv" "${BUSY:-90}" << 'EOF'
import statistics
import sys

# Bits of nvidia-smi's clocks_event_reasons.active (NVML's clocks event reasons).
REASONS = {0x1: "idle", 0x2: "applications clocks", 0x4: "SW power cap", 0x8: "HW slowdown",
           0x10: "sync boost", 0x20: "SW thermal", 0x40: "HW thermal", 0x80: "HW power brake",
           0x100: "display clocks"}
busy_least = float(sys.argv[2])
rows = []
for line in open(sys.argv[1]):
    parts = [p.strip() for p in line.split(",")]
    try:
        util, clock, power, limit = (float(p) for p in parts[:4])
        reasons = int(parts[4], 16)
    except (ValueError, IndexError):
        continue  # a header, or a field the driver reports as N/A
    if util >= busy_least:
        rows.append((clock, power, limit, reasons))
if not rows:
    print("gpu_clock_trace: no busy samples")
    sys.exit(0)
clocks = sorted(r[0] for r in rows)
powers = [r[1] for r in rows]
print(f"busy samples {len(rows)}: SM clock median {statistics.median(clocks):.0f} MHz, "
      f"p10 {clocks[len(clocks) // 10]:.0f}, min {clocks[0]:.0f}; power median "
      f"{statistics.median(powers):.0f} W, max {max(powers):.0f}, limit {rows[0][2]:.0f}")
seen = {}
for r in rows:
    for bit, name in REASONS.items():
        if r[3] & bit:
            seen[name] = seen.get(name, 0) + 1
print("clock-event reasons (share of busy samples): " +
      (", ".join(f"{name} {count / len(rows):.0%}" for name, count in seen.items()) or "none"))
EOF
exit "$status"

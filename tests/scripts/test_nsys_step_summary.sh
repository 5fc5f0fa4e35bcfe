#!/usr/bin/env bash
# scripts/nsys_step_summary.py on a synthetic Nsight Systems SQLite export: a step is the kernels
# from one embedding forward to the next; kernels on two streams that overlap count once in the
# busy time; per-name totals largest first; --list gives every launch in order; a step whose end
# the trace lacks is an error that says so.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Three steps, in units of 10 us (scaled to ns below). Step 2: embedding 1000-1010, GEMM
# 1020-1520, the attention kernel 1530-2530 on one stream beside the depth kernel 1600-2800 on
# another, GEMM 2900-3400; step 3's embedding at 5000. Span 2400 units (24 ms), busy 10 + 500 +
# 1270 (1530-2800) + 500 = 2280 (22.8 ms), kernel time 10 + 500 + 1000 + 1200 + 500 = 3210.
python3 - "$work/trace.sqlite" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE StringIds (id INTEGER, value TEXT)")
db.execute("CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INTEGER, end INTEGER, shortName INTEGER)")
names = ["embedding_forward_kernel", "nvjet_gemm", "seq_backward_wgmma", "depth_backward_beside"]
db.executemany("INSERT INTO StringIds VALUES (?, ?)", list(enumerate(names)))
kernels = [(0, 10, 0), (20, 900, 1),                                        # step 1
           (1000, 1010, 0), (1020, 1520, 1), (1530, 2530, 2), (1600, 2800, 3),
           (2900, 3400, 1),                                                 # step 2
           (5000, 5010, 0), (5020, 5100, 1)]                                # step 3
db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (?, ?, ?)",
               [(a * 10000, b * 10000, n) for a, b, n in kernels])
db.commit()
PY
got="$(python3 "$repo/scripts/nsys_step_summary.py" "$work/trace.sqlite" 2 --top 2 \
  --list 'backward')"
expect() {
  grep -qF -- "$1" <<< "$got" || { echo "FAIL: no line with: $1"; echo "$got"; exit 1; }
}
expect "step 2: span 24.00 ms, some kernel running 22.80 ms, none 1.20 ms; 5 launches, kernel time 32.10 ms"
expect "$(printf '%-60s %6d %8.2f %8.1f' depth_backward_beside 1 12.00 12000.0)"
expect "$(printf '%-60s %6d %8.2f %8.1f' nvjet_gemm 2 10.00 5000.0)"
expect "depth_backward_beside (us, in launch order): 12000"
expect "seq_backward_wgmma (us, in launch order): 10000"
# --top 2: the third name (the attention kernel, 10.00 ms, after the GEMM's 10.00 by name) and the
# embedding are left out of the table.
if grep -q "^seq_backward_wgmma  " <<< "$got" || grep -q "^embedding_forward" <<< "$got"; then
  echo "FAIL: --top 2 listed more than two names"; echo "$got"; exit 1
fi
# Step 3 has no next step in the trace.
if err="$(python3 "$repo/scripts/nsys_step_summary.py" "$work/trace.sqlite" 3 2>&1)"; then
  echo "FAIL: step 3 should fail"; exit 1
fi
grep -qF "3 step starts in the trace, step 3 needs 4" <<< "$err" || { echo "FAIL: $err"; exit 1; }
echo "nsys_step_summary: ok"

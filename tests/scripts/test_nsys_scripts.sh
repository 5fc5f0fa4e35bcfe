#!/usr/bin/env bash
# scripts/nsys_step_summary.py on a synthetic Nsight Systems SQLite export: a step is the kernels
# from one embedding forward to the next; kernels on two streams that overlap count once in the
# busy time; per-name totals largest first; --list gives every launch in order; a step whose end
# the trace lacks is an error that says so. Then scripts/nsys_train_step.sh and
# scripts/nsys_kernel_trace.sh (through scripts/nsys_trace.sh) with a stand-in nsys on PATH that
# writes the same export: their reports, with the trace written as .nsys-rep and as the raw
# .qdstrm that the importer beside nsys turns into one.
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
db.execute("CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL "
           "(start INTEGER, end INTEGER, shortName INTEGER, streamId INTEGER)")
names = ["embedding_forward_kernel", "nvjet_gemm", "seq_backward_wgmma", "depth_backward_beside"]
db.executemany("INSERT INTO StringIds VALUES (?, ?)", list(enumerate(names)))
kernels = [(0, 10, 0), (20, 900, 1),                                        # step 1
           (1000, 1010, 0), (1020, 1520, 1), (1530, 2530, 2), (1600, 2800, 3),
           (2900, 3400, 1),                                                 # step 2
           (5000, 5010, 0), (5020, 5100, 1)]                                # step 3
db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (?, ?, ?, ?)",
               [(a * 10000, b * 10000, n, 8 if n == 3 else 7) for a, b, n in kernels])
db.commit()
PY
got="$(python3 "$repo/scripts/nsys_step_summary.py" "$work/trace.sqlite" 2 --top 2 \
  --list 'backward')"
expect() {
  grep -qF -- "$1" <<< "$got" || { echo "FAIL: no line with: $1"; echo "$got"; exit 1; }
}
expect "step 2: span 24.00 ms, some kernel running 22.80 ms, none 1.20 ms; 5 launches, kernel time"
expect "5 launches, kernel time 32.10 ms"
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

# A stand-in nsys: `profile -o PREFIX CMD...` prints what a run would and writes PREFIX.nsys-rep
# (PREFIX.qdstrm with RAW=1); `export --output OUT REP` copies the synthetic trace to OUT.
root="$work/nsys-root"
mkdir -p "$root/bin" "$root/linux-desktop-x64"
cat > "$root/bin/nsys" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
mode="$1"
shift
case "$mode" in
  profile)
    while [[ "$1" == -* ]]; do
      [[ "$1" == -o ]] && prefix="$2"
      shift 2
    done
    echo "ran: $*"
    echo "   steps 3, loss 9.000 -> 7.000, median 74,088 tok/s, MFU 38.6%"
    echo "4,4096,16,8,64,36      fwd 0.601 bwd 1.816 (slots 0.000) total 2.417"
    if [[ -n "${RAW:-}" ]]; then : > "$prefix.qdstrm"; else : > "$prefix.nsys-rep"; fi ;;
  export)
    while [[ "$1" == -* ]]; do
      [[ "$1" == --output ]] && output="$2"
      shift 2
    done
    [[ -f "$1" ]] || { echo "no report $1" >&2; exit 1; }
    cp "$TRACE" "$output" ;;
esac
SH
cat > "$root/linux-desktop-x64/QdstrmImporter" <<'SH'
#!/usr/bin/env bash
[[ "$1" == -i && -f "$2" ]] && : > "${2%.qdstrm}.nsys-rep"
SH
chmod +x "$root/bin/nsys" "$root/linux-desktop-x64/QdstrmImporter"
for raw in "" 1; do
  got="$(PATH="$root/bin:$PATH" TRACE="$work/trace.sqlite" RAW="$raw" LIST=forward \
    bash "$repo/scripts/nsys_train_step.sh" /no/dist moda_700m 2 2)"
  expect "median 74,088 tok/s"
  expect "step 2: span 24.00 ms, some kernel running 22.80 ms"
  expect "embedding_forward_kernel (us, in launch order): 100"
  got="$(PATH="$root/bin:$PATH" TRACE="$work/trace.sqlite" RAW="$raw" \
    bash "$repo/scripts/nsys_kernel_trace.sh" /no/timer 4,4096,16,8,64,36 3)"
  expect "fwd 0.601 bwd 1.816"
  # The last three launches: step 3's embedding and GEMM, and step 2's last GEMM, from 2900.
  expect "$(printf '%-40s %6d %9.1f %9.1f %8.1f' nvjet_gemm 7 0.0 5000.0 5000.0)"
  expect "$(printf '%-40s %6d %9.1f %9.1f %8.1f' embedding_forward_kernel 7 21000.0 21100.0 100.0)"
done
# An export that fails (here: no trace for the stand-in to copy) fails the script.
if PATH="$root/bin:$PATH" TRACE="$work/none.sqlite" bash "$repo/scripts/nsys_train_step.sh" \
  /no/dist moda_700m 2 > "$work/fail.log" 2>&1; then
  echo "FAIL: nsys_train_step.sh passed without a trace"; cat "$work/fail.log"; exit 1
fi
echo "nsys scripts: ok"

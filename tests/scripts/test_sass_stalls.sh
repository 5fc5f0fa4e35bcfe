#!/usr/bin/env bash
# scripts/sass_stalls.py on a made-up source page of four instructions (two header lines, as
# ncu --page source --csv writes them): shares of the samples per range, instructions executed per
# unit, the stall reasons in order, and the samples by opcode (predicates and suffixes dropped).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/k.sass.csv" <<'CSV'
"Kernel Name","k"
"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed","stall_wait","stall_long_sb","stall_selected","stall_wait (Not Issued)"
"0x0","IMAD R1, R2, R3, RZ","30","100","20","0","10","20"
"0x10","@P0 LDG.E R4, [R6.64]","50","100","0","40","10","0"
"0x20","HMMA.16816.F32.BF16 R8, R8, R4, R8","15","200","10","0","5","10"
"0x30","@!P1 BRA 0x0","5","100","4","0","1","4"
CSV
got="$(python3 "$repo/scripts/sass_stalls.py" "$work/k.sass.csv" 0:2 2:4 --per 50 --list 1:2)"
expect() {
  grep -qF -- "$1" <<< "$got" || { echo "FAIL: no line with: $1"; echo "$got"; exit 1; }
}
expect "4 instructions, 100 samples: long_sb 40%, wait 34%, selected 26%"
expect "    1      50 @P0 LDG.E R4, [R6.64]"
expect "[0, 2):  80.0% of the samples,      4.0 instructions per unit; long_sb 50%, wait 25%, selected 25%"
expect "[2, 4):  20.0% of the samples,      6.0 instructions per unit; wait 70%, selected 30%"
expect "samples by opcode in the ranges: LDG 50, IMAD 30, HMMA 15, BRA 5"
echo "sass_stalls.py: ok"

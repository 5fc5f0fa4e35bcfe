#!/usr/bin/env bash
# scripts/train_ab_summary.py: per-round medians of steps 4.. (steps 1-3 left out), the median over
# rounds, MoDA over OLMo2 per round and its median, and failed runs (no metrics, or no step logged)
# named as such; scripts/train_metrics.py: a run's line of scripts/gpu_train_bench.sh;
# scripts/gpu_train_ab.sh's folder under $OUT and its summary after each round.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Build "main", rounds 1-3: OLMo2 at 100, 110, 90 (+ slow first steps), MoDA at 90, 100, 81;
# build "new": MoDA's round 2 failed (no metrics), OLMo2's round 3 logged no step; build "main"
# also the 700M runs, OLMo2 at 200, 220, 180 (36 layers) and 190, 210, 170 (38), MoDA at 160,
# 180, 142.
python3 - "$work" <<'PY'
import json, os, sys
out = sys.argv[1]
def write(dist, rnd, run, steady):
    d = os.path.join(out, f"{dist}_{rnd}", run)
    os.makedirs(d)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for step in range(1, 9):
            tps = 1.0 if step <= 3 else steady + (step % 3) - 1  # medians: steady
            f.write(json.dumps({"step": step, "tokens_per_s": tps, "loss": 10.0 / step,
                                "mfu": tps / 1000}) + "\n")
for rnd, (o, m) in enumerate([(100, 90), (110, 100), (90, 81)], start=1):
    write("main", rnd, "olmo2_1p5b", o)
    write("main", rnd, "moda_1p5b", m)
    if rnd != 3:
        write("new", rnd, "olmo2_1p5b", o)
    else:
        os.makedirs(os.path.join(out, f"new_{rnd}", "olmo2_1p5b"))
        open(os.path.join(out, f"new_{rnd}", "olmo2_1p5b", "metrics.jsonl"), "w").close()
    if rnd != 2:
        write("new", rnd, "moda_1p5b", m)
    # 700M: MoDA against both OLMo2 baselines (36 and 38 layers).
    write("main", rnd, "olmo2_700m", 2 * o)
    write("main", rnd, "olmo2_700m_38l", 2 * o - 10)
    write("main", rnd, "moda_700m", 2 * m - 20)
PY
got="$(python3 "$repo/scripts/train_ab_summary.py" "$work" 3 "olmo2_1p5b moda_1p5b" \
  /some/where/main "$work/new/")"
expect() {
  grep -qF -- "$1" <<< "$got" || { echo "FAIL: no line with: $1"; echo "$got"; exit 1; }
}
expect "main             olmo2_1p5b       100, 110, 90; median 100"
expect "main             moda_1p5b        90, 100, 81; median 90"
expect "main             moda_1p5b / olmo2_1p5b: 0.900x, 0.909x, 0.900x; median 0.900x"
expect "new              olmo2_1p5b       100, 110, failed; median 105"
expect "new              moda_1p5b        90, failed, 81; median 86"
expect "new              moda_1p5b / olmo2_1p5b: 0.900x; median 0.900x"
got="$(python3 "$repo/scripts/train_ab_summary.py" "$work" 3 "olmo2_700m olmo2_700m_38l moda_700m" \
  /some/where/main)"
expect "main             moda_700m        160, 180, 142; median 160"
expect "main             moda_700m / olmo2_700m: 0.800x, 0.818x, 0.789x; median 0.800x"
expect "main             moda_700m / olmo2_700m_38l: 0.842x, 0.857x, 0.835x; median 0.842x"
line="$(python3 "$repo/scripts/train_metrics.py" "$work/main_2/olmo2_1p5b/metrics.jsonl")"
[[ "$line" == "   steps 8, loss 10.000 -> 1.250, median 110 tok/s, MFU 11.0%" ]] || {
  echo "FAIL: train_metrics.py printed: $line"; exit 1; }
# scripts/gpu_train_ab.sh with a stand-in gpu_train_bench.sh (tokens/s by build and run): with OUT
# set and no AB_OUT the runs go under $OUT/train_ab, and after round 1 of 2 the summary of that
# round is printed before round 2 starts.
bin="$work/bin"
mkdir -p "$bin"
cp "$repo/scripts/gpu_train_ab.sh" "$repo/scripts/train_ab_summary.py" \
  "$repo/scripts/train_metrics.py" "$bin/"
cat > "$bin/gpu_train_bench.sh" <<'SH'
#!/usr/bin/env bash
# Stand-in: $1 the build, $2 the steps, then run names; writes each run's metrics under $OUT.
dist="$1"
shift 2
for name in "$@"; do
  tps=100
  [[ "$name" == moda_* ]] && tps=90
  [[ "$(basename "$dist")" == new ]] && tps=$((tps + 5))
  mkdir -p "$OUT/$name"
  for step in 1 2 3 4 5 6 7 8; do
    echo "{\"step\": $step, \"tokens_per_s\": $tps, \"loss\": 1.0, \"mfu\": 0.1}"
  done > "$OUT/$name/metrics.jsonl"
done
SH
chmod +x "$bin"/*.sh
got="$(OUT="$work/device_out" ROUNDS=2 "$bin/gpu_train_ab.sh" "olmo2_1p5b moda_1p5b" \
  /x/main /x/new)"
expect "==== after round 1 of 2"
expect "new              moda_1p5b / olmo2_1p5b: 0.905x; median 0.905x"
expect "main             moda_1p5b / olmo2_1p5b: 0.900x, 0.900x; median 0.900x"
[[ "$(sed -n '/after round 1/,$p' <<< "$got" | grep -c '==== /x/main, round 2')" == 1 ]] || {
  echo "FAIL: round 1's summary is not before round 2"; echo "$got"; exit 1; }
[[ -f "$work/device_out/train_ab/new_2/moda_1p5b/metrics.jsonl" ]] || {
  echo "FAIL: the runs are not under \$OUT/train_ab"; ls -R "$work/device_out"; exit 1; }
echo "train_ab_summary: ok"

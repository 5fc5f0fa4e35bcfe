#!/usr/bin/env bash
# The run time checkpoints cost, written in the step against beside training
# (checkpoint.background), on whatever device `runtime.device` resolves to: ROUNDS runs of each,
# alternating, of a 67M-parameter model (765 MiB checkpoints) saving every 5 of 20 steps. Prints
# each run's wall time and what its saves cost the run, then the medians.
#   scripts/checkpoint_bench.sh [build/moda] [ROUNDS=3]  (extra --set arguments: MODA_SET)
set -euo pipefail
moda=${1:-build/moda}
rounds=${2:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
args=(--set model.d_model=1024 --set model.n_layers=4 --set model.n_heads=8
      --set model.n_kv_heads=4 --set model.mlp_hidden=4096 --set batch.seq_len=32
      --set batch.micro_batch=1 --set batch.global_batch=2 --set schedule.total_steps=20
      --set schedule.warmup_steps=2 --set checkpoint.interval=5 --set checkpoint.at_end=false
      --set checkpoint.keep_last=2 --set logging.plot=false ${MODA_SET:-})
for round in $(seq "$rounds"); do
  for background in false true; do
    log="$out/$background-$round.log"
    start=$(date +%s%N)
    "$moda" train "${args[@]}" --set "logging.dir=$out/run-$background-$round" \
      --set "checkpoint.background=$background" > "$log" 2>&1
    echo "$background $((($(date +%s%N) - start) / 1000000)) $log" >> "$out/runs.txt"
    rm -rf "$out/run-$background-$round"
  done
done
python3 - "$out/runs.txt" <<'PY'
import re, statistics, sys
rows = {"false": [], "true": []}
for line in open(sys.argv[1]):
    background, wall, log = line.split()
    text = open(log).read()
    # In the step: "(765.2 MiB in 3.35 s)"; beside training: "...; the run paid 0.07 s)".
    paid = [float(x) for x in re.findall(r"MiB in ([0-9.]+) s\)", text)]
    paid += [float(x) for x in re.findall(r"the run paid ([0-9.]+) s\)", text)]
    losses = re.findall(r"step     20/20 \| loss ([0-9.]+)", text)
    wall = int(wall) / 1000  # milliseconds
    rows[background].append((wall, sum(paid), len(paid), losses[0] if losses else "?"))
    print(f"background={background:5}  wall {wall:7.2f} s  saves {len(paid)}, "
          f"paid {sum(paid):6.2f} s ({', '.join(f'{p:.2f}' for p in paid)})  loss {rows[background][-1][3]}")
for background, label in (("false", "in the step"), ("true", "beside training")):
    r = rows[background]
    print(f"median {label:16}: wall {statistics.median(x[0] for x in r):.2f} s, "
          f"saves paid {statistics.median(x[1] for x in r):.2f} s in {len(r)} runs")
PY

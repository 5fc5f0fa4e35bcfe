#!/usr/bin/env python3
"""Summary of scripts/gpu_train_ab.sh: per build and run, the median tokens/s of steps 4.. in each
round and the median over rounds; per build, round and model size, MoDA's tokens/s over OLMo2's
(olmo2_X / moda_X, t6_olmo2_post / t6_moda_ffn_kv; MoDA-700M also over the 38-layer OLMo2 of
Table 3 row 2, the paper's 700M baseline in Tables 4 and 5), and the median of those ratios.

Usage: train_ab_summary.py OUT_DIR ROUNDS "RUNS" DIST...  (OUT_DIR/<dist>_<round>/<run>/metrics.jsonl)
"""
import os
import statistics
import sys

from train_metrics import median_tokens_per_s, read_rows

PAIRS = [("olmo2_700m", "moda_700m"), ("olmo2_700m_38l", "moda_700m"),
         ("olmo2_1p5b", "moda_1p5b"),
         ("t6_olmo2_post", "t6_moda_ffn_kv"), ("t6_olmo2_post", "t6_moda_post"),
         ("t6_olmo2_pre", "t6_moda_post")]


def run_median(path):
    """Median tokens/s of a run's steady steps, None where the run left no metrics."""
    rows = read_rows(path) if os.path.exists(path) else []
    return median_tokens_per_s(rows) if rows else None


def main(argv):
    if len(argv) < 5:
        sys.exit(__doc__)
    out, rounds, runs, dists = argv[1], int(argv[2]), argv[3].split(), argv[4:]
    print("==== summary (median tokens/s of steps 4.., by round; median over rounds)")
    for dist in dists:
        name = os.path.basename(os.path.normpath(dist))
        tps = {run: [run_median(os.path.join(out, f"{name}_{r}", run, "metrics.jsonl"))
                     for r in range(1, rounds + 1)] for run in runs}
        for run in runs:
            got = [t for t in tps[run] if t is not None]
            by_round = ", ".join("failed" if t is None else f"{t:,.0f}" for t in tps[run])
            overall = f"{statistics.median(got):,.0f}" if got else "no run finished"
            print(f"{name:<16} {run:<16} {by_round}; median {overall}")
        for base, moda in PAIRS:
            if base not in tps or moda not in tps:
                continue
            ratios = [m / b for b, m in zip(tps[base], tps[moda]) if b and m]
            if ratios:
                print(f"{name:<16} {moda} / {base}: "
                      + ", ".join(f"{r:.3f}x" for r in ratios)
                      + f"; median {statistics.median(ratios):.3f}x")


if __name__ == "__main__":
    main(sys.argv)

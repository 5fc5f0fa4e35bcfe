#!/usr/bin/env python3
"""The trainer's metrics.jsonl as the GPU benchmark scripts read it. The steady steps are those
after the third (the first ones include cuBLASLt's autotuning), or all of a shorter run.

Usage: train_metrics.py METRICS_JSONL  (prints a run's line of scripts/gpu_train_bench.sh)
"""
import json
import statistics
import sys


def read_rows(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def steady(rows):
    return [r for r in rows if r["step"] > 3] or rows


def median_tokens_per_s(rows):
    return statistics.median(r["tokens_per_s"] for r in steady(rows))


def run_line(rows):
    """Steps, first and last loss, median tokens/s and MFU of the steady steps."""
    if not rows:
        return "   no step logged"
    mfus = [r["mfu"] for r in steady(rows) if r.get("mfu") is not None]
    mfu = f"{100 * statistics.median(mfus):.1f}%" if mfus else "n/a"
    return (f"   steps {len(rows)}, loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}, "
            f"median {median_tokens_per_s(rows):,.0f} tok/s, MFU {mfu}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(run_line(read_rows(sys.argv[1])))

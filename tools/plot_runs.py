#!/usr/bin/env python3
"""Loss curves of several training runs in one image, from their metrics.jsonl files.

    python3 tools/plot_runs.py OUT.png RUN_DIR [RUN_DIR ...] [--title TEXT] [--smooth N]

Left panel: training loss (a centred moving average over N logged steps, default 25) against
tokens seen; right panel: validation loss at each evaluation. Each run is labelled with its
folder's name. Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json
import os
import sys


def read_run(path):
    rows = []
    with open(os.path.join(path, "metrics.jsonl")) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"plot_runs: {path}/metrics.jsonl line {number}: {e}")
    if not rows:
        sys.exit(f"plot_runs: {path}/metrics.jsonl has no rows")
    return rows


def moving_average(values, width):
    if width <= 1:
        return list(values)
    half = width // 2
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half):i + half + 1]
        out.append(sum(window) / len(window))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--title", default="")
    parser.add_argument("--smooth", type=int, default=25)
    args = parser.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_runs: matplotlib is missing (apt-get install python3-matplotlib)")

    runs = {run: read_run(run) for run in args.runs}
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run, rows in runs.items():
        name = os.path.basename(os.path.normpath(run))
        tokens = [r["tokens"] / 1e6 for r in rows]
        line, = train_ax.plot(tokens, moving_average([r["loss"] for r in rows], args.smooth),
                              label=name, linewidth=1)
        val = [(r["tokens"] / 1e6, r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if val:
            val_ax.plot(*zip(*val), marker="o", markersize=3, label=name, color=line.get_color())
    for ax, what in ((train_ax, f"training loss (moving average of {args.smooth})"),
                     (val_ax, "validation loss")):
        ax.set_xlabel("tokens seen (millions)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    # The first steps' losses (about 11) would flatten the part where the runs differ.
    lowest = min(r["loss"] for rows in runs.values() for r in rows)
    train_ax.set_ylim(lowest - 0.1, lowest + 2.5)
    vals = [r["val_loss"] for rows in runs.values() for r in rows if r.get("val_loss") is not None]
    if vals:
        val_ax.set_ylim(min(vals) - 0.03, min(vals) + 0.5)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"plot_runs: wrote {args.output}")


if __name__ == "__main__":
    main()

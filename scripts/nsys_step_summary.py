#!/usr/bin/env python3
"""One training step of an Nsight Systems trace (exported as SQLite), as scripts/nsys_train_step.sh
prints it: the step's kernels are those from its embedding forward (the first op of every step) to
the next step's; for them the step's span, the time some kernel ran (the union over streams), the
time none did (launch gaps, host waits), and per kernel name its launches and total time, largest
first. With --list REGEX, every launch of the matching kernels in launch order (e.g. the attention
forward layer by layer).

Usage: nsys_step_summary.py TRACE_SQLITE STEP [--top N] [--list REGEX]
"""
import argparse
import collections
import re
import sqlite3
import sys

STEP_MARK = "embedding_forward"


def read_kernels(path):
    """(start ns, end ns, short name) of every kernel, in order of start."""
    db = sqlite3.connect(path)
    return db.execute(
        "SELECT k.start, k.end, s.value FROM CUPTI_ACTIVITY_KIND_KERNEL k "
        "JOIN StringIds s ON s.id = k.shortName ORDER BY k.start").fetchall()


def step_kernels(kernels, step):
    """The kernels of step STEP (1-based); the trace must hold the start of step STEP + 1."""
    starts = [i for i, k in enumerate(kernels) if k[2].startswith(STEP_MARK)]
    if step < 1 or len(starts) < step + 1:
        raise ValueError(f"{len(starts)} step starts in the trace, step {step} needs {step + 1}")
    return kernels[starts[step - 1]:starts[step]]


def busy_ns(kernels):
    """Time in which at least one of the kernels (in order of start) ran: they may overlap on
    several streams, so each adds only what reaches past the latest end before it."""
    busy, until = 0, 0
    for start, end, _ in kernels:
        if end > until:
            busy += end - max(start, until)
            until = end
    return busy


def summary(kernels, step, top, list_regex=None):
    """The report's lines."""
    mine = step_kernels(kernels, step)
    t0, t1 = mine[0][0], max(k[1] for k in mine)
    busy = busy_ns(mine)
    by_name = collections.defaultdict(lambda: [0, 0])
    for start, end, name in mine:
        by_name[name][0] += 1
        by_name[name][1] += end - start
    total = sum(v[1] for v in by_name.values())
    lines = [f"step {step}: span {(t1 - t0) / 1e6:.2f} ms, some kernel running "
             f"{busy / 1e6:.2f} ms, none {(t1 - t0 - busy) / 1e6:.2f} ms; {len(mine)} launches, "
             f"kernel time {total / 1e6:.2f} ms",
             f"{'kernel':60s} {'calls':>6s} {'ms':>8s} {'us/call':>8s}"]
    for name, (calls, ns) in sorted(by_name.items(), key=lambda kv: (-kv[1][1], kv[0]))[:top]:
        lines.append(f"{name[:60]:60s} {calls:6d} {ns / 1e6:8.2f} {ns / calls / 1e3:8.1f}")
    if list_regex:
        for name in sorted({n for _, _, n in mine if re.search(list_regex, n)}):
            us = " ".join(f"{(end - start) / 1e3:.0f}" for start, end, n in mine if n == name)
            lines.append(f"{name} (us, in launch order): {us}")
    return lines


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("step", type=int)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--list", default="")
    args = parser.parse_args(argv[1:])
    try:
        print("\n".join(summary(read_kernels(args.trace), args.step, args.top, args.list)))
    except ValueError as e:
        sys.exit(f"nsys_step_summary: {e}")


if __name__ == "__main__":
    main(sys.argv)

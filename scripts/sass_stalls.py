#!/usr/bin/env python3
"""Warp-stall samples of one kernel per SASS instruction (scripts/ncu_source.sh's CSV), summed.

Prints the whole kernel's stall reasons, then for each FIRST:LAST range of instruction indices
(0-based rows of the CSV, LAST excluded; find them with --list) its share of the samples, its
warp instructions executed per UNIT (--per, e.g. the number of items a loop ran) and its stall
reasons, and the ranges' samples by opcode.
  scripts/sass_stalls.py bwd72.sass.csv --list 2780:3560
  scripts/sass_stalls.py bwd72.sass.csv 2849:3134 3134:3166 --per 655360
"""
import argparse
import collections
import csv

SAMPLES = "Warp Stall Sampling (All Samples)"


def number(text):
    try:
        return float(text)
    except ValueError:
        return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("ranges", nargs="*", help="FIRST:LAST instruction indices")
    parser.add_argument("--list", help="FIRST:LAST: print these instructions with their samples")
    parser.add_argument("--per", type=float, default=1.0, help="divide instructions executed by this")
    args = parser.parse_args()
    rows = list(csv.reader(open(args.csv)))
    header, data = rows[1], rows[2:]
    col = {name: i for i, name in enumerate(header)}
    stalls = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    total = sum(number(r[col[SAMPLES]]) for r in data)

    def reasons(part):
        counts = collections.Counter()
        for r in part:
            for h in stalls:
                counts[h[len("stall_"):]] += number(r[col[h]])
        n = sum(counts.values()) or 1.0
        return ", ".join(f"{k} {v / n:.0%}" for k, v in counts.most_common(5))

    print(f"{len(data)} instructions, {total:.0f} samples: {reasons(data)}")
    if args.list:
        first, last = (int(x) for x in args.list.split(":"))
        for i in range(first, min(last, len(data))):
            r = data[i]
            print(f"{i:5d} {number(r[col[SAMPLES]]):7.0f} {r[col['Source']][:72]}")
    opcodes = collections.Counter()
    for spec in args.ranges:
        first, last = (int(x) for x in spec.split(":"))
        part = data[first:last]
        samples = sum(number(r[col[SAMPLES]]) for r in part)
        executed = sum(number(r[col["Instructions Executed"]]) for r in part)
        print(f"[{first}, {last}): {samples / total:6.1%} of the samples, "
              f"{executed / args.per:8.1f} instructions per unit; {reasons(part)}")
        for r in part:
            op = next(t for t in r[col["Source"]].split() if not t.startswith("@")).split(".")[0]
            opcodes[op] += number(r[col[SAMPLES]])
    if opcodes:
        print("samples by opcode in the ranges: " +
              ", ".join(f"{op} {v:.0f}" for op, v in opcodes.most_common(12)))


if __name__ == "__main__":
    main()

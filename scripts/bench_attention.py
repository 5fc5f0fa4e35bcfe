#!/usr/bin/env python3
"""Times moda's MoDA attention kernel beside torch SDPA (cuDNN and flash backends forced) in one
run on one GPU, and prints a table with ratios.

    python3 scripts/bench_attention.py [--moda PATH] [--baseline PATH] [--reps 20]
        [--shape B,T,Hq,Hk,d,S ...] [--json OUT.jsonl] [--slot-gradients sole-reader|pulled]

Needs torch with CUDA (the GPU machine's python3). Our kernel is timed by `moda bench attention
--json` (CUDA events, median of --reps forward+backward rounds after one warm-up); SDPA the same way
on random bf16 inputs of the same shape (causal, GQA through enable_gqa). SDPA has no depth slots:
its column is the plain-attention cost each MoDA row is compared with. --baseline times a second
moda build in the same run (an A/B of a kernel change); --shape replaces the default shapes.
Each MoDA row's backward includes the gradients of its S slots with the layer as their only reader
(`moda bench attention --slot-gradients`, default sole-reader: formed in the backward).
"""
import argparse
import json
import subprocess
import sys

SHAPES = [  # B, T, Hq, Hk, d, S: the table of shared/docs/targets.md
    (4, 4096, 16, 8, 64, 0), (4, 4096, 16, 8, 64, 36), (4, 4096, 16, 8, 64, 72),
    (1, 4096, 64, 8, 64, 0), (1, 4096, 64, 8, 64, 64),
    (1, 8192, 64, 8, 64, 0), (1, 8192, 64, 8, 64, 64),
    (1, 16384, 64, 8, 64, 0), (1, 16384, 64, 8, 64, 64),
    (1, 16384, 16, 8, 64, 0), (1, 16384, 16, 8, 64, 64),
    (1, 16384, 64, 8, 64, 128),
]


def time_sdpa(torch, shape, backend, reps):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    B, T, Hq, Hk, d, _ = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, Hq, T, d, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
    k = torch.randn(B, Hk, T, d, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
    v = torch.randn(B, Hk, T, d, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
    dout = torch.randn(B, Hq, T, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    which = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    fwd, bwd, tot = [], [], []
    with sdpa_kernel([which]):
        for i in range(reps + 1):
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            e0.record()
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            e1.record()
            out.backward(dout)
            e2.record()
            torch.cuda.synchronize()
            q.grad = k.grad = v.grad = None
            if i > 0:
                fwd.append(e0.elapsed_time(e1))
                bwd.append(e1.elapsed_time(e2))
                tot.append(e0.elapsed_time(e2))
    med = lambda xs: sorted(xs)[len(xs) // 2] if len(xs) % 2 else 0.5 * (sorted(xs)[len(xs) // 2 - 1] + sorted(xs)[len(xs) // 2])
    return med(fwd), med(bwd), med(tot)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moda", default="build/moda")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--baseline", help="another moda build, timed in the same run")
    ap.add_argument("--shape", action="append", help="B,T,Hq,Hk,d,S (repeatable; default: targets.md's table)")
    ap.add_argument("--json", help="also write every measurement as JSON lines here")
    ap.add_argument("--slot-gradients", choices=("sole-reader", "pulled"),
                    help="passed to --moda's bench (not the baseline's): how the backward forms the slots' gradients")
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shape] if args.shape else SHAPES
    import torch
    if not torch.cuda.is_available():
        sys.exit("bench_attention: torch sees no GPU")

    def time_moda(exe, extra=()):
        cmd = [exe, "bench", "attention", "--json", "--reps", str(args.reps), *extra]
        for s in shapes:
            cmd += ["--shape", ",".join(map(str, s))]
        res = {}
        for line in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines():
            r = json.loads(line)
            res[(r["B"], r["T"], r["Hq"], r["Hk"], r["d"], r["S"])] = r
        return res

    ours = time_moda(args.moda, ("--slot-gradients", args.slot_gradients) if args.slot_gradients else ())
    baseline = time_moda(args.baseline) if args.baseline else {}
    peers = {}
    for s in shapes:
        key = s[:5]
        if key not in peers:
            peers[key] = {b: time_sdpa(torch, s, b, args.reps) for b in ("cudnn", "flash")}
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, reps {args.reps}, medians, ms (fwd+bwd)")
    print(f"{'B':>2} {'T':>6} {'Hq':>3} {'Hk':>3} {'d':>3} {'S':>4} {'ours fwd':>9} {'ours bwd':>9} {'of it slots':>11} {'ours':>8} "
          f"{'cuDNN':>8} {'flash':>8} {'cuDNN/ours':>10} {'vs our S=0':>10}"
          + (f" {'base fwd':>9} {'base bwd':>9} {'base':>8} {'base/ours':>9}" if baseline else ""))
    rows = []
    for s in shapes:
        o = ours[s]
        cu, fl = peers[s[:5]]["cudnn"], peers[s[:5]]["flash"]
        base = ours.get(s[:5] + (0,))
        extra = f"{(o['total_ms'] / base['total_ms'] - 1) * 100:+.1f}%" if base and s[5] else ""
        line = (f"{s[0]:>2} {s[1]:>6} {s[2]:>3} {s[3]:>3} {s[4]:>3} {s[5]:>4} {o['fwd_ms']:>9.3f} {o['bwd_ms']:>9.3f} "
                f"{o.get('slot_gradients_ms', float('nan')):>11.3f} "
                f"{o['total_ms']:>8.3f} {cu[2]:>8.3f} {fl[2]:>8.3f} {cu[2] / o['total_ms']:>10.2f} {extra:>10}")
        row = {"shape": s, "ours": o, "cudnn_ms": cu, "flash_ms": fl}
        if baseline:
            bs = baseline[s]
            line += (f" {bs['fwd_ms']:>9.3f} {bs['bwd_ms']:>9.3f} {bs['total_ms']:>8.3f}"
                     f" {bs['total_ms'] / o['total_ms']:>9.2f}")
            row["baseline"] = bs
        print(line)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

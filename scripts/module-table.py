#!/usr/bin/env python3
"""Issue 12's module table from ONE device-suite run: our Inception module (reduced and naive, fp32 and TF32;
`cargo bench --bench inception`'s criterion output) next to PyTorch + cuDNN's (`scripts/baseline/
pytorch_baseline.py`'s JSON, cudnn.benchmark on: cuDNN's fastest algorithm per shape), forward and forward +
backward, MNIST module 2 at batch 50 and GoogLeNet (3a) at 32 and 128, each of ours against the FASTER of
cuDNN's reduced and naive module in the same precision.

    python3 scripts/module-table.py BENCH_LOG BASELINE_JSON     (markdown on stdout)

A cell with no figure says so ("not run"); nothing is filled in from another run. A missing file (the bench or
the baseline phase not run, or cut short before it wrote anything) leaves its side "not run" and is named.
Our figures and PyTorch's are criterion's estimate and the mean of 50 back-to-back reps, both per iteration.
"""
import json
import os
import re
import sys

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
SHAPES = [("MNIST module 2", 50, "mod2_b50"), ("GoogLeNet (3a)", 32, "3a_b32"), ("GoogLeNet (3a)", 128, "3a_b128")]
PASSES = [("forward", "fwd"), ("forward+backward", "fwdbwd")]


def ours(log_path):
    """{(label, batch, form, precision, pass): ms (criterion's estimate, the middle figure)} from its output; the bench names its groups
    `inception module, <form> <Precision> [<device>]`, benchmark `<label> <pass>/<batch>`; GPU groups only."""
    head = re.compile(r"^inception module, (reduced|naive) (Fp32|Tf32) \[(cuda[^\]]*)\]/(.+) (forward\+backward|forward)/(\d+)")
    time = re.compile(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]")
    out, key = {}, None
    if not os.path.exists(log_path):
        print(f"(no bench log {log_path}: our columns not run)")
        return out
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = head.match(line.strip())
            if m:
                form, prec, _, label, pas, batch = m.groups()
                key = (label, int(batch), form, prec.lower(), pas)
            t = time.search(line)
            if t and key:
                out[key] = float(t.group(1)) * UNITS[t.group(2)]
                key = None
    return out


def fmt(v):
    return "not run" if v is None else f"{v:.3f}"


def main():
    mine = ours(sys.argv[1])
    base = {}
    if os.path.exists(sys.argv[2]):
        with open(sys.argv[2]) as f:
            base = json.load(f)
    else:
        print(f"(no baseline {sys.argv[2]}: the PyTorch + cuDNN columns not run)")
    print(f"Module table, {base.get('device', 'unknown GPU')} (PyTorch {base.get('torch', '?')}, cuDNN "
          f"{base.get('cudnn', '?')}); ms per iteration; ratio = ours / the faster of cuDNN's reduced and naive\n")
    print("| module | batch | precision | pass | ours reduced | ours naive | cuDNN reduced | cuDNN naive | ratio |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for label, batch, key in SHAPES:
        for prec in ("tf32", "fp32"):
            for pas, short in PASSES:
                r, n = mine.get((label, batch, "reduced", prec, pas)), mine.get((label, batch, "naive", prec, pas))
                cr = base.get(f"{key}_reduced_{prec}_{short}_ms")
                cn = base.get(f"{key}_naive_{prec}_{short}_ms")
                best = min((v for v in (cr, cn) if v is not None), default=None)
                ratio = f"{r / best:.2f}" if r is not None and best else "—"
                print(f"| {label} | {batch} | {prec} | {pas} | {fmt(r)} | {fmt(n)} | {fmt(cr)} | {fmt(cn)} | {ratio} |")


if __name__ == "__main__":
    main()

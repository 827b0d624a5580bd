#!/usr/bin/env python3
"""The tensor-core kernels' main loops in SASS: for every innermost loop that issues mma (HMMA) instructions,
the instructions of the longest path through one iteration, its HMMAs, and instructions per HMMA, per kernel.

A GPU-free proxy for issue cost: an SM sub-partition issues one instruction a cycle and its tensor core takes a
TF32 m16n8k8 (one HMMA.1688.F32.TF32) about every 4 cycles on sm_80/sm_90, so a loop far above 4 instructions
per HMMA is bound by the instructions around its mma (address arithmetic, border checks, conversions), not by
the tensor cores. Static counts only: a GPU run (ncu) says what the loops cost. A kernel's template instances
(kernel sizes 1, 3, 5; the general and the one-tap-a-step paths) are separate loops, numbered in code order;
a path's longest branch is counted (e.g. the load of the next step, absent on the last).

    scripts/sass-report.py [--arch sm_90] [MODULE...]     modules of kernels/ptx (default: all)

Needs ptxas (beside $NVCC, else PATH) and nvdisasm ($NVDISASM, beside $NVCC, else PATH;
`scripts/install-nvcc.sh --nvdisasm` installs the pinned one and prints its path).
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name, env):
    if os.environ.get(env):
        return os.environ[env]
    nvcc = os.environ.get("NVCC")
    if nvcc and os.path.isfile(os.path.join(os.path.dirname(nvcc), name)):
        return os.path.join(os.path.dirname(nvcc), name)
    found = shutil.which(name)
    if not found:
        sys.exit(f"error: {name} not found (set {env}, or NVCC to the pinned nvcc; see scripts/install-nvcc.sh)")
    return found


def functions(sass):
    """{kernel: [(opcode text, branch target label or None)], labels {label: index}}."""
    funcs, cur = {}, None
    for line in sass.splitlines():
        if m := re.match(r"^\.text\.(\S+):", line.strip()):
            cur = funcs.setdefault(m.group(1), ([], {}))
        elif cur and (m := re.match(r"^(\.L_x_\d+):", line.strip())):
            cur[1][m.group(1)] = len(cur[0])
        elif cur and (m := re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)):
            text = m.group(1)
            target = re.search(r"`\((\.L_x_\d+)\)", text)
            cur[0].append((text, target.group(1) if target and "BRA" in text else None))
    return funcs


def opcode(text):
    toks = text.split()
    return toks[1] if toks[0].startswith("@") and len(toks) > 1 else toks[0]


def loops(ins, labels):
    """Innermost loops with HMMA: (first, last) instruction indices, the back edge at `last`."""
    found = []
    for i, (text, target) in enumerate(ins):
        j = labels.get(target) if target else None
        if j is not None and j <= i and any("HMMA" in ins[k][0] for k in range(j, i + 1)):
            found.append((j, i))
    return [(a, b) for a, b in found if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in found)]


def longest_path(ins, labels, lo, hi):
    """(instructions, HMMA, global loads, shared loads) on the longest path from lo through the back edge at
    hi; a branch out of [lo, hi] or backwards ends its path."""
    best = {hi + 1: (0, 0, 0, 0)}
    for j in range(hi, lo - 1, -1):
        text, target = ins[j]
        op = opcode(text)
        here = (1, int(op.startswith("HMMA")), int(op.startswith("LDG")), int(op.startswith("LDS")))
        if j == hi:
            best[j] = here
            continue
        succ = [j + 1]
        if target:
            t = labels.get(target)
            t = t if t is not None and j < t <= hi else hi + 1
            succ = [t] if not text.startswith("@") else [j + 1, t]
        tail = max((best[s] for s in succ), key=lambda r: r[0])
        best[j] = tuple(a + b for a, b in zip(here, tail))
    return best[lo]


def main():
    args = sys.argv[1:]
    arch = "sm_90"
    if args[:1] == ["--arch"]:
        arch, args = args[1], args[2:]
    ptxas, nvdisasm = tool("ptxas", "PTXAS"), tool("nvdisasm", "NVDISASM")
    modules = args or sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, "kernels/ptx/*.ptx")))
    print(f"| kernel ({arch}) | loop | instructions (longest path of an iteration) | HMMA | per HMMA | LDG | LDS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for module in modules:
            cubin = os.path.join(tmp, module + ".cubin")
            subprocess.run([ptxas, f"-arch={arch}", "-o", cubin, os.path.join(ROOT, "kernels/ptx", module + ".ptx")],
                           check=True)
            sass = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True, check=True).stdout
            for name, (ins, labels) in sorted(functions(sass).items()):
                for n, (lo, hi) in enumerate(loops(ins, labels)):
                    count, hmma, ldg, lds = longest_path(ins, labels, lo, hi)
                    if hmma:
                        print(f"| {name} | {n} | {count} | {hmma} | {count / hmma:.1f} | {ldg} | {lds} |")


if __name__ == "__main__":
    main()

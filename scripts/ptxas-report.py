#!/usr/bin/env python3
"""Compiles every committed kernels/ptx/*.ptx to sm_80 and sm_90 cubins with ptxas, prints each kernel's
registers, stack and spills, and fails when a kernel spills without an entry in kernels/spill-allowlist.txt
(one line per kernel: `kernel_name: reason`; `#` starts a comment).

ptxas is taken from beside $NVCC, else from PATH (scripts/install-nvcc.sh installs both).
usage: scripts/ptxas-report.py [PTX_DIR]
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ARCHS = ["sm_80", "sm_90"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWLIST = os.path.join(ROOT, "kernels", "spill-allowlist.txt")


def find_ptxas():
    nvcc = os.environ.get("NVCC")
    if nvcc:
        cand = os.path.join(os.path.dirname(nvcc), "ptxas")
        if os.path.isfile(cand):
            return cand
    found = shutil.which("ptxas")
    if not found:
        sys.exit("error: ptxas not found (set NVCC to the pinned nvcc, see scripts/install-nvcc.sh)")
    return found


def read_allowlist():
    allowed = {}
    with open(ALLOWLIST) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, reason = line.partition(":")
            if not sep or not name.strip() or not reason.strip():
                sys.exit(f"error: {ALLOWLIST}:{n}: expected `kernel_name: reason`, got {line!r}")
            allowed[name.strip()] = reason.strip()
    return allowed


def report(ptxas, ptx, arch):
    """[(kernel, registers, stack, spill stores, spill loads)] of one module for one arch."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([ptxas, f"-arch={arch}", "-v", "-o", os.path.join(tmp, "k.cubin"), ptx],
                             capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: ptxas failed on {ptx} for {arch}:\n{out.stdout}{out.stderr}")
    rows, kernel, props = [], None, None
    for line in (out.stdout + out.stderr).splitlines():
        if m := re.search(r"Function properties for (\S+)", line):
            kernel = m.group(1)
        elif kernel and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            props = tuple(int(g) for g in m.groups())
        elif kernel and props and (m := re.search(r"Used (\d+) registers", line)):
            rows.append((kernel, int(m.group(1)), *props))
            kernel, props = None, None
    return rows


def main():
    ptx_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "kernels", "ptx")
    ptxas, allowed = find_ptxas(), read_allowlist()
    modules = sorted(f for f in os.listdir(ptx_dir) if f.endswith(".ptx"))
    if not modules:
        sys.exit(f"error: no .ptx files in {ptx_dir}")
    print(f"ptxas register/spill report ({ptxas})")
    print(f"{'module':<16}{'kernel':<28}{'arch':<7}{'regs':>5}{'stack':>7}{'spill st':>10}{'spill ld':>10}")
    failures, seen, spilled = [], set(), set()
    for module in modules:
        for arch in ARCHS:
            rows = report(ptxas, os.path.join(ptx_dir, module), arch)
            if not rows:
                sys.exit(f"error: ptxas reported no kernels for {module} ({arch})")
            for kernel, regs, stack, st, ld in rows:
                seen.add(kernel)
                note = ""
                if st or ld:
                    spilled.add(kernel)
                    if kernel in allowed:
                        note = f"  allowed: {allowed[kernel]}"
                    else:
                        note = "  SPILLS (not in kernels/spill-allowlist.txt)"
                        failures.append(f"{kernel} ({arch}): {st} B spill stores, {ld} B spill loads")
                print(f"{module[:-4]:<16}{kernel:<28}{arch:<7}{regs:>5}{stack:>7}{st:>10}{ld:>10}{note}")
    for kernel in sorted(set(allowed) - spilled):
        where = "no longer spills" if kernel in seen else "is not a kernel"
        print(f"note: allow-list entry {kernel} {where}; remove it")
    if failures:
        print("error: kernels spill outside the allow-list:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"ok: {len(seen)} kernels, no spill outside the allow-list")


if __name__ == "__main__":
    main()

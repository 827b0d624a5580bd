#!/usr/bin/env python3
"""Shared-memory bank conflicts and scattered global accesses of the kernels by source line, from the
emulator's traffic counter.

Runs tests/shared_traffic.rs (the racecheck build: every shared-memory kernel at the MNIST net's shapes, both
precisions) with INCEPTION_CUDA_EMU_TRAFFIC_DUMP set, resolves each counted instruction to its kernel source
line with addr2line, and prints the lines by wavefronts beyond the conflict-free count (a GPU serves a warp's
shared access in phases of 128 bytes; a phase with two words in one bank takes two wavefronts):

    scripts/shared-traffic.py [N]     the N worst lines (default 30) for shared memory (wavefronts against the
                                      conflict-free count), then for global memory (32-byte sectors against
                                      the sectors the accessed bytes fill), then the per-kernel shared table

Needs g++ and addr2line (binutils); no GPU. The counts predict ncu's shared-memory wavefronts for the same
instructions where a warp's lanes stay converged (see kernels/emu/emu.cpp, namespace traffic).
"""
import collections
import os
import subprocess
import sys
import tempfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
top = int(sys.argv[1]) if len(sys.argv) > 1 else 30
with tempfile.TemporaryDirectory() as tmp:
    dump = os.path.join(tmp, "traffic.txt")
    env = dict(os.environ, INCEPTION_CUDA_EMU_RACECHECK="1", INCEPTION_CUDA_EMU_TRAFFIC_DUMP=dump)
    run = subprocess.run(
        ["cargo", "test", "--features", "emulation", "--test", "shared_traffic", "--", "--ignored",
         "--nocapture", "shared_traffic_of_the_kernels"],
        cwd=root, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"error: the traffic test failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    rows = []
    with open(dump) as f:
        for line in f:
            at, kind, requests, wavefronts, ideal = line.split()
            module, offset = at.rsplit("+", 1)
            # The counted address is the return address: the instruction is just before it.
            rows.append((module, int(offset, 16) - 1, kind, int(requests), int(wavefronts), int(ideal)))
lines = {}
for module in {r[0] for r in rows}:
    addrs = sorted({hex(r[1]) for r in rows if r[0] == module})
    # -i: the chain of inlined frames, innermost first, each address's chain ended by the "??" line of the
    # -a marker; an access inside an emulator helper (__ldg, vector copies) is charged to the kernel line that
    # called it.
    out = subprocess.run(["addr2line", "-i", "-a", "-e", module] + addrs, capture_output=True, text=True).stdout
    chains = [c.strip().split("\n")[1:] for c in ("\n" + out).split("\n0x")[1:]]
    for a, chain in zip(addrs, chains):
        frames = [f.split(" ")[0].replace(root + "/", "") for f in chain]
        kernel = [f for f in frames if f.startswith("kernels/") and not f.startswith("kernels/emu/")]
        lines[(module, a)] = (kernel or frames or ["??"])[0]
by_line = collections.defaultdict(lambda: [0, 0, 0])
for module, offset, kind, requests, wavefronts, ideal in rows:
    acc = by_line[(lines[(module, hex(offset))], kind)]
    acc[0] += requests
    acc[1] += wavefronts
    acc[2] += ideal
def table(kinds, unit, ideal_name):
    print(f"| source line | access | warp requests | {unit} | × {ideal_name} |")
    print("|---|---|---:|---:|---:|")
    rows = [kv for kv in by_line.items() if kv[0][1] in kinds]
    for (where, kind), (requests, count, ideal) in sorted(rows, key=lambda kv: -(kv[1][1] - kv[1][2]))[:top]:
        if count == ideal:
            break
        print(f"| {where} | {kind} | {requests} | {count} | {count / ideal:.2f} |")
    print()


table(("load", "store"), "wavefronts", "conflict-free")
# Global memory: 32-byte sectors per warp request against the sectors the request's distinct bytes fill
# (ncu: l1tex__t_sectors_pipe_lsu_mem_global_op_ld over requests); a scattered load shows here.
table(("global-load", "global-store"), "sectors", "contiguous")
print(run.stdout[run.stdout.find("| kernel"):run.stdout.rfind("|") + 1])

#!/usr/bin/env python3
"""Per-kernel table of one profiled training step from ncu's CSV (scripts/device-suite.sh makes it with
`ncu --csv --print-units base --metrics <METRICS>`): time, share of the step, DRAM bytes and bandwidth, FP32
rate (2·FFMA + FADD + FMUL thread instructions), grouped by kernel name, slowest first.

    python3 scripts/ncu-summary.py ncu.csv [COPY_TBPS]   (COPY_TBPS: measured copy bandwidth, for the floor column)
    python3 scripts/ncu-summary.py --metrics [QUERY]     the metrics the table reads, for ncu --metrics
    python3 scripts/ncu-summary.py --metrics-smem [QUERY]
                                                         the metrics --smem reads
    python3 scripts/ncu-summary.py --smem ncu.csv        shared-memory loads and stores per kernel: warp
                                                         instructions, wavefronts, and wavefronts over the
                                                         conflict-free count (SMEM_METRICS below), to set
                                                         beside the emulator's (scripts/shared-traffic.py);
                                                         global sectors per request likewise
QUERY: the output of `ncu --query-metrics` on the GPU at hand: only the metrics it lists are printed (the
others are named on stderr), so a name this ncu or GPU lacks costs its column, not the whole profile.
FLOP rate: 2·FFMA + FADD + FMUL thread instructions, plus 2,048 per tensor-core instruction (the crate's only
mma, m16n8k8 TF32, is one HMMA.1688.F32.TF32 in the sm_80 and sm_90 SASS: 16·8·8 multiply-adds).
"""
import csv
import sys
from collections import defaultdict

HMMA = "sm__inst_executed_pipe_tensor_op_hmma.sum"
# Asked for whatever the query says (they ran on the H100 on 2026-11-26); then the ones it must list.
ALWAYS = [
    "gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum",
    "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum", "smsp__sass_thread_inst_executed_op_fadd_pred_on.sum",
    "smsp__sass_thread_inst_executed_op_fmul_pred_on.sum",
]
METRICS = [HMMA]
SMEM_METRICS = [
    "smsp__inst_executed_op_shared_ld.sum", "smsp__inst_executed_op_shared_st.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum", "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum", "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum",
    "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum", "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
    "l1tex__t_requests_pipe_lsu_mem_global_op_st.sum", "l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum",
]


def listed(metrics, query, unknown):
    """The metrics whose base name (before the rollup suffix) `ncu --query-metrics` printed; `unknown` if
    there is no query or it is not a metric list (a failed query)."""
    names = set()
    if query:
        with open(query) as f:
            names = {line.split()[0].split(".")[0] for line in f if line.strip()}  # with or without rollups
    if not any(a.split(".")[0] in names for a in ALWAYS):
        print(f"warning: no metric list from ncu --query-metrics ({query}): asking for "
              f"{'all' if unknown else 'none'} of {', '.join(metrics)}", file=sys.stderr)
        return unknown
    keep = [m for m in metrics if m.split(".")[0] in names]
    for m in metrics:
        if m not in keep:
            print(f"not on this GPU's ncu: {m}", file=sys.stderr)
    return keep


if sys.argv[1:2] in (["--metrics"], ["--metrics-smem"]):
    query = sys.argv[2] if len(sys.argv) > 2 else None
    # Unverified, the main profile goes without the extra metrics; the shared-memory run (its own ncu call)
    # asks for all of them.
    print(",".join(ALWAYS + listed(METRICS, query, []) if sys.argv[1] == "--metrics"
                   else listed(SMEM_METRICS, query, SMEM_METRICS)))
    sys.exit(0)
smem = sys.argv[1:2] == ["--smem"]
if smem:
    sys.argv.pop(1)
rows = defaultdict(dict)  # launch id -> metric -> value
names = {}
with open(sys.argv[1], newline="") as f:
    lines = [l for l in f if l.startswith('"')]  # drop ncu's "==PROF==" chatter and the program's output
for r in csv.DictReader(lines):
    i = r["ID"]
    names[i] = r["Kernel Name"].split("(")[0]
    try:
        rows[i][r["Metric Name"]] = float(r["Metric Value"].replace(",", ""))
    except ValueError:
        pass
if smem:
    agg = defaultdict(lambda: defaultdict(float))
    for i, m in rows.items():
        a = agg[names[i]]
        for op in ("ld", "st"):
            a[op + " inst"] += m.get(f"smsp__inst_executed_op_shared_{op}.sum", 0.0)
            a[op + " wf"] += m.get(f"l1tex__data_pipe_lsu_wavefronts_mem_shared_op_{op}.sum", 0.0)
            a[op + " conflicts"] += m.get(f"l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_{op}.sum", 0.0)
            a[op + " requests"] += m.get(f"l1tex__t_requests_pipe_lsu_mem_global_op_{op}.sum", 0.0)
            a[op + " sectors"] += m.get(f"l1tex__t_sectors_pipe_lsu_mem_global_op_{op}.sum", 0.0)
    ratio = lambda a, op: (f"{a[op + ' wf'] / (a[op + ' wf'] - a[op + ' conflicts']):.2f}"
                           if a[op + " wf"] > a[op + " conflicts"] else "—")
    per = lambda a, op: f"{a[op + ' sectors'] / a[op + ' requests']:.1f}" if a[op + " requests"] else "—"
    print("| kernel | shared loads | load wavefronts | × conflict-free | shared stores | store wavefronts "
          "| × conflict-free | global sectors per load request | per store request |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, a in sorted(agg.items(), key=lambda kv: -(kv[1]["ld wf"] + kv[1]["st wf"])):
        if a["ld inst"] + a["st inst"] + a["ld requests"] + a["st requests"] == 0:
            continue
        print(f"| {name} | {a['ld inst']:.0f} | {a['ld wf']:.0f} | {ratio(a, 'ld')} | {a['st inst']:.0f} "
              f"| {a['st wf']:.0f} | {ratio(a, 'st')} | {per(a, 'ld')} | {per(a, 'st')} |")
    print("\n(4 sectors per request: a warp's 32 consecutive floats; 32: every lane its own sector)")
    sys.exit(0)
copy_tbps = float(sys.argv[2]) if len(sys.argv) > 2 else None
agg = defaultdict(lambda: defaultdict(float))
for i, m in rows.items():
    a = agg[names[i]]
    a["launches"] += 1
    a["ns"] += m.get("gpu__time_duration.sum", 0.0)
    a["bytes"] += m.get("dram__bytes_read.sum", 0.0) + m.get("dram__bytes_write.sum", 0.0)
    a["flop"] += 2 * m.get("smsp__sass_thread_inst_executed_op_ffma_pred_on.sum", 0.0) + m.get(
        "smsp__sass_thread_inst_executed_op_fadd_pred_on.sum", 0.0) + m.get(
        "smsp__sass_thread_inst_executed_op_fmul_pred_on.sum", 0.0) + 2048 * m.get(HMMA, 0.0)
total_ns = sum(a["ns"] for a in agg.values())
total_bytes = sum(a["bytes"] for a in agg.values())
print(f"| kernel | launches | time (µs) | share | DRAM (MB) | GB/s | GFLOP/s (FP32 + TF32 mma) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, a in sorted(agg.items(), key=lambda kv: -kv[1]["ns"]):
    s = a["ns"] * 1e-9
    print(f"| {name} | {int(a['launches'])} | {a['ns'] / 1e3:.1f} | {100 * a['ns'] / max(total_ns, 1):.1f} % "
          f"| {a['bytes'] / 1e6:.1f} | {a['bytes'] / max(s, 1e-12) / 1e9:.0f} | {a['flop'] / max(s, 1e-12) / 1e9:.0f} |")
print(f"\nsum of kernel times: {total_ns / 1e6:.3f} ms over {sum(int(a['launches']) for a in agg.values())} launches; "
      f"DRAM traffic {total_bytes / 1e9:.2f} GB", end="")
if copy_tbps:
    print(f"; at the measured copy bandwidth ({copy_tbps} TB/s) that traffic alone takes "
          f"{total_bytes / (copy_tbps * 1e12) * 1e3:.3f} ms")
else:
    print()

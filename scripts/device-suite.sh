#!/usr/bin/env bash
# The whole GPU round, in one call on a machine with the NVIDIA driver, compute-sanitizer, ncu and PyTorch
# (no cargo: the binaries come from scripts/stage-gpu.sh, carried in stage/). Run from the repo root:
#
#   scripts/device-suite.sh [PHASE...]     the phases in the order given; default: all but train, in order
#     tests       every GPU test (scripts/gpu-run.sh --no-sanitizers)
#     train       train_mnist's default GPU schedule (20,000 steps; TRAIN_ARGS adds options, TRAIN_TIMEOUT caps
#                 it; SCHEDULE=1 then runs PyTorch's schedule, pytorch_baseline.py --schedule; SCHEDULE=cadence
#                 PyTorch's schedule with train_mnist's cadence, --cadence; SCHEDULE=both both)
#     examples    primitives (a module from the public launchers vs the twin); profile_step at batch 50, 256,
#                 launch by launch (loaded) and replayed as a CUDA graph, fp32 and tf32
#     benches     the GPU criterion groups ("cuda:" in the name, 1 s each) with cuDNN/cuBLAS side by side
#                 (BENCHES: which bench binaries, default "train_step inception"; BENCH_FILTER: criterion's
#                 filter, default "cuda:"); a staged <bench>@prev (PREV= in stage-gpu.sh) runs right after
#                 its bench with PREV_FILTER (default "fc1 GEMMs Fp32"): the previous main in the same call
#     baseline    scripts/baseline/pytorch_baseline.py (same GPU, same run: the ratios; BASELINE_ARGS adds
#                 options, e.g. --fp32-only)
#     modules     the module table (scripts/module-table.py: our modules from the benches phase next to PyTorch +
#                 cuDNN's from the baseline phase, both of this run) → modules.md
#     profile     one training step under ncu, fp32 and tf32 (PROFILE_PRECISIONS) → per-kernel tables
#                 (scripts/ncu-summary.py) in profile.md, then the tf32 step's shared-memory wavefronts and
#                 bank conflicts per kernel (to check the emulator's count, scripts/shared-traffic.py)
#     sanitizers  compute-sanitizer memcheck and racecheck over the small GPU tests
# Caps: tests 240 s, examples 9 × 60 s, benches 240 s per bench binary (two by default) and 150 s per @prev,
# baseline 120 s, profile 120 s per precision + 90 s, sanitizers until DEADLINE; so even `benches baseline` can pass one
# 600 s call at its caps (BENCHES=inception, or split it).
# Caps (DEADLINE, TRAIN_TIMEOUT, SCHEDULE_TIMEOUT, SANITIZER_SECS) are whole seconds.
# DEADLINE (seconds from the start, default 560) boxes every phase: each run is capped at what is left before it,
# and a run with under 15 s left is not started but reported as not run (SANITIZER_SECS caps each sanitizer
# run). So one call with timeout_s ≥ DEADLINE + 40 always ends by itself, its summary written: for a shorter
# call lower DEADLINE with it (e.g. a train call of timeout_s 300: DEADLINE=260). EXAMPLES_QUICK=1 runs only primitives. Every phase has its own timeout. Output: $OUT (else stage/out): suite.log (all that
# was printed), logs.tar.gz (every log), baseline.json, modules.md, ncu-<precision>.csv, profile.md, train-log.jsonl, curves.svg.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-stage/out}
logs=$(mktemp -d)
mkdir -p "$out"
export INCEPTION_CUDA_ROOT=$PWD INCEPTION_CUDA_LOGS=$logs
trap 'tar -czf "$out/logs.tar.gz" -C "$logs" . 2>/dev/null' EXIT
exec > >(tee "$out/suite.log") 2>&1
start=$(date +%s)
[[ ${DEADLINE:-560} =~ ^[0-9]+$ ]] || { echo "error: DEADLINE=$DEADLINE is not whole seconds" >&2; exit 2; }
deadline=$((start + ${DEADLINE:-560}))
# budget N WHAT: sets t to N seconds, or to what is left before DEADLINE if less; with under 15 s left it says
# WHAT was not run, marks the round incomplete and fails, so the caller skips the run.
budget() {
  [[ $1 =~ ^[0-9]+$ ]] || { echo "NOT RUN: $2 (cap '$1' is not whole seconds)"; status=1; return 1; }
  local left=$((deadline - $(date +%s)))
  t=$((left < $1 ? left : $1))
  [ "$t" -ge 15 ] && return 0
  echo "NOT RUN: $2 (DEADLINE ${DEADLINE:-560} s)"
  status=1
  return 1
}
phase() { printf '\n== [%d s] %s\n' $(($(date +%s) - start)) "$*"; }
# A carried stage.tar.xz (scripts/stage-gpu.sh) is unpacked when stage/ is absent or older than it.
if [ -f stage.tar.xz ] && { [ ! -d stage/tests ] || [ stage.tar.xz -nt stage/MANIFEST ]; }; then
  rm -rf stage/tests stage/examples stage/benches && tar -xJf stage.tar.xz
fi
[ -d stage/tests ] || { echo "error: no stage/: run scripts/stage-gpu.sh on the build machine and carry stage" >&2; exit 2; }
status=0

phase "device"
echo "staged from: $(cat stage/COMMIT 2>/dev/null || echo 'unknown (stage/COMMIT missing: staged before it existed)')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())' 2>&1 | tail -1

tests() {
  phase "GPU tests"
  budget 240 "GPU tests" && { timeout "$t" scripts/gpu-run.sh --no-sanitizers || status=1; }
}

train() {
  phase "train_mnist, default GPU schedule ${TRAIN_ARGS:-}"
  budget "${TRAIN_TIMEOUT:-300}" train_mnist || return
  # --device cuda: a GPU that cannot be opened is an error, not a silent 200-step CPU run; a fresh /tmp/run, so
  # that a second call on the same machine neither is refused nor copies the last run's log.
  rm -rf /tmp/run
  # shellcheck disable=SC2086
  timeout "$t" stage/examples/train_mnist --device cuda --data data --out /tmp/run ${TRAIN_ARGS:-} 2>&1 \
    | tr '\r' '\n' | grep -v '^\s*$' | awk 'NR % 25 == 1 || /accuracy|steps in|error|device/'
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  cp /tmp/run/log.jsonl "$out/train-log.jsonl" 2>/dev/null
  cp /tmp/run/curves.svg "$out/" 2>/dev/null
  tail -n 2 /tmp/run/log.jsonl 2>/dev/null
  local modes=""
  case "${SCHEDULE:-0}" in
    1) modes="--schedule" ;;
    cadence) modes="--cadence" ;;
    both) modes="--schedule --cadence" ;;
  esac
  if [ -n "$modes" ]; then
    phase "PyTorch schedule (pytorch_baseline.py $modes)"
    budget "${SCHEDULE_TIMEOUT:-300}" "PyTorch's schedule" || return
    # shellcheck disable=SC2086
    PYTHONUNBUFFERED=1 timeout "$t" python3 scripts/baseline/pytorch_baseline.py data \
      "$out/baseline-schedule.json" $modes ${BASELINE_ARGS:-} | grep -A12 -E '"(schedule|cadence)"'
  fi
}

examples() {
  phase "examples"
  budget 60 primitives || return
  timeout "$t" stage/examples/primitives 2>&1 | tail -n 3
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  if [ "${EXAMPLES_QUICK:-0}" != 1 ]; then
    for p in fp32 tf32; do
      for b in 50 256; do
        for mode in loaded replayed; do
          budget 60 "profile_step $b $mode $p" && timeout "$t" stage/examples/profile_step $b 5 30 $mode $p
        done
      done
    done
  fi
}

benches() {
  phase "GPU benches (criterion groups on cuda:, 1 s each; cuDNN/cuBLAS from PyTorch's wheels)"
  local libdirs
  libdirs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for pat in ("nvidia/**/libcudnn.so.9", "nvidia/**/libcublas.so.1[0-9]"):
        dirs.update(os.path.dirname(p) for p in glob.glob(os.path.join(sp, pat), recursive=True))
print(":".join(sorted(dirs)))
PY
  )
  echo "cuDNN/cuBLAS folders: ${libdirs:-none found}"
  for b in ${BENCHES:-train_step inception}; do
    # printed as it comes (a call cut short still returns what ran)
    budget 240 "bench $b" || continue
    LD_LIBRARY_PATH=${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} INCEPTION_BENCH_SECS=1 INCEPTION_BENCH_CPU=0 \
      timeout "$t" stage/benches/$b --bench "${BENCH_FILTER:-cuda:}" --warm-up-time 0.5 --noplot 2>&1 | tee "$logs/bench-$b.log" \
      | grep --line-buffered -E '^[A-Za-z].*(cuda:|/)|time:|thrpt:|skipped|not found|not timed|algorithms|^Module table|^\|' \
      | grep --line-buffered -v 'Benchmarking'
    if [ -x "stage/benches/$b@prev" ] && budget 150 "bench $b@prev"; then
      echo "-- the same groups from $(cat stage/PREV 2>/dev/null) (filter ${PREV_FILTER:-fc1 GEMMs Fp32})"
      LD_LIBRARY_PATH=${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} INCEPTION_BENCH_SECS=1 INCEPTION_BENCH_CPU=0 \
        timeout "$t" "stage/benches/$b@prev" --bench "${PREV_FILTER:-fc1 GEMMs Fp32}" --warm-up-time 0.5 --noplot 2>&1 \
        | tee "$logs/bench-$b-prev.log" | grep --line-buffered -E '^[A-Za-z].*(cuda:|/)|time:|thrpt:|skipped' \
        | grep --line-buffered -v 'Benchmarking'
    fi
  done
}

baseline() {
  phase "PyTorch baseline (same GPU, same run)"
  budget 120 "PyTorch baseline" || return
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout "$t" python3 scripts/baseline/pytorch_baseline.py data "$out/baseline.json" \
    ${BASELINE_ARGS:-} >"$logs/baseline.log" 2>&1
  tail -n 42 "$logs/baseline.log"
}

modules() {
  phase "module table (ours from the benches phase, PyTorch + cuDNN from the baseline phase)"
  python3 scripts/module-table.py "$logs/bench-inception.log" "$out/baseline.json" | tee "$out/modules.md"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}

profile() {
  # Only the metrics this ncu lists for this GPU are asked for (a missing name would fail the whole run); the
  # missing ones are named in the log.
  budget 60 "ncu profile" || return
  timeout "$t" ncu --query-metrics >"$logs/ncu-query.txt" 2>&1 || echo "ncu --query-metrics failed: asking for every metric"
  local metrics
  metrics=$(python3 scripts/ncu-summary.py --metrics "$logs/ncu-query.txt")
  local copy
  copy=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["copy_read_write_TBps"])' \
    "$out/baseline.json" 2>/dev/null)
  : >"$out/profile.md"
  for p in ${PROFILE_PRECISIONS:-fp32 tf32}; do
    phase "one training step (batch 50, $p) under ncu"
    budget 120 "ncu step profile $p" || continue
    timeout "$t" ncu --clock-control none --print-units base --csv --metrics "$metrics" \
      stage/examples/profile_step 50 0 1 loaded "$p" >"$out/ncu-$p.csv" 2>"$logs/ncu-$p.err"
    { echo "## $p"; python3 scripts/ncu-summary.py "$out/ncu-$p.csv" $copy; echo; } | tee -a "$out/profile.md"
    tail -n 3 "$logs/ncu-$p.err"
  done
  # Shared-memory wavefronts and bank conflicts per kernel of the TF32 step, beside the emulator's count
  # (scripts/shared-traffic.py): a separate run, so a metric this ncu lacks costs only this table.
  phase "shared-memory wavefronts of the tf32 step under ncu (against the emulator's count)"
  budget 90 "ncu shared-memory profile" || return
  if timeout "$t" ncu --clock-control none --print-units base --csv --metrics "$(python3 scripts/ncu-summary.py --metrics-smem "$logs/ncu-query.txt")" \
    stage/examples/profile_step 50 0 1 loaded tf32 >"$out/ncu-smem-tf32.csv" 2>"$logs/ncu-smem.err"; then
    { echo "## tf32, shared memory"; python3 scripts/ncu-summary.py --smem "$out/ncu-smem-tf32.csv"; echo; } \
      | tee -a "$out/profile.md"
  else
    echo "not run: $(tail -n 2 "$logs/ncu-smem.err")"
  fi
}

sanitizers() {
  phase "compute-sanitizer memcheck, racecheck (small GPU tests; until $((${DEADLINE:-560})) s)"
  SANITIZER_DEADLINE=$deadline SANITIZER_SECS=${SANITIZER_SECS:-120} \
    scripts/gpu-run.sh --sanitizers-only || status=1
}

phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(tests examples benches baseline modules profile sanitizers)
for p in "${phases[@]}"; do
  case $p in
    tests | train | examples | benches | baseline | modules | profile | sanitizers) "$p" ;;
    *) echo "unknown phase: $p" >&2; status=2 ;;
  esac
done
phase "done: $([ $status -eq 0 ] && echo 'every test and sanitizer run passed' || echo 'FAILURES or runs not done: see above')"
exit $status

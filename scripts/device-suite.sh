#!/usr/bin/env bash
# The whole GPU round, in one call on a machine with the NVIDIA driver, compute-sanitizer, ncu and PyTorch
# (no cargo: the binaries come from scripts/stage-gpu.sh, carried in stage/). Run from the repo root:
#
#   scripts/device-suite.sh [suite] [train]
#     suite (default when no argument is given):
#       1. every GPU test + compute-sanitizer memcheck/racecheck on the small ones
#       2. the GPU examples (primitives; profile_step: step time at batch 50, 256)
#       3. the GPU benches (criterion groups whose name holds "cuda:")
#       4. scripts/baseline/pytorch_baseline.py (same GPU, same run: the ratios; SKIP_BASELINE=1 skips it)
#       5. one training step under ncu → per-kernel table (scripts/ncu-summary.py)
#     train: train_mnist's default GPU schedule (20,000 steps; TRAIN_ARGS adds options, TRAIN_TIMEOUT caps
#       it), then the PyTorch schedule (pytorch_baseline.py --schedule) when SCHEDULE=1
#
# Every phase has its own timeout, so one hang costs its phase only. Output: $OUT (else stage/out):
# suite.log (everything printed), logs.tar.gz (every log), baseline.json, ncu.csv, profile.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-stage/out}
logs=$(mktemp -d)
mkdir -p "$out"
export INCEPTION_CUDA_ROOT=$PWD INCEPTION_CUDA_LOGS=$logs
trap 'tar -czf "$out/logs.tar.gz" -C "$logs" . 2>/dev/null' EXIT
exec > >(tee "$out/suite.log") 2>&1
t0=$SECONDS
phase() { printf '\n== [%d s] %s\n' $((SECONDS - t0)) "$*"; }
[ -d stage/tests ] || { echo "error: no stage/: run scripts/stage-gpu.sh on the build machine and carry stage" >&2; exit 2; }

phase "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())' 2>&1 | tail -1

do_suite=0 do_train=0
[ $# -eq 0 ] && do_suite=1
for arg in "$@"; do
  case $arg in
    suite) do_suite=1 ;;
    train) do_train=1 ;;
    *) echo "unknown argument: $arg (suite, train)" >&2; exit 2 ;;
  esac
done
suite=0
if [ $do_suite = 1 ]; then
phase "1. GPU tests and sanitizers"
timeout 240 scripts/gpu-run.sh
suite=$?

phase "2. examples"
timeout 60 stage/examples/primitives 2>&1 | tail -n 5
for b in 50 256; do timeout 60 stage/examples/profile_step $b 5 30; done

phase "3. GPU benches (criterion, groups on cuda:)"
for b in train_step inception relu; do
  timeout 100 stage/benches/$b --bench 'cuda:' --warm-up-time 1 --noplot >"$logs/bench-$b.log" 2>&1
  grep -E '^[A-Za-z].*(cuda:|/)|time:|thrpt:|skipped' "$logs/bench-$b.log" | grep -v 'Benchmarking' 
done

phase "4. PyTorch baseline (same GPU, same run)"
if [ "${SKIP_BASELINE:-0}" != 1 ]; then
  PYTHONUNBUFFERED=1 timeout 120 python3 scripts/baseline/pytorch_baseline.py data "$out/baseline.json" >"$logs/baseline.log" 2>&1
  tail -n 40 "$logs/baseline.log"
else
  echo "skipped (SKIP_BASELINE=1)"
fi

phase "5. one training step (batch 50) under ncu"
metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum
metrics=$metrics,smsp__sass_thread_inst_executed_op_ffma_pred_on.sum,smsp__sass_thread_inst_executed_op_fadd_pred_on.sum
metrics=$metrics,smsp__sass_thread_inst_executed_op_fmul_pred_on.sum
timeout 120 ncu --clock-control none --print-units base --csv --metrics "$metrics" \
  stage/examples/profile_step 50 0 1 >"$out/ncu.csv" 2>"$logs/ncu.err"
copy=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["copy_read_write_TBps"])' "$out/baseline.json" 2>/dev/null)
python3 scripts/ncu-summary.py "$out/ncu.csv" $copy | tee "$out/profile.md"
tail -n 3 "$logs/ncu.err"

phase "suite done (GPU tests and sanitizers: $([ $suite -eq 0 ] && echo all passed || echo FAILURES, see above))"
fi

if [ $do_train = 1 ]; then
  phase "train_mnist, default GPU schedule ${TRAIN_ARGS:-}"
  # shellcheck disable=SC2086
  timeout "${TRAIN_TIMEOUT:-540}" stage/examples/train_mnist --data data --out /tmp/run ${TRAIN_ARGS:-} 2>&1 \
    | tr '\r' '\n' | grep -v '^\s*$' | awk 'NR % 20 == 1 || /accuracy|steps in|error|device/'
  cp /tmp/run/log.jsonl "$out/train-log.jsonl" 2>/dev/null
  cp /tmp/run/curves.svg "$out/" 2>/dev/null
  if [ "${SCHEDULE:-0}" = 1 ]; then
    phase "PyTorch schedule (pytorch_baseline.py --schedule)"
    PYTHONUNBUFFERED=1 timeout 300 python3 scripts/baseline/pytorch_baseline.py data "$out/baseline-schedule.json" --schedule \
      | grep -A8 '"schedule"'
  fi
fi
phase "done"
exit $suite

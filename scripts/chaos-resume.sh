#!/usr/bin/env bash
# Chaos test of checkpoint units (issue 20): a small-net CPU run of train_mnist is SIGKILLed at 10 random
# moments (during steps, evaluations and checkpoint writes alike), each time resumed with --resume. Every
# resume must either continue the uninterrupted run bit for bit or refuse with a clear error:
#   - after each kill, the checkpoint the folder holds (its checkpoint.json's step s) must equal, file for
#     file (model and training state, byte for byte), an uninterrupted run of s steps;
#   - a resume that refuses must exit non-zero with an "error:" line (counted, and the run restarted);
#   - the run finally completed by resumes must end with the uninterrupted run's tensors, bit for bit, and
#     a log.jsonl holding each logged step once.
#
#   scripts/chaos-resume.sh [seed]        (CHAOS_KILLS, CHAOS_STEPS override the 10 kills and 40 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-20}
kills=${CHAOS_KILLS:-10}
steps=${CHAOS_STEPS:-40}
RANDOM=$seed

cargo build --release --example train_mnist --quiet
bin=target/release/examples/train_mnist
work=$(mktemp -d "${TMPDIR:-/tmp}/chaos-resume.XXXXXX")
trap 'rm -rf "$work"' EXIT
net=(--device cpu --map1 4 --map2 4 --reduce 2 --hidden 16 --checkpoint-every 1 --log-every 5 --seed 7)

# The uninterrupted run, timed: kills land anywhere in [0.2 s, its duration].
t0=$(date +%s%N)
"$bin" "${net[@]}" --steps "$steps" --out "$work/ref" >/dev/null 2>"$work/ref.err"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "uninterrupted run: $steps steps in $ms ms"

# The uninterrupted run's unit of step $1, made once per step (a run of $1 steps).
reference() {
  local s=$1
  if [ ! -d "$work/ref-$s" ]; then
    "$bin" "${net[@]}" --steps "$s" --out "$work/ref-$s" >/dev/null 2>"$work/ref-$s.err"
  fi
  echo "$work/ref-$s"
}

# Whether two safetensors files hold the same metadata and tensors, bit for bit (compared as parsed: the
# metadata's key order varies between processes). loss.pending, the losses not yet logged, is left out: at
# step s a run of s steps has just logged them, a longer run has not; log.jsonl's comparison covers it.
same_safetensors() {
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header, data = json.loads(b[8:8 + n]), b[8 + n:]
    out = {"__metadata__": header.pop("__metadata__", None)}
    for name, t in header.items():
        if name != "loss.pending":
            lo, hi = t["data_offsets"]
            out[name] = (t["dtype"], t["shape"], data[lo:hi])
    return out
sys.exit(0 if tensors(sys.argv[1]) == tensors(sys.argv[2]) else 1)
PY
}

# Compares the unit of folder $1 (at step $2) with the uninterrupted run's files of that step.
same_unit() {
  local dir=$1 s=$2 ref f
  ref=$(reference "$s")
  for f in $(printf 'model-%08d.safetensors train_state-%08d.safetensors' "$s" "$s"); do
    same_safetensors "$dir/$f" "$ref/$f" || { echo "FAIL: $dir/$f differs from the uninterrupted run's at step $s"; return 1; }
  done
}

manifest_step() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' "$1/checkpoint.json" 2>/dev/null || echo none
}

run=$work/run
resumes=0 refusals=0 fresh=0 checked=0 killed=0 attempt=0
while [ "$killed" -lt "$kills" ]; do
  attempt=$((attempt + 1))
  [ "$attempt" -le $((kills * 4)) ] || { echo "FAIL: only $killed kills in $attempt attempts"; exit 1; }
  s=$(manifest_step "$run")
  if [ "$s" != none ] && [ "$s" -lt "$steps" ]; then
    cmd=("$bin" --device cpu --resume "$run")
    what="a resume from step $s"
    resumes=$((resumes + 1))
    left_ms=$(( 500 + ms * 3 / 4 * (steps - s) / steps ))   # loading and the steps left
  else
    # No checkpoint yet, or a finished run: a new run in the same folder.
    cmd=("$bin" "${net[@]}" --steps "$steps" --out "$run" --overwrite)
    what="a new run"
    fresh=$((fresh + 1))
    left_ms=$(( ms * 3 / 4 ))   # the last quarter is mostly the test-set evaluation after the last step
  fi
  delay_ms=$(( 100 + (RANDOM * 32768 + RANDOM) % left_ms ))
  "${cmd[@]}" >"$work/out.$attempt" 2>"$work/err.$attempt" &
  pid=$!
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    killed=$((killed + 1))
    how="kill $killed: SIGKILL after $delay_ms ms of $what"
  else
    rc=0; wait "$pid" || rc=$?
    if [ "$rc" -ne 0 ]; then
      if grep -q '^error: ' "$work/err.$attempt"; then
        refusals=$((refusals + 1))
        echo "attempt $attempt: refused: $(grep '^error: ' "$work/err.$attempt")"
        rm -rf "$run"
        continue
      fi
      echo "FAIL: attempt $attempt: exit $rc without an error line"; cat "$work/err.$attempt"; exit 1
    fi
    how="(no kill: $what finished within $delay_ms ms)"
  fi
  s=$(manifest_step "$run")
  if [ "$s" = none ]; then
    echo "$how; no checkpoint yet"
  else
    same_unit "$run" "$s" || exit 1
    checked=$((checked + 1))
    echo "$how; the checkpoint left, step $s, equals the uninterrupted run's"
  fi
done

# Finish the run by resuming it, then compare with the uninterrupted run.
s=$(manifest_step "$run")
if [ "$s" != none ] && [ "$s" -lt "$steps" ]; then
  "$bin" --device cpu --resume "$run" >/dev/null 2>"$work/err.final" || { cat "$work/err.final"; echo "FAIL: the final resume failed"; exit 1; }
elif [ "$s" = none ]; then
  "$bin" "${net[@]}" --steps "$steps" --out "$run" --overwrite >/dev/null 2>"$work/err.final"
fi
same_unit "$run" "$steps" || exit 1
same_safetensors "$run/model.safetensors" "$work/ref/model.safetensors" || { echo "FAIL: model.safetensors differs"; exit 1; }
# The logged steps with their loss and validation accuracy (not the seconds), each step once.
log_points() {
  python3 -c 'import json,sys; print(" ".join("%d:%s:%s" % (d["step"], d["loss"], d["val_accuracy"]) for d in map(json.loads, open(sys.argv[1])) if "step" in d))' "$1"
}
logged=$(log_points "$run/log.jsonl")
want=$(log_points "$work/ref/log.jsonl")
[ "$logged" = "$want" ] || { echo "FAIL: log.jsonl has '$logged', the uninterrupted run '$want'"; exit 1; }
left=$(find "$run" -name '*.tmp-*' | wc -l)
echo "PASS: $killed kills (seed $seed): $resumes resumes, $fresh fresh starts, $refusals refusals; $checked checkpoints" \
     "equal to the uninterrupted run's; the finished run equals it bit for bit (log step:loss:val: $logged;" \
     "temporary files left: $left)"

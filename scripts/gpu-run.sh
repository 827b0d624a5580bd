#!/usr/bin/env bash
# Runs the staged binaries (scripts/stage-gpu.sh) on a machine with an NVIDIA GPU and only its driver:
#   1. every staged test binary with --ignored: every GPU test (they are the ignored ones; the CPU tests are
#      CI's job, and `--include-ignored` by hand runs both);
#   2. the small GPU tests (names containing `small_`: a few images, small channel counts) again under
#      compute-sanitizer --tool memcheck and --tool racecheck.
# Prints the pass/fail counts and the sanitizers' ERROR SUMMARY lines; logs go to $INCEPTION_CUDA_LOGS (default
# stage/logs). Each test binary gets 300 s, each sanitizer run 180 s (a hang is reported, not waited out).
# Exit status: non-zero if any test failed or a sanitizer reported an error.
#
#   scripts/gpu-run.sh [--no-sanitizers | --sanitizers-only]
# SANITIZER_SECS caps each sanitizer run (default 180 s); SANITIZER_DEADLINE (seconds since the epoch) stops
# starting new ones after it (the device round's time box): what did not run is listed as not run.
set -uo pipefail
cd "$(dirname "$0")/.."
export INCEPTION_CUDA_ROOT=$PWD   # tests read their fixtures (tests/golden) from the repo, not the build machine
logs=${INCEPTION_CUDA_LOGS:-stage/logs}
mkdir -p "$logs"
status=0
# A carried stage.tar.xz (scripts/stage-gpu.sh) is unpacked when stage/ is absent or older than it.
if [ -f stage.tar.xz ] && { [ ! -d stage/tests ] || [ stage.tar.xz -nt stage/MANIFEST ]; }; then
  rm -rf stage/tests stage/examples stage/benches && tar -xJf stage.tar.xz
fi
[ -d stage/tests ] || { echo "error: no stage/tests: run scripts/stage-gpu.sh on the build machine first" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'

if [ "${1:-}" != --sanitizers-only ]; then
echo "== 1. every GPU test (the ignored tests of each staged binary)"
passed=0 failed=0 ignored=0
for t in stage/tests/*; do
  name=$(basename "$t")
  timeout 300 "$t" --ignored >"$logs/test-$name.log" 2>&1
  rc=$?
  line=$(grep -E '^test result:' "$logs/test-$name.log" | tail -n 1)
  p=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$line"); f=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$line")
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  printf '%-14s %s\n' "$name" "${line:-no result (exit $rc)}"
  if [ $rc -ne 0 ]; then status=1; grep -E '^test .* FAILED$|panicked' "$logs/test-$name.log" | head -n 20 | sed 's/^/    /'; fi
done
echo "tests: $passed passed, $failed failed"
fi

if [ "${1:-}" != --no-sanitizers ]; then
  command -v compute-sanitizer >/dev/null || { echo "error: compute-sanitizer not on PATH" >&2; exit 2; }
  for tool in memcheck racecheck; do
    echo "== 2. compute-sanitizer --tool $tool on the small GPU tests"
    for t in stage/tests/*; do
      name=$(basename "$t")
      "$t" --include-ignored --list 2>/dev/null | grep -q 'small_gpu' || continue
      left=$(( ${SANITIZER_DEADLINE:-9999999999} - $(date +%s) ))
      if [ "$left" -lt 10 ]; then
        printf '%-14s %-10s NOT RUN (out of device time)\n' "$name" "$tool"; status=1; continue
      fi
      secs=${SANITIZER_SECS:-180}; [ "$left" -lt "$secs" ] && secs=$left
      timeout "$secs" compute-sanitizer --tool "$tool" --error-exitcode 99 "$t" --include-ignored --test-threads=1 small_gpu \
        >"$logs/$tool-$name.log" 2>&1
      rc=$?
      summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/$tool-$name.log" | tail -n 1)
      result=$(grep -E '^test result:' "$logs/$tool-$name.log" | tail -n 1)
      printf '%-14s %-10s %s | %s\n' "$name" "$tool" "${summary:-no summary (stopped after ${secs} s?)}" "${result:-no result}"
      [ $rc -eq 0 ] || status=1
    done
  done
fi
exit $status

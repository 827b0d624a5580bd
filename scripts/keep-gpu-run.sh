#!/usr/bin/env bash
# Files a device-suite run's summary under notes/gpu-runs/<date>-<gpu>-<n>/, so every figure quoted from the
# run can be traced to the log that holds it:
#
#   scripts/keep-gpu-run.sh FILES_AT          (the folder the device tool copied the run's $OUT into)
#
# Keeps suite.log, baseline*.json, modules.md, profile.md, ncu-*.csv, train-log.jsonl, curves.svg and, when it
# is under 400 KiB, logs.tar.gz (every phase's full log). The GPU's name comes from suite.log's device line
# (nvidia-smi); <date> is the day it is filed, <n> counts that day's runs on that GPU. Prints the folder; commit
# it with the change it measured.
set -euo pipefail
src=${1:?usage: scripts/keep-gpu-run.sh FILES_AT}
[ -f "$src/suite.log" ] || { echo "error: $src/suite.log not found (not a device-suite output folder?)" >&2; exit 2; }
src=$(cd "$src" && pwd)
cd "$(dirname "$0")/.."
# The line after "== [.. s] device" is nvidia-smi's "NVIDIA <name>, driver, ..." (anything else: no name).
gpu=$(awk '/^== \[[0-9]+ s\] device/{getline; print; exit}' "$src/suite.log" | grep '^NVIDIA ' | cut -d, -f1 |
  sed -E 's/^NVIDIA //; s/[^A-Za-z0-9]+/-/g; s/^-|-$//g' | tr 'A-Z' 'a-z' || true)
gpu=${gpu:-unknown-gpu}
day=$(date +%F)
n=1
while [ -e "notes/gpu-runs/$day-$gpu-$n" ]; do n=$((n + 1)); done
dst="notes/gpu-runs/$day-$gpu-$n"
mkdir -p "$dst"
for f in suite.log modules.md profile.md train-log.jsonl curves.svg; do
  [ -f "$src/$f" ] && cp "$src/$f" "$dst/"
done
for f in "$src"/baseline*.json "$src"/ncu-*.csv; do
  [ -f "$f" ] && cp "$f" "$dst/"
done
if [ -f "$src/logs.tar.gz" ] && [ "$(stat -c %s "$src/logs.tar.gz")" -lt 409600 ]; then
  cp "$src/logs.tar.gz" "$dst/"
fi
echo "$dst"
du -sh "$dst" | cut -f1 | sed 's/^/size: /'

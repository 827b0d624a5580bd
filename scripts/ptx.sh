#!/usr/bin/env bash
# The committed PTX (kernels/ptx/*.ptx) is what a build without nvcc embeds. It is build.rs's own output
# (same flags, relative paths), produced by the pinned nvcc 13.0.88:
#
#   scripts/ptx.sh regen   rebuild kernels/ptx/ from kernels/*.cu (commit the result)
#   scripts/ptx.sh check   fail, with the diff, when kernels/ptx/ differs from a fresh build (CI runs this)
#
# nvcc is found as build.rs finds it (NVCC, CUDA_HOME, CUDA_PATH, PATH); scripts/install-nvcc.sh installs it.
# PTX_COMMITTED_DIR overrides the directory compared against (CI's self-test uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
case $mode in regen|check) ;; *) echo "usage: scripts/ptx.sh regen|check" >&2; exit 2 ;; esac
committed=${PTX_COMMITTED_DIR:-kernels/ptx}

# Build the crate's build script with nvcc required, and ask cargo where it wrote the PTX.
out_dir=$(INCEPTION_CUDA_REQUIRE_NVCC=1 cargo check --lib --quiet --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "inception-cuda" in m.get("package_id", ""):
        print(m["out_dir"])
')
fresh=$out_dir/ptx
[ -d "$fresh" ] || { echo "error: no PTX under $fresh" >&2; exit 1; }
for f in "$fresh"/*.ptx; do
  grep -q '^// Cuda compilation tools, release 13.0, V13.0.88$' "$f" || {
    echo "error: $f was not built by the pinned nvcc 13.0.88 ($(grep -m1 'Cuda compilation tools' "$f"))" >&2
    exit 1
  }
done

if [ "$mode" = regen ]; then
  rm -f kernels/ptx/*.ptx
  cp "$fresh"/*.ptx kernels/ptx/
  echo "kernels/ptx/ regenerated: $(cd kernels/ptx && ls *.ptx | tr '\n' ' ')"
elif diff -ru "$committed" "$fresh"; then
  echo "committed PTX matches a fresh build ($(ls "$fresh" | wc -l) modules)"
else
  echo "error: the committed PTX in $committed is stale: run scripts/ptx.sh regen and commit kernels/ptx/" >&2
  exit 1
fi

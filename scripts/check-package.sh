#!/usr/bin/env bash
# The published package must build on its own: `cargo package` builds the packaged crate in isolation, here
# with nvcc hidden, so the build must find the committed PTX (kernels/ptx/) and bindings (src/bindings.rs,
# checked against kernels/args.h) in the package. CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
no_nvcc_path=$(tr ':' '\n' <<<"$PATH" | while read -r d; do [ -x "$d/nvcc" ] || printf '%s:' "$d"; done)
list=$(cargo package --list --allow-dirty)
for f in kernels/args.h src/bindings.rs $(ls kernels/ptx/*.ptx); do
  grep -qx "$f" <<<"$list" || { echo "error: the package lacks $f" >&2; exit 1; }
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! env -u NVCC -u CUDA_HOME -u CUDA_PATH -u INCEPTION_CUDA_REQUIRE_NVCC PATH="$no_nvcc_path" \
  cargo package --allow-dirty >"$log" 2>&1; then
  cat "$log"
  echo "error: the packaged crate does not build" >&2
  exit 1
fi
grep -q 'embedding the committed PTX' "$log" || { cat "$log"; echo "error: the package build did not embed the committed PTX" >&2; exit 1; }
echo "ok: the package holds kernels/args.h, src/bindings.rs and $(ls kernels/ptx/*.ptx | wc -l) committed PTX modules, and builds from them without nvcc"

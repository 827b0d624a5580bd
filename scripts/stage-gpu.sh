#!/usr/bin/env bash
# Builds, on a machine without a GPU, every test, example and bench binary the crate has (whatever targets
# exist now or later: cargo lists them) and stages them in stage/ at the repo root, next to data/, for a
# machine with only the NVIDIA driver (glibc >= 2.34 and libcuda are all they need). Then, on that machine,
# from the repo root: scripts/gpu-run.sh (see there).
#
#   scripts/stage-gpu.sh            stage/{tests,examples,benches}/<name>, stage/MANIFEST, and all of it
#                                   in stage.tar.xz (the thing to carry: a few MB)
#   PREV=<commit> scripts/stage-gpu.sh   also that commit's benches as stage/benches/<name>@prev (built in a
#                                   temporary worktree into target/prev), which scripts/device-suite.sh runs
#                                   right after ours: "not slower than the previous main" in one call
#
# Kernels: with nvcc (NVCC, CUDA_HOME, PATH) they are compiled fresh, else the committed PTX is embedded.
# The benches are built with `--features baselines` (cuDNN/cuBLAS side by side, loaded at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf stage
mkdir -p stage/tests stage/examples stage/benches
collect() { # $1: tests|examples|benches, $2: a suffix for the names; reads cargo's JSON messages, copies the
  # matching executables
  python3 -c '
import json, os, shutil, sys
kind, suffix = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    kinds = m.get("target", {}).get("kind", [])
    wanted = {"tests": m.get("profile", {}).get("test") and "bench" not in kinds,
              "examples": "example" in kinds, "benches": "bench" in kinds}[kind]
    if exe and wanted:
        name = m["target"]["name"] + suffix
        shutil.copy2(exe, os.path.join("stage", kind, name))
        print(f"stage/{kind}/{name}")
' "$@"
}
cargo test --release --features emulation --no-run --message-format=json 2>/dev/null | collect tests >>stage/MANIFEST
cargo build --release --examples --message-format=json 2>/dev/null | collect examples >>stage/MANIFEST
cargo bench --features baselines --no-run --message-format=json 2>/dev/null | collect benches >>stage/MANIFEST
if [ -n "${PREV:-}" ]; then
  prev_src=$(mktemp -d)/src
  git worktree add -q --detach "$prev_src" "$PREV"
  (cd "$prev_src" && CARGO_TARGET_DIR="$OLDPWD/target/prev" cargo bench --features baselines --no-run \
    --message-format=json 2>/dev/null) | collect benches @prev >>stage/MANIFEST
  git worktree remove --force "$prev_src"
  echo "PREV=$PREV ($(git rev-parse --short "$PREV"))" >stage/PREV
fi
# Only the test binaries with GPU tests travel (an ignored test whose name says gpu: `small_gpu_*`, `gpu_*`,
# `*::small_gpu`); the CPU and emulated tests are CI's. The tests are built with the emulation feature so that
# the GPU tests can compare the hardware with the emulator (gpu_kernels' mma layout test).
for t in stage/tests/*; do
  list=$("$t" --list --ignored 2>/dev/null || true)  # whole, so grep -q cannot cut the pipe short
  if ! grep -q 'gpu.*: test$' <<<"$list"; then
    rm "$t"
    grep -v "^$t\$" stage/MANIFEST >stage/MANIFEST.tmp && mv stage/MANIFEST.tmp stage/MANIFEST
  fi
done
# Symbols and debug sections off: the working tree and stage/ travel together under 64 MiB (panics keep
# their messages; backtraces lose function names).
strip stage/tests/* stage/examples/* stage/benches/*
# The commit the binaries were built from (dirty: with uncommitted changes), printed by the device suite, so a
# GPU run names what it measured and a stale stage shows.
echo "$(git describe --always --dirty) $(git log -1 --format='%cI %s' | cut -c1-100)" >stage/COMMIT
echo "staged $(wc -l <stage/MANIFEST) binaries in stage/ ($(du -sh stage | cut -f1)):"
sed 's/^/  /' stage/MANIFEST
# One solid xz archive to carry: every binary embeds the same PTX, which a solid archive stores once (56 MB of
# binaries in about 4 MB), far under the 64 MiB that travels with the working tree. scripts/device-suite.sh and
# scripts/gpu-run.sh unpack it when stage/ is absent or older.
rm -f stage.tar.xz
tar -cJf stage.tar.xz stage
echo "carry stage.tar.xz ($(du -h stage.tar.xz | cut -f1)), or stage/ itself"


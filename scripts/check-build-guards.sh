#!/usr/bin/env bash
# Shows that build.rs's guards catch what they should, on a scratch copy of the crate (the tree is untouched):
#   1. INCEPTION_CUDA_REQUIRE_NVCC=1 without nvcc fails and prints the pinned install command;
#   2. without nvcc (not strict) the build succeeds, warns, and embeds the committed PTX unchanged;
#   3. a committed PTX that differs from a fresh build fails `scripts/ptx.sh check`;
#   4. a kernel that does not compile fails the build with nvcc's message;
#   5. an nvcc newer than 13.0 gets a warning;
#   6. a kernel that spills registers fails scripts/ptxas-report.py unless kernels/spill-allowlist.txt lists it;
#   7. a field removed from kernels/args.h breaks the build: without regenerating the bindings (build.rs's stamp
#      check), and with them regenerated (the Rust code that sets the field no longer compiles).
# Needs the pinned nvcc in $NVCC (scripts/install-nvcc.sh); step 7's second half needs scripts/bindings.sh's
# pinned bindgen and libclang (installed on first use). CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
: "${NVCC:?set NVCC to the pinned nvcc (scripts/install-nvcc.sh prints it)}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export CARGO_TARGET_DIR=$root/target/build-guards   # dependencies are compiled once and reused
# PATH without any nvcc on it, and no CUDA_HOME/CUDA_PATH: "nvcc absent".
no_nvcc_path=$(tr ':' '\n' <<<"$PATH" | while read -r d; do [ -x "$d/nvcc" ] || printf '%s:' "$d"; done)

fresh_copy() {
  rm -rf "$scratch/crate"
  mkdir -p "$scratch/crate"
  cp -r Cargo.toml Cargo.lock build.rs src kernels benches examples tests README.md "$scratch/crate/"
}
# check [env ARGS...]: `cargo check` of the copy; stderr (warnings, errors) to log, JSON messages to json.
check() { (cd "$scratch/crate" && "$@" cargo check --lib --message-format=json) >"$scratch/json" 2>"$scratch/log"; }
out_dir() {
  python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "inception-cuda" in m.get("package_id", ""):
        print(m["out_dir"])' "$scratch/json"
}
no_nvcc=(-u NVCC -u CUDA_HOME -u CUDA_PATH PATH="$no_nvcc_path")
pass() { echo "ok: $*"; }
fail() { echo "FAILED: $*"; echo "--- output:"; cat "$scratch/log"; exit 1; }

fresh_copy
check env "${no_nvcc[@]}" INCEPTION_CUDA_REQUIRE_NVCC=1 && fail "1. strict build without nvcc succeeded"
grep -q 'nvidia-cuda-nvcc==13.0.88' "$scratch/log" || fail "1. strict error lacks the pinned install command"
pass "1. INCEPTION_CUDA_REQUIRE_NVCC=1 without nvcc fails:"
sed -n '/is set and nvcc was not found/,/install-nvcc.sh/p' "$scratch/log" | sed 's/^/       /'

check env -u INCEPTION_CUDA_REQUIRE_NVCC "${no_nvcc[@]}" || fail "2. build without nvcc failed"
grep -q 'nvcc not found: embedding the committed PTX' "$scratch/log" || fail "2. no warning about the committed PTX"
diff -r "$scratch/crate/kernels/ptx" "$(out_dir)/ptx" >/dev/null || fail "2. embedded PTX is not the committed copy"
pass "2. without nvcc: builds, warns, embeds the committed PTX unchanged"

echo '// stale' >>"$scratch/crate/kernels/ptx/relu.ptx"
if PTX_COMMITTED_DIR="$scratch/crate/kernels/ptx" scripts/ptx.sh check >"$scratch/log" 2>&1; then
  fail "3. ptx.sh check accepted a stale committed PTX"
fi
grep -q 'is stale' "$scratch/log" || fail "3. ptx.sh check failed without saying the PTX is stale"
pass "3. a stale committed PTX fails scripts/ptx.sh check"

fresh_copy
printf 'extern "C" __global__ void broken(float* y) { y[0] = undeclared_name; }\n' >"$scratch/crate/kernels/broken.cu"
check env INCEPTION_CUDA_REQUIRE_NVCC=1 && fail "4. a kernel with a compile error built"
grep -q 'nvcc failed to compile kernels/broken.cu' "$scratch/log" && grep -q 'undeclared_name' "$scratch/log" \
  || fail "4. the build error lacks nvcc's message"
pass "4. a kernel that does not compile fails the build with nvcc's message"

fresh_copy
cat >"$scratch/nvcc" <<WRAP
#!/usr/bin/env bash
# nvcc that claims to be 13.2 (and compiles with the real one)
if [ "\$1" = --version ]; then echo 'Cuda compilation tools, release 13.2, V13.2.51'; exit 0; fi
exec "$NVCC" "\$@"
WRAP
chmod +x "$scratch/nvcc"
check env NVCC="$scratch/nvcc" INCEPTION_CUDA_REQUIRE_NVCC=1 || fail "5. build with a newer nvcc failed"
grep -q 'newer than 13.0' "$scratch/log" || fail "5. no warning for nvcc 13.2"
pass "5. nvcc newer than 13.0 warns: R580 drivers reject its PTX"

fresh_copy
mkdir -p "$scratch/crate/scripts"
cp scripts/ptxas-report.py "$scratch/crate/scripts/"
# 64 live floats per thread under __launch_bounds__(1024, 2) (at most 32 registers): ptxas must spill.
cat >"$scratch/spill.cu" <<'CU'
extern "C" __global__ void __launch_bounds__(1024, 2) planted_spill(float* y, const float* x) {
  float a[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) a[i] = x[threadIdx.x * 64 + i];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 64; ++i)
#pragma unroll
    for (int j = 0; j < 64; ++j) s += a[i] * a[j] * (float)(i ^ j);
#pragma unroll
  for (int i = 0; i < 64; ++i) y[threadIdx.x * 64 + i] = a[i] * s;
}
CU
"$NVCC" --ptx -arch=compute_80 -o "$scratch/crate/kernels/ptx/planted_spill.ptx" "$scratch/spill.cu"
if "$scratch/crate/scripts/ptxas-report.py" >"$scratch/log" 2>&1; then
  fail "6. ptxas-report.py accepted a spilling kernel that is not allow-listed"
fi
grep -q 'planted_spill (sm_80)' "$scratch/log" || fail "6. the report does not name the spilling kernel"
echo 'planted_spill: deliberately register-starved (build-guard self-test)' >>"$scratch/crate/kernels/spill-allowlist.txt"
"$scratch/crate/scripts/ptxas-report.py" >"$scratch/log" 2>&1 || fail "6. an allow-listed spill still failed"
pass "6. a spilling kernel fails the ptxas report unless allow-listed with a reason"

fresh_copy
sed -i 's/unsigned int n, c_in, c_out, h, w, k, c_total, c_offset;/unsigned int n, c_in, c_out, h, w, k, c_total;/' \
  "$scratch/crate/kernels/args.h"
grep -q 'c_total;$' "$scratch/crate/kernels/args.h" || fail "7. could not remove ConvDims::c_offset from the copy"
check env INCEPTION_CUDA_REQUIRE_NVCC=1 && fail "7. a header changed without regenerating the bindings built"
grep -q 'run scripts/bindings.sh regen' "$scratch/log" || fail "7. the stale-bindings error does not say what to run"
pass "7a. a field removed from kernels/args.h, bindings not regenerated: the build fails (stale src/bindings.rs)"
mkdir -p "$scratch/crate/scripts"
cp scripts/bindings.sh "$scratch/crate/scripts/"
"$scratch/crate/scripts/bindings.sh" regen >"$scratch/log" 2>&1 || fail "7. bindings.sh regen failed on the copy"
check env INCEPTION_CUDA_REQUIRE_NVCC=1 && fail "7. the crate built without ConvDims::c_offset"
grep -q 'c_offset' "$scratch/log" || fail "7. the build error does not name the removed field"
pass "7b. ... and with the bindings regenerated, the Rust side that fills the field no longer compiles"

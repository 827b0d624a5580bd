#!/usr/bin/env bash
# Installs the pinned nvcc 13.0.88 from PyPI (no GPU or CUDA toolkit needed; about 271 MB) and prints the
# path of its nvcc, to be used as NVCC=... when building. Reuses an earlier install.
#
#   usage: scripts/install-nvcc.sh [DIR]
#   DIR defaults to $INCEPTION_CUDA_NVCC_DIR, else ~/.cache/inception-cuda/nvcc-13.0.88.
#
#   scripts/install-nvcc.sh --nvdisasm   installs the pinned nvdisasm 13.5.37 (the SASS disassembler of
#                                        scripts/sass-report.py; PyPI has none older than 13.2, and it only
#                                        reads the cubins ptxas 13.0 writes) beside it, and prints its path
#
# Pinned as DESIGN.md says: unpinned, pip mixes in nvvm 13.5, whose PTX drivers older than 13.5 reject.
set -euo pipefail
cache=${XDG_CACHE_HOME:-$HOME/.cache}/inception-cuda
if [ "${1:-}" = --nvdisasm ]; then
  ddir=$cache/nvdisasm-13.5.37
  nvdisasm=$ddir/nvidia/cu13/bin/nvdisasm
  if ! { [ -x "$nvdisasm" ] && "$nvdisasm" --version 2>/dev/null | grep -q 'V13\.5\.37'; }; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$ddir" \
      nvidia-cuda-nvdisasm==13.5.37 >&2
    chmod +x "$nvdisasm"
  fi
  "$nvdisasm" --version | grep -q 'V13\.5\.37' || { echo "error: $nvdisasm is not nvdisasm 13.5.37" >&2; exit 1; }
  echo "$nvdisasm"
  exit 0
fi
dir=${1:-${INCEPTION_CUDA_NVCC_DIR:-$cache/nvcc-13.0.88}}
nvcc=$dir/nvidia/cu13/bin/nvcc
if ! { [ -x "$nvcc" ] && "$nvcc" --version 2>/dev/null | grep -q 'V13\.0\.88'; }; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dir" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 >&2
fi
"$nvcc" --version | grep -q 'V13\.0\.88' || { echo "error: $nvcc is not nvcc 13.0.88" >&2; exit 1; }
echo "$nvcc"

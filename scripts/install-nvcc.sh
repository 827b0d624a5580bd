#!/usr/bin/env bash
# Installs the pinned nvcc 13.0.88 from PyPI (no GPU or CUDA toolkit needed; about 271 MB) and prints the
# path of its nvcc, to be used as NVCC=... when building. Reuses an earlier install.
#
#   usage: scripts/install-nvcc.sh [DIR]
#   DIR defaults to $INCEPTION_CUDA_NVCC_DIR, else ~/.cache/inception-cuda/nvcc-13.0.88.
#
# Pinned as DESIGN.md says: unpinned, pip mixes in nvvm 13.5, whose PTX drivers older than 13.5 reject.
set -euo pipefail
dir=${1:-${INCEPTION_CUDA_NVCC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inception-cuda/nvcc-13.0.88}}
nvcc=$dir/nvidia/cu13/bin/nvcc
if ! { [ -x "$nvcc" ] && "$nvcc" --version 2>/dev/null | grep -q 'V13\.0\.88'; }; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dir" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 >&2
fi
"$nvcc" --version | grep -q 'V13\.0\.88' || { echo "error: $nvcc is not nvcc 13.0.88" >&2; exit 1; }
echo "$nvcc"

#!/usr/bin/env bash
# Installs NVRTC and the CUDA runtime headers (cuda_fp16.h, cuda_bf16.h) from PyPI
# into .deps/pypi (no CUDA toolkit, no driver, no GPU needed), then prints the
# environment variables gacc reads:
#   GACC_NVRTC_LIB      full path of libnvrtc.so.*
#   GACC_CUDA_INCLUDE   folder holding cuda_fp16.h / cuda_bf16.h
# Idempotent: a second run with the packages present installs nothing.
# Usage: eval "$(scripts/install-cuda-deps.sh)"   (progress goes to stderr)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${GACC_DEPS_DIR:-$root/.deps/pypi}"
# CUDA 13 (NVRTC 13.5, about 135 MB; headers about 5 MB): cubins for sm_75 and newer,
# loaded by any CUDA 13 driver. For a CUDA 12 driver use nvidia-cuda-nvrtc-cu12 and
# nvidia-cuda-runtime-cu12 instead (a CUDA 13 cubin does not load on a 12.x driver).
NVRTC_PKG="nvidia-cuda-nvrtc==13.5.37"
RUNTIME_PKG="nvidia-cuda-runtime==13.5.37"

find_nvrtc() {
    find "$target" -name 'libnvrtc.so.*' ! -name '*builtins*' ! -name '*alt*' 2>/dev/null | sort | head -n 1
}
find_include() {
    local h
    h="$(find "$target" -name cuda_fp16.h 2>/dev/null | head -n 1)"
    [ -n "$h" ] && dirname "$h"
}

if [ -z "$(find_nvrtc)" ] || [ -z "$(find_include)" ]; then
    mkdir -p "$target"
    python3 -m pip install --disable-pip-version-check --no-deps --upgrade \
        --target "$target" "$NVRTC_PKG" "$RUNTIME_PKG" >&2
fi

lib="$(find_nvrtc)"
inc="$(find_include)"
if [ -z "$lib" ] || [ -z "$inc" ]; then
    echo "install-cuda-deps: libnvrtc or cuda_fp16.h not found under $target" >&2
    exit 1
fi
echo "export GACC_NVRTC_LIB=$lib"
echo "export GACC_CUDA_INCLUDE=$inc"

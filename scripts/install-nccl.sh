#!/usr/bin/env bash
# Installs the real NCCL from PyPI into .deps/nccl (no GPU needed): the nvidia-nccl-cu13
# wheel (libnccl.so.2 and nccl.h, about 240 MB) plus the headers nccl.h includes that
# scripts/install-cuda-deps.sh does not install (crt/host_config.h from
# nvidia-cuda-crt, nv/target from nvidia-cuda-cccl). Then prints the variables
# tests/nccl_real.rs reads:
#   GACC_TEST_NCCL_DIR   the wheel's nvidia/nccl folder (include/nccl.h, lib/libnccl.so.2)
#   GACC_REQUIRE_NCCL=1  the tests fail instead of saying "skipped"
# (GACC_NCCL_LIB is not exported: the other tests load a fake or no NCCL on purpose.)
# Idempotent. Usage: eval "$(scripts/install-nccl.sh)"   (progress goes to stderr)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${GACC_NCCL_DEPS_DIR:-$root/.deps/nccl}"
# The NCCL whose declarations docs/distributed.md says were checked.
PKGS=("nvidia-nccl-cu13==2.32.3" "nvidia-cuda-crt==13.5.37" "nvidia-cuda-cccl==13.3.5.0.6")

dir="$target/nvidia/nccl"
ready() {
    [ -f "$dir/include/nccl.h" ] && [ -f "$dir/lib/libnccl.so.2" ] &&
        [ -f "$target/nvidia/cu13/include/crt/host_config.h" ] && [ -e "$target/nvidia/cu13/include/nv/target" ]
}
if ! ready; then
    mkdir -p "$target"
    # One pip call: --target does not merge into an existing nvidia/ folder.
    python3 -m pip install --disable-pip-version-check --no-deps --upgrade --target "$target" "${PKGS[@]}" >&2
fi
if ! ready; then
    echo "install-nccl: nccl.h, libnccl.so.2 or the CUDA headers it needs not found under $target" >&2
    exit 1
fi
echo "export GACC_TEST_NCCL_DIR=$dir"
echo "export GACC_REQUIRE_NCCL=1"

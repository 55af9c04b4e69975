#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian machine with Rust, gcc and
# python3, then writes .deps/env.sh (source it) with the environment the tests use.
#   - Debian: make, g++, valgrind, libasan/libubsan/libtsan, golang-go, cmake, pkg-config,
#     patchelf, Open MPI (only what is missing; apt-get update first)
#   - PyPI into .deps/python: safetensors + numpy (checkpoints opened from Python)
#   - PyPI into build/pyenv: tree-sitter + tree-sitter-julia (Julia syntax check; optional)
#   - PyPI into .deps/pypi: NVRTC and the CUDA headers (scripts/install-cuda-deps.sh)
#   - PyPI into .deps/nccl: the real NCCL and nccl.h (scripts/install-nccl.sh)
#   - PyPI into .deps/deepspeed: DeepSpeed's sdist (about 2 MB, no dependencies), of which
#     the loss-scale tests load deepspeed/runtime/fp16/loss_scaler.py by path
#   - cargo-fuzz (cargo install), for scripts/fuzz.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p .deps
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have make || need+=(make)
have gcc || need+=(gcc)
have g++ || need+=(g++)
have valgrind || need+=(valgrind)
have go || need+=(golang-go)
have cmake || need+=(cmake)
have pkg-config || need+=(pkg-config)
have patchelf || need+=(patchelf)
have mpicc || need+=(openmpi-bin libopenmpi-dev)
if have gcc; then
    probe=$(mktemp -d)
    echo 'int main(void) { return 0; }' >"$probe/p.c"
    # ASan/UBSan (make sanitize) and TSan (make tsan-shim) come with libgcc-N-dev.
    { gcc -fsanitize=address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1 &&
        gcc -fsanitize=thread "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; } ||
        need+=("libgcc-$(gcc -dumpversion | cut -d. -f1)-dev")
    rm -rf "$probe"
fi
if [ "${#need[@]}" -gt 0 ]; then
    echo "install-test-deps: apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

python_env=$(scripts/install-python-deps.sh)

if [ ! -x build/pyenv/bin/python ] || ! build/pyenv/bin/python -c 'import tree_sitter, tree_sitter_julia' 2>/dev/null; then
    if python3 -m venv build/pyenv >/dev/null 2>&1 &&
        build/pyenv/bin/pip install -q tree-sitter tree-sitter-julia >/dev/null 2>&1; then
        echo "install-test-deps: tree-sitter-julia installed (Julia syntax check)"
    else
        echo "install-test-deps: tree-sitter-julia unavailable: the Julia syntax check will say SKIPPED"
    fi
fi

# DeepSpeed's loss scaler, the reference of GACC_LOSS_SCALE_DEEPSPEED (tests/support/cuda/
# loss_scale.rs). The sdist, not the wheel: no torch, nothing built. DEEPSPEED_VERSION
# pins another release.
deepspeed_py=""
if ! ls .deps/deepspeed/deepspeed-*/deepspeed/runtime/fp16/loss_scaler.py >/dev/null 2>&1; then
    mkdir -p .deps/deepspeed
    spec="deepspeed${DEEPSPEED_VERSION:+==$DEEPSPEED_VERSION}"
    if python3 -m pip download -q --no-deps --no-binary :all: "$spec" -d .deps/deepspeed >/dev/null 2>&1; then
        for t in .deps/deepspeed/deepspeed-*.tar.gz; do
            tar -xzf "$t" -C .deps/deepspeed --wildcards '*/deepspeed/runtime/fp16/loss_scaler.py'
        done
    else
        echo "install-test-deps: DeepSpeed sdist unavailable: the DeepSpeed loss-scale tests will say skipped"
    fi
fi
deepspeed_py=$(ls .deps/deepspeed/deepspeed-*/deepspeed/runtime/fp16/loss_scaler.py 2>/dev/null | sort -V | tail -1)

cuda_env=""
if [ -x scripts/install-cuda-deps.sh ]; then
    cuda_env=$(scripts/install-cuda-deps.sh)
fi

nccl_env=""
if [ -x scripts/install-nccl.sh ]; then
    nccl_env=$(scripts/install-nccl.sh)
fi

if ! have cargo-fuzz; then
    echo "install-test-deps: cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

{
    echo "# written by scripts/install-test-deps.sh"
    echo "$python_env"
    [ -n "$cuda_env" ] && echo "$cuda_env"
    echo "export GACC_REQUIRE_SAFETENSORS=1"
    [ -n "$deepspeed_py" ] && echo "export GACC_DEEPSPEED_LOSS_SCALER=$root/$deepspeed_py"
    [ -n "$deepspeed_py" ] && echo "export GACC_REQUIRE_DEEPSPEED=1"
    [ -n "$cuda_env" ] && echo "export GACC_REQUIRE_NVRTC=1"
    [ -n "$nccl_env" ] && echo "$nccl_env"
    true
} >.deps/env.sh
echo "install-test-deps: wrote .deps/env.sh"

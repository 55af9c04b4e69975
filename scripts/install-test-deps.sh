#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian machine with Rust, gcc and
# python3, then writes .deps/env.sh (source it) with the environment the tests use.
#   - Debian: make, g++, valgrind, libasan/libubsan/libtsan, golang-go, cmake, pkg-config,
#     patchelf, Open MPI (only what is missing; apt-get update first)
#   - PyPI into .deps/python: safetensors + numpy (checkpoints opened from Python)
#   - PyPI into build/pyenv: tree-sitter + tree-sitter-julia (Julia syntax check; optional)
#   - PyPI into .deps/pypi: NVRTC and the CUDA headers (scripts/install-cuda-deps.sh)
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

cuda_env=""
if [ -x scripts/install-cuda-deps.sh ]; then
    cuda_env=$(scripts/install-cuda-deps.sh)
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
    [ -n "$cuda_env" ] && echo "export GACC_REQUIRE_NVRTC=1"
    true
} >.deps/env.sh
echo "install-test-deps: wrote .deps/env.sh"

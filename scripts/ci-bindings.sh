#!/usr/bin/env bash
# CI entry for the bindings and packaging (called from .ci/run):
#   1. tools: golang-go, cmake, pkg-config, patchelf from Debian (only those missing);
#      tree-sitter-julia from PyPI into build/pyenv for the Julia syntax check
#      (best effort: without it that one check says SKIPPED)
#   2. make -f bindings/bindings.mk bindings-test package-test
# About 1-3 minutes on 2 cores once the Rust dependencies are compiled.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v patchelf >/dev/null 2>&1 || need+=(patchelf)
command -v c++ >/dev/null 2>&1 || need+=(g++)
if [ "${#need[@]}" -gt 0 ]; then
    echo "ci-bindings: apt-get install ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
go version
cmake --version | head -1

if [ ! -x build/pyenv/bin/python ] || ! build/pyenv/bin/python -c 'import tree_sitter, tree_sitter_julia' 2>/dev/null; then
    if python3 -m venv build/pyenv >/dev/null 2>&1 &&
       build/pyenv/bin/pip install -q tree-sitter tree-sitter-julia >/dev/null 2>&1; then
        echo "ci-bindings: tree-sitter-julia installed for the Julia syntax check"
    else
        echo "ci-bindings: could not install tree-sitter-julia; the Julia syntax check will say SKIPPED"
    fi
fi

make --no-print-directory -f bindings/bindings.mk bindings-test package-test
echo "ci-bindings: OK (the Julia tests themselves were not executed: no Julia toolchain; the binding was checked against gacc.h instead)"

#!/usr/bin/env bash
# Builds here, on a CPU machine, everything scripts/gpu-check.sh runs on a GPU machine
# that has no Rust toolchain, into one ignored folder (build/gpu-bundle; at most 60 MiB,
# checked at the end), every binary stripped:
#   lib/libgacc.so                   the library the C programs link to
#   tests/<name>                     cargo's test binaries of the CUDA tests (TESTS below:
#                                    tests/gpu.rs first), from `cargo test --no-run`
#   bench/gpu                        bench/gpu.rs, from `cargo bench --no-run`
#   c/test_*, c/demo                 the C tests and examples/demo.c, rpath $ORIGIN/../lib
#   fake/libcuda.so                  the fake driver (kernels/shim/fake_cuda.cpp) for
#                                    `scripts/gpu-check.sh --fake` on a machine without GPU
#   MANIFEST                         commit, toolchain, files and sizes
# The Rust test binaries hold the kernels (include_str!) and link gacc statically; they
# need NVRTC and the CUDA headers at run time (gpu-check.sh finds them). NVRTC is not
# bundled: libnvrtc.so.13 alone is 135 MiB.
# Usage: scripts/gpu-bundle.sh [OUT_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-build/gpu-bundle}"
limit_mib=60
# The test binaries that talk to a CUDA driver or NVRTC and can run on a GPU machine
# (tests/cuda_shim.rs, the fakes and tests/nvrtc_compile.rs read the source tree at run time: they
# belong to the CPU machine's suite).
TESTS=(gpu cuda_probe nccl_real)

rm -rf "$out"
mkdir -p "$out"/{lib,tests,bench,c,fake}

# cargo's JSON messages name each executable it built; keep the one for each target.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
'
}

echo "gpu-bundle: cargo build --release (libgacc.so)" >&2
cargo build --release --quiet
cp target/release/libgacc.so "$out/lib/"

test_args=()
for t in "${TESTS[@]}"; do test_args+=(--test "$t"); done
echo "gpu-bundle: cargo test --release --no-run ${test_args[*]}" >&2
cargo test --release --no-run --quiet --message-format=json "${test_args[@]}" | executables >"$out/.tests"
echo "gpu-bundle: cargo bench --no-run --bench gpu" >&2
cargo bench --no-run --quiet --message-format=json --bench gpu | executables >"$out/.bench"
while read -r name exe; do cp "$exe" "$out/tests/$name"; done <"$out/.tests"
while read -r name exe; do cp "$exe" "$out/bench/$name"; done <"$out/.bench"
rm -f "$out/.tests" "$out/.bench"
for t in "${TESTS[@]}"; do
    [ -x "$out/tests/$t" ] || { echo "gpu-bundle: cargo built no executable for tests/$t.rs" >&2; exit 1; }
done
[ -x "$out/bench/gpu" ] || { echo "gpu-bundle: cargo built no executable for bench/gpu.rs" >&2; exit 1; }

echo "gpu-bundle: the C tests and the demo" >&2
make --no-print-directory -s c-tests-build build/demo
cp build/c/test_* "$out/c/"
rm -f "$out"/c/*.log
cp build/demo "$out/c/demo"

# The fake driver, built like tests/fake_driver.rs builds it (tests/support/cuda/mod.rs:
# build_host_library), for --fake runs.
fake_src=kernels/shim/fake_cuda.cpp
[ -f "$fake_src" ] || fake_src=$(git ls-files '*fake_cuda.cpp' | head -n 1)
shim_src=kernels/shim/shim_main.cpp
[ -f "$shim_src" ] || shim_src=$(git ls-files '*shim_main.cpp' | head -n 1)
if [ -n "$fake_src" ] && [ -n "$shim_src" ] && command -v "${CXX:-g++}" >/dev/null 2>&1; then
    echo "gpu-bundle: the fake driver ($fake_src)" >&2
    "${CXX:-g++}" -std=c++20 -O1 -pthread -fPIC -shared -ffp-contract=off -Wall -Wextra -Werror \
        -Wl,-soname,libcuda.so -I kernels "$shim_src" "$fake_src" -ldl -o "$out/fake/libcuda.so"
else
    echo "gpu-bundle: no fake driver (source or g++ missing): --fake will not work" >&2
fi

strip --strip-unneeded "$out"/lib/*.so "$out"/fake/*.so 2>/dev/null || true
strip "$out"/tests/* "$out"/bench/* "$out"/c/*
# The C programs find libgacc.so next to them, wherever the bundle travels.
if command -v patchelf >/dev/null 2>&1; then
    for p in "$out"/c/*; do patchelf --set-rpath '$ORIGIN/../lib' "$p"; done
fi

{
    echo "gacc GPU bundle"
    dirty=$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo '?')$dirty"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    echo "rustc: $(rustc --version)"
    echo "tests: ${TESTS[*]}"
    echo "files:"
    (cd "$out" && find . -type f ! -name MANIFEST -printf '  %p %s\n' | sort)
} >"$out/MANIFEST"

bytes=$(du -sb "$out" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
if [ "$mib" -gt "$limit_mib" ]; then
    echo "gpu-bundle: $out is $mib MiB, over the $limit_mib MiB limit" >&2
    exit 1
fi
echo "gpu-bundle: $out: $(find "$out" -type f | wc -l) files, $mib MiB (limit $limit_mib MiB)" >&2

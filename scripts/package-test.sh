#!/usr/bin/env bash
# Installs gacc into a temporary prefix, moves the prefix elsewhere (the install must be
# relocatable), then builds consumers against the INSTALLED files only:
#   1. C, pkg-config, shared   (cc $(pkg-config --cflags --libs gacc))
#   2. C, pkg-config, static   (libgacc.a + Libs.private)
#   3. C, CMake find_package(gacc): gacc::gacc and gacc::gacc_static
#   4. the C++ wrapper tests and game-loop example, CMake with GACC_USE_INSTALLED=ON
# Every compile and link line is checked to name no path inside the source tree's
# include/ or target/.
#
# Usage: scripts/package-test.sh            (GACC_NO_BUILD=1: use target/release as is)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gacc-package-test.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
CC="${CC:-cc}"
say() { printf '\n== package-test: %s\n' "$*"; }
fail() { printf 'package-test: FAIL: %s\n' "$*" >&2; exit 1; }

# No compile or link line may reach into the source tree's include/ or target/.
no_tree_paths() {  # $1: a description, stdin: the commands
    if grep -E "$ROOT/(include|target)" >/dev/null; then fail "$1 uses the build tree"; fi
}

say "install into a staging prefix, then relocate it"
"$ROOT/scripts/install.sh" "$WORK/staged" >/dev/null
mv "$WORK/staged" "$WORK/prefix"
PREFIX="$WORK/prefix"
ls -l "$PREFIX/lib" | sed 's/^/  /'
soname="$(readelf -d "$PREFIX/lib/libgacc.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
[ "$soname" = "libgacc.so.0" ] || fail "SONAME is '$soname', expected libgacc.so.0"
for f in include/gacc.h include/gacc.hpp lib/libgacc.a lib/pkgconfig/gacc.pc \
         lib/cmake/gacc/gaccConfig.cmake lib/cmake/gacc/gaccConfigVersion.cmake; do
    [ -f "$PREFIX/$f" ] || fail "missing $f"
done
echo "  SONAME $soname; all files present"

mkdir -p "$WORK/consumer"
cp "$ROOT/bindings/package-test/consumer.c" "$ROOT/bindings/package-test/CMakeLists.txt" "$WORK/consumer/"
cd "$WORK/consumer"
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"

say "C consumer via pkg-config (shared)"
pkg-config --exists --print-errors "gacc >= 0.1"
echo "  pkg-config gacc: version $(pkg-config --modversion gacc); $(pkg-config --cflags --libs gacc)"
libdir="$(pkg-config --variable=libdir gacc)"
cmd="$CC -std=c99 -Wall -Wextra -Werror consumer.c $(pkg-config --cflags --libs gacc) -lm -Wl,-rpath,$libdir -o consumer_pc_shared"
echo "$cmd" | no_tree_paths "pkg-config shared"
$cmd
readelf -d consumer_pc_shared | grep -q 'NEEDED.*\[libgacc.so.0\]' || fail "consumer_pc_shared does not need libgacc.so.0"
./consumer_pc_shared

say "C consumer via pkg-config (static)"
static_deps="$(pkg-config --static --libs-only-l gacc | sed 's/-lgacc//')"
cmd="$CC -std=c99 -Wall -Wextra -Werror consumer.c $(pkg-config --cflags gacc) $(pkg-config --libs-only-L gacc) -Wl,-Bstatic -lgacc -Wl,-Bdynamic $static_deps -o consumer_pc_static"
echo "$cmd" | no_tree_paths "pkg-config static"
echo "  $cmd"
$cmd
if readelf -d consumer_pc_static | grep -q 'NEEDED.*libgacc'; then fail "consumer_pc_static links libgacc dynamically"; fi
./consumer_pc_static

say "C consumer via CMake find_package(gacc) (gacc::gacc and gacc::gacc_static)"
cmake -S . -B build -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >cmake.log \
    || { cat cmake.log; fail "cmake configure"; }
grep 'gacc 0' cmake.log | sed 's/^/  /'
cmake --build build --verbose 2>&1 >build.log || { cat build.log; fail "cmake build"; }
no_tree_paths "CMake consumer" < build.log
if readelf -d build/consumer_static | grep -q 'NEEDED.*libgacc'; then fail "consumer_static links libgacc dynamically"; fi
readelf -d build/consumer_shared | grep -q 'NEEDED.*\[libgacc.so.0\]' || fail "consumer_shared does not need libgacc.so.0"
(cd build && ctest --output-on-failure)

say "find_package(gacc) version checks"
mkdir -p vercheck
cat > vercheck/CMakeLists.txt <<'CM'
cmake_minimum_required(VERSION 3.16)
project(v NONE)
find_package(gacc ${WANT} CONFIG QUIET)
message(STATUS "WANT=${WANT} FOUND=${gacc_FOUND}")
CM
found() { cmake -S vercheck -B "vercheck/b$1" -DWANT="$1" -DCMAKE_PREFIX_PATH="$PREFIX" | sed -n 's/.*FOUND=//p'; }
for want in "" 0.1 0.1.0; do
    [ "$(found "$want")" = 1 ] || fail "find_package(gacc $want) not found"
done
for want in 0.2 1.0; do
    [ "$(found "$want")" = 0 ] || fail "find_package(gacc $want) should not accept $(pkg-config --modversion gacc)"
done
echo "  accepts: any, 0.1, 0.1.0; refuses: 0.2, 1.0"

say "C++ wrapper tests and example against the installed package"
cmake -S "$ROOT/bindings/cpp" -B cpp -DGACC_USE_INSTALLED=ON -DCMAKE_PREFIX_PATH="$PREFIX" >cpp-cmake.log \
    || { cat cpp-cmake.log; fail "cmake configure (C++)"; }
cmake --build cpp --verbose -j2 2>&1 >cpp-build.log || { cat cpp-build.log; fail "cmake build (C++)"; }
no_tree_paths "C++ tests (installed)" < cpp-build.log
(cd cpp && ctest --output-on-failure)

if command -v go >/dev/null 2>&1; then
    say "Go binding against the installed package (-tags gacc_pkgconfig)"
    export GOCACHE="${GOCACHE:-$ROOT/build/go-cache}" GOPATH="${GOPATH:-$ROOT/build/gopath}" GOFLAGS=-mod=mod
    (cd "$ROOT/bindings/go" && CGO_LDFLAGS="-Wl,-rpath,$PREFIX/lib" \
        go test -tags gacc_pkgconfig -c -o "$WORK/consumer/gacc-go.test" .)
    # The build tree's libgacc.so has no SONAME: NEEDED libgacc.so.0 proves the
    # installed library was linked.
    readelf -d gacc-go.test | grep -q 'NEEDED.*\[libgacc.so.0\]' || fail "Go test binary did not link the installed libgacc"
    ./gacc-go.test
else
    say "SKIPPED: Go binding against the installed package (no go toolchain)"
fi

say "OK: installed gacc works through pkg-config and find_package(gacc), shared and static"

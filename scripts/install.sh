#!/usr/bin/env bash
# Installs gacc the way a C/C++/Go user expects to find it, an equivalent of
# `cargo cinstall` that needs nothing but cargo, a C toolchain and patchelf:
#
#   PREFIX/lib/libgacc.so.X.Y.Z      the cdylib, SONAME libgacc.so.X
#   PREFIX/lib/libgacc.so.X          -> libgacc.so.X.Y.Z   (what programs load)
#   PREFIX/lib/libgacc.so            -> libgacc.so.X       (what -lgacc finds)
#   PREFIX/lib/libgacc.a             the staticlib
#   PREFIX/include/gacc.h            the C header
#   PREFIX/include/gacc.hpp          the header-only C++ wrapper (bindings/cpp)
#   PREFIX/lib/pkgconfig/gacc.pc     pkg-config (Libs.private: the staticlib's deps)
#   PREFIX/lib/cmake/gacc/gaccConfig.cmake, gaccConfigVersion.cmake
#                                    find_package(gacc): gacc::gacc, gacc::gacc_static
#
# Usage: scripts/install.sh [PREFIX]        (default /usr/local; DESTDIR is honoured)
#   GACC_NO_BUILD=1   install what target/release holds, without running cargo
#
# The SONAME is written into the installed copy only (patchelf), never into
# target/release/libgacc.so: programs linked against the build tree record the
# NEEDED name "libgacc.so", which exists there; with a SONAME they would look for
# libgacc.so.0 and fail to start. Without patchelf the script relinks the cdylib
# once with -Wl,-soname in a separate target directory (target/install).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${1:-${PREFIX:-/usr/local}}"
case "$PREFIX" in /*) ;; *) PREFIX="$(pwd)/$PREFIX" ;; esac
DEST="${DESTDIR:-}${PREFIX}"

VERSION="$(sed -n 's/^version *= *"\([0-9.]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -1)"
MAJOR="${VERSION%%.*}"
SONAME="libgacc.so.${MAJOR}"
REAL="libgacc.so.${VERSION}"

# What the staticlib needs from the system, as `cargo rustc --crate-type staticlib --
# --print native-static-libs` reports it for x86_64-unknown-linux-gnu (checked by
# the static consumers in scripts/package-test.sh).
NATIVE_STATIC_LIBS="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

say() { printf 'install.sh: %s\n' "$*"; }

if [ -z "${GACC_NO_BUILD:-}" ]; then
    say "cargo build --release"
    (cd "$ROOT" && cargo build --release --lib)
fi
SRC_SO="$ROOT/target/release/libgacc.so"
SRC_A="$ROOT/target/release/libgacc.a"
for f in "$SRC_SO" "$SRC_A" "$ROOT/include/gacc.h" "$ROOT/bindings/cpp/gacc.hpp"; do
    [ -f "$f" ] || { echo "install.sh: missing $f (build first)" >&2; exit 1; }
done

install -d "$DEST/lib" "$DEST/include" "$DEST/lib/pkgconfig" "$DEST/lib/cmake/gacc"

# Shared library with a SONAME.
if command -v patchelf >/dev/null 2>&1; then
    install -m 0755 "$SRC_SO" "$DEST/lib/$REAL"
    patchelf --set-soname "$SONAME" "$DEST/lib/$REAL"
else
    say "patchelf not found: relinking the cdylib with -Wl,-soname,$SONAME (target/install)"
    (cd "$ROOT" && cargo rustc --release --lib --crate-type cdylib --target-dir target/install \
        -- -C "link-arg=-Wl,-soname,$SONAME")
    install -m 0755 "$ROOT/target/install/release/libgacc.so" "$DEST/lib/$REAL"
fi
ln -sfn "$REAL" "$DEST/lib/$SONAME"
ln -sfn "$SONAME" "$DEST/lib/libgacc.so"
install -m 0644 "$SRC_A" "$DEST/lib/libgacc.a"
install -m 0644 "$ROOT/include/gacc.h" "$DEST/include/gacc.h"
install -m 0644 "$ROOT/bindings/cpp/gacc.hpp" "$DEST/include/gacc.hpp"

# pkg-config. Paths are written relative to ${pcfiledir} so that the tree can be moved
# (or staged with DESTDIR) and still be found.
cat > "$DEST/lib/pkgconfig/gacc.pc" <<PC
prefix=\${pcfiledir}/../..
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: gacc
Description: Gradient accumulation engine with a C ABI (fp32 accumulators, loss scaling, clipping, SGD/AdamW)
URL: https://github.com/gacc/gacc
Version: ${VERSION}
Libs: -L\${libdir} -lgacc
Libs.private: ${NATIVE_STATIC_LIBS}
Cflags: -I\${includedir}
PC

# CMake package. Hand-written (no cmake needed at install time) and relocatable.
cat > "$DEST/lib/cmake/gacc/gaccConfig.cmake" <<'CM'
# find_package(gacc) support, written by scripts/install.sh.
#   gacc::gacc         the shared library (libgacc.so.MAJOR), with include/ for gacc.h
#                      and gacc.hpp (the C++ wrapper needs C++17; std::span with C++20)
#   gacc::gacc_static  the static library, with its system dependencies
# Also sets gacc_INCLUDE_DIR and gacc_LIBRARY.
cmake_minimum_required(VERSION 3.5)
get_filename_component(_gacc_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)

if(NOT TARGET gacc::gacc)
  add_library(gacc::gacc SHARED IMPORTED)
  set_target_properties(gacc::gacc PROPERTIES
    IMPORTED_LOCATION "${_gacc_prefix}/lib/@REAL@"
    IMPORTED_SONAME "@SONAME@"
    INTERFACE_INCLUDE_DIRECTORIES "${_gacc_prefix}/include")
endif()

if(NOT TARGET gacc::gacc_static)
  add_library(gacc::gacc_static STATIC IMPORTED)
  set_target_properties(gacc::gacc_static PROPERTIES
    IMPORTED_LOCATION "${_gacc_prefix}/lib/libgacc.a"
    IMPORTED_LINK_INTERFACE_LANGUAGES "C"
    INTERFACE_INCLUDE_DIRECTORIES "${_gacc_prefix}/include"
    # The Rust standard library's system dependencies (Libs.private in gacc.pc).
    INTERFACE_LINK_LIBRARIES "gcc_s;util;rt;pthread;m;dl")
endif()

set(gacc_INCLUDE_DIR "${_gacc_prefix}/include")
set(gacc_LIBRARY "${_gacc_prefix}/lib/@REAL@")
unset(_gacc_prefix)
CM
sed -i -e "s/@REAL@/$REAL/g" -e "s/@SONAME@/$SONAME/g" "$DEST/lib/cmake/gacc/gaccConfig.cmake"

# Version file: 0.x releases are compatible within the same minor (Cargo's rule),
# later ones within the same major.
cat > "$DEST/lib/cmake/gacc/gaccConfigVersion.cmake" <<CV
set(PACKAGE_VERSION "${VERSION}")
set(PACKAGE_VERSION_COMPATIBLE FALSE)
set(PACKAGE_VERSION_EXACT FALSE)
if(NOT PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  string(REGEX MATCH "^([0-9]+)\\\\.([0-9]+)" _gacc_mm "\${PACKAGE_VERSION}")
  set(_gacc_major "\${CMAKE_MATCH_1}")
  set(_gacc_minor "\${CMAKE_MATCH_2}")
  if(_gacc_major EQUAL 0)
    if(PACKAGE_FIND_VERSION_MAJOR EQUAL 0 AND PACKAGE_FIND_VERSION_MINOR EQUAL _gacc_minor)
      set(PACKAGE_VERSION_COMPATIBLE TRUE)
    endif()
  elseif(PACKAGE_FIND_VERSION_MAJOR EQUAL _gacc_major)
    set(PACKAGE_VERSION_COMPATIBLE TRUE)
  endif()
  if(PACKAGE_FIND_VERSION VERSION_EQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
# A 64-bit library: refuse a 32-bit consumer.
if(CMAKE_SIZEOF_VOID_P AND NOT CMAKE_SIZEOF_VOID_P EQUAL 8)
  set(PACKAGE_VERSION "\${PACKAGE_VERSION} (64bit)")
  set(PACKAGE_VERSION_UNSUITABLE TRUE)
endif()
CV

say "installed gacc $VERSION into $DEST"

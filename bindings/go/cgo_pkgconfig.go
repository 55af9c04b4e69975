//go:build gacc_pkgconfig

package gacc

// With -tags gacc_pkgconfig: an installed gacc (scripts/install.sh PREFIX), found
// through PKG_CONFIG_PATH=PREFIX/lib/pkgconfig. At run time the loader must find
// libgacc.so.0: install into a standard directory, set LD_LIBRARY_PATH, or add
// CGO_LDFLAGS=-Wl,-rpath,PREFIX/lib.

/*
#cgo pkg-config: gacc
*/
import "C"

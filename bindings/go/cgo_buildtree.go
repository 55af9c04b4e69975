//go:build !gacc_pkgconfig

package gacc

// Default: link the library of this source tree (cargo build --release), with an
// rpath so that tests and examples run without LD_LIBRARY_PATH. Build with
// -tags gacc_pkgconfig to use an installed gacc found by pkg-config instead.

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -lgacc -Wl,-rpath,${SRCDIR}/../../target/release
*/
import "C"

# Bindings and packaging targets. The root Makefile includes this file:
#
#     include bindings/bindings.mk
#
# and it also works alone: make -f bindings/bindings.mk <target>.
#
#   install          scripts/install.sh $(PREFIX)  (lib, header, gacc.hpp, pkg-config, CMake package)
#   bindings-test    C++ tests + game-loop example (CMake/CTest), go vet + go test + Go example,
#                    the Julia ccall layer's freshness check with its self-test (and a syntax check if available)
#   package-test     install into a temporary prefix; build C, C++ and Go consumers against
#                    the installed files only (pkg-config and find_package(gacc))
#
# Variables: PREFIX (default /usr/local), DESTDIR, CARGO, CMAKE, CTEST, GO, PYTHON.

# Keep whatever default goal the including Makefile has (or will have).
_gacc_bindings_saved_goal := $(.DEFAULT_GOAL)

GACC_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
PREFIX ?= /usr/local
CARGO ?= cargo
CMAKE ?= cmake
CTEST ?= ctest
GO ?= go
PYTHON ?= python3
GACC_BINDINGS_BUILD := $(GACC_ROOT)/build/bindings
# Go needs a writable cache; keep it (and GOPATH) inside build/. No network: the Go
# module has no dependencies.
GACC_GO_ENV := GOCACHE="$${GOCACHE:-$(GACC_ROOT)/build/go-cache}" GOPATH="$${GOPATH:-$(GACC_ROOT)/build/gopath}" \
               GOFLAGS=-mod=mod GOPROXY=off
# tree-sitter-julia for the Julia syntax check, when scripts/install-test-deps.sh installed it.
GACC_JULIA_SYNTAX_PY := $(firstword $(wildcard $(GACC_ROOT)/build/pyenv/bin/python) $(PYTHON))

.PHONY: install bindings-test package-test gacc-release \
        bindings-test-cpp bindings-test-go bindings-check-julia

gacc-release:
	cd "$(GACC_ROOT)" && $(CARGO) build --release --lib

install:
	DESTDIR="$(DESTDIR)" "$(GACC_ROOT)/scripts/install.sh" "$(PREFIX)"

bindings-test: bindings-test-cpp bindings-test-go bindings-check-julia

bindings-test-cpp: gacc-release
	$(CMAKE) -S "$(GACC_ROOT)/bindings/cpp" -B "$(GACC_BINDINGS_BUILD)/cpp" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	$(CMAKE) --build "$(GACC_BINDINGS_BUILD)/cpp" -j2
	cd "$(GACC_BINDINGS_BUILD)/cpp" && $(CTEST) --output-on-failure

bindings-test-go: gacc-release
	cd "$(GACC_ROOT)/bindings/go" && $(GACC_GO_ENV) $(GO) vet ./...
	cd "$(GACC_ROOT)/bindings/go" && $(GACC_GO_ENV) $(GO) test -count=1 -v ./...
	cd "$(GACC_ROOT)/bindings/go" && $(GACC_GO_ENV) $(GO) run ./example

bindings-check-julia:
	$(PYTHON) "$(GACC_ROOT)/scripts/gen_julia_ccalls.py" --check
	$(PYTHON) "$(GACC_ROOT)/scripts/gen_julia_ccalls.py" --self-test
	$(GACC_JULIA_SYNTAX_PY) "$(GACC_ROOT)/scripts/gen_julia_ccalls.py" --syntax
	@echo "NOTE: the Julia binding's own tests (bindings/julia/test/runtests.jl) were NOT executed: no Julia toolchain here."

package-test: gacc-release
	GACC_NO_BUILD=1 "$(GACC_ROOT)/scripts/package-test.sh"

.DEFAULT_GOAL := $(_gacc_bindings_saved_goal)

# gacc: build, demo and every test.
#
#   make demo          build the library and run examples/demo.c (the main job)
#   make check         every test: installs what is missing (scripts/install-test-deps.sh),
#                      then test, sanitize, valgrind and fuzz (scripts/test.sh); CI runs this
#   make example-inplace  examples/inplace.c: a backward that adds into gacc's accumulator
#   make test          every target in TEST_TARGETS (needs the dependencies), then one closing
#                      line "N passed, N failed" for the C programs; non-zero on any failure
#   make rust-test     cargo test --release (the whole Rust suite)
#   make c-tests       build and run every tests/c/test_*.c
#   make header-check  include/gacc.h as C99, C11 and C++17, -Wall -Wextra -Wpedantic -Werror
#   make readme-check  the C example in README.md compiles (-Werror) and runs
#   make sanitize      the C tests with AddressSanitizer + UBSan (+ LeakSanitizer)
#   make tsan-shim     every kernel through the host shim under ThreadSanitizer: zero
#                      reports, and an injected race (plain atomics) must be reported
#   make valgrind      the C tests under valgrind memcheck
#   make mpi-test      data parallelism over MPI, 2 and 3 ranks
#   make fuzz          each cargo-fuzz target for FUZZ_SECONDS (default 30)
#   make lint          cargo fmt --check, then cargo clippy --all-targets -D warnings
#   make product-check the shipped library (cargo build --release) holds no test machinery
#                      (the host shim of the test-support feature): nm of libgacc.a
#   make install       PREFIX=/usr/local: library, headers, pkg-config, CMake package
#   make gpu-bundle    build/gpu-bundle: what scripts/gpu-check.sh runs on a GPU machine
#   make gpu-check-fake  the bundle built, then scripts/gpu-check.sh --fake (no GPU needed)
#   bindings-test, package-test: see bindings/bindings.mk
#
#
# Other engineers add test targets by appending to TEST_TARGETS, e.g.
#   TEST_TARGETS += bindings-test
# Each target must exit non-zero on failure; `make test` runs them all (it does not stop
# at the first failure) and fails if any failed.

CARGO    ?= cargo
CC       ?= cc
CXX      ?= c++
BUILD    ?= build
LIBDIR   := $(CURDIR)/target/release
LIB      := $(LIBDIR)/libgacc.so
HEADER   := include/gacc.h

C_STD_FLAGS := -std=c11 -Wall -Wextra -Werror
CFLAGS      ?= -O2 -g
CPPFLAGS    += -Iinclude -Itests/c
# rpath: the programs find libgacc.so without LD_LIBRARY_PATH.
LDLIBS_GACC := -L$(LIBDIR) -Wl,-rpath,$(LIBDIR) -lgacc -lpthread -lm

SAN_FLAGS   := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
VALGRIND    ?= valgrind
# Definite leaks fail. "Possibly lost" does not: the CPU backend's global thread pool
# (src/backend/cpu/pool.rs, started by the first large pass, e.g.
# tests/c/test_parallel_path.c) is never joined, so each
# worker's thread-local block (glibc allocate_dtv under pthread_create, 288 bytes per
# thread) is still in use at exit and valgrind can only call it "possibly lost".
VALGRIND_FLAGS ?= --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
                  --show-leak-kinds=definite --quiet

TEST_TARGETS ?= rust-test product-check lint header-check readme-check c-tests bindings-test package-test mpi-test tsan-shim
FUZZ_SECONDS ?= 30
TEST_TARGETS += example-inplace

C_TEST_SRCS  := $(sort $(wildcard tests/c/test_*.c))
C_TEST_NAMES := $(patsubst tests/c/%.c,%,$(C_TEST_SRCS))
C_TEST_BINS  := $(addprefix $(BUILD)/c/,$(C_TEST_NAMES))
C_SAN_BINS   := $(addprefix $(BUILD)/c-san/,$(C_TEST_NAMES))
C_HELPERS    := tests/c/check.h tests/c/mlp.h tests/c/half.h

.PHONY: FORCE all lib demo check example-inplace test mpi-test fuzz lint product-check rust-test c-tests c-tests-build c-san-build header-check readme-check sanitize valgrind tsan-shim clean

all: lib

# Cargo always runs (it knows every input: sources, kernels, features) and is a fast
# no-op when nothing changed; make re-reads the library's time afterwards, so the C
# programs are relinked only when cargo actually rewrote it.
lib: $(LIB)
$(LIB): FORCE
	$(CARGO) build --release
FORCE:

# ---- the main job ----------------------------------------------------------------

$(BUILD)/demo: examples/demo.c $(C_HELPERS) $(HEADER) $(LIB) | $(BUILD)
	$(CC) $(C_STD_FLAGS) $(CFLAGS) $(CPPFLAGS) $< -o $@ $(LDLIBS_GACC)

demo: $(BUILD)/demo
	./$(BUILD)/demo

# The in-place example: a backward whose weight-gradient GEMMs (beta = 1) write into
# gacc_accumulator_ptr, checked against the per-tensor call (part of make test).
$(BUILD)/inplace: examples/inplace.c $(HEADER) $(LIB) | $(BUILD)
	$(CC) $(C_STD_FLAGS) $(CFLAGS) $(CPPFLAGS) $< -o $@ $(LDLIBS_GACC)

example-inplace: $(BUILD)/inplace
	./$(BUILD)/inplace

# ---- tests ---------------------------------------------------------------------------

# Every test on a fresh machine: the one command a newcomer (and CI) types.
check:
	scripts/test.sh

test:
	@rm -f $(BUILD)/c-tests.summary; failed=""; \
	for t in $(TEST_TARGETS); do \
	  echo "==> make $$t"; \
	  if $(MAKE) --no-print-directory $$t; then echo "==> $$t: ok"; \
	  else echo "==> $$t: FAILED"; failed="$$failed $$t"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "make test: failed targets:$$failed"; fi; \
	if [ -f $(BUILD)/c-tests.summary ]; then cat $(BUILD)/c-tests.summary; \
	else echo "0 passed, $(words $(C_TEST_NAMES)) failed"; fi; \
	[ -z "$$failed" ]

# PYTHONPATH: the safetensors package scripts/install-python-deps.sh put in .deps/python
# (tests/checkpoint.rs opens a checkpoint with it).
rust-test:
	PYTHONPATH="$(CURDIR)/.deps/python$${PYTHONPATH:+:$$PYTHONPATH}" $(CARGO) test --release

# Data parallelism over MPI on 2 and 3 ranks (builds with --features mpi).
mpi-test:
	scripts/test-mpi.sh

# Each cargo-fuzz target for FUZZ_SECONDS.
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

# The test-support feature (the host shim, the accessors tests inspect) is on only for
# tests, benches and examples (Cargo.toml's self dev-dependency). libgacc.a keeps every
# object (the .so's linker drops unreachable code, so it would pass either way): it
# must name no shim type, and must name CudaRuntime, so that nm is known to see symbols.
product-check: lib | $(BUILD)
	nm -C $(LIBDIR)/libgacc.a 2>/dev/null >$(BUILD)/libgacc.syms
	@grep -q 'CudaRuntime' $(BUILD)/libgacc.syms || { echo "product-check: nm shows no CudaRuntime in libgacc.a"; exit 1; }
	@if grep -m3 -E 'ShimRuntime|ShimLibrary|ShimStats' $(BUILD)/libgacc.syms; then \
	  echo "product-check: libgacc.a holds the host shim (test-support)"; exit 1; fi
	@echo "product-check: libgacc.a holds no test-support code"

# clippy on every target, warnings as errors.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

$(BUILD) $(BUILD)/c $(BUILD)/c-san $(BUILD)/header:
	@mkdir -p $@

$(BUILD)/c/%: tests/c/%.c $(C_HELPERS) $(HEADER) $(LIB) | $(BUILD)/c
	$(CC) $(C_STD_FLAGS) $(CFLAGS) $(CPPFLAGS) $< -o $@ $(LDLIBS_GACC)

$(BUILD)/c-san/%: tests/c/%.c $(C_HELPERS) $(HEADER) $(LIB) | $(BUILD)/c-san
	$(CC) $(C_STD_FLAGS) $(CFLAGS) $(SAN_FLAGS) $(CPPFLAGS) $< -o $@ $(LDLIBS_GACC)

c-tests-build: $(C_TEST_BINS)
c-san-build: $(C_SAN_BINS)

# Programs are built with -k and stale binaries removed first, so that one that does not
# compile counts as failed (the runner reports it) while the others still run. The
# runner prints one line per program and the closing "N passed, N failed".
c-tests: $(LIB)
	@rm -f $(C_TEST_BINS) $(BUILD)/c-tests.summary
	-@$(MAKE) --no-print-directory -k c-tests-build
	@sh tests/c/run.sh $(BUILD)/c-tests.summary "" $(C_TEST_BINS)

sanitize: $(LIB)
	@rm -f $(C_SAN_BINS) $(BUILD)/sanitize.summary
	-@$(MAKE) --no-print-directory -k c-san-build
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	 sh tests/c/run.sh $(BUILD)/sanitize.summary "" $(C_SAN_BINS)

# ThreadSanitizer over the kernel shim (tests/tsan/shim_tsan.cpp): the clean build
# must run without a report (TSan's exit code 66 otherwise); the build with
# -DGACC_SHIM_PLAIN_ATOMICS (atomicExch as plain loads and stores) must be reported,
# so the check is known to be able to fail.
TSAN_CXXFLAGS := -std=c++20 -O1 -g -fsanitize=thread -pthread -ffp-contract=off -Wall -Wextra -Werror -Ikernels
TSAN_DEPS     := tests/tsan/shim_tsan.cpp kernels/common.cuh $(wildcard kernels/*.cu) kernels/shim/shim_main.cpp \
                 kernels/shim/cuda_shim.h

$(BUILD)/tsan/shim_tsan: $(TSAN_DEPS)
	@mkdir -p $(@D)
	$(CXX) $(TSAN_CXXFLAGS) $< -o $@

$(BUILD)/tsan/shim_tsan_plain_atomics: $(TSAN_DEPS)
	@mkdir -p $(@D)
	$(CXX) $(TSAN_CXXFLAGS) -DGACC_SHIM_PLAIN_ATOMICS $< -o $@

tsan-shim: $(BUILD)/tsan/shim_tsan $(BUILD)/tsan/shim_tsan_plain_atomics
	TSAN_OPTIONS="halt_on_error=0 exitcode=66" ./$(BUILD)/tsan/shim_tsan
	@if TSAN_OPTIONS="halt_on_error=1 exitcode=66" ./$(BUILD)/tsan/shim_tsan_plain_atomics \
	    > $(BUILD)/tsan/injected.log 2>&1; then \
	  echo "tsan-shim: the injected race was NOT reported"; exit 1; fi
	@grep -q "ThreadSanitizer: data race" $(BUILD)/tsan/injected.log || \
	  { echo "tsan-shim: the injected run failed without a race report:"; cat $(BUILD)/tsan/injected.log; exit 1; }
	@echo "tsan-shim: zero reports; the injected race (plain atomicExch) is reported"

valgrind: $(LIB)
	@rm -f $(BUILD)/valgrind.summary
	-@$(MAKE) --no-print-directory -k c-tests-build
	@sh tests/c/run.sh $(BUILD)/valgrind.summary \
	 "$(VALGRIND) $(VALGRIND_FLAGS)" $(C_TEST_BINS)

# The header alone, as C99, C11 and C++17, pedantic, every warning an error; the TU
# names every function of the header with its exact signature (checked by the grep
# below: a function added to the header must be added to the TU) and is linked and run.
HEADER_WARN := -Wall -Wextra -Wpedantic -Werror
header-check: $(LIB) | $(BUILD)/header
	@missing=$$(grep -v '^ *[*/]' $(HEADER) | grep -oE '\bgacc_[a-z0-9_]+\(' | tr -d '(' | sort -u | \
	  while read f; do grep -q "\b$$f\b" tests/c/header_check.c || echo "$$f"; done); \
	 if [ -n "$$missing" ]; then echo "header-check: not referenced by tests/c/header_check.c: $$missing"; exit 1; fi
	$(CC)  -std=c99   $(HEADER_WARN) -Iinclude -x c   tests/c/header_check.c -o $(BUILD)/header/c99   $(LDLIBS_GACC)
	$(CC)  -std=c11   $(HEADER_WARN) -Iinclude -x c   tests/c/header_check.c -o $(BUILD)/header/c11   $(LDLIBS_GACC)
	$(CXX) -std=c++17 $(HEADER_WARN) -Iinclude -x c++ tests/c/header_check.c -o $(BUILD)/header/cxx17 $(LDLIBS_GACC)
	./$(BUILD)/header/c99 && ./$(BUILD)/header/c11 && ./$(BUILD)/header/cxx17

# The first ```c block of README.md, extracted, compiled with every warning an error, run.
readme-check: $(LIB) | $(BUILD)/header
	awk '/^```c$$/ { f = 1; next } /^```$$/ { if (f) exit } f' README.md > $(BUILD)/header/readme_example.c
	@test -s $(BUILD)/header/readme_example.c || { echo "readme-check: no C example in README.md"; exit 1; }
	$(CC) $(C_STD_FLAGS) $(CFLAGS) -Iinclude $(BUILD)/header/readme_example.c -o $(BUILD)/header/readme_example $(LDLIBS_GACC)
	./$(BUILD)/header/readme_example

include bindings/bindings.mk

# ---- the GPU check (README "Running the GPU check") ---------------------------------------
# gpu-bundle builds every GPU test and the GPU benchmark (cargo test/bench --no-run),
# libgacc.so, the C tests and the demo, stripped, into build/gpu-bundle; gpu-check-fake
# runs them on the fake driver, so a change that breaks them fails without a GPU.
.PHONY: gpu-bundle gpu-check-fake
gpu-bundle:
	scripts/gpu-bundle.sh
gpu-check-fake: gpu-bundle
	scripts/gpu-check.sh --fake
TEST_TARGETS += gpu-check-fake

clean:
	rm -rf $(BUILD)
	$(CARGO) clean

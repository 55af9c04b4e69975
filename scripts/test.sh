#!/usr/bin/env bash
# Every test, on a fresh machine: installs what the tests need
# (scripts/install-test-deps.sh), then runs
#   make test        Rust suite, C tests, header and README checks, bindings, packaging, MPI
#   make sanitize    the C tests under AddressSanitizer + UBSan + LeakSanitizer
#   make valgrind    the C tests under valgrind memcheck
#   make fuzz        each cargo-fuzz target for FUZZ_SECONDS (default 30)
# Every step runs even if an earlier one failed; the closing line counts the steps.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh || { echo "steps: 0 passed, 1 failed (installing the test dependencies)"; exit 1; }
# shellcheck disable=SC1091
. .deps/env.sh

passed=0
failed=()
for target in test sanitize valgrind fuzz; do
    echo
    echo "======== make $target"
    t0=$SECONDS
    if make --no-print-directory "$target"; then
        passed=$((passed + 1))
        echo "======== make $target: ok ($((SECONDS - t0))s)"
    else
        failed+=("$target")
        echo "======== make $target: FAILED ($((SECONDS - t0))s)"
    fi
done
echo
[ "${#failed[@]}" -eq 0 ] || echo "failed: ${failed[*]}"
echo "steps: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]

#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 60 s each):
#   scripts/fuzz.sh [SECONDS]
# Installs cargo-fuzz if missing. cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them. New corpus entries go to fuzz/corpus/
# (ignored by git); the committed seeds are in fuzz/seeds/. A crash fails the run
# and leaves the reproducer in fuzz/artifacts/.
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
cd "$root/fuzz"
for target in api_sequence checkpoint_load; do
    mkdir -p "corpus/$target" "seeds/$target"
    echo "== fuzzing $target for ${seconds}s"
    log=$(mktemp)
    if ! cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target FAILED (reproducer in fuzz/artifacts/$target)"
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    rm -f "$log"
done

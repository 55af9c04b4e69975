#!/usr/bin/env bash
# Builds gacc with the `mpi` feature and runs the MPI data-parallel test on 2 and 3
# ranks, then the once-per-window vs once-per-micro-batch benchmark line.
# Installs Open MPI from Debian's packages when mpicc is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v mpicc >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
fi
out=target/mpi
cargo build --release --quiet --features mpi --target-dir "$out"
lib="$root/$out/release"
mpicc -std=c11 -O2 -Wall -Wextra -Werror -Iinclude tests/mpi/test_mpi.c -L"$lib" -lgacc -Wl,-rpath,"$lib" -lm -o "$out/test_mpi"
mpicc -std=c11 -O2 -Wall -Wextra -Werror -Iinclude bench/mpi_window.c -L"$lib" -lgacc -Wl,-rpath,"$lib" -o "$out/bench_mpi_window"
run() { mpirun --allow-run-as-root --oversubscribe "$@"; }
for np in 2 3; do
    run -np "$np" "$out/test_mpi"
done
if [ "${GACC_MPI_BENCH:-1}" = 1 ]; then
    run -np 2 "$out/bench_mpi_window" $((1 << 20)) 8 3
fi

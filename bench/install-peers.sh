#!/usr/bin/env bash
# Installs the peers that bench/compare.py measures gacc against, from PyPI, into
# local folders (nothing system-wide):
#   .deps/bench        numpy, jax[cpu] (jaxlib), optax, ml_dtypes, matplotlib, threadpoolctl
#   .deps/bench-torch  torch (PyPI's Linux wheel: built with CUDA, so pip also brings the
#                      nvidia-*/cuda-* runtime wheels, about 5 GiB; they are needed only for
#                      `import torch` to load libtorch_cuda.so, the benchmark runs on the CPU)
# Each group is tried on its own: a peer that cannot be installed is reported and the
# benchmark runs without it. Usage: bash bench/install-peers.sh [--no-torch]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pip=(python3 -m pip install --quiet --disable-pip-version-check --upgrade)
status=0

main="$root/.deps/bench"
if PYTHONPATH="$main" python3 -c "import numpy, jax, optax, matplotlib, ml_dtypes, threadpoolctl" 2>/dev/null; then
    echo "numpy, jax, optax, matplotlib: already in $main"
else
    echo "installing numpy, jax[cpu], optax, matplotlib into $main"
    if ! "${pip[@]}" --target "$main" numpy "jax[cpu]" optax ml_dtypes matplotlib threadpoolctl; then
        echo "FAILED: numpy/jax/optax/matplotlib could not be installed" >&2
        status=1
    fi
fi

if [[ "${1:-}" == "--no-torch" ]]; then
    echo "torch: skipped (--no-torch)"
    exit $status
fi
tdir="$root/.deps/bench-torch"
if PYTHONPATH="$tdir" python3 -c "import torch" 2>/dev/null; then
    echo "torch: already in $tdir"
else
    # `--no-deps` alone is not enough: torch/__init__.py preloads libcublas etc. from the
    # nvidia wheels and `import torch` fails without them ("libcublasLt.so.*[0-9] not
    # found in the system path"). PyPI has no CPU-only torch wheel for Linux.
    echo "installing torch (with its CUDA runtime wheels, ~5 GiB) into $tdir"
    if ! "${pip[@]}" --target "$tdir" torch; then
        echo "FAILED: torch could not be installed" >&2
        status=1
    elif ! PYTHONPATH="$tdir" python3 -c "import torch; torch.ones(1).add_(1)"; then
        echo "FAILED: torch installed but does not import" >&2
        status=1
    fi
fi
exit $status

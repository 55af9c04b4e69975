#!/usr/bin/env bash
# Installs the Python packages the tests use (safetensors + numpy, to open checkpoints)
# into .deps/python, and prints the export that puts them on PYTHONPATH:
#   eval "$(scripts/install-python-deps.sh)"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target="$root/.deps/python"
if ! PYTHONPATH="$target" python3 -c "import safetensors, numpy" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$target" safetensors numpy >&2
fi
echo "export PYTHONPATH=\"$target\${PYTHONPATH:+:\$PYTHONPATH}\""

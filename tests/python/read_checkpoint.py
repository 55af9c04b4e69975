"""Opens a gacc checkpoint with the Python `safetensors` package and checks it.

Usage: read_checkpoint.py PATH EXPECTED_JSON
EXPECTED_JSON names, per tensor key, the expected first value and length, plus the
metadata values to compare. Every tensor's CRC-32 in the metadata is recomputed with
zlib. Exit status 0 on success.
"""
import json
import sys
import zlib

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def main() -> int:
    path, expected = sys.argv[1], json.loads(sys.argv[2])
    tensors = load_file(path)
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "gacc-checkpoint", meta.get("format")
    for key, (length, first) in expected["tensors"].items():
        arr = tensors[key]
        assert arr.dtype == np.float32, (key, arr.dtype)
        assert arr.shape == (length,), (key, arr.shape)
        assert arr[0] == np.float32(first), (key, arr[0], first)
    for key, arr in tensors.items():
        crc = "%08x" % (zlib.crc32(arr.astype("<f4").tobytes()) & 0xFFFFFFFF)
        assert meta["crc32." + key] == crc, (key, meta["crc32." + key], crc)
    for key, value in expected["metadata"].items():
        assert meta[key] == value, (key, meta[key], value)
    print(f"safetensors opened {path}: {len(tensors)} tensors, metadata ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

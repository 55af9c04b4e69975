#!/usr/bin/env python3
"""Expected loss-scale sequences from the real implementations, for gacc's replay tests.

DEEPSPEED cases drive DeepSpeed's own DynamicLossScaler: deepspeed/runtime/fp16/
loss_scaler.py is loaded by path from the PyPI sdist (scripts/install-test-deps.sh puts it
in .deps/deepspeed) with its package imports stubbed. It needs torch only for dtype names
(torch.half, torch.float16) and deepspeed only for a base class, a rank and a logger,
so none of them is installed.

GRADSCALER cases follow torch's _amp_update_scale_ (aten/src/ATen/native/cpu/
AmpGradScalerKernels.cpp and cuda/AmpKernels.cu; torch is not installed here): on an
overflow scale = float(scale * backoff) and tracker = 0; otherwise tracker + 1, and at
growth_interval new = float(scale * growth) in double then rounded to float, taken only
if finite, tracker = 0. The factors are f32 values (gacc's config fields are f32).

Usage: loss_scale_reference.py LOSS_SCALER_PY OUT_JSON [N_CASES [MAX_STEPS]]
Writes {"deepspeed_version", "cases": [{policy, init_scale, growth_factor,
backoff_factor, growth_interval, hysteresis, consecutive, min_scale, overflow, scale_bits}]}:
`overflow` is a string of 0/1 per step (1: the window overflows, so the step is
skipped), `scale_bits` the scale after each step as the bits of an f64.
"""
import importlib.util
import json
import math
import random
import re
import struct
import sys
import types

F32_MAX = struct.unpack("f", struct.pack("I", 0x7F7FFFFF))[0]
F32_MIN_NORMAL = 2.0**-126


def f32(x):
    """Round a Python float to the nearest f32 (inf beyond the range), as a C cast does."""
    if math.isinf(x) or abs(x) > F32_MAX * (1 + 2.0**-25):
        return math.copysign(math.inf, x)
    return struct.unpack("f", struct.pack("f", x))[0]


def load_deepspeed_scaler(path):
    """deepspeed/runtime/fp16/loss_scaler.py with its imports stubbed."""
    torch = types.ModuleType("torch")
    torch.half = torch.float16 = "torch.float16"
    torch.bfloat16, torch.float32, torch.float = "torch.bfloat16", "torch.float32", "torch.float32"
    ds = types.ModuleType("deepspeed")
    runtime = types.ModuleType("deepspeed.runtime")
    config_utils = types.ModuleType("deepspeed.runtime.config_utils")

    class DeepSpeedConfigObject:
        pass

    config_utils.DeepSpeedConfigObject = DeepSpeedConfigObject
    comm = types.ModuleType("deepspeed.comm")
    comm.get_rank = lambda: 0  # rank 0: the log messages are formatted as in training
    utils = types.ModuleType("deepspeed.utils")
    utils.log_dist = lambda *a, **k: None
    utils.logger = types.SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None)
    runtime_utils = types.ModuleType("deepspeed.runtime.utils")
    runtime_utils.has_inf_or_nan = lambda x: False
    ds.comm, ds.runtime, runtime.utils, runtime.config_utils = comm, runtime, runtime_utils, config_utils
    for name, mod in [("torch", torch), ("deepspeed", ds), ("deepspeed.runtime", runtime),
                      ("deepspeed.runtime.config_utils", config_utils), ("deepspeed.comm", comm),
                      ("deepspeed.utils", utils), ("deepspeed.runtime.utils", runtime_utils)]:
        sys.modules[name] = mod
    spec = importlib.util.spec_from_file_location("ds_loss_scaler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GradScalerRule:
    """torch's _amp_update_scale_, one step at a time."""

    def __init__(self, case):
        self.case, self.cur_scale, self.tracker = case, f32(case["init_scale"]), 0

    def update_scale(self, overflow):
        c = self.case
        if overflow:
            self.cur_scale = f32(self.cur_scale * c["backoff_factor"])
            self.tracker = 0
        else:
            self.tracker += 1
            if self.tracker == c["growth_interval"]:
                new = f32(self.cur_scale * c["growth_factor"])
                if math.isfinite(new):
                    self.cur_scale = new
                self.tracker = 0


def deepspeed_scaler(module, case):
    s = module.DynamicLossScaler(init_scale=case["init_scale"], scale_window=case["growth_interval"],
                                 min_scale=case["min_scale"], delayed_shift=case["hysteresis"],
                                 consecutive_hysteresis=case["consecutive"], raise_error_at_min_scale=False)
    # DeepSpeed fixes scale_factor at 2.0; a few cases set another power of two on the
    # instance (the attribute update_scale reads) to cover growth_factor 4.
    s.scale_factor = case["growth_factor"]
    return s


def make_case(rng, policy):
    init = rng.choice([2.0**rng.randint(0, 24), 1000.0 * 2.0**rng.randint(-4, 8), 3.0 * 2.0**rng.randint(0, 16)])
    window = rng.choice([1, 1, 2, 3, 4, 5, 7, 8, 16, 50])
    if policy == 1:
        growth = rng.choice([2.0, 2.0, 2.0, 4.0])
        backoff = 1.0 / growth
        hysteresis = rng.choice([1, 1, 2, 3, 4])
        consecutive = rng.random() < 0.5
        min_scale = rng.choice([0.0, 1.0, 1.0, 0.25, 2.0**-10, init / 4, init])
    else:
        growth, backoff = rng.choice([(2.0, 0.5), (2.0, 0.5), (4.0, 0.25), (1.5, 0.75), (2.0, 0.125)])
        hysteresis, consecutive, min_scale = 1, False, 0.0
    return {"policy": policy, "init_scale": init, "growth_factor": growth, "backoff_factor": backoff,
            "growth_interval": window, "hysteresis": hysteresis, "consecutive": consecutive,
            "min_scale": min_scale}


def in_f32_range(seq):
    return all(F32_MIN_NORMAL <= x <= F32_MAX for x in seq)


def main():
    path, out_path = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    max_steps = int(sys.argv[4]) if len(sys.argv) > 4 else 400
    module = load_deepspeed_scaler(path)
    version = "unknown"
    m = re.search(r"deepspeed-([0-9][^/]*)/", path)
    if m:
        version = m.group(1)
    rng = random.Random(20261201)
    cases, rejected = [], 0
    while len(cases) < n:
        policy = len(cases) % 4 != 0  # 3 DEEPSPEED cases for each GRADSCALER one
        case = make_case(rng, int(policy))
        steps = rng.randint(min(20, max_steps), max_steps)
        # Overflows at random (rate p), and, in most cases, whenever the scale has reached
        # a ceiling, as a real model's gradients do: the pattern reacts to the scale.
        p = rng.choice([0.0, 0.01, 0.05, 0.15, 0.3, 0.5, 0.8])
        ceiling = 2.0 ** rng.randint(4, 30) if rng.random() < 0.6 else None
        scaler = deepspeed_scaler(module, case) if policy else GradScalerRule(case)
        overflow, seq = [], []
        for _ in range(steps):
            o = rng.random() < p or (ceiling is not None and scaler.cur_scale >= ceiling)
            scaler.update_scale(o)
            overflow.append(int(o))
            seq.append(scaler.cur_scale)
        # Keep to the normal f32 range: a Python float scale may leave it (gacc's scale is
        # f32), and below it 1 / S overflows, which skips the step on its own.
        if not in_f32_range(seq):
            rejected += 1
            continue
        case["overflow"] = "".join(map(str, overflow))
        # As the f64 bit patterns: exact through any JSON reader.
        case["scale_bits"] = [struct.unpack("<Q", struct.pack("<d", x))[0] for x in seq]
        cases.append(case)
    with open(out_path, "w") as f:
        json.dump({"deepspeed_version": version, "deepspeed_file": path, "rejected_out_of_f32_range": rejected,
                   "cases": cases}, f)
    print(f"{len(cases)} cases ({sum(c['policy'] for c in cases)} DeepSpeed {version}), "
          f"{sum(len(c['overflow']) for c in cases)} steps, {rejected} rejected out of f32 range")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One peer of the gacc comparison, run alone in its own process; prints JSON lines.

    python3 bench/peers.py --peer torch|jax|numpy --mode run|mem|tiny|tensors --n N [--k K] [--t T] [--repeats R]

bench/compare.py runs this once per (peer, size, mode) so that every process's peak
RSS (VmHWM) belongs to one contender and one size. The workload is the one
bench/gacc_bench.c runs through the C ABI:

- K micro-batch gradients already in memory (uniform in [-1e-2, 1e-2), not zeros);
- accumulate: acc += W * g into fp32, from f32, f16 or bf16 gradients (W = 3, the
  number of samples behind each micro-batch, as gacc's GACC_GRADS_MEAN does it);
- step: g = acc / (total * S), then optionally clip to global norm 1.0, then SGD with
  momentum 0.9 (lr 1e-2) or AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8, wd 1e-2),
  then acc = 0. The FP16 row has fp16 gradients scaled by S = 65536, a finite check,
  a loss-scale update, and rewrites an fp16 copy of the parameters.
- window (torch only): K micro-batches + AdamW + clip + a bf16 copy of the weights,
  timed together, as PyTorch's own pipeline runs it (below).

Each contender is written the way its users write it, as efficiently as they would.
PyTorch follows autograd: `zero_grad()` sets `.grad` to None (its default), the first
backward of a window hands its gradient buffer to `.grad` (AccumulateGrad steals it:
no copy), later ones add into it. The benchmark makes that buffer (the backward's own
output) before the timer starts, as no contender's backward is timed.

Every row carries two byte counts per parameter (bench/report.py prints them):
`bytes_per_param`, what this contender's row moves (for torch counted from the ATen
ops it runs, `bytes_source: "ops"`; for jax and numpy the work's count with gacc's
passes of today, `bytes_source: "work"`, as XLA's fusion and numpy's temporaries are
not counted), and `bytes_min`, the minimum of gacc's issue-14 design for the same work.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

W = 3.0
GRAD_SCALE = 1e-2
MAX_NORM = 1.0
S = 65536.0
LR_SGD, MOMENTUM = 1e-2, 0.9
LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 1e-2

STEP_ROWS = [
    # row, optimizer, clip, fp16, bytes per parameter: gacc's passes today, issue 14's minimum
    ("step_sgd_momentum", "sgd", False, False, 28, 20),
    ("step_adamw", "adamw", False, False, 36, 28),
    ("step_adamw_clip", "adamw", True, False, 36, 28),
    ("step_adamw_clip_fp16", "adamw", True, True, 38, 30),
]
# row, dtype key, bytes today (every micro-batch), issue 14's minimum for the first one
ACC_ROWS = [("accumulate_f32", "f32", 12, 8), ("accumulate_f16", "f16", 10, 6), ("accumulate_bf16", "bf16", 10, 6)]


def torch_step_bytes(variant, optimizer, clip, fp16):
    """Bytes per parameter of torch's step as this file drives it, from its ATen ops
    (torch/optim/{adam,sgd}.py, nn/utils/clip_grad.py; each read and write once):
    the mean (_foreach_mul_, or GradScaler's unscale for FP16) 8; clip_grad_norm_:
    _foreach_norm 4 + _foreach_mul_ 8; fused AdamW reads p, g, m, v and writes p, m, v
    28; foreach AdamW: mul_(p) 8, lerp_(m, g) 12, mul_(v) 8, addcmul_(v, g, g) 12,
    sqrt(v) 8, div_ 8, add_(eps) 8, addcdiv_(p, m, denom) 16 = 80; fused SGD reads p,
    g, buf and writes p, buf 20; foreach SGD: mul_(buf) 8, add_(buf, g) 12, add_(p, buf)
    12 = 32; the fp16 copy of the weights 6; zero_grad(set_to_none=True) 0."""
    if optimizer == "sgd":
        opt = 20 if variant == "fused" else 32
    else:
        opt = 28 if variant == "fused" else 80
    return 8 + (12 if clip else 0) + opt + (6 if fp16 else 0)


def torch_window_bytes(variant, k):
    """torch's window (AdamW + clip + bf16 copy): the first backward's buffer becomes
    .grad (0), K - 1 adds (12 each), clip 12, AdamW (28 fused, 80 foreach), bf16 copy 6;
    no mean pass (a torch user scales the loss instead)."""
    return 12 * (k - 1) + 12 + (28 if variant == "fused" else 80) + 6


def proc_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def emit(obj):
    print(json.dumps(obj), flush=True)


def row(name, contender, n, bpp, samples, note="", bytes_min=None, source="work"):
    """bpp: the bytes this row moves per parameter; bytes_min: issue 14's minimum for
    the same work (default: bpp); source: "ops" when bpp is counted from the
    contender's own ops, "work" when it is the work's count (gacc's passes today)."""
    emit({"kind": "row", "row": name, "contender": contender, "n": n, "bytes_per_param": bpp,
          "bytes_min": bpp if bytes_min is None else bytes_min, "bytes_source": source,
          "samples_s": samples, "note": note})


def make_grads(n, k, halves):
    """K gradients in f32 (and f16, bf16, f16 * S) as numpy arrays."""
    rng = np.random.default_rng(12345)
    out = {"f32": [], "f16": [], "bf16": [], "f16s": []}
    for _ in range(k):
        g = rng.random(n, dtype=np.float32)
        g *= np.float32(2 * GRAD_SCALE)
        g -= np.float32(GRAD_SCALE)
        out["f32"].append(g)
        if halves:
            import ml_dtypes
            out["f16"].append(g.astype(np.float16))
            out["bf16"].append(g.astype(ml_dtypes.bfloat16))
            gs = g * np.float32(S)
            out["f16s"].append(gs.astype(np.float16))
            del gs
    return out


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- torch ---

class Torch:
    def __init__(self, variant):
        import torch
        torch.set_num_threads(2)
        self.torch = torch
        self.variant = variant  # "foreach" or "fused"
        self.name = f"torch ({variant})"
        # zero_grad(set_to_none=False) instead of torch's default: the tiny per-call rows
        # keep one .grad tensor (no buffer made per window inside their timed loops).
        self.keep_grad = False

    def version(self):
        t = self.torch
        return {"torch": t.__version__, "threads": t.get_num_threads(),
                "cpu_capability": t.backends.cpu.get_cpu_capability()}

    def convert(self, grads):
        t = self.torch
        out = {}
        for key, lst in grads.items():
            if key == "bf16":
                out[key] = [t.from_numpy(g.view(np.uint16).view(np.int16)).view(t.bfloat16) for g in lst]
            else:
                out[key] = [t.from_numpy(g) for g in lst]
        return out

    def setup(self, n, optimizer, clip, fp16):
        t = self.torch
        self.p = t.nn.Parameter(t.zeros(n))
        self.p.grad = t.zeros(n) if self.keep_grad else None
        self.fresh = None
        self.params = [self.p]
        kw = {"foreach": True} if self.variant == "foreach" else {"fused": True}
        if optimizer == "sgd":
            self.opt = t.optim.SGD(self.params, lr=LR_SGD, momentum=MOMENTUM, **kw)
        else:
            self.opt = t.optim.AdamW(self.params, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, **kw)
        self.clip, self.fp16 = clip, fp16
        self.total = 0.0
        if fp16:
            # torch.amp.GradScaler's state, driven through the same ATen ops it calls.
            self.scale = t.full((1,), S, dtype=t.float32)
            self.growth_tracker = t.zeros((1,), dtype=t.int32)
            self.found_inf = t.zeros((1,), dtype=t.float32)
            self.p16 = t.zeros(n, dtype=t.float16)

    def prepare_first(self, g):
        """The first backward's output of a window (made before the timer): W * g in
        fp32, the parameter's dtype, as autograd casts a gradient to it."""
        if self.p.grad is None:
            self.fresh = g.to(self.torch.float32, copy=True).mul_(W)

    def accumulate(self, g):
        # What backward does to .grad under accumulation, with the mean weighting: the
        # first micro-batch's buffer becomes .grad (AccumulateGrad steals it), later
        # ones are added in place.
        if self.p.grad is None:
            fresh, self.fresh = self.fresh, None
            self.p.grad = fresh if fresh is not None else g.to(self.torch.float32, copy=True).mul_(W)
        else:
            self.p.grad.add_(g, alpha=W)
        self.total += W

    def window(self, grads):
        """One window of torch's own pipeline, AdamW + clip + bf16 copy (setup with
        adamw, clip): .grad is None, the first backward's buffer (made before the timer
        by the caller: grads[0] here is already that buffer) becomes .grad, later ones
        add, then clip_grad_norm_, the optimizer step, the bf16 copy, zero_grad."""
        t = self.torch
        self.p.grad = grads[0]
        for g in grads[1:]:
            self.p.grad.add_(g)
        t.nn.utils.clip_grad_norm_(self.params, MAX_NORM, foreach=True)
        self.opt.step()
        with t.no_grad():
            self.p_bf16.copy_(self.p)
        self.opt.zero_grad(set_to_none=True)

    def step(self):
        t = self.torch
        grads = [self.p.grad]
        if self.fp16:
            inv = t.full((1,), 1.0 / (self.total * float(self.scale.item())), dtype=t.float32)
            self.found_inf.zero_()
            # GradScaler.unscale_: one pass that unscales and checks for inf/NaN.
            t._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, inv)
        else:
            t._foreach_mul_(grads, 1.0 / self.total)
        if self.clip:
            t.nn.utils.clip_grad_norm_(self.params, MAX_NORM, foreach=True)
        if self.fp16:
            if self.found_inf.item() == 0.0:  # GradScaler.step
                self.opt.step()
            t._amp_update_scale_(self.scale, self.growth_tracker, self.found_inf, 2.0, 0.5, 2000)
            with t.no_grad():
                self.p16.copy_(self.p)  # the fp16 model weights
        else:
            self.opt.step()
        # torch's default (set_to_none=True): the next backward assigns .grad.
        self.opt.zero_grad(set_to_none=not self.keep_grad)
        self.total = 0.0


# ----------------------------------------------------------------------------- jax ---

class Jax:
    name = "jax+optax (jit)"

    def __init__(self):
        import jax
        import jax.numpy as jnp
        import optax
        self.jax, self.jnp, self.optax = jax, jnp, optax
        f32 = jnp.float32

        def acc_fn(acc, g, w):
            return acc + w * g.astype(f32)
        self.acc_fn = jax.jit(acc_fn, donate_argnums=0)

    def version(self):
        import jaxlib
        return {"jax": self.jax.__version__, "jaxlib": jaxlib.__version__, "optax": self.optax.__version__,
                "devices": str(self.jax.devices())}

    def convert(self, grads):
        jnp = self.jnp
        out = {}
        for key, lst in grads.items():
            out[key] = [self.jax.block_until_ready(jnp.array(g)) for g in lst]
        return out

    def setup(self, n, optimizer, clip, fp16):
        jax, jnp, optax = self.jax, self.jnp, self.optax
        parts = []
        if clip:
            parts.append(optax.clip_by_global_norm(MAX_NORM))
        if optimizer == "sgd":
            parts.append(optax.sgd(LR_SGD, momentum=MOMENTUM))
        else:
            parts.append(optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD))
        tx = optax.chain(*parts)
        self.params = jnp.zeros(n, jnp.float32)
        self.opt_state = tx.init(self.params)
        self.acc = jnp.zeros(n, jnp.float32)
        self.total = 0.0
        self.fp16 = fp16

        if not fp16:
            def step_fn(params, opt_state, acc, inv):
                g = acc * inv
                updates, opt_state = tx.update(g, opt_state, params)
                return optax.apply_updates(params, updates), opt_state, jnp.zeros_like(acc)
            self.step_fn = jax.jit(step_fn, donate_argnums=(0, 1, 2))
        else:
            # The loss-scale logic of jmp.DynamicLossScale / GradScaler, inside the jit.
            self.scale = jnp.float32(S)
            self.tracker = jnp.int32(0)
            self.p16 = jnp.zeros(n, jnp.float16)

            def step_fn(params, opt_state, acc, p16, scale, tracker, total):
                g = acc * (1.0 / (total * scale))
                finite = jnp.isfinite(g).all()
                updates, new_state = tx.update(g, opt_state, params)
                new_params = optax.apply_updates(params, updates)
                params = jnp.where(finite, new_params, params)
                opt_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new_state, opt_state)
                grown = tracker + 1 >= 2000
                scale = jnp.where(finite, jnp.where(grown, scale * 2.0, scale), scale * 0.5)
                tracker = jnp.where(finite, jnp.where(grown, 0, tracker + 1), 0)
                return params, opt_state, jnp.zeros_like(acc), params.astype(jnp.float16), scale, tracker
            self.step_fn = jax.jit(step_fn, donate_argnums=(0, 1, 2, 3))

    def accumulate(self, g):
        self.acc = self.acc_fn(self.acc, g, W)
        self.total += W
        self.acc.block_until_ready()

    def step(self):
        if not self.fp16:
            self.params, self.opt_state, self.acc = self.step_fn(self.params, self.opt_state, self.acc,
                                                                 1.0 / self.total)
            self.jax.block_until_ready((self.params, self.opt_state, self.acc))
        else:
            (self.params, self.opt_state, self.acc, self.p16, self.scale,
             self.tracker) = self.step_fn(self.params, self.opt_state, self.acc, self.p16, self.scale,
                                          self.tracker, self.total)
            self.jax.block_until_ready((self.params, self.opt_state, self.acc, self.p16))
        self.total = 0.0


class JaxMultiSteps(Jax):
    """optax.MultiSteps: the accumulation optax users get out of the box.

    One jitted update per micro-batch; every K-th call also runs the inner optimizer.
    MultiSteps averages micro-batches with equal weight (our W is the same for all, so
    the result is the same). Accumulate = the non-final calls; step = the K-th call
    (which also folds in its own micro-batch).
    """
    name = "jax+optax (MultiSteps)"

    def __init__(self, k):
        super().__init__()
        self.k = k

    def setup(self, n, optimizer, clip, fp16):
        jax, jnp, optax = self.jax, self.jnp, self.optax
        assert not fp16
        parts = []
        if clip:
            parts.append(optax.clip_by_global_norm(MAX_NORM))
        if optimizer == "sgd":
            parts.append(optax.sgd(LR_SGD, momentum=MOMENTUM))
        else:
            parts.append(optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD))
        tx = optax.MultiSteps(optax.chain(*parts), every_k_schedule=self.k)
        self.params = jnp.zeros(n, jnp.float32)
        self.opt_state = tx.init(self.params)

        def update(params, state, g):
            updates, state = tx.update(g, state, params)
            return optax.apply_updates(params, updates), state
        self.update_fn = jax.jit(update, donate_argnums=(0, 1))

    def call(self, g):
        self.params, self.opt_state = self.update_fn(self.params, self.opt_state, g)
        self.jax.block_until_ready((self.params, self.opt_state))


# --------------------------------------------------------------------------- numpy ---

class Numpy:
    name = "numpy"

    def version(self):
        info = {"numpy": np.__version__}
        try:
            from threadpoolctl import threadpool_info
            info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                            for d in threadpool_info()]
        except ImportError:
            pass
        return info

    def convert(self, grads):
        return grads

    def setup(self, n, optimizer, clip, fp16):
        self.p = np.zeros(n, np.float32)
        self.acc = np.zeros(n, np.float32)
        self.tmp = np.empty(n, np.float32)
        self.optimizer, self.clip, self.fp16 = optimizer, clip, fp16
        self.m = np.zeros(n, np.float32)
        self.v = np.zeros(n, np.float32) if optimizer == "adamw" else None
        self.t = 0
        self.total = 0.0
        if fp16:
            self.scale, self.tracker = S, 0
            self.p16 = np.zeros(n, np.float16)

    def accumulate(self, g):
        # acc += W * g without a fresh temporary: numpy has no fused axpy.
        np.multiply(g, np.float32(W), out=self.tmp)
        np.add(self.acc, self.tmp, out=self.acc)
        self.total += W

    def step(self):
        acc, tmp, p = self.acc, self.tmp, self.p
        scale = self.scale if self.fp16 else 1.0
        acc *= np.float32(1.0 / (self.total * scale))
        sq = float(np.dot(acc, acc))  # BLAS sdot; inf/NaN if any element is
        self.total = 0.0
        if self.fp16 and not math.isfinite(sq):
            self.scale *= 0.5
            self.tracker = 0
            acc.fill(0)
            return
        if self.clip:
            coef = min(1.0, MAX_NORM / (math.sqrt(sq) + 1e-6))
            acc *= np.float32(coef)
        g = acc
        if self.optimizer == "sgd":
            m = self.m
            if self.t == 0:
                np.copyto(m, g)
            else:
                m *= np.float32(MOMENTUM)
                m += g
            np.multiply(m, np.float32(LR_SGD), out=tmp)
            p -= tmp
        else:
            self.t += 1
            m, v = self.m, self.v
            p *= np.float32(1.0 - LR * WD)
            m *= np.float32(B1)
            np.multiply(g, np.float32(1.0 - B1), out=tmp)
            m += tmp
            v *= np.float32(B2)
            np.multiply(g, g, out=tmp)
            tmp *= np.float32(1.0 - B2)
            v += tmp
            bc1 = 1.0 - B1 ** self.t
            bc2 = 1.0 - B2 ** self.t
            np.sqrt(v, out=tmp)
            tmp *= np.float32(1.0 / math.sqrt(bc2))
            tmp += np.float32(EPS)
            np.divide(m, tmp, out=tmp)
            tmp *= np.float32(LR / bc1)
            p -= tmp
        if self.fp16:
            self.t_scale_update()
            np.copyto(self.p16, p, casting="same_kind")
        acc.fill(0)
        if self.optimizer == "sgd":
            self.t += 1

    def t_scale_update(self):
        self.tracker += 1
        if self.tracker >= 2000:
            self.scale *= 2.0
            self.tracker = 0


# --------------------------------------------------------------------------- modes ---

def make_peer(name, k):
    if name == "torch-foreach":
        return Torch("foreach")
    if name == "torch-fused":
        return Torch("fused")
    if name == "jax":
        return Jax()
    if name == "jax-multisteps":
        return JaxMultiSteps(k)
    if name == "numpy":
        return Numpy()
    raise SystemExit(f"unknown peer {name}")


def mode_run(peer, n, k, repeats):
    grads = peer.convert(make_grads(n, k, halves=not isinstance(peer, JaxMultiSteps)))
    if isinstance(peer, JaxMultiSteps):
        for name, optimizer, clip, fp16, bpp, bmin in STEP_ROWS:
            if fp16:
                continue
            peer.setup(n, optimizer, clip, fp16)
            acc_s, step_s = [], []
            for r in range(-1, repeats):
                for j in range(k):
                    dt = timed(lambda: peer.call(grads["f32"][j]))
                    if r >= 0:
                        (step_s if j == k - 1 else acc_s).append(dt)
            if name == "step_adamw_clip":
                row("accumulate_f32", peer.name, n, 12, acc_s, "MultiSteps non-final calls (AdamW+clip)")
            row(name, peer.name, n, bpp, step_s, "the K-th MultiSteps call: also folds in its micro-batch", bmin)
        return
    # Accumulate rows (torch foreach and fused accumulate the same way: run once).
    # The first micro-batch of each window is its own row (issue 14: gacc writes instead
    # of adding there; torch assigns the backward's buffer to .grad: 0 bytes).
    is_torch = isinstance(peer, Torch)
    if not (is_torch and peer.variant == "fused"):
        peer.setup(n, "adamw", False, False)
        for name, key, bpp, first_min in ACC_ROWS:
            samples, first = [], []
            for r in range(-1, repeats):
                for j in range(k):
                    if is_torch and j == 0:
                        peer.prepare_first(grads[key][j])
                    dt = timed(lambda: peer.accumulate(grads[key][j]))
                    if r >= 0:
                        (first if j == 0 else samples).append(dt)
                peer.step()
            cname = "torch" if is_torch else peer.name
            src = "ops" if is_torch else "work"
            row(name + "_first", cname, n, 0 if is_torch else bpp, first,
                "first micro-batch: .grad = the backward's buffer" if is_torch else "first micro-batch", first_min,
                src)
            if samples:
                row(name, cname, n, bpp, samples, "", bpp, src)
    for name, optimizer, clip, fp16, bpp, bmin in STEP_ROWS:
        try:
            peer.setup(n, optimizer, clip, fp16)
        except (RuntimeError, ValueError, TypeError) as e:
            emit({"kind": "error", "row": name, "contender": peer.name, "n": n, "error": str(e)[:300]})
            continue
        key = "f16s" if fp16 else "f32"
        samples = []
        for r in range(-1, repeats):
            for j in range(k):
                if is_torch and j == 0:
                    peer.prepare_first(grads[key][j])
                peer.accumulate(grads[key][j])
            dt = timed(peer.step)
            if r >= 0:
                samples.append(dt)
        if is_torch:
            row(name, peer.name, n, torch_step_bytes(peer.variant, optimizer, clip, fp16), samples, "", bmin, "ops")
        else:
            row(name, peer.name, n, bpp, samples, "", bmin)
    if is_torch:
        # The whole window, AdamW + clip + bf16 copy (bench/gacc_bench.c's window row).
        peer.setup(n, "adamw", True, False)
        peer.p_bf16 = peer.torch.zeros(n, dtype=peer.torch.bfloat16)
        samples = []
        for r in range(-1, repeats):
            window = [grads["f32"][0].clone()] + grads["f32"][1:k]  # the first backward's own buffer
            dt = timed(lambda: peer.window(window))
            if r >= 0:
                samples.append(dt)
        row("window_adamw_clip_bf16", peer.name, n, torch_window_bytes(peer.variant, k), samples,
            "K micro-batches + step", 8 + 12 * (k - 1) + 30, "ops")


def mode_mem(peer, n, k):
    """Peak RSS of the AdamW + clip fp32 window loop (3 windows of K micro-batches)."""
    grads = peer.convert(make_grads(n, k, halves=False))
    baseline = proc_kb("VmRSS")
    peer.setup(n, "adamw", True, False)
    for _ in range(3):
        if isinstance(peer, JaxMultiSteps):
            for j in range(k):
                peer.call(grads["f32"][j])
        else:
            for j in range(k):
                peer.accumulate(grads["f32"][j])
            peer.step()
    emit({"kind": "memory", "contender": peer.name, "n": n, "k": k, "baseline_kb": baseline,
          "peak_kb": proc_kb("VmHWM")})


def mode_tiny(peer, n, iters, repeats):
    """Per-call cost on a tiny model: blocks of `iters` calls, like gacc_bench tiny."""
    grads = peer.convert(make_grads(n, 1, halves=False))
    g = grads["f32"][0]
    if isinstance(peer, Torch):
        peer.keep_grad = True
    peer.setup(n, "adamw", True, False)
    mb, st = [], []
    if isinstance(peer, JaxMultiSteps):
        return
    for r in range(-1, repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            peer.accumulate(g)
        t1 = time.perf_counter()
        peer.step()
        t2 = time.perf_counter()
        for _ in range(iters):
            peer.accumulate(g)
            peer.step()
        t3 = time.perf_counter()
        if r >= 0:
            mb.append((t1 - t0) / iters)
            st.append((t3 - t2) / iters - (t1 - t0) / iters)
    cname = "torch" if isinstance(peer, Torch) and peer.variant == "foreach" else peer.name
    row("tiny_microbatch", cname, n, 12, mb, "per call from Python")
    row("tiny_step", peer.name, n, 36, st, "per call from Python, AdamW+clip")


def transformer_sizes(n, t):
    """Tensor sizes like a transformer's (bench/model_shapes.rs, the same rule)."""
    layers = t // 8
    per_layer = n // layers
    d = 8
    while 12 * (d + 8) * (d + 8) + 4 * (d + 8) <= per_layer:
        d += 8
    return [d, d, 3 * d * d, d * d, d, d, 4 * d * d, 4 * d * d] * layers


def mode_tensors(peer, n, t, repeats):
    """PyTorch's own accumulation of per-tensor gradients across micro-batches, on the
    tensors of bench/gacc_bench.c tensors, with the ops autograd's AccumulateGrad runs:
    the first backward of a window hands each gradient buffer to p.grad (pgrad_assign:
    no data moves; the buffers, the backward's own output, are made before the timer),
    later ones add in place, p.grad.add_(g) per parameter (pgrad_add), and the same as
    one torch._foreach_add_ over all of them (foreach_add). No weight: a torch user
    scales the loss; gacc's rows multiply by W in the same pass, for the same bytes."""
    if not isinstance(peer, Torch):
        return
    torch = peer.torch
    sizes = transformer_sizes(n, t)
    total = sum(sizes)
    rng = np.random.default_rng(0)
    params = [torch.nn.Parameter(torch.zeros(k)) for k in sizes]
    grads = [torch.from_numpy((rng.random(k, dtype=np.float32) * 2 - 1) * GRAD_SCALE) for k in sizes]
    note = f"{len(sizes)} tensors"

    samples = []
    for r in range(-1, repeats):
        for p in params:
            p.grad = None  # zero_grad(set_to_none=True)
        fresh = [g.clone() for g in grads]  # the first backward's output, not timed

        def assign():
            for p, f in zip(params, fresh):
                p.grad = f
        dt = timed(assign)
        if r >= 0:
            samples.append(dt)
    row(f"pgrad_assign_{len(sizes)}", "torch", total, 0, samples, note, 0, "ops")

    accs = [p.grad for p in params]

    def pgrad_add():
        for p, g in zip(params, grads):
            p.grad.add_(g)

    def foreach_add():
        torch._foreach_add_(accs, grads)

    for name, fn in (("pgrad_add", pgrad_add), ("foreach_add", foreach_add)):
        samples = []
        for r in range(-1, repeats):
            dt = timed(fn)
            if r >= 0:
                samples.append(dt)
        row(f"{name}_{len(sizes)}", "torch", total, 12, samples, note, 12, "ops")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True)
    ap.add_argument("--mode", required=True, choices=["run", "mem", "tiny", "version", "tensors"])
    ap.add_argument("--t", type=int, default=64)
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2000)
    a = ap.parse_args()
    peer = make_peer(a.peer, a.k)
    if a.mode == "version":
        emit({"kind": "version", "contender": peer.name, "versions": peer.version()})
    elif a.mode == "run":
        mode_run(peer, a.n, a.k, a.repeats)
    elif a.mode == "mem":
        mode_mem(peer, a.n, a.k)
    elif a.mode == "tensors":
        mode_tensors(peer, a.n, a.t, a.repeats)
    else:
        mode_tiny(peer, a.n, a.iters, a.repeats)


if __name__ == "__main__":
    main()

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

Each contender is written the way its users write it, as efficiently as they would.
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
    # row, optimizer, clip, fp16, bytes per parameter (gacc's fused byte model)
    ("step_sgd_momentum", "sgd", False, False, 28),
    ("step_adamw", "adamw", False, False, 36),
    ("step_adamw_clip", "adamw", True, False, 36),
    ("step_adamw_clip_fp16", "adamw", True, True, 38),
]
ACC_ROWS = [("accumulate_f32", "f32", 12), ("accumulate_f16", "f16", 10), ("accumulate_bf16", "bf16", 10)]


def proc_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def emit(obj):
    print(json.dumps(obj), flush=True)


def row(name, contender, n, bpp, samples, note=""):
    emit({"kind": "row", "row": name, "contender": contender, "n": n, "bytes_per_param": bpp,
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
        self.p.grad = t.zeros(n)
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

    def accumulate(self, g):
        # What backward does to .grad under accumulation, with the mean weighting.
        self.p.grad.add_(g, alpha=W)
        self.total += W

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
        self.opt.zero_grad(set_to_none=False)
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
        for name, optimizer, clip, fp16, bpp in STEP_ROWS:
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
            row(name, peer.name, n, bpp, step_s, "the K-th MultiSteps call: also folds in its micro-batch")
        return
    # Accumulate rows (torch foreach and fused accumulate the same way: run once).
    if not (isinstance(peer, Torch) and peer.variant == "fused"):
        peer.setup(n, "adamw", False, False)
        for name, key, bpp in ACC_ROWS:
            samples = []
            for r in range(-1, repeats):
                for j in range(k):
                    dt = timed(lambda: peer.accumulate(grads[key][j]))
                    if r >= 0:
                        samples.append(dt)
                peer.step()
            cname = "torch" if isinstance(peer, Torch) else peer.name
            row(name, cname, n, bpp, samples)
    for name, optimizer, clip, fp16, bpp in STEP_ROWS:
        try:
            peer.setup(n, optimizer, clip, fp16)
        except (RuntimeError, ValueError, TypeError) as e:
            emit({"kind": "error", "row": name, "contender": peer.name, "n": n, "error": str(e)[:300]})
            continue
        key = "f16s" if fp16 else "f32"
        samples = []
        for r in range(-1, repeats):
            for j in range(k):
                peer.accumulate(grads[key][j])
            dt = timed(peer.step)
            if r >= 0:
                samples.append(dt)
        row(name, peer.name, n, bpp, samples)


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
    tensors of bench/gacc_bench.c tensors: p.grad.add_(g, alpha=W) per parameter (what
    backward does to .grad), and one torch._foreach_add_ over all of them."""
    if not isinstance(peer, Torch):
        return
    torch = peer.torch
    sizes = transformer_sizes(n, t)
    total = sum(sizes)
    rng = np.random.default_rng(0)
    params = [torch.nn.Parameter(torch.zeros(k)) for k in sizes]
    for p in params:
        p.grad = torch.zeros_like(p)
    grads = [torch.from_numpy((rng.random(k, dtype=np.float32) * 2 - 1) * GRAD_SCALE) for k in sizes]
    accs = [p.grad for p in params]

    def pgrad_add():
        for p, g in zip(params, grads):
            p.grad.add_(g, alpha=W)

    def foreach_add():
        torch._foreach_add_(accs, grads, alpha=W)

    for name, fn in (("pgrad_add", pgrad_add), ("foreach_add", foreach_add)):
        samples = []
        for r in range(-1, repeats):
            dt = timed(fn)
            if r >= 0:
                samples.append(dt)
        row(f"{name}_{len(sizes)}", "torch", total, 12, samples, f"{len(sizes)} tensors")


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

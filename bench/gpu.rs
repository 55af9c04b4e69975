//! GPU benchmark: achieved bandwidth of gacc's kernels against a device-to-device
//! copy measured in the same run (the practical ceiling on this device), and the
//! launches, host synchronisations and device-to-host copies of one micro-batch and
//! one step, counted at gacc's runtime interface.
//!
//!     eval "$(scripts/install-cuda-deps.sh)"
//!     cargo bench --bench gpu            # GACC_BENCH_NUMEL (default 2^28), GACC_BENCH_ITERS
//!
//! Bytes counted per parameter (docs/cuda.md): copy 8 (read 4 + write 4); accumulate
//! f16/bf16 10, f32 12 (the first micro-batch of a window, which writes a stale
//! accumulator without reading it: 6 and 8); norm partials 4; update AdamW + fp16 copy
//! 34, SGD-momentum 26, SGD 18 when it also zeroes acc (eager), 4 less when it does
//! not (lazy zeroing, the default); a step 4 (norm) + the update, or the update alone
//! after a micro-batch that produced the norm partials. The byte model of a whole
//! window (K micro-batches + a step) is printed first, before issue 14 and now, for
//! each optimizer and gradient dtype; the measured rows time a K = 1 window (one f32
//! micro-batch + a step) with the fused norm on and off. Whole passes are timed back to back
//! (mean of the iterations); each kernel alone is timed as the wall time between a
//! synchronisation before and after its launch (a few microseconds of overhead).
//! Without a device it prints "no CUDA device; skipped" and exits 0.
//!
//! Then per-tensor micro-batches (GACC_BENCH_TENSOR_SIZES, default 16M,64M;
//! GACC_BENCH_TENSOR_COUNTS, default 64,512; transformer-like sizes from
//! bench/model_shapes.rs), fp32 device gradients, one buffer per tensor, through the
//! engine: (a) gacc_microbatch_tensors (one launch), (b) a device-to-device copy of
//! every tensor into one buffer + gacc_microbatch, (ref) gacc_microbatch on the same
//! bytes, (c) gacc_microbatch_inplace (queues nothing; the host's own writes are its
//! GEMMs' epilogues). Not yet run on a GPU: no figures exist.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::time::Instant;

use gacc::backend::cuda::runtime::Arg;
use gacc::backend::cuda::{probe, CudaBackend, CudaRuntime, Runtime};
use gacc::backend::{Backend, BackendInit, DeviceScope, GradInput, StepRequest};
use gacc::engine::config::{Config, Dtype, RawConfig};
use gacc::engine::layout::Layout;
use gacc::engine::Engine;
use gacc::ffi::types::*;
use gacc::status::Result;

#[path = "model_shapes.rs"]
mod model_shapes;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CudaRuntime with counters, and (when `per_kernel` is on) each launch timed alone.
struct Counted {
    rt: CudaRuntime,
    launches: usize,
    syncs: usize,
    d2h: usize,
    per_kernel: bool,
    kernel_s: BTreeMap<String, f64>,
}

impl Runtime for Counted {
    fn describe(&self) -> String {
        self.rt.describe()
    }
    fn multiprocessor_count(&self) -> u32 {
        self.rt.multiprocessor_count()
    }
    fn max_active_blocks_per_sm(&mut self, kernel: &str, block: u32) -> Result<u32> {
        self.rt.max_active_blocks_per_sm(kernel, block)
    }
    fn memory_info(&mut self) -> Result<(u64, u64)> {
        self.rt.memory_info()
    }
    fn alloc(&mut self, bytes: usize) -> Result<u64> {
        self.rt.alloc(bytes)
    }
    unsafe fn free(&mut self, ptr: u64) {
        self.rt.free(ptr)
    }
    unsafe fn copy_h2d(&mut self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
        self.rt.copy_h2d(dst, src, bytes)
    }
    unsafe fn copy_d2h(&mut self, dst: *mut u8, src: u64, bytes: usize) -> Result<()> {
        self.d2h += 1;
        self.rt.copy_d2h(dst, src, bytes)
    }
    unsafe fn copy_d2d(&mut self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.rt.copy_d2d(dst, src, bytes)
    }
    unsafe fn memset(&mut self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.rt.memset(dst, value, bytes)
    }
    unsafe fn launch(&mut self, name: &str, grid: u32, block: u32, shared: u32, args: &[Arg<'_>]) -> Result<()> {
        self.launches += 1;
        if !self.per_kernel {
            return self.rt.launch(name, grid, block, shared, args);
        }
        self.rt.synchronize()?;
        let t = Instant::now();
        self.rt.launch(name, grid, block, shared, args)?;
        self.rt.synchronize()?;
        *self.kernel_s.entry(name.to_string()).or_default() += t.elapsed().as_secs_f64();
        Ok(())
    }
    fn is_device_pointer(&mut self, ptr: *const c_void) -> Result<bool> {
        self.rt.is_device_pointer(ptr)
    }
    fn synchronize(&mut self) -> Result<()> {
        self.syncs += 1;
        self.rt.synchronize()
    }
    fn finish(&mut self) -> Result<()> {
        self.rt.finish()
    }
    fn set_stream(&mut self, stream: *mut c_void) -> Result<()> {
        self.rt.set_stream(stream)
    }
    fn stream_handle(&self) -> *mut c_void {
        self.rt.stream_handle()
    }
    fn enter(&mut self) -> Result<DeviceScope> {
        Runtime::enter(&mut self.rt)
    }
    fn capturing(&mut self) -> Result<bool> {
        Runtime::capturing(&mut self.rt)
    }
}

type Be = CudaBackend<Counted>;

/// Mean seconds per call of `f` (one warm-up call; waits for the device around the
/// timed loop).
fn measure(be: &mut Be, iters: usize, mut f: impl FnMut(&mut Be)) -> f64 {
    f(be);
    be.runtime_mut().rt.synchronize().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        f(be);
    }
    be.runtime_mut().rt.synchronize().unwrap();
    t.elapsed().as_secs_f64() / iters as f64
}

/// (launches, syncs, d2h copies) of one call of `f`.
fn count(be: &mut Be, f: impl FnOnce(&mut Be)) -> (usize, usize, usize) {
    let c = be.runtime_mut();
    let before = (c.launches, c.syncs, c.d2h);
    f(be);
    let c = be.runtime_mut();
    (c.launches - before.0, c.syncs - before.1, c.d2h - before.2)
}

/// Runs `f` `iters` times with every launch timed alone; mean seconds per kernel.
fn per_kernel(be: &mut Be, iters: usize, mut f: impl FnMut(&mut Be)) -> BTreeMap<String, f64> {
    be.runtime_mut().kernel_s.clear();
    be.runtime_mut().per_kernel = true;
    for _ in 0..iters {
        f(be);
    }
    be.runtime_mut().per_kernel = false;
    be.runtime_mut().kernel_s.iter().map(|(k, s)| (k.clone(), s / iters as f64)).collect()
}

fn backend(n: usize, optimizer: u32, momentum: f32) -> Be {
    let mut raw = RawConfig::defaults();
    raw.device = 0;
    raw.precision = GACC_PRECISION_FP16;
    raw.max_grad_norm = 1.0;
    raw.optimizer = optimizer;
    raw.momentum = momentum;
    let config = Config::validate(&raw).unwrap();
    let layout = Layout::new(vec![(None, n, true)]).unwrap();
    let params = vec![0.01f32; n];
    let rt = CudaRuntime::new(0).unwrap_or_else(|e| panic!("{e}"));
    let rt = Counted { rt, launches: 0, syncs: 0, d2h: 0, per_kernel: false, kernel_s: BTreeMap::new() };
    CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params: &params }).unwrap()
}

/// Bytes per parameter of a window of `k` full-buffer micro-batches (gradients of
/// `grad` bytes per element) and one step whose update pass moves `update` bytes
/// without zeroing acc: (before issue 14, now). Before: every micro-batch reads and
/// writes acc (grad + 8), the step makes a norm pass (4) and the update also writes
/// acc = 0 (+4). Now: the first micro-batch writes acc without reading it (grad + 4),
/// the norm partials come from the last micro-batch, and acc is not zeroed.
fn window_bytes(k: u32, grad: u32, update: u32) -> (u32, u32) {
    let before = k * (grad + 8) + 4 + update + 4;
    let now = (grad + 4) + (k - 1) * (grad + 8) + update;
    (before, now)
}

/// The byte model of [`window_bytes`] for AdamW / SGD-momentum / SGD with an
/// fp16/bf16 working copy (update passes of 30, 22 and 14 bytes without the acc
/// write), f32 and f16/bf16 gradients, K = 1, 4, 16.
fn print_byte_model() {
    println!("bytes per parameter per window (K micro-batches + step), before issue 14 -> now:");
    println!("{:<22} {:>6} {:>16} {:>16} {:>16}", "optimizer", "grad", "K = 1", "K = 4", "K = 16");
    for (label, update) in [("adamw + 16-bit copy", 30), ("sgd momentum + copy", 22), ("sgd + copy", 14)] {
        for (dtype, grad) in [("f32", 4), ("16-bit", 2)] {
            let cell = |k| {
                let (b, a) = window_bytes(k, grad, update);
                format!("{b} -> {a}")
            };
            println!("{label:<22} {dtype:>6} {:>16} {:>16} {:>16}", cell(1), cell(4), cell(16));
        }
    }
    println!("(compensated accumulation, in-place hosts after gacc_accumulator_ptr, per-tensor and NCCL windows keep");
    println!(" the norm pass and/or the zeroing: docs/cuda.md)");
}

fn main() {
    print_byte_model();
    if let Err(e) = probe(0) {
        println!("no CUDA device; skipped ({})", e.message);
        return;
    }
    let n = env_usize("GACC_BENCH_NUMEL", 1 << 28);
    let iters = env_usize("GACC_BENCH_ITERS", 20);
    let mut be = backend(n, GACC_OPTIMIZER_ADAMW, 0.0);
    let name = be.runtime_mut().describe();

    // Device buffers for the copy and the gradients.
    let rt = be.runtime_mut();
    let src = rt.alloc(4 * n).unwrap();
    let dst = rt.alloc(4 * n).unwrap();
    let grad16 = rt.alloc(2 * n).unwrap();
    let grad32 = rt.alloc(4 * n).unwrap();
    // SAFETY: each buffer was just allocated with these sizes.
    unsafe {
        rt.memset(src, 0, 4 * n).unwrap();
        rt.memset(grad16, 0, 2 * n).unwrap();
        rt.memset(grad32, 0, 4 * n).unwrap();
    }

    let gb = |bytes_per_param: f64, secs: f64| bytes_per_param * n as f64 / secs / 1e9;
    // SAFETY (all closures below): every pointer holds the n elements it is used for.
    let copy_s = measure(&mut be, iters, |be| unsafe { be.runtime_mut().copy_d2d(dst, src, 4 * n).unwrap() });
    let copy_gbs = gb(8.0, copy_s);
    let accumulate = |ptr: u64, dtype: Dtype| {
        move |be: &mut Be| {
            let g = GradInput { ptr: ptr as *const c_void, dtype, numel: n };
            unsafe { be.accumulate(&g, 1.0, 1.0).unwrap() };
        }
    };
    let req = StepRequest { total_weight: 1.0, lr: 1e-3 };
    let acc16_s = measure(&mut be, iters, accumulate(grad16, Dtype::F16));
    let acc16_bf = measure(&mut be, iters, accumulate(grad16, Dtype::BF16));
    let acc32_s = measure(&mut be, iters, accumulate(grad32, Dtype::F32));
    let step_s = measure(&mut be, iters, |be| be.step(&req).unwrap());
    let mb_counts = count(&mut be, accumulate(grad16, Dtype::F16));
    let step_counts = count(&mut be, |be| be.step(&req).unwrap());
    // A K = 1 window: one f32 micro-batch into a stale accumulator, then the step,
    // with the norm partials from the micro-batch (fused) and without.
    let window = |be: &mut Be| {
        accumulate(grad32, Dtype::F32)(be);
        be.step(&req).unwrap();
    };
    let window_fused_s = measure(&mut be, iters, window);
    let fused_step_counts = count(&mut be, |be| {
        accumulate(grad32, Dtype::F32)(be);
        let c = be.runtime_mut();
        let before = c.launches;
        be.step(&req).unwrap();
        assert!(be.runtime_mut().launches - before <= 2, "a step after a flat micro-batch is at most 2 launches");
    });
    be.set_fused_norm(false);
    let window_plain_s = measure(&mut be, iters, window);
    be.set_fused_norm(true);
    let mut kernels = per_kernel(&mut be, iters, accumulate(grad16, Dtype::F16));
    kernels.extend(per_kernel(&mut be, iters, accumulate(grad32, Dtype::F32)));
    kernels.extend(per_kernel(&mut be, iters, |be| be.step(&req).unwrap()));

    println!("device: {name}; {n} parameters; {iters} iterations each");
    println!("{:<34} {:>10} {:>10} {:>9}", "pass", "ms", "GB/s", "vs copy");
    let row = |label: &str, bytes: f64, s: f64| {
        let g = gb(bytes, s);
        println!("{label:<34} {:>10.3} {:>10.1} {:>8.0}%", s * 1e3, g, 100.0 * g / copy_gbs);
    };
    row("d2d copy (8 B/param)", 8.0, copy_s);
    row("accumulate f16 (10 B/param)", 10.0, acc16_s);
    row("accumulate bf16 (10 B/param)", 10.0, acc16_bf);
    row("accumulate f32 (12 B/param)", 12.0, acc32_s);
    row("step adamw+fp16 (38 B/param)", 38.0, step_s);
    let (before, now) = window_bytes(1, 4, 30);
    row(&format!("window K=1 f32 + step, fused ({now} B/param)"), f64::from(now), window_fused_s);
    row(&format!("window K=1 f32 + step, norm pass ({} B/param)", before - 4), f64::from(before - 4), window_plain_s);
    println!(
        "  (fused vs norm pass: {:.2}x the time; the byte model says {now}/{})",
        window_fused_s / window_plain_s,
        before - 4
    );
    println!("kernels alone (synchronised before and after each launch):");
    let bytes = |k: &str| match k {
        "gacc_accumulate_f16" | "gacc_accumulate_bf16" => Some(10.0),
        "gacc_accumulate_f32" => Some(12.0),
        "gacc_norm_partials" => Some(4.0),
        "gacc_update_adamw" => Some(34.0),
        "gacc_update_sgd_momentum" => Some(26.0),
        "gacc_update_sgd" => Some(18.0),
        _ => None,
    };
    let show = |kernels: &BTreeMap<String, f64>| {
        for (k, s) in kernels {
            match bytes(k) {
                Some(b) => row(&format!("  {k} ({b} B/param)"), b, *s),
                None => println!("  {k:<32} {:>10.3}", s * 1e3),
            }
        }
    };
    show(&kernels);
    let (l, s, d) = mb_counts;
    println!("per micro-batch (f16 device gradient): {l} launches, {s} host syncs, {d} device-to-host copies");
    let (l, s, d) = step_counts;
    println!("per step without info (adamw, no micro-batch before it): {l} launches, {s} host syncs, {d} device-to-host copies");
    let (l, s, d) = fused_step_counts;
    println!(
        "per f32 micro-batch + step without info (fused norm): {l} launches, {s} host syncs, {d} device-to-host copies"
    );

    let rt = be.runtime_mut();
    // SAFETY: allocated above, not used again.
    unsafe {
        for p in [src, dst, grad16, grad32] {
            rt.free(p);
        }
    }
    drop(be);

    // The SGD updates, on their own engines.
    for (label, optimizer, momentum) in [("sgd momentum", GACC_OPTIMIZER_SGD, 0.9), ("sgd", GACC_OPTIMIZER_SGD, 0.0)] {
        let mut be = backend(n, optimizer, momentum);
        let grad = be.runtime_mut().alloc(2 * n).unwrap();
        // SAFETY: grad holds n f16 values.
        unsafe { be.runtime_mut().memset(grad, 0, 2 * n).unwrap() };
        measure(&mut be, 1, accumulate(grad, Dtype::F16));
        let k = per_kernel(&mut be, iters, |be| be.step(&req).unwrap());
        println!("step {label}, kernels alone:");
        show(&k);
        // SAFETY: allocated above, not used again.
        unsafe { be.runtime_mut().free(grad) };
    }
    tensor_rows(iters);
}

fn parse_size(s: &str) -> usize {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().expect("sizes like 16M,64M") * mul
}

/// Mean seconds per call of `f` on an engine; the loss-scale read waits for the device.
fn measure_engine(e: &mut Engine, iters: usize, mut f: impl FnMut(&mut Engine)) -> f64 {
    f(e);
    e.loss_scale().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        f(e);
    }
    e.loss_scale().unwrap();
    t.elapsed().as_secs_f64() / iters as f64
}

/// The per-tensor rows of the module comment.
fn tensor_rows(iters: usize) {
    let list = |var: &str, default: &str| -> Vec<usize> {
        std::env::var(var).unwrap_or_else(|_| default.into()).split(',').map(parse_size).collect()
    };
    println!("\nper-tensor micro-batches (fp32 device gradients), ms per micro-batch:");
    println!(
        "{:>8} {:>8} {:>14} {:>16} {:>14} {:>14} {:>10}",
        "params", "tensors", "(a) per-tensor", "(b) copy+concat", "(ref) concat", "(c) in place", "(a)/(ref)"
    );
    for &n in &list("GACC_BENCH_TENSOR_SIZES", "16M,64M") {
        for &t in &list("GACC_BENCH_TENSOR_COUNTS", "64,512") {
            let shape = model_shapes::transformer_sizes(n, t);
            let total: usize = shape.iter().sum();
            let mut raw = RawConfig::defaults();
            raw.device = 0;
            let config = Config::validate(&raw).unwrap();
            let layout = Layout::new(shape.iter().map(|&k| (None, k, true)).collect()).unwrap();
            let mut e = Engine::new(config, layout.clone(), &vec![0.0f32; total]).unwrap();
            // Device buffers: one per tensor, and the concatenation (allocated by a
            // second runtime on the same device; the engine tells device pointers
            // apart through the driver).
            let mut rt = CudaRuntime::new(0).unwrap();
            let bufs: Vec<u64> = shape.iter().map(|&k| rt.alloc(4 * k).unwrap()).collect();
            let flat = rt.alloc(4 * total).unwrap();
            // SAFETY: each buffer was just allocated with these sizes.
            unsafe {
                for (&b, &k) in bufs.iter().zip(&shape) {
                    rt.memset(b, 0, 4 * k).unwrap();
                }
                rt.memset(flat, 0, 4 * total).unwrap();
            }
            rt.synchronize().unwrap();
            let grads: Vec<Option<GradInput>> = bufs
                .iter()
                .zip(&shape)
                .map(|(&b, &k)| Some(GradInput { ptr: b as *const c_void, dtype: Dtype::F32, numel: k }))
                .collect();
            let concat = GradInput { ptr: flat as *const c_void, dtype: Dtype::F32, numel: total };
            // SAFETY (all closures): every pointer holds the elements it is used for.
            let a = measure_engine(&mut e, iters, |e| unsafe { e.microbatch_tensors(&grads, 1.0).unwrap() });
            let b = measure_engine(&mut e, iters, |e| {
                let mut off = 0u64;
                for (&src, &k) in bufs.iter().zip(&shape) {
                    // The host's copies, on its own stream (the legacy default stream
                    // of this second runtime), then waited for before the call.
                    unsafe { rt.copy_d2d(flat + off, src, 4 * k).unwrap() };
                    off += 4 * k as u64;
                }
                rt.synchronize().unwrap();
                unsafe { e.microbatch(&concat, 1.0).unwrap() };
            });
            let r = measure_engine(&mut e, iters, |e| unsafe { e.microbatch(&concat, 1.0).unwrap() });
            let c = measure_engine(&mut e, iters, |e| e.microbatch_inplace(1.0).unwrap());
            e.zero().unwrap();
            println!(
                "{:>8} {:>8} {:>14.3} {:>16.3} {:>14.3} {:>14.4} {:>10.2}",
                total,
                shape.len(),
                a * 1e3,
                b * 1e3,
                r * 1e3,
                c * 1e3,
                a / r
            );
            drop(e);
            // SAFETY: allocated above, not used again.
            unsafe {
                for p in bufs.into_iter().chain([flat]) {
                    rt.free(p);
                }
            }
        }
    }
}

//! GPU benchmark: achieved bandwidth of gacc's kernels against a device-to-device
//! copy measured in the same run (the practical ceiling on this device).
//!
//!     eval "$(scripts/install-cuda-deps.sh)"
//!     cargo bench --bench gpu            # GACC_BENCH_NUMEL (default 2^28), GACC_BENCH_ITERS
//!
//! Bytes counted per parameter (docs/cuda.md): copy 8 (read 4 + write 4);
//! accumulate f16 10, f32 12; step (AdamW, fp16 working copy) 4 (norm) + 34 (update).
//! Without a device it prints "no CUDA device; skipped" and exits 0.
//!
//! Then per-tensor micro-batches (GACC_BENCH_TENSOR_SIZES, default 16M,64M;
//! GACC_BENCH_TENSOR_COUNTS, default 64,512; transformer-like sizes from
//! bench/model_shapes.rs), fp32 device gradients, one buffer per tensor, through the
//! engine: (a) gacc_microbatch_tensors (one launch), (b) a device-to-device copy of
//! every tensor into one buffer + gacc_microbatch, (ref) gacc_microbatch on the same
//! bytes, (c) gacc_microbatch_inplace (queues nothing; the host's own writes are its
//! GEMMs' epilogues). Not yet run on a GPU: no figures exist.

use std::ffi::c_void;
use std::time::Instant;

use gacc::backend::cuda::{probe, CudaBackend, CudaRuntime, Runtime};
use gacc::backend::{Backend, BackendInit, GradInput, StepRequest};
use gacc::engine::config::{default_raw_config, Config, Dtype};
use gacc::engine::layout::Layout;
use gacc::engine::Engine;
use gacc::ffi::types::*;

#[path = "model_shapes.rs"]
mod model_shapes;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Mean seconds per call of `f` (one warm-up call; waits for the device around
/// the timed loop).
fn measure(be: &mut CudaBackend<CudaRuntime>, iters: usize, mut f: impl FnMut(&mut CudaBackend<CudaRuntime>)) -> f64 {
    f(be);
    be.runtime_mut().synchronize().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        f(be);
    }
    be.runtime_mut().synchronize().unwrap();
    t.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    if let Err(e) = probe(0) {
        println!("no CUDA device; skipped ({})", e.message);
        return;
    }
    let n = env_usize("GACC_BENCH_NUMEL", 1 << 28);
    let iters = env_usize("GACC_BENCH_ITERS", 20);
    let mut raw = default_raw_config();
    raw.device = 0;
    raw.precision = GACC_PRECISION_FP16;
    raw.max_grad_norm = 1.0;
    let config = Config::validate(&raw).unwrap();
    let layout = Layout::new(vec![(None, n, true)]).unwrap();
    let params = vec![0.01f32; n];
    let rt = CudaRuntime::new(0).unwrap_or_else(|e| panic!("{e}"));
    let name = rt.describe();
    let mut be = CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params: &params }).unwrap();
    drop(params);

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
        move |be: &mut CudaBackend<CudaRuntime>| {
            let g = GradInput { ptr: ptr as *const c_void, dtype, numel: n };
            unsafe { be.accumulate(&g, 1.0, 1.0).unwrap() };
        }
    };
    let acc16_s = measure(&mut be, iters, accumulate(grad16, Dtype::F16));
    let acc32_s = measure(&mut be, iters, accumulate(grad32, Dtype::F32));
    let req = StepRequest { total_weight: 1.0, lr: 1e-3 };
    let step_s = measure(&mut be, iters, |be| be.step(&req).unwrap());

    println!("device: {name}; {n} parameters; {iters} iterations each");
    println!("{:<28} {:>10} {:>10} {:>9}", "pass", "ms", "GB/s", "vs copy");
    let row = |label: &str, bytes: f64, s: f64| {
        let g = gb(bytes, s);
        println!("{label:<28} {:>10.3} {:>10.1} {:>8.0}%", s * 1e3, g, 100.0 * g / copy_gbs);
    };
    row("d2d copy (8 B/param)", 8.0, copy_s);
    row("accumulate f16 (10 B/param)", 10.0, acc16_s);
    row("accumulate f32 (12 B/param)", 12.0, acc32_s);
    row("step adamw+fp16 (38 B/param)", 38.0, step_s);

    let rt = be.runtime_mut();
    // SAFETY: allocated above, not used again.
    unsafe {
        for p in [src, dst, grad16, grad32] {
            rt.free(p);
        }
    }
    drop(be);
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
            let mut raw = default_raw_config();
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

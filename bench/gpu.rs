//! GPU benchmark: achieved bandwidth of gacc's kernels against a device-to-device
//! copy measured in the same run (the practical ceiling on this device).
//!
//!     eval "$(scripts/install-cuda-deps.sh)"
//!     cargo bench --bench gpu            # GACC_BENCH_NUMEL (default 2^28), GACC_BENCH_ITERS
//!
//! Bytes counted per parameter (docs/cuda.md): copy 8 (read 4 + write 4);
//! accumulate f16 10, f32 12; step (AdamW, fp16 working copy) 4 (norm) + 34 (update).
//! Without a device it prints "no CUDA device; skipped" and exits 0.

use std::ffi::c_void;
use std::time::Instant;

use gacc::backend::cuda::{probe, CudaBackend, CudaRuntime, Runtime};
use gacc::backend::{Backend, BackendInit, GradInput, StepRequest};
use gacc::engine::config::{default_raw_config, Config, Dtype};
use gacc::engine::layout::Layout;
use gacc::ffi::types::*;

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
}

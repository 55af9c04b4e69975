//! CPU throughput of gacc against a STREAM-style baseline measured in the same run.
//!
//!     cargo bench --bench cpu                      # 1M, 16M, 64M parameters
//!     GACC_BENCH_SIZES=1M,16M cargo bench --bench cpu
//!     GACC_BENCH_REPEATS=15 (default 11)  GACC_CPU_THREADS=n (default: all cores)
//!
//! Byte model (STREAM convention: bytes the kernel asks for, each read and each
//! write counted once; write-allocate traffic is not counted, for STREAM either):
//! - accumulate f32:  4 read grad + 4 read acc + 4 write acc            = 12 B/elem
//!   compensated (Kahan): + 4 read comp + 4 write comp                   = 20 B/elem
//!   drop non-finite: + 4 read grad (the finiteness check)               = 16 B/elem
//! - accumulate f16/bf16: 2 read grad + 4 read acc + 4 write acc        = 10 B/elem
//! - step SGD momentum: norm pass 4 (read acc) + fused pass reads acc, p, buf (12)
//!   and writes p, buf, acc (12)                                         = 28 B/elem
//! - step AdamW: norm pass 4 + fused pass reads acc, p, m, v (16) and writes p, m,
//!   v, acc (16)                                                         = 36 B/elem
//! - step AdamW + clipping: the same two passes (the coefficient is a scalar) = 36
//! - step AdamW + FP16 scaling: 36 + 2 (fp16 working copy written)       = 38 B/elem
//! - whole window, K = 4 f32 micro-batches + AdamW + clip + bf16 working copy:
//!   12 K + 38 = 86 B/elem (timed together)
//! - STREAM copy a = b: 8 B/elem; STREAM add a = b + c: 12 B/elem (f32).
//! - Extra baseline, in-place add a += b: 12 B/elem. STREAM's kernels write a
//!   third array, so each written line is also read first (write-allocate): add
//!   really moves 16 B/elem, copy 12. gacc's passes update their buffers in place
//!   (no write-allocate), like a += b; only the fp16/bf16 working copy is a
//!   write-only stream.
//!
//! The `B/elem` column is what this build moves (issue 14's passes): the first
//! micro-batch of a window writes acc instead of adding (8 B/elem f32, 6 f16/bf16: the
//! "first of window" rows, timed after gacc_zero), the step needs no norm pass after a
//! full-buffer micro-batch and writes no acc = 0, the window is 8 + 12 (K - 1) + 30 = 74;
//! compensated accumulation keeps the old bytes, and so do the per-tensor rows (the host
//! took gacc_accumulator_ptr). `B/elem before` is what the passes moved before issue 14.
//! GB/s and the ratio columns use `B/elem`.
//!
//! STREAM runs on gacc's own CPU pool (src/backend/cpu/pool.rs) with the same chunking
//! (32K-element chunks, sequential below 256K elements).
//!
//! Per-tensor micro-batches (second table; GACC_BENCH_TENSOR_SIZES, default 16M,64M;
//! GACC_BENCH_TENSOR_COUNTS, default 64,512; transformer-like sizes from
//! bench/model_shapes.rs), one fp32 gradient buffer per tensor, side by side:
//! (a) gacc_microbatch_tensors on the per-tensor buffers (12 B/elem);
//! (b) copy every buffer into one concatenated buffer (8 B/elem) + gacc_microbatch;
//! (ref) gacc_microbatch on an already concatenated buffer of the same bytes;
//! (c) in place: the host's own acc += g into gacc_accumulator_ptr (12 B/elem, the
//!     writes a fused backward would do anyway) and the gacc_microbatch_inplace call
//!     alone (no data moves).

use std::hint::black_box;
use std::os::raw::c_void;
use std::time::Instant;

use gacc::backend::cpu::parallel::{SharedMut, WorkItem};
use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status;

#[path = "model_shapes.rs"]
mod model_shapes;

/// Same as src/backend/cpu/parallel.rs (CHUNK, PARALLEL_THRESHOLD).
const CHUNK: usize = 32 * 1024;
const PARALLEL_THRESHOLD: usize = 256 * 1024;

/// The same values in a buffer allocated the way gacc allocates its own (huge-page
/// advice from 8 MiB, src/alloc.rs), so STREAM, the host's gradients and gacc's state
/// all sit on the same kind of pages.
fn pages<T: Clone + Default>(v: Vec<T>) -> Vec<T> {
    gacc::alloc::try_copy(&v, "benchmark buffer").expect("benchmark buffer")
}

fn parse_size(s: &str) -> usize {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().expect("GACC_BENCH_SIZES: sizes like 1M,16M,64M") * mul
}

fn size_name(n: usize) -> String {
    if n.is_multiple_of(1 << 20) {
        format!("{}M", n >> 20)
    } else if n.is_multiple_of(1 << 10) {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

struct Timing {
    median: f64,
    min: f64,
    max: f64,
}

/// Runs `f` once to warm up, then at least `repeats` times and for at least
/// 0.25 s (at most 500 times); seconds per call.
fn time(repeats: usize, mut f: impl FnMut()) -> Timing {
    f();
    let start = Instant::now();
    let mut t: Vec<f64> = Vec::new();
    while t.len() < repeats || (start.elapsed().as_secs_f64() < 0.25 && t.len() < 500) {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Timing { median: t[t.len() / 2], min: t[0], max: t[t.len() - 1] }
}

/// Like `time`, with `setup` run before every call of `f` and not timed.
fn time_after(repeats: usize, mut setup: impl FnMut(), mut f: impl FnMut()) -> Timing {
    setup();
    f();
    let start = Instant::now();
    let mut t: Vec<f64> = Vec::new();
    while t.len() < repeats || (start.elapsed().as_secs_f64() < 0.25 && t.len() < 500) {
        setup();
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Timing { median: t[t.len() / 2], min: t[0], max: t[t.len() - 1] }
}

fn check(s: gacc_status) {
    if s != gacc_status::GACC_OK {
        let msg = unsafe { std::ffi::CStr::from_ptr(gacc_last_error()) };
        panic!("{s:?}: {}", msg.to_string_lossy());
    }
}

/// Runs `body(start, end)` over the CHUNK-sized ranges of 0..len on gacc's own CPU
/// pool, as gacc's passes do (on the calling thread below PARALLEL_THRESHOLD).
fn par_ranges(len: usize, body: impl Fn(usize, usize) + Sync) {
    let chunks = len.div_ceil(CHUNK);
    let range = |k: usize| body(k * CHUNK, ((k + 1) * CHUNK).min(len));
    if len >= PARALLEL_THRESHOLD {
        gacc::backend::cpu::pool::global().run(chunks, &range);
    } else {
        (0..chunks).for_each(range);
    }
}

/// Elements start..end of a buffer shared by parallel tasks (gacc's own SharedMut).
///
/// # Safety
/// `start..end` lies inside the buffer and no other live slice overlaps it.
#[allow(clippy::mut_from_ref)]
unsafe fn range(base: &SharedMut<f32>, start: usize, end: usize) -> &mut [f32] {
    base.slice(&WorkItem { start, end, decay: false })
}

fn stream_copy(a: &mut [f32], b: &[f32]) {
    let dst = SharedMut(a.as_mut_ptr());
    // SAFETY: disjoint chunk ranges of a.
    par_ranges(a.len(), |s, e| unsafe { range(&dst, s, e) }.copy_from_slice(&b[s..e]));
}

fn inplace_add(a: &mut [f32], b: &[f32]) {
    let dst = SharedMut(a.as_mut_ptr());
    par_ranges(a.len(), |s, e| {
        // SAFETY: disjoint chunk ranges of a.
        for (a, &b) in unsafe { range(&dst, s, e) }.iter_mut().zip(&b[s..e]) {
            *a += b;
        }
    });
}

fn stream_add(a: &mut [f32], b: &[f32], c: &[f32]) {
    let dst = SharedMut(a.as_mut_ptr());
    par_ranges(a.len(), |s, e| {
        // SAFETY: disjoint chunk ranges of a.
        for ((a, &b), &c) in unsafe { range(&dst, s, e) }.iter_mut().zip(&b[s..e]).zip(&c[s..e]) {
            *a = b + c;
        }
    });
}

struct Engine(*mut gacc_engine, usize);

impl Engine {
    fn new(cfg: &gacc_config, n: usize) -> Engine {
        let init: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect();
        let desc = [
            gacc_tensor_desc { name: std::ptr::null(), numel: n - n / 64, init: init.as_ptr(), no_weight_decay: 0 },
            gacc_tensor_desc {
                name: std::ptr::null(),
                numel: n / 64,
                init: init[n - n / 64..].as_ptr(),
                no_weight_decay: 1,
            },
        ];
        let mut h = std::ptr::null_mut();
        check(unsafe { gacc_create(cfg, desc.as_ptr(), if n >= 64 { 2 } else { 1 }, &mut h) });
        Engine(h, n)
    }
    fn mb(&self, ptr: *const c_void, dtype: u32, w: f64) {
        check(unsafe { gacc_microbatch(self.0, ptr, dtype, self.1, w) });
    }
    fn step(&self) {
        check(unsafe { gacc_step(self.0, std::ptr::null_mut()) });
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        gacc_destroy(self.0);
    }
}

fn base_config(optimizer: u32) -> gacc_config {
    let mut c = std::mem::MaybeUninit::<gacc_config>::uninit();
    unsafe { gacc_config_init(c.as_mut_ptr()) };
    let mut c = unsafe { c.assume_init() };
    c.device = GACC_DEVICE_CPU;
    c.optimizer = optimizer;
    c
}

struct Row {
    kernel: String,
    size: usize,
    /// Bytes per element of today's passes.
    bytes: usize,
    /// Bytes per element of issue 14's design for the same work.
    /// What the row moved before issue 14.
    bytes_before: usize,
    t: Timing,
    /// STREAM add GB/s: median, best.
    stream_add: f64,
    stream_add_best: f64,
}

impl Row {
    fn gbs(&self, secs: f64) -> f64 {
        (self.bytes * self.size) as f64 / secs / 1e9
    }
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is ignored.
    let sizes: Vec<usize> =
        std::env::var("GACC_BENCH_SIZES").unwrap_or_else(|_| "1M,16M,64M".into()).split(',').map(parse_size).collect();
    let repeats: usize = std::env::var("GACC_BENCH_REPEATS").ok().and_then(|s| s.parse().ok()).unwrap_or(11);
    let threads = gacc::backend::cpu::pool::global().threads();
    println!("gacc CPU benchmark: {threads} threads (gacc's CPU pool), >= {repeats} repeats and >= 0.25 s per row (+1 warm-up), median [min..max]\n");

    let mut rows: Vec<Row> = Vec::new();
    for &n in &sizes {
        // STREAM baseline, same pool, same chunking, same size.
        let (copy, add, inplace) = {
            let mut a = pages(vec![0f32; n]);
            let b: Vec<f32> = pages((0..n).map(|i| i as f32).collect());
            let c: Vec<f32> = pages((0..n).map(|i| (i % 7) as f32).collect());
            let copy = time(repeats, || {
                stream_copy(&mut a, &b);
                black_box(&a);
            });
            let add = time(repeats, || {
                stream_add(&mut a, &b, &c);
                black_box(&a);
            });
            let inplace = time(repeats, || {
                inplace_add(&mut a, &b);
                black_box(&a);
            });
            (copy, add, inplace)
        };
        let add_gbs = (12 * n) as f64 / add.median / 1e9;
        let add_best = (12 * n) as f64 / add.min / 1e9;
        // (what the row moves now, what it moved before issue 14)
        let row_min = |kernel: &str, before: usize, bytes: usize, t: Timing| Row {
            kernel: kernel.into(),
            size: n,
            bytes,
            bytes_before: before,
            t,
            stream_add: add_gbs,
            stream_add_best: add_best,
        };
        let row = |kernel: &str, bytes: usize, t: Timing| row_min(kernel, bytes, bytes, t);
        rows.push(row("STREAM copy a=b", 8, copy));
        rows.push(row("STREAM add a=b+c", 12, add));
        rows.push(row("in-place add a+=b", 12, inplace));

        // Accumulate, per gradient dtype.
        {
            let e = Engine::new(&base_config(GACC_OPTIMIZER_SGD), n);
            let g32: Vec<f32> = pages((0..n).map(|i| (i % 13) as f32 * 1e-3).collect());
            let g16: Vec<half::f16> = pages(g32.iter().map(|&x| half::f16::from_f32(x)).collect());
            let gb16: Vec<half::bf16> = pages(g32.iter().map(|&x| half::bf16::from_f32(x)).collect());
            for (name, ptr, dtype, bytes) in [
                ("accumulate f32 grad", g32.as_ptr() as *const c_void, GACC_DTYPE_F32, 12),
                ("accumulate f16 grad", g16.as_ptr() as *const c_void, GACC_DTYPE_F16, 10),
                ("accumulate bf16 grad", gb16.as_ptr() as *const c_void, GACC_DTYPE_BF16, 10),
            ] {
                // The first micro-batch of a window (after gacc_zero, not timed), then
                // later ones (the window keeps filling).
                let first = time_after(repeats, || check(unsafe { gacc_zero(e.0) }), || e.mb(ptr, dtype, 1.0));
                rows.push(row_min(&format!("{name}, first of window"), bytes, bytes - 4, first));
                let t = time(repeats, || e.mb(ptr, dtype, 1.0));
                rows.push(row(name, bytes, t));
            }
            // The numerics options on the f32 path: Kahan compensation reads and
            // writes one more buffer; dropping a non-finite micro-batch reads the
            // gradient once more to check it before the add.
            let mut kahan = base_config(GACC_OPTIMIZER_SGD);
            kahan.compensated_accumulation = 1;
            let mut drop = base_config(GACC_OPTIMIZER_SGD);
            drop.drop_nonfinite_microbatches = 1;
            for (name, cfg, bytes) in
                [("accumulate f32, compensated", kahan, 20), ("accumulate f32, drop non-finite", drop, 16)]
            {
                let e = Engine::new(&cfg, n);
                let t = time(repeats, || e.mb(g32.as_ptr() as *const c_void, GACC_DTYPE_F32, 1.0));
                rows.push(row(name, bytes, t));
            }
        }

        // Full steps (the micro-batch that fills the window is not timed).
        let g32: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 1e-3).collect();
        let mut sgd = base_config(GACC_OPTIMIZER_SGD);
        sgd.lr = 1e-2;
        sgd.momentum = 0.9;
        let adamw = base_config(GACC_OPTIMIZER_ADAMW);
        let mut clip = adamw;
        clip.max_grad_norm = 1.0;
        let mut fp16 = adamw;
        fp16.precision = GACC_PRECISION_FP16;
        for (name, cfg, bytes) in [
            ("step SGD momentum", sgd, 28),
            ("step AdamW", adamw, 36),
            ("step AdamW + clip", clip, 36),
            ("step AdamW + FP16 scaling", fp16, 38),
        ] {
            // Issue 14: no norm pass after the full-buffer micro-batch, no acc = 0.
            let bytes_min = bytes - 8;
            let e = Engine::new(&cfg, n);
            // The scale is a power of two and the gradient is small: no overflow, so
            // every timed step is applied.
            let mut s = 0f32;
            check(unsafe { gacc_loss_scale(e.0, &mut s) });
            let g: Vec<f32> = pages(g32.iter().map(|&x| x * s).collect());
            let mut samples = Vec::with_capacity(repeats);
            let start = Instant::now();
            let mut r = 0;
            while r <= repeats || (start.elapsed().as_secs_f64() < 0.25 && r <= 500) {
                r += 1;
                e.mb(g.as_ptr() as *const c_void, GACC_DTYPE_F32, 1.0);
                let t0 = Instant::now();
                e.step();
                if r > 1 {
                    samples.push(t0.elapsed().as_secs_f64());
                }
            }
            let mut info = gacc_step_info::default();
            e.mb(g.as_ptr() as *const c_void, GACC_DTYPE_F32, 1.0);
            check(unsafe { gacc_step(e.0, &mut info) });
            assert_eq!(info.applied, 1, "{name}: a timed step was skipped");
            samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let t = Timing { median: samples[samples.len() / 2], min: samples[0], max: samples[samples.len() - 1] };
            rows.push(row_min(name, bytes, bytes_min, t));
        }

        // The whole window: K f32 micro-batches + AdamW + clip + bf16 working copy.
        {
            const K: usize = 4;
            let mut cfg = clip;
            cfg.precision = GACC_PRECISION_BF16;
            let e = Engine::new(&cfg, n);
            let t = time(repeats, || {
                for _ in 0..K {
                    e.mb(g32.as_ptr() as *const c_void, GACC_DTYPE_F32, 1.0);
                }
                e.step();
            });
            rows.push(row_min(
                "window: 4 micro-batches + AdamW + clip + bf16 copy",
                12 * K + 38,
                8 + 12 * (K - 1) + 30,
                t,
            ));
        }
    }

    println!(
        "| kernel | params | B/elem | B/elem before issue 14 | median ms | GB/s median [min..max] | STREAM add GB/s median | \
         ratio to add (median) | ratio to add (best/best) |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.1} [{:.1}..{:.1}] | {:.1} | {:.2} | {:.2} |",
            r.kernel,
            size_name(r.size),
            r.bytes,
            r.bytes_before,
            r.t.median * 1e3,
            r.gbs(r.t.median),
            r.gbs(r.t.max),
            r.gbs(r.t.min),
            r.stream_add,
            r.gbs(r.t.median) / r.stream_add,
            r.gbs(r.t.min) / r.stream_add_best,
        );
    }

    tensor_rows(repeats);

    // Per-call overhead through the C ABI on a tiny model.
    let n = 1000;
    let e = Engine::new(&base_config(GACC_OPTIMIZER_ADAMW), n);
    let g = vec![1e-3f32; n];
    let calls = 200_000;
    let mb = time(5, || {
        for _ in 0..calls {
            e.mb(g.as_ptr() as *const c_void, GACC_DTYPE_F32, 1.0);
        }
    });
    check(unsafe { gacc_zero(e.0) });
    let pair = time(5, || {
        for _ in 0..calls / 4 {
            e.mb(g.as_ptr() as *const c_void, GACC_DTYPE_F32, 1.0);
            e.step();
        }
    });
    let mut numel = 0usize;
    let lookup = time(5, || {
        for _ in 0..calls {
            check(unsafe { gacc_numel(e.0, &mut numel) });
        }
        black_box(numel);
    });
    let lookup_ns = lookup.median / calls as f64 * 1e9;
    let mb_ns = mb.median / calls as f64 * 1e9;
    let pair_ns = pair.median / (calls / 4) as f64 * 1e9;
    println!("\nPer-call cost through the C ABI, 1000-parameter AdamW engine (median of 5 x {calls} calls):\n");
    println!("| call | ns per call |");
    println!("|---|---:|");
    println!("| gacc_numel (the boundary alone: catch_unwind, handle lookup, engine lock) | {lookup_ns:.0} |");
    println!("| gacc_microbatch (f32, 1000 elements) | {mb_ns:.0} |");
    println!("| gacc_step (AdamW, 1000 elements, info NULL) | {:.0} |", pair_ns - mb_ns);
}

/// An engine over the given tensor sizes (SGD, CPU), and its accumulator pointers.
fn tensor_engine(sizes: &[usize]) -> (*mut gacc_engine, Vec<*mut f32>) {
    let desc: Vec<gacc_tensor_desc> = sizes
        .iter()
        .map(|&numel| gacc_tensor_desc { name: std::ptr::null(), numel, init: std::ptr::null(), no_weight_decay: 0 })
        .collect();
    let mut h = std::ptr::null_mut();
    check(unsafe { gacc_create(&base_config(GACC_OPTIMIZER_SGD), desc.as_ptr(), desc.len(), &mut h) });
    let accs = (0..sizes.len())
        .map(|t| {
            let mut p = std::ptr::null_mut();
            check(unsafe { gacc::ffi::tensors::gacc_accumulator_ptr(h, t, &mut p) });
            p
        })
        .collect();
    (h, accs)
}

/// The per-tensor rows: (a), (b), (ref) and (c) of the module comment.
fn tensor_rows(repeats: usize) {
    let parse = |var: &str, default: &str| -> Vec<usize> {
        std::env::var(var).unwrap_or_else(|_| default.into()).split(',').map(parse_size).collect()
    };
    let sizes = parse("GACC_BENCH_TENSOR_SIZES", "16M,64M");
    let counts = parse("GACC_BENCH_TENSOR_COUNTS", "64,512");
    println!("\nPer-tensor micro-batches (fp32 gradients, one buffer per tensor; median [min..max] ms):\n");
    println!(
        "| params | tensors | (a) per-tensor call | (b) copy + gacc_microbatch | (ref) gacc_microbatch, same bytes | \
         (c) host acc += g in place | (c) gacc_microbatch_inplace call | (a) / (ref) | (b) - (a) |"
    );
    println!("|---|---:|---|---|---|---|---:|---:|---:|");
    for &n in &sizes {
        for &t in &counts {
            let shape = model_shapes::transformer_sizes(n, t);
            let total: usize = shape.iter().sum();
            // One buffer per tensor, each starting on its own 4 KiB page, carved from one
            // arena allocated like the concatenated buffer below (huge-page advice), so
            // (a) and (ref) read the same kind of pages and differ only in gacc's code
            // and the tensors' layout.
            let page = 1024; // f32s per 4 KiB
            let mut arena = pages(vec![0f32; shape.iter().map(|&k| k.div_ceil(page) * page).sum()]);
            let mut grads: Vec<&[f32]> = Vec::with_capacity(shape.len());
            let mut rest: &mut [f32] = &mut arena;
            for &k in &shape {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(k.div_ceil(page) * page);
                for (i, x) in head[..k].iter_mut().enumerate() {
                    *x = ((i % 13) as f32 - 6.0) * 1e-3;
                }
                grads.push(&head[..k]);
                rest = tail;
            }
            let entries: Vec<gacc::ffi::tensors::gacc_grad> = grads
                .iter()
                .map(|g| gacc::ffi::tensors::gacc_grad {
                    data: g.as_ptr() as *const c_void,
                    dtype: GACC_DTYPE_F32,
                    numel: g.len(),
                })
                .collect();
            let (h, accs) = tensor_engine(&shape);
            // Where each tensor starts in the concatenated buffer of (b).
            let offsets: Vec<usize> = shape.iter().scan(0, |at, &k| Some(std::mem::replace(at, *at + k))).collect();
            let per_tensor = time(repeats, || {
                check(unsafe { gacc::ffi::tensors::gacc_microbatch_tensors(h, entries.as_ptr(), entries.len(), 1.0) })
            });
            let mut flat = pages(vec![0f32; total]);
            let copy_then = time(repeats, || {
                // The host's copy into one buffer, in parallel over the tensors.
                let dst = SharedMut(flat.as_mut_ptr());
                gacc::backend::cpu::pool::global().run(grads.len(), &|t| {
                    // SAFETY: tensor t's range of the concatenation; ranges are disjoint.
                    unsafe { range(&dst, offsets[t], offsets[t] + grads[t].len()) }.copy_from_slice(grads[t]);
                });
                check(unsafe { gacc_microbatch(h, flat.as_ptr() as *const c_void, GACC_DTYPE_F32, total, 1.0) });
            });
            let reference = time(repeats, || {
                check(unsafe { gacc_microbatch(h, flat.as_ptr() as *const c_void, GACC_DTYPE_F32, total, 1.0) })
            });
            let host_add = time(repeats, || {
                let targets: Vec<SharedMut<f32>> = accs.iter().map(|&p| SharedMut(p)).collect();
                gacc::backend::cpu::pool::global().run(grads.len(), &|t| {
                    // SAFETY: the accumulator of tensor t holds grads[t].len() floats; the
                    // engine is not called while the host writes.
                    let a = unsafe { range(&targets[t], 0, grads[t].len()) };
                    for (a, &x) in a.iter_mut().zip(grads[t].iter()) {
                        *a += x;
                    }
                });
            });
            let calls = 10_000;
            let inplace_call = time(5, || {
                for _ in 0..calls {
                    check(unsafe { gacc::ffi::tensors::gacc_microbatch_inplace(h, 1.0) });
                }
            });
            check(unsafe { gacc_zero(h) });
            gacc_destroy(h);
            let ms = |t: &Timing| format!("{:.3} [{:.3}..{:.3}]", t.median * 1e3, t.min * 1e3, t.max * 1e3);
            println!(
                "| {} | {t} | {} | {} | {} | {} | {:.0} ns | {:.2} | {:.3} ms |",
                size_name(n),
                ms(&per_tensor),
                ms(&copy_then),
                ms(&reference),
                ms(&host_add),
                inplace_call.median / calls as f64 * 1e9,
                per_tensor.median / reference.median,
                (copy_then.median - per_tensor.median) * 1e3,
            );
        }
    }
}

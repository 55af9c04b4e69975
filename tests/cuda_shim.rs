//! Layer 2 of the CUDA verification: the kernels in kernels/*.cu compiled for the
//! host (kernels/shim/, g++ at test time) and driven by the CUDA backend's own
//! orchestration (CudaBackend<ShimRuntime>: buffer sizes, launch order, grids,
//! argument lists), compared element by element with the CPU backend.
//!
//! Run: cargo test --test cuda_shim   (needs g++ with C++20: Debian's g++ 12 works)

mod support;
use support::cuda;

use std::cell::RefCell;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cuda::{Case, Target};
use gacc::backend::cuda::launch;
use gacc::backend::cuda::runtime::Runtime;
use gacc::backend::cuda::state::{DeviceState, Hyper};
use gacc::backend::cuda::{CudaBackend, ShimLibrary, ShimRuntime};
use gacc::backend::{Backend, BackendInit, GradInput, StepRequest};
use gacc::engine::config::{Config, Dtype};
use gacc::engine::layout::Layout;
use gacc::engine::Engine;

/// Simulated multiprocessors: small, so grids stay small and the shim fast.
const SM: u32 = 2;
const SHIM_MEMORY: u64 = 1 << 30;

/// Builds the shim library once per test process.
fn shim() -> Arc<ShimLibrary> {
    static LIB: OnceLock<Arc<ShimLibrary>> = OnceLock::new();
    LIB.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gacc-shim");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join(format!("libgacc_shim_{}.so", std::process::id()));
        cuda::build_host_library(&out, None, &[root.join("kernels/shim/shim_main.cpp")]);
        ShimLibrary::open(&out).unwrap()
    })
    .clone()
}

struct ShimTarget {
    lib: Arc<ShimLibrary>,
    sm: u32,
    uploads: RefCell<ShimRuntime>,
    live: RefCell<Vec<u64>>,
}

impl ShimTarget {
    fn new() -> ShimTarget {
        ShimTarget::with_sm(SM)
    }
    fn with_sm(sm: u32) -> ShimTarget {
        let lib = shim();
        ShimTarget {
            uploads: RefCell::new(ShimRuntime::new(lib.clone(), sm, SHIM_MEMORY)),
            lib,
            sm,
            live: RefCell::new(Vec::new()),
        }
    }
}

impl Target for ShimTarget {
    fn engine(&self, config: Config, layout: Layout, params: &[f32]) -> Engine {
        let rt = ShimRuntime::new(self.lib.clone(), self.sm, SHIM_MEMORY);
        let backend =
            CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params }).expect("shim backend");
        Engine::from_parts(config, layout, Box::new(backend), gacc::engine::config::Device::Cuda(0))
    }
    fn read_device(&self, ptr: *const c_void, bytes: usize) -> Vec<u8> {
        let mut out = vec![0xA5u8; bytes];
        // SAFETY: shim device memory is host memory of at least `bytes`.
        unsafe { self.uploads.borrow_mut().copy_d2h(out.as_mut_ptr(), ptr as u64, bytes).unwrap() };
        out
    }
    fn upload(&self, data: &[u8], offset: usize) -> *const c_void {
        let mut rt = self.uploads.borrow_mut();
        let p = rt.alloc(data.len() + offset).unwrap();
        // SAFETY: p holds data.len() + offset bytes.
        unsafe { rt.copy_h2d(p + offset as u64, data.as_ptr(), data.len()).unwrap() };
        self.live.borrow_mut().push(p);
        (p + offset as u64) as *const c_void
    }
    fn write_device(&self, ptr: *mut c_void, data: &[u8]) {
        // SAFETY: shim device memory is host memory of at least data.len() bytes.
        unsafe { self.uploads.borrow_mut().copy_h2d(ptr as u64, data.as_ptr(), data.len()).unwrap() };
    }
    fn release(&self) {
        for p in self.live.borrow_mut().drain(..) {
            // SAFETY: allocated by upload().
            unsafe { self.uploads.borrow_mut().free(p) };
        }
    }
}

fn run_cases(filter: impl Fn(&Case) -> bool) {
    let target = ShimTarget::new();
    let cases: Vec<Case> = cuda::cases().into_iter().filter(|c| filter(c)).collect();
    assert!(!cases.is_empty());
    for case in &cases {
        cuda::run_case(&target, case);
    }
    println!("{} cases compared with the CPU backend", cases.len());
}

#[test]
fn shim_matches_cpu_adamw() {
    run_cases(|c| c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_ADAMW);
}

#[test]
fn shim_matches_cpu_sgd() {
    run_cases(|c| c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_SGD && c.momentum == 0.0);
}

#[test]
fn shim_matches_cpu_sgd_momentum_and_nesterov() {
    run_cases(|c| c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_SGD && c.momentum != 0.0);
}

#[test]
fn shim_matches_cpu_with_numerics_options() {
    // Hysteresis (floor, cap), dropping non-finite micro-batches (all-dropped windows
    // included), Kahan compensation and stochastic rounding, alone and together, over
    // every optimizer x precision x clipping: bit-identical to the CPU backend where
    // the CPU is (no clipping), including acc, comp, the device window total, the
    // dropped count, the scaler state and the working copy.
    let target = ShimTarget::new();
    let cases = cuda::option_cases();
    for case in &cases {
        cuda::run_case(&target, case);
    }
    println!("{} option cases compared with the CPU backend", cases.len());
}

#[test]
fn shim_loss_scale_policies_match_deepspeed_and_gradscaler() {
    // The kernels' scaler (kernels/scaler.cu through CudaBackend<ShimRuntime>) against
    // DeepSpeed's own DynamicLossScaler and torch's rule (tests/support/cuda/loss_scale.rs).
    // 32 configurations of up to 40 steps: a shim step starts an OS thread per CUDA
    // thread (tens of ms), so the hundreds of configurations run on the CPU backend
    // (tests/numerics.rs) and on a GPU (tests/gpu.rs); the rule is one kernel function.
    let Some(refs) = cuda::loss_scale::references("shim_policies", 32, 40) else { return };
    let make = |config: Config, layout: Layout, params: &[f32]| ShimTarget::new().engine(config, layout, params);
    let (ds, gs, steps) = cuda::loss_scale::replay(&make, &refs);
    let version = &refs.deepspeed_version;
    println!("shim: {ds} DeepSpeed {version} cases, {gs} GradScaler cases, {steps} steps: identical");
    assert!(ds >= 20 && gs >= 6);
}

#[test]
fn shim_is_deterministic_with_numerics_options() {
    cuda::run_determinism_with_options(&ShimTarget::new());
}

#[test]
fn drop_mode_adds_one_launch_per_microbatch_and_none_per_step() {
    let mut case = cuda::cases()[0].clone();
    case.tensors = (0..20).map(|i| (3 + i % 7, i % 2 == 0)).collect();
    case.drop_nonfinite = true;
    case.compensated = true;
    let (mut be, n) = shim_backend(&case);
    let mut g = vec![1.0f32; n];
    g[3] = f32::NAN;
    let (d2h, syncs) = (be.runtime().stats().d2h_copies, be.runtime().stats().syncs);
    let before = be.runtime().stats().launches.len();
    // SAFETY: g holds n f32.
    unsafe {
        be.accumulate(&GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n }, 1.0, 2.0).unwrap();
        g[3] = 1.0;
        be.accumulate(&GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n }, 1.0, 3.0).unwrap();
    }
    let names: Vec<&str> = be.runtime().stats().launches[before..].iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["gacc_check_finite", "gacc_accumulate_f32", "gacc_check_finite", "gacc_accumulate_f32"]);
    let before = be.runtime().stats().launches.len();
    be.step(&StepRequest { total_weight: 5.0, lr: 0.01 }).unwrap();
    let names: Vec<&str> = be.runtime().stats().launches[before..].iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["gacc_norm_partials", "gacc_finalize", "gacc_update_adamw"]);
    assert_eq!((be.runtime().stats().d2h_copies, be.runtime().stats().syncs), (d2h, syncs), "no transfer, no sync");
    let report = be.last_report().unwrap();
    assert_eq!((report.applied, report.dropped, report.window_total), (true, 1, 3.0));
    // The device counts as data parallelism reads and replaces them.
    assert_eq!(be.window_counts().unwrap(), (0.0, 0), "reset by the step");
    be.set_window_counts(7.5, 3).unwrap();
    assert_eq!(be.window_counts().unwrap(), (7.5, 3));
    be.zero_window().unwrap();
    assert_eq!(be.window_counts().unwrap(), (0.0, 0), "gacc_zero clears them (two memsets)");
}

#[test]
fn shim_grid_stride_loops_cover_buffers_larger_than_the_grid() {
    // One simulated multiprocessor: 8 blocks x 256 threads x 4 elements = 8192
    // elements per sweep of the element-wise kernels, 4096 for the norm pass, so
    // 20010 parameters take three sweeps (and a scalar tail of 2).
    let target = ShimTarget::with_sm(1);
    let tensors = vec![(10007, true), (3, false), (10000, true)];
    let n: usize = tensors.iter().map(|t| t.0).sum();
    assert!(n > 2 * 4 * 256 * 8 && !n.is_multiple_of(4));
    let picks = [(0, false), (9, true), (14, false), (22, true)];
    for (index, device_grads) in picks {
        let mut case = cuda::cases()[index].clone();
        case.tensors = tensors.clone();
        case.name = format!("{} (n={n}, 1 SM)", case.name);
        case.device_grads = device_grads;
        case.windows = 3;
        cuda::run_case(&target, &case);
    }
}

#[test]
fn shim_is_deterministic() {
    cuda::run_determinism(&ShimTarget::new());
}

#[test]
fn shared_struct_sizes_match_the_kernels() {
    let lib = shim();
    assert_eq!(lib.size_of("gacc_state"), std::mem::size_of::<DeviceState>());
    assert_eq!(lib.size_of("gacc_hyper"), std::mem::size_of::<Hyper>());
    assert_eq!(lib.size_of("gacc_tensor_entry"), std::mem::size_of::<gacc::backend::cuda::tensors::TensorEntry>());
}

#[test]
fn shim_per_tensor_matches_cpu() {
    let target = ShimTarget::new();
    for case in cuda::tensors::tensor_cases() {
        cuda::tensors::run_tensor_case(&target, &case);
    }
}

#[test]
fn shim_inplace_matches_cpu() {
    cuda::tensors::run_inplace(&ShimTarget::new());
}

#[test]
fn per_tensor_call_is_one_launch_whatever_the_tensor_count() {
    // 300 tensors, device gradients: one launch (two in drop mode), and a repeated
    // call with the same pointers uploads nothing (the table is cached).
    for drop_mode in [false, true] {
        let mut case = cuda::cases()[0].clone();
        case.tensors = (0..300).map(|i| (1 + i % 9, i % 2 == 0)).collect();
        case.drop_nonfinite = drop_mode;
        let (mut be, _) = shim_backend(&case);
        let layout = cuda::layout_for(&case);
        let target = ShimTarget::new();
        let grads: Vec<gacc::backend::TensorGrad> = layout
            .tensors
            .iter()
            .enumerate()
            .map(|(index, t)| {
                let bytes: Vec<u8> = (0..t.numel).flat_map(|i| (i as f32).to_le_bytes()).collect();
                let ptr = target.upload(&bytes, 0);
                let grad = GradInput { ptr, dtype: Dtype::F32, numel: t.numel };
                gacc::backend::TensorGrad { grad, offset: t.offset, index }
            })
            .collect();
        for call in 0..2 {
            let (launches, h2d) = (be.runtime().stats().launches.len(), be.runtime().stats().h2d_copies);
            // SAFETY: every gradient holds numel f32 of shim device memory.
            unsafe { be.accumulate_tensors(&grads, 1.0, 1.0).unwrap() };
            let names: Vec<&str> = be.runtime().stats().launches[launches..].iter().map(|l| l.0.as_str()).collect();
            let want: &[&str] = if drop_mode {
                &["gacc_check_finite_tensors", "gacc_accumulate_tensors"]
            } else {
                &["gacc_accumulate_tensors"]
            };
            assert_eq!(names, want);
            assert_eq!(be.runtime().stats().h2d_copies - h2d, usize::from(call == 0), "table uploads on call {call}");
        }
        let s = be.export_state().unwrap();
        for t in &layout.tensors {
            for i in 0..t.numel {
                assert_eq!(s.acc[t.offset + i], 2.0 * i as f32);
            }
        }
        // No tensor listed (every entry NULL): one launch, which only books the
        // micro-batch's weight in the device's window total (the step reads it there).
        let launches = be.runtime().stats().launches.len();
        // SAFETY: nothing is read.
        unsafe { be.accumulate_tensors(&[], 1.0, 5.0).unwrap() };
        assert_eq!(be.runtime().stats().launches.len() - launches, 1);
        assert_eq!(be.window_counts().unwrap(), (7.0, 0), "2 + 5 booked on the device");
        // An in-place micro-batch books the same way, and moves no data.
        be.book_inplace(0.5).unwrap();
        assert_eq!(be.runtime().stats().launches.len() - launches, 2);
        assert_eq!(be.window_counts().unwrap(), (7.5, 0), "2 + 5 + 0.5 booked on the device");
        target.release();
    }
}

fn shim_backend(case: &Case) -> (CudaBackend<ShimRuntime>, usize) {
    let config = cuda::config_for(case);
    let layout = cuda::layout_for(case);
    let params = vec![0.5f32; layout.numel];
    let rt = ShimRuntime::new(shim(), SM, SHIM_MEMORY);
    (CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params: &params }).unwrap(), layout.numel)
}

/// The step's norm pass path (fused norm off; see also
/// a_step_after_a_flat_microbatch_is_two_launches for the default).
#[test]
fn a_step_is_three_launches_with_no_transfer_or_sync() {
    // Many tensors with alternating decay flags: the launch count must not grow.
    let mut case = cuda::cases()[0].clone();
    case.tensors = (0..50).map(|i| (3 + i % 7, i % 2 == 0)).collect();
    let (mut be, n) = shim_backend(&case);
    be.set_fused_norm(false);
    let g = vec![1.0f32; n];
    let before = be.runtime().stats().launches.len();
    // SAFETY: g holds n f32.
    unsafe {
        be.accumulate(&GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n }, 1.0, 1.0).unwrap()
    };
    assert_eq!(be.runtime().stats().launches.len() - before, 1, "a micro-batch is one launch");
    let (d2h, syncs) = (be.runtime().stats().d2h_copies, be.runtime().stats().syncs);
    let before = be.runtime().stats().launches.len();
    be.step(&StepRequest { total_weight: 1.0, lr: 0.01 }).unwrap();
    let names: Vec<&str> = be.runtime().stats().launches[before..].iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["gacc_norm_partials", "gacc_finalize", "gacc_update_adamw"]);
    assert_eq!(
        (be.runtime().stats().d2h_copies, be.runtime().stats().syncs),
        (d2h, syncs),
        "step without info: no transfer, no sync"
    );
    let grids = be.grids();
    let (grid, norm_grid) = (grids.update, grids.norm);
    assert_eq!(grid, launch::elementwise_grid(n, SM, gacc::backend::cuda::shim::SHIM_BLOCKS_PER_SM));
    assert_eq!(norm_grid, launch::norm_grid(n, SM));
    for (name, g, block) in &be.runtime().stats().launches[before..] {
        let expect = if name == "gacc_finalize" {
            (1, 1)
        } else if name == "gacc_norm_partials" {
            (norm_grid, 256)
        } else {
            (grid, 256)
        };
        assert_eq!((*g, *block), expect, "{name}");
    }
    let report = be.last_report().unwrap();
    assert!(report.applied && report.step == 1);
}

#[test]
fn host_and_device_gradients_are_told_apart() {
    let case = cuda::cases()[0].clone();
    let (mut be, n) = shim_backend(&case);
    let g = vec![2.0f32; n];
    let target = ShimTarget::new();
    let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
    let device = target.upload(&bytes, 0);
    // SAFETY: both hold n f32.
    unsafe {
        be.accumulate(&GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n }, 1.0, 1.0).unwrap();
        let staged = be.runtime().stats().d2h_copies;
        be.accumulate(&GradInput { ptr: device, dtype: Dtype::F32, numel: n }, 1.0, 1.0).unwrap();
        assert_eq!(be.runtime().stats().d2h_copies, staged);
    }
    let s = be.export_state().unwrap();
    assert!(s.acc.iter().all(|&a| a == 4.0), "host + device gradients: {:?}", &s.acc[..4]);
    target.release();
}

#[test]
fn loss_scale_pointer_reads_the_device_state() {
    let mut case = cuda::cases()[0].clone();
    case.precision = gacc::ffi::types::GACC_PRECISION_FP16;
    let (mut be, _) = shim_backend(&case);
    let p = be.loss_scale_ptr().unwrap();
    // SAFETY: shim device memory is host memory.
    assert_eq!(unsafe { *p }, 1024.0);
    assert_eq!(be.loss_scale().unwrap(), 1024.0);
    be.set_stream(std::ptr::null_mut()).unwrap();
}

#[test]
fn too_large_for_the_device_is_invalid_argument_naming_numel() {
    let case = cuda::cases()[0].clone();
    let config = cuda::config_for(&case);
    let layout = Layout::new(vec![(None, 1 << 28, true)]).unwrap();
    let rt = ShimRuntime::new(shim(), SM, 1 << 20);
    // The check happens before anything is allocated or read.
    let err = CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params: &[] }).err().unwrap();
    assert_eq!(err.status, gacc::gacc_status::GACC_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("numel"), "{}", err.message);
}

/// Checkpoints of a CUDA engine (its state lives in device memory, here the shim's):
/// saved in the middle of a window and loaded into a fresh CUDA engine, the run ends
/// bit-identical to the uninterrupted one; and the same file loaded into a CPU engine
/// continues bit-identically too (no clipping: the backends round alike).
#[test]
fn checkpoint_resume_on_the_cuda_backend_is_exact_and_portable() {
    let case =
        cuda::cases().into_iter().find(|c| !c.clip && c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_ADAMW).unwrap();
    checkpoint_resume_case(case, "plain");
}

/// The same with every numerics option on (hysteresis counter, device window total
/// and dropped count, comp.<i> tensors, stochastic rounding).
#[test]
fn checkpoint_resume_with_numerics_options_is_exact_and_portable() {
    let mut case = cuda::cases()
        .into_iter()
        .find(|c| {
            !c.clip
                && c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_ADAMW
                && c.precision == gacc::ffi::types::GACC_PRECISION_FP16
        })
        .unwrap();
    case.hysteresis = 3;
    case.drop_nonfinite = true;
    case.compensated = true;
    case.stochastic_rounding = true;
    checkpoint_resume_case(case, "options");
}

fn checkpoint_resume_case(mut case: Case, tag: &str) {
    let target = ShimTarget::new();
    case.tensors = vec![(300, true), (7, false), (45, true)];
    let config = cuda::config_for(&case);
    let layout = cuda::layout_for(&case);
    let n = layout.numel;
    let init: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
    let grads: Vec<(Vec<f32>, f64)> = (0..24)
        .map(|k| {
            let mut g: Vec<f32> = (0..n).map(|i| (((i * 13 + k * 7) % 29) as f32 - 14.0) / 16.0).collect();
            if k == 9 || (case.drop_nonfinite && k % 5 == 2) {
                g[5] = f32::NAN; // a skipped window inside the run (drop mode: dropped)
            }
            (g, 1.0 + (k % 5) as f64)
        })
        .collect();
    let feed = |e: &mut Engine, range: std::ops::Range<usize>| {
        for k in range {
            let (g, w) = &grads[k];
            let input = GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n };
            // SAFETY: host memory of n floats; CUDA engines accept host pointers.
            unsafe { e.microbatch(&input, *w) }.unwrap();
            if k % 3 == 2 {
                e.step(true).unwrap();
            }
        }
    };
    let params = |e: &mut Engine| {
        let mut p = vec![0f32; n];
        e.read_params(&mut p).unwrap();
        p.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    let mut whole = target.engine(config, layout.clone(), &init);
    feed(&mut whole, 0..24);

    let dir = std::env::temp_dir().join(format!("gacc-shim-ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cuda.safetensors");
    let mut first = target.engine(config, layout.clone(), &init);
    feed(&mut first, 0..13); // stops one micro-batch into a window
    gacc::checkpoint::save(&mut first, &path).unwrap();
    drop(first);

    let mut resumed = target.engine(config, layout.clone(), &vec![0.0; n]);
    gacc::checkpoint::load(&mut resumed, &path).unwrap();
    feed(&mut resumed, 13..24);
    assert_eq!(params(&mut resumed), params(&mut whole), "CUDA resume differs");

    let mut cpu = Engine::new(config, layout, &vec![0.0; n]).unwrap();
    gacc::checkpoint::load(&mut cpu, &path).unwrap();
    feed(&mut cpu, 13..24);
    assert_eq!(params(&mut cpu), params(&mut whole), "CUDA checkpoint resumed on the CPU differs");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The gradient of micro-batch `k` of replay `r` (drop mode: replay 1's second
/// micro-batch holds a NaN, the others are finite).
fn capture_grad(n: usize, r: usize, k: usize, nan: bool) -> Vec<f32> {
    let mut g: Vec<f32> = (0..n).map(|i| ((((i * 7 + k * 11 + r * 5) % 23) as f32) - 11.0) / 32.0).collect();
    if nan && r == 1 && k == 1 {
        g[n / 2] = f32::NAN;
    }
    g
}

/// A window (K micro-batches with device gradients, then gacc_step without info)
/// captured once and replayed N times, with the learning rate changed before every
/// replay and new gradients written into the captured buffers, against N windows
/// of direct calls on the CPU backend: bit-identical parameters, working copy, loss
/// scale and optimizer state, and the step count right afterwards. Fails when the
/// learning rate, the window total or drop mode's flag is a frozen kernel argument.
fn captured_window_replays_like_direct_windows(mut case: Case) {
    const K: usize = 3;
    const N: usize = 4;
    let target = ShimTarget::new();
    let (mut dut, mut cpu, graph) = captured_and_cpu_engines(&mut case);
    let n = dut.numel();
    let weights = [1.0, 2.5, 0.5];
    let lrs = [0.02f32, 0.005, 0.0, 0.03];
    let to_bytes = |g: &[f32]| g.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let buffers: Vec<*const c_void> =
        (0..K).map(|k| target.upload(&to_bytes(&capture_grad(n, 0, k, false)), 0)).collect();
    let feed_cpu = |e: &mut Engine, r: usize| {
        for (k, w) in weights.iter().enumerate() {
            let g = capture_grad(n, r, k, case.drop_nonfinite);
            // SAFETY: host memory of n floats.
            unsafe { e.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, *w) }.unwrap();
        }
        e.step(false).unwrap();
    };

    graph.lock().unwrap().begin_capture();
    for (k, w) in weights.iter().enumerate() {
        // SAFETY: device memory of n floats (the shim's).
        unsafe { dut.microbatch(&GradInput { ptr: buffers[k], dtype: Dtype::F32, numel: n }, *w) }.unwrap();
    }
    dut.step(false).unwrap();
    graph.lock().unwrap().end_capture();
    assert_eq!(dut.window(), (0.0, 0), "the host's window is closed by the captured step");
    let frozen = graph.lock().unwrap().f32_args();
    assert!(
        frozen.iter().all(|(name, _)| name.starts_with("gacc_accumulate")),
        "only the accumulate kernels' micro-batch weights are f32 arguments: {frozen:?}"
    );

    for (r, &lr) in lrs.iter().enumerate() {
        for (k, &buffer) in buffers.iter().enumerate() {
            let g = capture_grad(n, r, k, case.drop_nonfinite);
            // SAFETY: the shim's device memory is host memory of n floats.
            unsafe { std::ptr::copy_nonoverlapping(g.as_ptr(), buffer as *mut f32, n) };
        }
        dut.set_lr(lr).unwrap();
        cpu.set_lr(lr).unwrap();
        graph.lock().unwrap().replay().unwrap();
        feed_cpu(&mut cpu, r);
    }
    // A direct window after the replays: the host accepts it, the step count is the
    // device's.
    dut.set_lr(0.01).unwrap();
    cpu.set_lr(0.01).unwrap();
    let g = capture_grad(n, 9, 0, false);
    for e in [&mut dut, &mut cpu] {
        // SAFETY: host memory of n floats.
        unsafe { e.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 2.0) }.unwrap();
    }
    let (a, b) = (cpu.step(true).unwrap().unwrap(), dut.step(true).unwrap().unwrap());
    // Every window applies (a dropped micro-batch leaves the others in its window).
    assert_eq!(b.step, (N + 1) as u64, "{}: step count after {N} replays", case.name);
    assert_eq!(
        (a.step, a.applied, a.loss_scale.to_bits()),
        (b.step, b.applied, b.loss_scale.to_bits()),
        "{}",
        case.name
    );
    let (sc, sd) = (cpu.backend_mut().export_state().unwrap(), dut.backend_mut().export_state().unwrap());
    cuda::compare_f32(&format!("{}: master weights", case.name), &sc.master, &sd.master, true, 0.0);
    cuda::compare_f32(&format!("{}: optimizer state 1", case.name), &sc.state1, &sd.state1, true, 0.0);
    cuda::compare_f32(&format!("{}: optimizer state 2", case.name), &sc.state2, &sd.state2, true, 0.0);
    assert_eq!(
        (sd.loss_scale.to_bits(), sd.growth_tracker, sd.applied_steps),
        (sc.loss_scale.to_bits(), sc.growth_tracker, sc.applied_steps),
        "{}: scaler state",
        case.name
    );
    target.release();
}

#[test]
fn captured_window_replays_honour_lr_and_step_count() {
    let case = cuda::cases()
        .into_iter()
        .find(|c| {
            !c.clip
                && c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_ADAMW
                && c.precision == gacc::ffi::types::GACC_PRECISION_FP16
        })
        .unwrap();
    captured_window_replays_like_direct_windows(case);
    let sgd = cuda::cases()
        .into_iter()
        .find(|c| !c.clip && c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_SGD && c.momentum != 0.0)
        .unwrap();
    captured_window_replays_like_direct_windows(sgd);
}

#[test]
fn captured_window_replays_in_drop_mode_flag_only_their_own_microbatch() {
    // Replay 1's second micro-batch holds a NaN and is dropped; in replays 2 and 3
    // the same buffer is finite again and must be kept (a flag frozen at capture, or
    // left over from replay 1, would drop it).
    let mut case =
        cuda::cases().into_iter().find(|c| !c.clip && c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_ADAMW).unwrap();
    case.drop_nonfinite = true;
    case.compensated = true;
    captured_window_replays_like_direct_windows(case);
}

/// A one-rank device collective over the shim (test double): the sum of one rank
/// is a copy. Its drop is logged next to the runtime's.
struct OneRankCollective(Arc<std::sync::Mutex<cuda::capture::Graph>>);

impl gacc::distributed::DeviceCollective for OneRankCollective {
    fn rank(&self) -> u32 {
        0
    }
    fn world_size(&self) -> u32 {
        1
    }
    unsafe fn allreduce(
        &mut self,
        send: u64,
        recv: u64,
        count: usize,
        element: gacc::distributed::Element,
        _stream: *mut c_void,
    ) -> gacc::Result<()> {
        let bytes = count
            * match element {
                gacc::distributed::Element::F32 => 4,
                gacc::distributed::Element::F64 => 8,
            };
        // SAFETY: shim device memory is host memory of at least `bytes`.
        unsafe { std::ptr::copy(send as *const u8, recv as *mut u8, bytes) };
        Ok(())
    }
    fn describe(&self) -> String {
        "one-rank test collective".into()
    }
}

impl Drop for OneRankCollective {
    fn drop(&mut self) {
        self.0.lock().unwrap().log.push("communicator dropped".to_string());
    }
}

fn logged_engine(case: &Case) -> (Engine, Arc<std::sync::Mutex<cuda::capture::Graph>>) {
    logged_engine_with(case, &vec![0.25f32; cuda::layout_for(case).numel])
}

/// A shim engine for `case` starting from `params`, on a runtime that logs (and can
/// capture) what it is asked to do.
fn logged_engine_with(case: &Case, params: &[f32]) -> (Engine, Arc<std::sync::Mutex<cuda::capture::Graph>>) {
    let config = cuda::config_for(case);
    let layout = cuda::layout_for(case);
    let (rt, graph) = cuda::capture::CapturingRuntime::new(ShimRuntime::new(shim(), SM, SHIM_MEMORY));
    let backend = CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params }).unwrap();
    (Engine::from_parts(config, layout, Box::new(backend), gacc::engine::config::Device::Cuda(0)), graph)
}

/// What the capture tests share: `case` over three tensors (the middle one without
/// weight decay), a logged shim engine (the engine under capture) and a CPU engine
/// from the same parameters.
fn captured_and_cpu_engines(case: &mut Case) -> (Engine, Engine, Arc<std::sync::Mutex<cuda::capture::Graph>>) {
    case.tensors = vec![(1030, true), (5, false), (262, true)];
    let layout = cuda::layout_for(case);
    let init: Vec<f32> = (0..layout.numel).map(|i| ((i * 29 % 97) as f32 - 48.0) / 64.0).collect();
    let (dut, graph) = logged_engine_with(case, &init);
    let cpu = Engine::new(cuda::config_for(case), layout, &init).unwrap();
    (dut, cpu, graph)
}

/// Fails before the fix: the engine's fields dropped the backend (stream, context)
/// before the NCCL communicator.
#[test]
fn the_communicator_is_destroyed_before_the_backend() {
    let (mut engine, graph) = logged_engine(&cuda::cases()[0]);
    engine.set_device_collective(Box::new(OneRankCollective(graph.clone()))).unwrap();
    let n = engine.numel();
    let g = vec![0.5f32; n];
    // SAFETY: host memory of n floats.
    unsafe { engine.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 1.0) }.unwrap();
    assert_eq!(engine.step(true).unwrap().unwrap().step, 1);
    drop(engine);
    let log = graph.lock().unwrap().log.clone();
    let at = |what: &str| log.iter().position(|l| l == what).unwrap_or_else(|| panic!("{what} missing: {log:?}"));
    assert!(at("communicator dropped") < at("runtime dropped"), "{log:?}");
}

/// Fails before the fix: teardown synchronised the stream given to gacc_set_stream,
/// which the caller may have destroyed by then; it must wait for the engine's work
/// without naming that stream (CudaRuntime: cuCtxSynchronize).
#[test]
fn destroy_does_not_synchronise_the_callers_stream() {
    let (mut engine, graph) = logged_engine(&cuda::cases()[0]);
    engine.set_stream(0x00CA_11E4 as *mut c_void).unwrap();
    let n = engine.numel();
    let g = vec![0.5f32; n];
    // SAFETY: host memory of n floats.
    unsafe { engine.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 1.0) }.unwrap();
    engine.step(false).unwrap();
    let before = graph.lock().unwrap().log.len();
    drop(engine);
    let log = graph.lock().unwrap().log[before..].to_vec();
    assert!(!log.iter().any(|l| l.starts_with("synchronize 0xca11e4")), "teardown used the caller's stream: {log:?}");
    assert_eq!(log.first().map(String::as_str), Some("finish"), "teardown waits for the engine's work first: {log:?}");
}

fn engine_with_memory(case: &Case, memory: u64) -> gacc::Result<Engine> {
    let config = cuda::config_for(case);
    let layout = cuda::layout_for(case);
    let params = vec![0.25f32; layout.numel];
    let rt = ShimRuntime::new(shim(), SM, memory);
    let backend = CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params: &params })?;
    Ok(Engine::from_parts(config, layout, Box::new(backend), gacc::engine::config::Device::Cuda(0)))
}

/// Fails before the fix: the check at creation left out the staging buffer of host
/// gradients, so an engine that fit failed on its first host micro-batch.
#[test]
fn the_memory_check_at_create_includes_the_staging_buffer() {
    let case = cuda::cases()[0].clone();
    let config = cuda::config_for(&case);
    let layout = cuda::layout_for(&case);
    let n = layout.numel;
    let need = gacc::backend::cuda::backend::device_bytes(&config, n, layout.runs.len(), launch::norm_grid(n, SM));
    let err = engine_with_memory(&case, need - 1).err().expect("one byte short must fail at create");
    assert_eq!(err.status, gacc::gacc_status::GACC_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("numel"), "{}", err.message);
    let mut engine = engine_with_memory(&case, need).unwrap();
    let g = vec![0.5f32; n];
    // SAFETY: host memory of n floats (goes through the staging buffer).
    unsafe { engine.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 1.0) }.unwrap();
    engine.step(true).unwrap();
}

/// Fails before the fix: gacc_set_nccl's buffers were allocated only while joining
/// the group, after the communicator existed; now the device is checked (and the
/// buffers allocated) before, and an engine too full for them is refused there.
#[test]
fn a_device_too_full_for_the_nccl_buffers_is_refused_before_the_communicator() {
    let case = cuda::cases()[0].clone();
    let config = cuda::config_for(&case);
    let layout = cuda::layout_for(&case);
    let n = layout.numel;
    let need = gacc::backend::cuda::backend::device_bytes(&config, n, layout.runs.len(), launch::norm_grid(n, SM));
    let mut engine = engine_with_memory(&case, need).unwrap();
    let g = vec![0.5f32; n];
    // SAFETY: host memory of n floats: the staging buffer is allocated.
    unsafe { engine.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 1.0) }.unwrap();
    engine.zero().unwrap();
    let err = engine.prepare_device_collective().expect_err("no room for the NCCL buffers");
    assert_eq!(err.status, gacc::gacc_status::GACC_ERR_OUT_OF_MEMORY);
    assert!(err.message.contains("gacc_set_nccl") && err.message.contains("bytes"), "{}", err.message);
    let extra = gacc::backend::cuda::backend::device_group_bytes(n);
    let mut roomy = engine_with_memory(&case, need + extra).unwrap();
    roomy.prepare_device_collective().unwrap();
}

/// Fails before the fix (8 blocks per multiprocessor for every kernel): each
/// element-wise kernel's grid is the runtime's occupancy answer for that kernel
/// times the multiprocessor count, and the launches use it.
#[test]
fn grids_follow_the_occupancy_answer_per_kernel() {
    let mut case = cuda::cases()[0].clone();
    assert_eq!(case.optimizer, gacc::ffi::types::GACC_OPTIMIZER_ADAMW);
    case.tensors = vec![(40_000, true), (3, false)];
    case.drop_nonfinite = true;
    let config = cuda::config_for(&case);
    let layout = cuda::layout_for(&case);
    let n = layout.numel;
    let mut rt = ShimRuntime::new(shim(), SM, SHIM_MEMORY);
    rt.set_occupancy("gacc_update_adamw", 5);
    rt.set_occupancy("gacc_check_finite", 3);
    let params = vec![0.5f32; n];
    let mut be = CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params: &params }).unwrap();
    // The occupancy grid of the accumulate kernels is the one without the fused norm
    // (with it, they run on the norm grid: a_step_after_a_flat_microbatch_is_two_launches).
    be.set_fused_norm(false);
    let grids = be.grids();
    assert!(n > 4 * 256 * 8 * SM as usize, "n covers every cap");
    assert_eq!((grids.update, grids.check_finite, grids.accumulate(Dtype::F32)), (5 * SM, 3 * SM, 8 * SM));
    let g = vec![1.0f32; n];
    let before = be.runtime().stats().launches.len();
    // SAFETY: g holds n f32.
    unsafe { be.accumulate(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 1.0, 1.0) }.unwrap();
    be.step(&StepRequest { total_weight: 1.0, lr: 0.01 }).unwrap();
    let launched: Vec<(&str, u32)> =
        be.runtime().stats().launches[before..].iter().map(|l| (l.0.as_str(), l.1)).collect();
    assert_eq!(
        launched,
        [
            ("gacc_check_finite", 3 * SM),
            ("gacc_accumulate_f32", 8 * SM),
            ("gacc_norm_partials", launch::norm_grid(n, SM)),
            ("gacc_finalize", 1),
            ("gacc_update_adamw", 5 * SM)
        ]
    );
}

/// gacc_set_lr between direct steps (0 included) on a CUDA engine: the device's
/// learning rate follows, bit-identical to the CPU backend, step counts equal; and
/// a checkpoint restore carries its learning rate to the device.
#[test]
fn lr_changes_between_steps_match_the_cpu() {
    for optimizer in [gacc::ffi::types::GACC_OPTIMIZER_ADAMW, gacc::ffi::types::GACC_OPTIMIZER_SGD] {
        let case = cuda::cases().into_iter().find(|c| !c.clip && c.optimizer == optimizer).unwrap();
        let config = cuda::config_for(&case);
        let layout = cuda::layout_for(&case);
        let n = layout.numel;
        let init: Vec<f32> = (0..n).map(|i| ((i * 31 % 89) as f32 - 44.0) / 64.0).collect();
        let target = ShimTarget::new();
        let mut dut = target.engine(config, layout.clone(), &init);
        let mut cpu = Engine::new(config, layout.clone(), &init).unwrap();
        for (w, lr) in [0.03f32, 0.0, 0.001, 0.02, 0.0075].into_iter().enumerate() {
            let g = capture_grad(n, w, 0, false);
            for e in [&mut dut, &mut cpu] {
                e.set_lr(lr).unwrap();
                // SAFETY: host memory of n floats.
                unsafe { e.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 1.5) }
                    .unwrap();
            }
            let (a, b) = (cpu.step(true).unwrap().unwrap(), dut.step(true).unwrap().unwrap());
            assert_eq!((a.step, a.applied), (b.step, b.applied), "{}: window {w}", case.name);
        }
        let mut p_cpu = vec![0f32; n];
        let mut p_dut = vec![0f32; n];
        cpu.read_params(&mut p_cpu).unwrap();
        dut.read_params(&mut p_dut).unwrap();
        cuda::compare_f32(&format!("{}: master after an lr schedule", case.name), &p_cpu, &p_dut, true, 0.0);
        // A snapshot taken at lr 0.0075, restored into an engine now at lr 0.5.
        let snap = dut.snapshot().unwrap();
        let mut resumed = target.engine(config, layout, &init);
        resumed.set_lr(0.5).unwrap();
        resumed.restore(&snap).unwrap();
        assert_eq!(resumed.lr(), 0.0075);
        let g = capture_grad(n, 7, 0, false);
        for e in [&mut resumed, &mut cpu] {
            // SAFETY: host memory of n floats.
            unsafe { e.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 1.0) }.unwrap();
            e.step(false).unwrap();
        }
        cpu.read_params(&mut p_cpu).unwrap();
        resumed.read_params(&mut p_dut).unwrap();
        cuda::compare_f32(&format!("{}: master after a restore", case.name), &p_cpu, &p_dut, true, 0.0);
    }
}

// ---- Issue 14: lazy zeroing and the norm partials from the accumulation pass ----

/// A shim engine for `case` (the backend's fused norm as asked) and the device
/// address of its accumulator, taken without gacc_accumulator_ptr (which would
/// switch the engine to eager zeroing).
fn shim_engine(case: &Case, init: &[f32], fused: bool) -> (Engine, u64) {
    let config = cuda::config_for(case);
    let layout = cuda::layout_for(case);
    let rt = ShimRuntime::new(shim(), SM, SHIM_MEMORY);
    let mut backend = CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params: init }).unwrap();
    backend.set_fused_norm(fused);
    let acc = backend.accumulator_device_ptr();
    (Engine::from_parts(config, layout, Box::new(backend), gacc::engine::config::Device::Cuda(0)), acc)
}

/// Micro-batch gradient values (a NaN at n / 3 when `nan`).
fn lazy_grad(n: usize, salt: usize, nan: bool) -> Vec<f32> {
    let mut g: Vec<f32> = (0..n).map(|i| ((((i * 13 + salt * 7) % 29) as f32) - 14.0) / 16.0).collect();
    if nan {
        g[n / 3] = f32::NAN;
    }
    g
}

/// `values` as `dtype` bytes, one element of padding in front when `misaligned`
/// (a host pointer that is not 16-byte aligned for f32 / 8-byte for f16/bf16).
fn grad_storage(values: &[f32], dtype: Dtype, misaligned: bool) -> Vec<u32> {
    let mut bytes: Vec<u8> = vec![0; if misaligned { dtype.size() } else { 0 }];
    for &v in values {
        match dtype {
            Dtype::F32 => bytes.extend(v.to_le_bytes()),
            Dtype::F16 => bytes.extend(half::f16::from_f32(v).to_bits().to_le_bytes()),
            Dtype::BF16 => bytes.extend(half::bf16::from_f32(v).to_bits().to_le_bytes()),
        }
    }
    bytes.resize(bytes.len().div_ceil(4) * 4 + 16, 0);
    // u32 words: the buffer itself is 4-byte aligned; a vector of 16-byte alignment
    // is what the allocator gives on x86-64 for sizes like these (checked below).
    bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn feed(e: &mut Engine, storage: &[u32], dtype: Dtype, misaligned: bool, n: usize, weight: f64) {
    let base = storage.as_ptr() as *const u8;
    // SAFETY: storage holds the padding and n elements of dtype.
    let ptr = unsafe { base.add(if misaligned { dtype.size() } else { 0 }) };
    // SAFETY: host memory of n elements of dtype.
    unsafe { e.microbatch(&GradInput { ptr: ptr.cast(), dtype, numel: n }, weight) }.unwrap();
}

/// Fails before issue 14 (no fused engine existed to compare; the step was always 3
/// launches): flat micro-batches that produce the norm partials give step infos
/// (grad_norm, clip coefficient, loss scale, applied), weights, optimizer state and
/// checkpoints bit-identical to the separate norm pass, over gradient dtypes, vector
/// and scalar paths, clipping, MEAN/SUM, drop mode with dropped and all-dropped
/// windows, and windows after a step (stale accumulator) and after gacc_zero.
#[test]
fn fused_norm_partials_equal_the_norm_pass_bit_for_bit() {
    let mut checked = 0;
    for (i, mut case) in cuda::cases().into_iter().enumerate().filter(|(i, _)| i % 3 != 1) {
        case.drop_nonfinite = i % 2 == 0;
        let layout = cuda::layout_for(&case);
        let n = layout.numel;
        let init: Vec<f32> = (0..n).map(|j| ((j * 31 % 89) as f32 - 44.0) / 64.0).collect();
        let (mut fused, _) = shim_engine(&case, &init, true);
        let (mut plain, _) = shim_engine(&case, &init, false);
        let misaligned = i % 4 == 3;
        for w in 0..5 {
            if w == 3 {
                for e in [&mut fused, &mut plain] {
                    let g = grad_storage(&lazy_grad(n, 99, false), case.grad_dtype, misaligned);
                    feed(e, &g, case.grad_dtype, misaligned, n, 1.0);
                    e.zero().unwrap();
                }
            }
            for k in 0..3 {
                // Drop mode: window 1 drops its middle micro-batch, window 2 all three.
                let nan = case.drop_nonfinite && ((w == 1 && k == 1) || w == 2);
                let g = grad_storage(&lazy_grad(n, w * 3 + k, nan), case.grad_dtype, misaligned);
                for e in [&mut fused, &mut plain] {
                    feed(e, &g, case.grad_dtype, misaligned, n, 0.5 + k as f64);
                }
            }
            let (a, b) = (plain.step(true).unwrap().unwrap(), fused.step(true).unwrap().unwrap());
            let tag = format!("{} drop={} window {w}", case.name, case.drop_nonfinite);
            assert_eq!(
                (a.grad_norm.to_bits(), a.clip_coef.to_bits(), a.loss_scale.to_bits(), a.applied, a.step),
                (b.grad_norm.to_bits(), b.clip_coef.to_bits(), b.loss_scale.to_bits(), b.applied, b.step),
                "{tag}: step info"
            );
            assert_eq!(a.dropped_microbatches, b.dropped_microbatches, "{tag}");
            let (sa, sb) = (plain.backend_mut().export_state().unwrap(), fused.backend_mut().export_state().unwrap());
            assert_eq!(sa, sb, "{tag}: state");
            checked += 1;
        }
    }
    println!("{checked} steps compared, fused against the norm pass");
}

/// A flat micro-batch's launch runs on the norm pass's grid and writes its partials,
/// so the step after it is 2 launches (finalize, update; 3 before issue 14), with no
/// transfer or sync; where the partials cannot be valid the step keeps the norm pass:
/// after a per-tensor micro-batch, an in-place one, with Kahan compensation, or with
/// the fused norm switched off.
#[test]
fn a_step_after_a_flat_microbatch_is_two_launches() {
    let mut case = cuda::cases()[0].clone();
    case.tensors = (0..50).map(|i| (3 + i % 7, i % 2 == 0)).collect();
    let layout = cuda::layout_for(&case);
    let n = layout.numel;
    let g = vec![1.0f32; n];
    let grad = GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n };
    let names = |be: &CudaBackend<ShimRuntime>, from: usize| -> Vec<(String, u32)> {
        be.runtime().stats().launches[from..].iter().map(|l| (l.0.clone(), l.1)).collect()
    };
    let (mut be, _) = shim_backend(&case);
    let norm_grid = launch::norm_grid(n, SM);
    for window in 0..2 {
        let before = be.runtime().stats().launches.len();
        // SAFETY: g holds n f32.
        unsafe { be.accumulate(&grad, 1.0, 1.0).unwrap() };
        assert_eq!(names(&be, before), [("gacc_accumulate_f32".to_string(), norm_grid)], "window {window}");
        let (d2h, syncs) = (be.runtime().stats().d2h_copies, be.runtime().stats().syncs);
        let before = be.runtime().stats().launches.len();
        be.step(&StepRequest { total_weight: 1.0, lr: 0.01 }).unwrap();
        let got: Vec<String> = names(&be, before).into_iter().map(|l| l.0).collect();
        assert_eq!(got, ["gacc_finalize", "gacc_update_adamw"], "window {window}");
        assert_eq!((be.runtime().stats().d2h_copies, be.runtime().stats().syncs), (d2h, syncs), "no transfer, no sync");
    }
    assert!(be.last_report().unwrap().applied);
    // A per-tensor micro-batch last: the norm pass again.
    let tg = [gacc::backend::TensorGrad {
        grad: GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: 3 },
        offset: 0,
        index: 0,
    }];
    // SAFETY: g holds n >= 3 f32.
    unsafe { be.accumulate(&grad, 1.0, 1.0).unwrap() };
    let before = be.runtime().stats().launches.len();
    // SAFETY: as above.
    unsafe { be.accumulate_tensors(&tg, 1.0, 1.0).unwrap() };
    be.step(&StepRequest { total_weight: 2.0, lr: 0.01 }).unwrap();
    let got: Vec<String> = names(&be, before).into_iter().map(|l| l.0).collect();
    assert_eq!(got, ["gacc_accumulate_tensors", "gacc_norm_partials", "gacc_finalize", "gacc_update_adamw"]);
    let before = be.runtime().stats().launches.len();
    // SAFETY: as above (the first micro-batch of a window: acc is stale).
    unsafe { be.accumulate_tensors(&tg, 1.0, 1.0).unwrap() };
    let got: Vec<String> = names(&be, before).into_iter().map(|l| l.0).collect();
    assert_eq!(got, ["gacc_accumulate_tensors"], "a stale accumulator: the kernel zeroes the table's gaps itself");
    be.zero_window().unwrap();
    // An in-place booking last.
    // SAFETY: as above.
    unsafe { be.accumulate(&grad, 1.0, 1.0).unwrap() };
    be.book_inplace(1.0).unwrap();
    let before = be.runtime().stats().launches.len();
    be.step(&StepRequest { total_weight: 2.0, lr: 0.01 }).unwrap();
    assert_eq!(names(&be, before).len(), 3, "after an in-place booking");
    // Kahan compensation, or the fused norm off: always 3, on the occupancy grid.
    for kahan in [true, false] {
        let mut c = case.clone();
        c.compensated = kahan;
        let (mut be, _) = shim_backend(&c);
        be.set_fused_norm(kahan);
        let before = be.runtime().stats().launches.len();
        // SAFETY: as above.
        unsafe { be.accumulate(&grad, 1.0, 1.0).unwrap() };
        be.step(&StepRequest { total_weight: 1.0, lr: 0.01 }).unwrap();
        let got = names(&be, before);
        assert_eq!(got[0], ("gacc_accumulate_f32".to_string(), be.grids().accumulate(Dtype::F32)), "kahan={kahan}");
        let got: Vec<String> = got.into_iter().map(|l| l.0).collect();
        assert_eq!(got[1..], ["gacc_norm_partials", "gacc_finalize", "gacc_update_adamw"], "kahan={kahan}");
    }
}

/// Fails before issue 14 (the kernel read acc, zeroed by the step, and added): after
/// a step or gacc_zero, the accumulator is poisoned with NaN on the device, and the
/// next micro-batch still equals the CPU backend's bit for bit (every gradient dtype,
/// vector and scalar paths), so it wrote acc without reading it. A per-tensor
/// micro-batch after a poisoned step leaves its unlisted tensors at zero.
#[test]
fn the_first_microbatch_of_a_window_does_not_read_the_accumulator() {
    let target = ShimTarget::new();
    let mut case = cuda::cases()[0].clone();
    case.tensors = vec![(1030, true), (5, false), (262, true)];
    let layout = cuda::layout_for(&case);
    let n = layout.numel;
    let init: Vec<f32> = (0..n).map(|j| ((j * 7 % 41) as f32 - 20.0) / 32.0).collect();
    let (mut dut, acc) = shim_engine(&case, &init, true);
    let mut cpu = Engine::new(cuda::config_for(&case), layout.clone(), &init).unwrap();
    let poison = vec![0xFFu8; 4 * n];
    let windows =
        [(Dtype::F32, false), (Dtype::F32, true), (Dtype::F16, false), (Dtype::BF16, true), (Dtype::F16, true)];
    for (w, &(dtype, misaligned)) in windows.iter().enumerate() {
        // Window 0 is the engine's first: acc holds the zeros of gacc_create.
        if w > 0 {
            target.write_device(acc as *mut c_void, &poison);
        }
        for k in 0..2 {
            let g = grad_storage(&lazy_grad(n, w * 2 + k, false), dtype, misaligned);
            for e in [&mut cpu, &mut dut] {
                feed(e, &g, dtype, misaligned, n, 1.5);
            }
            let (sc, sd) = (cpu.backend_mut().export_state().unwrap(), dut.backend_mut().export_state().unwrap());
            cuda::compare_f32(
                &format!("window {w} micro-batch {k} ({dtype:?}, misaligned {misaligned})"),
                &sc.acc,
                &sd.acc,
                true,
                0.0,
            );
        }
        if w == 2 {
            // gacc_zero instead of a step, then the same check on the next window.
            cpu.zero().unwrap();
            dut.zero().unwrap();
            continue;
        }
        cpu.step(false).unwrap();
        dut.step(false).unwrap();
        let (sc, sd) = (cpu.backend_mut().export_state().unwrap(), dut.backend_mut().export_state().unwrap());
        cuda::compare_f32(&format!("window {w}: master"), &sc.master, &sd.master, true, 0.0);
    }
    // Per-tensor after a poisoned step: tensor 1 listed, tensors 0 and 2 not.
    target.write_device(acc as *mut c_void, &poison);
    let g = lazy_grad(5, 3, false);
    let t = &layout.tensors[1];
    let grads: Vec<Option<GradInput>> = (0..3)
        .map(|i| (i == 1).then(|| GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: t.numel }))
        .collect();
    for e in [&mut cpu, &mut dut] {
        // SAFETY: host memory of 5 floats.
        unsafe { e.microbatch_tensors(&grads, 2.0) }.unwrap();
    }
    let (sc, sd) = (cpu.backend_mut().export_state().unwrap(), dut.backend_mut().export_state().unwrap());
    cuda::compare_f32("per-tensor after a poisoned step", &sc.acc, &sd.acc, true, 0.0);
    assert!(sd.acc[..t.offset].iter().all(|a| a.to_bits() == 0), "unlisted tensor 0 is zero");
    target.release();
}

/// What may read a stale accumulator sees zeros: a checkpoint (export) of an empty
/// window after a step or gacc_zero holds a zero accumulator while the device memory
/// still holds the old window's sums (lazy); gacc_accumulator_ptr materialises zeros
/// in device memory, and from then on every step writes them (eager).
#[test]
fn a_stale_accumulator_reads_as_zeros() {
    let target = ShimTarget::new();
    let case = cuda::cases()[0].clone();
    let layout = cuda::layout_for(&case);
    let n = layout.numel;
    let init = vec![0.25f32; n];
    let (mut dut, acc) = shim_engine(&case, &init, true);
    let g = lazy_grad(n, 1, false);
    let device_acc = |t: &ShimTarget| -> Vec<u32> {
        t.read_device(acc as *const c_void, 4 * n)
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    for close in ["step", "zero"] {
        feed(&mut dut, &grad_storage(&g, Dtype::F32, false), Dtype::F32, false, n, 1.0);
        if close == "step" {
            dut.step(false).unwrap();
        } else {
            dut.zero().unwrap();
        }
        assert!(device_acc(&target).iter().any(|&a| a != 0), "after {close}: lazy, the old sums are still there");
        let s = dut.snapshot().unwrap();
        assert!(s.state.acc.iter().all(|a| a.to_bits() == 0), "after {close}: the snapshot holds zeros");
    }
    let ptr = dut.accumulator_ptr(0).unwrap();
    assert_eq!(ptr as u64, acc);
    assert!(device_acc(&target).iter().all(|&a| a == 0), "gacc_accumulator_ptr: zeros in device memory");
    // In-place: the host writes into acc (here: the shim's memory) and books it.
    let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
    target.write_device(ptr.cast(), &bytes);
    dut.microbatch_inplace(1.0).unwrap();
    dut.step(false).unwrap();
    assert!(device_acc(&target).iter().all(|&a| a == 0), "eager after gacc_accumulator_ptr: the step wrote zeros");
    feed(&mut dut, &grad_storage(&g, Dtype::F32, false), Dtype::F32, false, n, 1.0);
    dut.zero().unwrap();
    assert!(device_acc(&target).iter().all(|&a| a == 0), "eager: gacc_zero wrote zeros");
    target.release();
}

/// One micro-batch (device gradient) captured once and replayed K times per window,
/// then one direct micro-batch and a direct gacc_step, against K + 1 direct
/// micro-batches per window on the CPU backend: bit-identical weights, optimizer state and scaler.
/// The replays must find the stale flag on the device (a host flag frozen in the
/// graph would write, or add, in every replay) and book the device total. In drop
/// mode one replay's gradient holds a NaN: only that replay is dropped (the flag is
/// reset by the micro-batch that read it; before, it stayed set until the step).
fn captured_microbatch_replays_like_direct_microbatches(mut case: Case) {
    const K: usize = 3;
    let target = ShimTarget::new();
    let (mut dut, mut cpu, graph) = captured_and_cpu_engines(&mut case);
    let n = dut.numel();
    let to_bytes = |g: &[f32]| g.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let buffer = target.upload(&to_bytes(&capture_grad(n, 0, 0, false)), 0);
    graph.lock().unwrap().begin_capture();
    // SAFETY: device memory of n floats (the shim's).
    unsafe { dut.microbatch(&GradInput { ptr: buffer, dtype: Dtype::F32, numel: n }, 1.5) }.unwrap();
    graph.lock().unwrap().end_capture();
    for window in 0..3 {
        for k in 0..K {
            let g = capture_grad(n, window, k, case.drop_nonfinite);
            // SAFETY: the shim's device memory is host memory of n floats.
            unsafe { std::ptr::copy_nonoverlapping(g.as_ptr(), buffer as *mut f32, n) };
            graph.lock().unwrap().replay().unwrap();
            // SAFETY: host memory of n floats.
            unsafe { cpu.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 1.5) }.unwrap();
        }
        // One direct micro-batch closes each window on both (the host's window holds
        // only what it saw: the captured call in window 0, and this one).
        let g = capture_grad(n, 9, window, false);
        for e in [&mut cpu, &mut dut] {
            // SAFETY: host memory of n floats.
            unsafe { e.microbatch(&GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: n }, 0.5) }.unwrap();
        }
        let a = cpu.step(true).unwrap().unwrap();
        dut.step(false).unwrap();
        let b = dut.backend_mut().last_report().unwrap();
        let tag = format!("{} window {window}", case.name);
        assert_eq!((a.applied, a.step, a.loss_scale.to_bits()), (b.applied, b.step, b.loss_scale.to_bits()), "{tag}");
        assert_eq!(a.dropped_microbatches, b.dropped, "{tag}: dropped");
        let (sc, sd) = (cpu.backend_mut().export_state().unwrap(), dut.backend_mut().export_state().unwrap());
        cuda::compare_f32(&format!("{tag}: master"), &sc.master, &sd.master, true, 0.0);
        cuda::compare_f32(&format!("{tag}: state 1"), &sc.state1, &sd.state1, true, 0.0);
        cuda::compare_f32(&format!("{tag}: state 2"), &sc.state2, &sd.state2, true, 0.0);
        assert_eq!((sc.loss_scale.to_bits(), sc.growth_tracker), (sd.loss_scale.to_bits(), sd.growth_tracker), "{tag}");
    }
    target.release();
}

#[test]
fn captured_microbatch_replayed_k_times_matches_k_direct_microbatches() {
    let case = cuda::cases()
        .into_iter()
        .find(|c| {
            !c.clip
                && c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_ADAMW
                && c.reduction == gacc::ffi::types::GACC_GRADS_MEAN
        })
        .unwrap();
    captured_microbatch_replays_like_direct_microbatches(case.clone());
    let mut drop = case;
    drop.drop_nonfinite = true;
    captured_microbatch_replays_like_direct_microbatches(drop);
}

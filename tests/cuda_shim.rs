//! Layer 2 of the CUDA verification: the kernels in kernels/*.cu compiled for the
//! host (kernels/shim/, g++ at test time) and driven by the CUDA backend's own
//! orchestration (CudaBackend<ShimRuntime>: buffer sizes, launch order, grids,
//! argument lists), compared element by element with the CPU backend.
//!
//! Run: cargo test --test cuda_shim   (needs g++ with C++20: Debian's g++ 12 works)

#[path = "cuda_common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use common::{Case, Target};
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
        common::build_host_library(&out, None, &[root.join("kernels/shim/shim_main.cpp")]);
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
        Engine::from_parts(config, layout, Box::new(backend), 0)
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
    let cases: Vec<Case> = common::cases().into_iter().filter(|c| filter(c)).collect();
    assert!(!cases.is_empty());
    for case in &cases {
        common::run_case(&target, case);
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
    let cases = common::option_cases();
    for case in &cases {
        common::run_case(&target, case);
    }
    println!("{} option cases compared with the CPU backend", cases.len());
}

#[test]
fn shim_loss_scale_follows_deepspeed() {
    let make = |config: Config, layout: Layout, params: &[f32]| ShimTarget::new().engine(config, layout, params);
    let mut overflows = 0;
    for hysteresis in 1..=4u32 {
        for consecutive in [false, true] {
            let (window, min) = if consecutive { (3, 1.0) } else { (2, 0.5) };
            overflows += common::run_scaler_against_deepspeed(
                &make,
                u64::from(hysteresis) * 2 + u64::from(consecutive),
                150,
                hysteresis,
                consecutive,
                window,
                min,
                0.3,
            );
        }
    }
    assert!(overflows > 100);
}

#[test]
fn shim_is_deterministic_with_numerics_options() {
    common::run_determinism_with_options(&ShimTarget::new());
}

#[test]
fn drop_mode_adds_one_launch_per_microbatch_and_none_per_step() {
    let mut case = common::cases()[0].clone();
    case.tensors = (0..20).map(|i| (3 + i % 7, i % 2 == 0)).collect();
    case.drop_nonfinite = true;
    case.compensated = true;
    let (mut be, n) = shim_backend(&case);
    let mut g = vec![1.0f32; n];
    g[3] = f32::NAN;
    let (d2h, syncs) = (be.runtime().d2h_copies, be.runtime().syncs);
    let before = be.runtime().launches.len();
    // SAFETY: g holds n f32.
    unsafe {
        be.accumulate(&GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n }, 1.0, 2.0).unwrap();
        g[3] = 1.0;
        be.accumulate(&GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n }, 1.0, 3.0).unwrap();
    }
    let names: Vec<&str> = be.runtime().launches[before..].iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["gacc_check_finite", "gacc_accumulate_f32", "gacc_check_finite", "gacc_accumulate_f32"]);
    let before = be.runtime().launches.len();
    be.step(&StepRequest { total_weight: 5.0, lr: 0.01 }).unwrap();
    let names: Vec<&str> = be.runtime().launches[before..].iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["gacc_norm_partials", "gacc_finalize", "gacc_update_adamw"]);
    assert_eq!((be.runtime().d2h_copies, be.runtime().syncs), (d2h, syncs), "no transfer, no sync");
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
    assert!(n > 2 * 4 * 256 * 8 && n % 4 != 0);
    let picks = [(0, false), (9, true), (14, false), (22, true)];
    for (index, device_grads) in picks {
        let mut case = common::cases()[index].clone();
        case.tensors = tensors.clone();
        case.name = format!("{} (n={n}, 1 SM)", case.name);
        case.device_grads = device_grads;
        case.windows = 3;
        common::run_case(&target, &case);
    }
}

#[test]
fn shim_is_deterministic() {
    common::run_determinism(&ShimTarget::new());
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
    for case in common::tensors::tensor_cases() {
        common::tensors::run_tensor_case(&target, &case);
    }
}

#[test]
fn shim_inplace_matches_cpu() {
    common::tensors::run_inplace(&ShimTarget::new());
}

#[test]
fn per_tensor_call_is_one_launch_whatever_the_tensor_count() {
    // 300 tensors, device gradients: one launch (two in drop mode), and a repeated
    // call with the same pointers uploads nothing (the table is cached).
    for drop_mode in [false, true] {
        let mut case = common::cases()[0].clone();
        case.tensors = (0..300).map(|i| (1 + i % 9, i % 2 == 0)).collect();
        case.drop_nonfinite = drop_mode;
        let (mut be, _) = shim_backend(&case);
        let layout = common::layout_for(&case);
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
            let (launches, h2d) = (be.runtime().launches.len(), be.runtime().h2d_copies);
            // SAFETY: every gradient holds numel f32 of shim device memory.
            unsafe { be.accumulate_tensors(&grads, 1.0, 1.0).unwrap() };
            let names: Vec<&str> = be.runtime().launches[launches..].iter().map(|l| l.0.as_str()).collect();
            let want: &[&str] = if drop_mode {
                &["gacc_check_finite_tensors", "gacc_accumulate_tensors"]
            } else {
                &["gacc_accumulate_tensors"]
            };
            assert_eq!(names, want);
            assert_eq!(be.runtime().h2d_copies - h2d, usize::from(call == 0), "table uploads on call {call}");
        }
        let s = be.export_state().unwrap();
        for t in &layout.tensors {
            for i in 0..t.numel {
                assert_eq!(s.acc[t.offset + i], 2.0 * i as f32);
            }
        }
        // No tensor listed (every entry NULL): no launch, or in drop mode one launch
        // that books the micro-batch on the device.
        let launches = be.runtime().launches.len();
        // SAFETY: nothing is read.
        unsafe { be.accumulate_tensors(&[], 1.0, 5.0).unwrap() };
        assert_eq!(be.runtime().launches.len() - launches, usize::from(drop_mode));
        if drop_mode {
            assert_eq!(be.window_counts().unwrap(), (7.0, 0), "2 + 5 booked on the device");
        }
        target.release();
    }
}

fn shim_backend(case: &Case) -> (CudaBackend<ShimRuntime>, usize) {
    let config = common::config_for(case);
    let layout = common::layout_for(case);
    let params = vec![0.5f32; layout.numel];
    let rt = ShimRuntime::new(shim(), SM, SHIM_MEMORY);
    (CudaBackend::new(rt, BackendInit { config: &config, layout: &layout, params: &params }).unwrap(), layout.numel)
}

#[test]
fn a_step_is_three_launches_with_no_transfer_or_sync() {
    // Many tensors with alternating decay flags: the launch count must not grow.
    let mut case = common::cases()[0].clone();
    case.tensors = (0..50).map(|i| (3 + i % 7, i % 2 == 0)).collect();
    let (mut be, n) = shim_backend(&case);
    let g = vec![1.0f32; n];
    let before = be.runtime().launches.len();
    // SAFETY: g holds n f32.
    unsafe {
        be.accumulate(&GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n }, 1.0, 1.0).unwrap()
    };
    assert_eq!(be.runtime().launches.len() - before, 1, "a micro-batch is one launch");
    let (d2h, syncs) = (be.runtime().d2h_copies, be.runtime().syncs);
    let before = be.runtime().launches.len();
    be.step(&StepRequest { total_weight: 1.0, lr: 0.01 }).unwrap();
    let names: Vec<&str> = be.runtime().launches[before..].iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["gacc_norm_partials", "gacc_finalize", "gacc_update_adamw"]);
    assert_eq!((be.runtime().d2h_copies, be.runtime().syncs), (d2h, syncs), "step without info: no transfer, no sync");
    let (grid, norm_grid) = be.grids();
    assert_eq!(grid, launch::elementwise_grid(n, SM));
    assert_eq!(norm_grid, launch::norm_grid(n, SM));
    for (name, g, block) in &be.runtime().launches[before..] {
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
    let case = common::cases()[0].clone();
    let (mut be, n) = shim_backend(&case);
    let g = vec![2.0f32; n];
    let target = ShimTarget::new();
    let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
    let device = target.upload(&bytes, 0);
    // SAFETY: both hold n f32.
    unsafe {
        be.accumulate(&GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n }, 1.0, 1.0).unwrap();
        let staged = be.runtime().d2h_copies;
        be.accumulate(&GradInput { ptr: device, dtype: Dtype::F32, numel: n }, 1.0, 1.0).unwrap();
        assert_eq!(be.runtime().d2h_copies, staged);
    }
    let s = be.export_state().unwrap();
    assert!(s.acc.iter().all(|&a| a == 4.0), "host + device gradients: {:?}", &s.acc[..4]);
    target.release();
}

#[test]
fn loss_scale_pointer_reads_the_device_state() {
    let mut case = common::cases()[0].clone();
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
    let case = common::cases()[0].clone();
    let config = common::config_for(&case);
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
    let case = common::cases().into_iter().find(|c| !c.clip && c.optimizer == gacc::ffi::types::GACC_OPTIMIZER_ADAMW).unwrap();
    checkpoint_resume_case(case, "plain");
}

/// The same with every numerics option on (hysteresis counter, device window total
/// and dropped count, comp.<i> tensors, stochastic rounding).
#[test]
fn checkpoint_resume_with_numerics_options_is_exact_and_portable() {
    let mut case = common::cases()
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
    let config = common::config_for(&case);
    let layout = common::layout_for(&case);
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

//! Test bodies shared by the host-shim tests (tests/cuda_shim.rs) and the real-GPU
//! tests (tests/gpu.rs): an engine under test is driven next to a CPU engine through
//! the real window logic and every element of every buffer is compared.
#![allow(dead_code)]

pub mod capture;
pub mod device;
pub mod loss_scale;
pub mod tensors;

use std::ffi::c_void;
use std::path::{Path, PathBuf};

use gacc::backend::{GradInput, ParamBuffer};
use gacc::engine::config::{Config, Dtype, RawConfig};
use gacc::engine::layout::Layout;
use gacc::engine::Engine;
use gacc::ffi::types::*;
use half::{bf16, f16};

/// Where the engine under test runs.
pub trait Target {
    /// Builds the engine under test.
    fn engine(&self, config: Config, layout: Layout, params: &[f32]) -> Engine;
    /// Copies `bytes` bytes of the target's device memory to the host.
    fn read_device(&self, ptr: *const c_void, bytes: usize) -> Vec<u8>;
    /// Puts `data` in device memory, `offset` bytes past an aligned allocation; the
    /// memory lives until `release`.
    fn upload(&self, data: &[u8], offset: usize) -> *const c_void;
    /// Frees what `upload` allocated.
    fn release(&self);
    /// Copies `data` to device memory at `ptr` (ordered after the engine's work).
    fn write_device(&self, ptr: *mut c_void, data: &[u8]);
}

/// The tests' one generator (tests/support).
pub use super::Rng;

/// One comparison scenario.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    /// GACC_OPTIMIZER_*
    pub optimizer: u32,
    pub momentum: f32,
    pub nesterov: bool,
    /// GACC_PRECISION_*
    pub precision: u32,
    pub clip: bool,
    pub grad_dtype: Dtype,
    /// (numel, decay) per tensor
    pub tensors: Vec<(usize, bool)>,
    pub reduction: u32,
    /// Window whose first micro-batch carries inf/NaN.
    pub nonfinite_window: Option<usize>,
    /// Hand gradients over in device memory (else host memory).
    pub device_grads: bool,
    /// Device gradients one element past an aligned address (scalar path).
    pub misaligned: bool,
    pub windows: usize,
    /// Numerics options (all off in `cases()`; `option_cases()` turns them on).
    pub hysteresis: u32,
    pub drop_nonfinite: bool,
    pub compensated: bool,
    pub stochastic_rounding: bool,
    /// GACC_LOSS_SCALE_DEEPSPEED (else GRADSCALER).
    pub deepspeed: bool,
}

pub const SIZES: [&[(usize, bool)]; 3] =
    [&[(1000, true), (3, false), (517, false), (2579, true)], &[(7, false), (1, true), (6, false)], &[(1, true)]];

/// The matrix of cases: every optimizer x precision x clipping, with gradient
/// dtypes, sizes, reductions, pointer kinds and non-finite windows rotating.
pub fn cases() -> Vec<Case> {
    let optimizers: [(&str, u32, f32, bool); 4] = [
        ("adamw", GACC_OPTIMIZER_ADAMW, 0.0, false),
        ("sgd", GACC_OPTIMIZER_SGD, 0.0, false),
        ("sgd_momentum", GACC_OPTIMIZER_SGD, 0.9, false),
        ("sgd_nesterov", GACC_OPTIMIZER_SGD, 0.9, true),
    ];
    let precisions = [("fp32", GACC_PRECISION_FP32), ("fp16", GACC_PRECISION_FP16), ("bf16", GACC_PRECISION_BF16)];
    let dtypes = [Dtype::F32, Dtype::F16, Dtype::BF16];
    let mut out = Vec::new();
    let mut i = 0usize;
    for (oname, opt, momentum, nesterov) in optimizers {
        for (pname, precision) in precisions {
            for clip in [false, true] {
                let grad_dtype = dtypes[i % 3];
                let sizes = SIZES[if i % 5 == 4 { 1 + (i / 5) % 2 } else { 0 }];
                let device_grads = i % 2 == 1;
                let misaligned = device_grads && i % 4 == 3;
                out.push(Case {
                    name: format!(
                        "{oname}/{pname}/clip={clip}/grad={}/n={}/{}{}",
                        grad_dtype.name(),
                        sizes.iter().map(|t| t.0).sum::<usize>(),
                        if device_grads { "device" } else { "host" },
                        if misaligned { "+misaligned" } else { "" }
                    ),
                    optimizer: opt,
                    momentum,
                    nesterov,
                    precision,
                    clip,
                    grad_dtype,
                    tensors: sizes.to_vec(),
                    reduction: if i % 3 == 2 { GACC_GRADS_SUM } else { GACC_GRADS_MEAN },
                    nonfinite_window: if i.is_multiple_of(2) { Some(1) } else { None },
                    device_grads,
                    misaligned,
                    windows: 4,
                    hysteresis: 1,
                    drop_nonfinite: false,
                    compensated: false,
                    stochastic_rounding: false,
                    deepspeed: false,
                });
                i += 1;
            }
        }
    }
    out
}

/// The cases again with the numerics options on, rotating: hysteresis (with floor and
/// cap), dropping non-finite micro-batches, Kahan compensation, stochastic rounding
/// (FP16/BF16 only), alone and together.
pub fn option_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (i, mut c) in cases().into_iter().enumerate() {
        let mix = i % 5;
        c.hysteresis = if mix == 0 || mix == 4 { 2 + (i as u32 % 2) } else { 1 };
        c.drop_nonfinite = mix == 1 || mix == 4;
        c.compensated = mix == 2 || mix == 4;
        c.stochastic_rounding = (mix == 3 || mix == 4 || i % 2 == 0) && c.precision != GACC_PRECISION_FP32;
        c.deepspeed = i % 3 == 0;
        // Several windows with non-finite micro-batches: the scale moves, the
        // hysteresis counts, the drop mode drops.
        c.windows = 6;
        c.name = format!(
            "{} +hyst{}{}{}{}{}",
            c.name,
            c.hysteresis,
            if c.deepspeed { "+deepspeed" } else { "" },
            if c.drop_nonfinite { "+drop" } else { "" },
            if c.compensated { "+kahan" } else { "" },
            if c.stochastic_rounding { "+sr" } else { "" }
        );
        out.push(c);
    }
    out
}

pub fn config_for(case: &Case) -> Config {
    let mut raw = RawConfig::defaults();
    raw.device = GACC_DEVICE_CPU;
    raw.optimizer = case.optimizer;
    raw.lr = 0.01;
    raw.momentum = case.momentum;
    raw.nesterov = u32::from(case.nesterov);
    raw.weight_decay = 0.05;
    raw.precision = case.precision;
    raw.max_grad_norm = if case.clip { 0.5 } else { 0.0 };
    raw.init_scale = 1024.0;
    raw.growth_interval = 2;
    raw.grad_reduction = case.reduction;
    raw.hysteresis = case.hysteresis;
    raw.consecutive_hysteresis = u32::from(case.hysteresis > 2);
    raw.min_loss_scale = if case.hysteresis > 1 { 16.0 } else { 0.0 };
    raw.max_loss_scale = if case.hysteresis > 1 && !case.deepspeed { 4096.0 } else { 0.0 };
    raw.loss_scale_policy = if case.deepspeed { GACC_LOSS_SCALE_DEEPSPEED } else { GACC_LOSS_SCALE_GRADSCALER };
    raw.drop_nonfinite_microbatches = u32::from(case.drop_nonfinite);
    raw.compensated_accumulation = u32::from(case.compensated);
    raw.stochastic_rounding = u32::from(case.stochastic_rounding);
    raw.seed = 0xC0FF_EE00 + case.name.len() as u64;
    Config::validate(&raw).expect("valid config")
}

pub fn layout_for(case: &Case) -> Layout {
    Layout::new(case.tensors.iter().map(|&(n, decay)| (None, n, decay)).collect()).expect("layout")
}

fn to_bytes(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
    }
}

fn close(a: f32, b: f32, rel: f32) -> bool {
    if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) {
        return true;
    }
    (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-7
}

/// Compares two f32 buffers element by element: bit-exact, or within `rel`.
pub fn compare_f32(what: &str, expected: &[f32], got: &[f32], exact: bool, rel: f32) {
    assert_eq!(expected.len(), got.len(), "{what}: lengths");
    for (i, (&e, &g)) in expected.iter().zip(got).enumerate() {
        let ok = if exact { e.to_bits() == g.to_bits() || (e.is_nan() && g.is_nan()) } else { close(e, g, rel) };
        assert!(ok, "{what}[{i}]: expected {e:e} ({:#010x}), got {g:e} ({:#010x})", e.to_bits(), g.to_bits());
    }
}

fn working_copy(target: &dyn Target, engine: &mut Engine, n: usize) -> Vec<u16> {
    let ptr = engine.backend_mut().param_ptr(0, ParamBuffer::Working).expect("working copy");
    let bytes = target.read_device(ptr, 2 * n);
    bytes.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}

fn cpu_working_copy(engine: &mut Engine, n: usize) -> Vec<u16> {
    let ptr = engine.backend_mut().param_ptr(0, ParamBuffer::Working).expect("working copy") as *const u16;
    // SAFETY: the CPU backend's working copy holds n elements in host memory.
    unsafe { std::slice::from_raw_parts(ptr, n) }.to_vec()
}

fn rne(dtype: Dtype, x: f32) -> u16 {
    match dtype {
        Dtype::F16 => f16::from_f32(x).to_bits(),
        _ => bf16::from_f32(x).to_bits(),
    }
}

/// Runs `case` on the CPU and on `target`, comparing everything after every
/// micro-batch window and step.
pub fn run_case(target: &dyn Target, case: &Case) {
    let config = config_for(case);
    let layout = layout_for(case);
    let n = layout.numel;
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ (case.name.len() as u64 * 7919));
    let params: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
    let mut cpu = Engine::new(config, layout.clone(), &params).expect("cpu engine");
    let mut dut = target.engine(config, layout, &params);
    let exact = !case.clip;
    let working_dtype = config.precision.working_dtype();
    let tag = |s: &str, w: usize| format!("{}: window {w}: {s}", case.name);

    if let Some(d) = working_dtype {
        assert_eq!(
            cpu_working_copy(&mut cpu, n),
            working_copy(target, &mut dut, n),
            "{}: initial working copy ({})",
            case.name,
            d.name()
        );
    }

    let options = case.hysteresis > 1 || case.drop_nonfinite || case.compensated || case.stochastic_rounding;
    for w in 0..case.windows {
        let k = 1 + w % 3;
        for mb in 0..k {
            let scale = if w % 2 == 0 { 1.0 } else { 30.0 };
            let mut grad: Vec<f32> = (0..n).map(|_| rng.symmetric(scale)).collect();
            // With options on, more non-finite micro-batches: window 1's first, the
            // last window's every one (drop mode: an all-dropped window), and window
            // 3's second.
            let poisoned = (case.nonfinite_window == Some(w) && mb == 0)
                || (options && (w == case.windows - 1 || (w == 3 && mb == 1) || (w == 1 && mb == 0)));
            if poisoned {
                grad[n / 2] = if w % 2 == 0 { f32::INFINITY } else { f32::NAN };
            }
            let weight = 0.25 + 3.0 * f64::from(rng.unit_f32());
            let bytes = to_bytes(&grad, case.grad_dtype);
            let input_cpu = GradInput { ptr: bytes.as_ptr() as *const c_void, dtype: case.grad_dtype, numel: n };
            let ptr = if case.device_grads {
                let offset = if case.misaligned { case.grad_dtype.size() } else { 0 };
                target.upload(&bytes, offset)
            } else {
                bytes.as_ptr() as *const c_void
            };
            let input_dut = GradInput { ptr, dtype: case.grad_dtype, numel: n };
            // SAFETY: both pointers hold n elements of grad_dtype.
            unsafe {
                cpu.microbatch(&input_cpu, weight).expect("cpu microbatch");
                dut.microbatch(&input_dut, weight).unwrap_or_else(|e| panic!("{}: {e}", tag("microbatch", w)));
            }
        }
        // The accumulators agree bit for bit whatever the clipping.
        let (sc, sd) = (cpu.backend_mut().export_state().unwrap(), dut.backend_mut().export_state().unwrap());
        compare_f32(&tag("acc before step", w), &sc.acc, &sd.acc, true, 0.0);
        compare_f32(&tag("comp before step", w), &sc.comp, &sd.comp, true, 0.0);
        assert_eq!(
            (sc.window_total.to_bits(), sc.window_dropped),
            (sd.window_total.to_bits(), sd.window_dropped),
            "{}",
            tag("device window total and dropped count", w)
        );

        let ic = cpu.step(true).unwrap().unwrap();
        let id = dut.step(true).unwrap().unwrap();
        target.release();
        let t = tag("step info", w);
        assert_eq!(ic.applied, id.applied, "{t}: applied");
        assert_eq!(ic.step, id.step, "{t}: step");
        assert_eq!(ic.loss_scale.to_bits(), id.loss_scale.to_bits(), "{t}: loss_scale");
        assert_eq!(ic.microbatches, id.microbatches, "{t}: microbatches");
        assert_eq!(ic.total_weight.to_bits(), id.total_weight.to_bits(), "{t}: total_weight");
        assert_eq!(ic.dropped_microbatches, id.dropped_microbatches, "{t}: dropped_microbatches");
        assert!(close(ic.grad_norm, id.grad_norm, 1e-6), "{t}: grad_norm {} vs {}", ic.grad_norm, id.grad_norm);
        assert_eq!(ic.grad_norm.is_finite(), id.grad_norm.is_finite(), "{t}: grad_norm finiteness");
        if exact {
            assert_eq!(ic.clip_coef.to_bits(), id.clip_coef.to_bits(), "{t}: clip_coef");
        } else {
            assert!(close(ic.clip_coef, id.clip_coef, 1e-5), "{t}: clip_coef {} vs {}", ic.clip_coef, id.clip_coef);
        }
        if case.nonfinite_window == Some(w) && !case.drop_nonfinite {
            assert!(!id.applied, "{t}: a non-finite window must be skipped");
        }
        if case.drop_nonfinite && w == case.windows - 1 {
            assert_eq!(
                (id.applied, id.dropped_microbatches, id.total_weight),
                (false, k as u32, 0.0),
                "{t}: all dropped"
            );
        }

        let (sc, sd) = (cpu.backend_mut().export_state().unwrap(), dut.backend_mut().export_state().unwrap());
        let rel = 2e-5;
        compare_f32(&tag("master", w), &sc.master, &sd.master, exact, rel);
        compare_f32(&tag("state1", w), &sc.state1, &sd.state1, exact, rel);
        compare_f32(&tag("state2", w), &sc.state2, &sd.state2, exact, rel);
        compare_f32(&tag("acc after step", w), &sc.acc, &sd.acc, true, 0.0);
        assert!(sd.acc.iter().all(|&a| a.to_bits() == 0), "{}", tag("acc zeroed", w));
        assert!(sd.comp.iter().all(|&a| a.to_bits() == 0), "{}", tag("comp zeroed", w));
        assert_eq!(
            (sc.loss_scale.to_bits(), sc.growth_tracker, sc.hysteresis_left, sc.applied_steps),
            (sd.loss_scale.to_bits(), sd.growth_tracker, sd.hysteresis_left, sd.applied_steps),
            "{}",
            tag("scaler", w)
        );
        assert_eq!(dut.loss_scale().unwrap().to_bits(), sc.loss_scale.to_bits());

        // read_params into a poisoned buffer.
        let mut out = vec![f32::from_bits(0x7FC0_DEAD); n];
        dut.read_params(&mut out).unwrap();
        compare_f32(&tag("read_params", w), &sd.master, &out, true, 0.0);

        if let Some(d) = working_dtype {
            let got = working_copy(target, &mut dut, n);
            if case.stochastic_rounding {
                // One of the two neighbours of the master value.
                for (i, (&g, &x)) in got.iter().zip(&sd.master).enumerate() {
                    let r = rne(d, x);
                    let near = g == r || g == r.wrapping_add(1) || g == r.wrapping_sub(1);
                    assert!(near, "{}: [{i}] {g:#06x} for {x:e} (RNE {r:#06x})", tag("stochastic rounding", w));
                }
            } else {
                let from_master: Vec<u16> = sd.master.iter().map(|&x| rne(d, x)).collect();
                assert_eq!(got, from_master, "{}", tag("working copy == RNE(master)", w));
            }
            if exact {
                assert_eq!(cpu_working_copy(&mut cpu, n), got, "{}", tag("working copy vs CPU", w));
            }
        }
    }

    // write_params rewrites master and working copy.
    let fresh: Vec<f32> = (0..n).map(|_| rng.symmetric(2.0)).collect();
    cpu.write_params(&fresh).unwrap();
    dut.write_params(&fresh).unwrap();
    let mut out = vec![f32::NAN; n];
    dut.read_params(&mut out).unwrap();
    compare_f32(&format!("{}: write_params", case.name), &fresh, &out, true, 0.0);
    if working_dtype.is_some() {
        assert_eq!(
            cpu_working_copy(&mut cpu, n),
            working_copy(target, &mut dut, n),
            "{}: working after write",
            case.name
        );
    }
}

/// Same inputs twice on the target: bit-identical results (norm included).
pub fn run_determinism(target: &dyn Target) {
    let mut case = cases().into_iter().find(|c| c.clip && c.optimizer == GACC_OPTIMIZER_ADAMW).unwrap();
    case.nonfinite_window = None;
    case.windows = 2;
    let run = || {
        let config = config_for(&case);
        let layout = layout_for(&case);
        let n = layout.numel;
        let mut rng = Rng::new(42);
        let params: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
        let mut e = target.engine(config, layout, &params);
        let mut norms = Vec::new();
        for _ in 0..case.windows {
            let g: Vec<f32> = (0..n).map(|_| rng.symmetric(3.0)).collect();
            let input = GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n };
            // SAFETY: g holds n f32.
            unsafe { e.microbatch(&input, 1.5).unwrap() };
            norms.push(e.step(true).unwrap().unwrap().grad_norm.to_bits());
        }
        (norms, e.backend_mut().export_state().unwrap())
    };
    let (a, b) = (run(), run());
    assert_eq!(a.0, b.0, "norms differ run to run");
    assert!(a.1.master.iter().zip(&b.1.master).all(|(x, y)| x.to_bits() == y.to_bits()), "params differ run to run");
}

/// Every numerics option on (hysteresis, drop, Kahan, stochastic rounding), twice on
/// the target with the same inputs: bit-identical parameters and working copy.
pub fn run_determinism_with_options(target: &dyn Target) {
    let case = option_cases()
        .into_iter()
        .find(|c| c.hysteresis > 1 && c.drop_nonfinite && c.compensated && c.stochastic_rounding)
        .expect("a case with every option");
    let run = || {
        let config = config_for(&case);
        let layout = layout_for(&case);
        let n = layout.numel;
        let mut rng = Rng::new(7);
        let params: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
        let mut e = target.engine(config, layout, &params);
        let mut infos = Vec::new();
        for w in 0..6 {
            for m in 0..3 {
                let mut g: Vec<f32> = (0..n).map(|_| rng.symmetric(3.0)).collect();
                if (w + m) % 4 == 1 {
                    g[m] = f32::NAN;
                }
                let input = GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n };
                // SAFETY: g holds n f32.
                unsafe { e.microbatch(&input, 0.5 + m as f64).unwrap() };
            }
            let i = e.step(true).unwrap().unwrap();
            infos.push((i.applied, i.grad_norm.to_bits(), i.loss_scale.to_bits(), i.dropped_microbatches));
        }
        let s = e.backend_mut().export_state().unwrap();
        let bits: Vec<u32> = s.master.iter().map(|x| x.to_bits()).collect();
        (infos, bits, working_copy(target, &mut e, n))
    };
    let (a, b) = (run(), run());
    assert_eq!(a.0, b.0, "step infos differ run to run");
    assert!(a.1 == b.1, "params differ run to run");
    assert!(a.2 == b.2, "working copies differ run to run");
}

/// Compiles host C++ (the kernel shim, the fake driver, the fake NCCL) into a shared
/// library with the flags every verification layer uses: C++20, no FP contraction (so
/// the kernels round like the CPU backend), every warning an error. `soname`, when
/// given, lets a dlopen of that name find the library once it is loaded globally.
pub fn build_host_library(out: &Path, soname: Option<&str>, sources: &[PathBuf]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let mut cmd = std::process::Command::new(&cxx);
    cmd.args(["-std=c++20", "-O1", "-pthread", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]);
    if let Some(name) = soname {
        cmd.arg(format!("-Wl,-soname,{name}"));
    }
    cmd.arg("-I").arg(root.join("kernels")).args(sources).arg("-ldl").arg("-o").arg(out);
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cxx}: {e}"));
    assert!(status.success(), "building {} failed", out.display());
}

/// Builds the fake libcuda (tests/doubles/fake_cuda.cpp, with the kernel shim it runs
/// kernels on) as `out`, SONAME libcuda.so.
pub fn build_fake_driver(out: &Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    build_host_library(
        out,
        Some("libcuda.so"),
        &[root.join("kernels/shim/shim_main.cpp"), root.join("tests/doubles/fake_cuda.cpp")],
    );
}

/// Builds the fake libnccl (tests/doubles/fake_nccl.cpp) as `out`, SONAME libnccl.so.2.
pub fn build_fake_nccl(out: &Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    build_host_library(out, Some("libnccl.so.2"), &[root.join("tests/doubles/fake_nccl.cpp")]);
}

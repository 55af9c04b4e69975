//! Per-tensor micro-batches and in-place accumulation on a CUDA target (the shim, the
//! fake driver, a GPU), against the CPU backend bit for bit: tensors in mixed dtypes,
//! NULL entries, host and device pointers (aligned and misaligned), tensors spanning
//! several chunks and odd offsets, drop mode with the poison in the last tensor,
//! Kahan, SUM and FP16; the accumulator pointer read and written in place.

use std::ffi::c_void;

use super::{compare_f32, to_bytes, Rng, Target};
use gacc::backend::GradInput;
use gacc::engine::config::{Config, Dtype, RawConfig};
use gacc::engine::layout::Layout;
use gacc::engine::Engine;
use gacc::ffi::types::*;

/// One configuration of the per-tensor comparison.
#[derive(Clone, Copy, Debug)]
pub struct TensorCase {
    pub name: &'static str,
    pub optimizer: u32,
    pub reduction: u32,
    pub precision: u32,
    pub compensated: bool,
    pub drop_nonfinite: bool,
}

pub fn tensor_cases() -> Vec<TensorCase> {
    let base = TensorCase {
        name: "adamw mean",
        optimizer: GACC_OPTIMIZER_ADAMW,
        reduction: GACC_GRADS_MEAN,
        precision: GACC_PRECISION_FP32,
        compensated: false,
        drop_nonfinite: false,
    };
    vec![
        base,
        TensorCase { name: "sgd sum", optimizer: GACC_OPTIMIZER_SGD, reduction: GACC_GRADS_SUM, ..base },
        TensorCase { name: "kahan", compensated: true, ..base },
        TensorCase { name: "drop mode", drop_nonfinite: true, ..base },
        TensorCase {
            name: "fp16 drop kahan",
            precision: GACC_PRECISION_FP16,
            drop_nonfinite: true,
            compensated: true,
            ..base
        },
    ]
}

fn config(c: &TensorCase) -> Config {
    let mut raw = RawConfig::defaults();
    raw.device = GACC_DEVICE_CPU;
    raw.optimizer = c.optimizer;
    raw.lr = 0.01;
    raw.momentum = 0.9;
    raw.grad_reduction = c.reduction;
    raw.precision = c.precision;
    raw.init_scale = 1024.0;
    raw.compensated_accumulation = c.compensated as u32;
    raw.drop_nonfinite_microbatches = c.drop_nonfinite as u32;
    Config::validate(&raw).expect("config")
}

/// Sizes with odd offsets, a tensor of several 16384-element chunks that ends inside
/// one, and aligned ones.
pub const SIZES: [usize; 7] = [5, 16384 + 3, 4, 1, 2 * 16384, 7, 33];

/// How one tensor's gradient is handed over.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Null,
    Host,
    Device,
    /// One element past an aligned address: the scalar path.
    DeviceMisaligned,
}

/// Runs 3 windows of 3 per-tensor micro-batches on both engines.
pub fn run_tensor_case(target: &dyn Target, case: &TensorCase) {
    let config = config(case);
    let layout = Layout::new(SIZES.iter().enumerate().map(|(i, &n)| (None, n, i % 2 == 0)).collect()).unwrap();
    let n = layout.numel;
    let mut rng = Rng::new(0x51_7CC1_B727_220A ^ case.name.len() as u64);
    let params: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
    let mut cpu = Engine::new(config, layout.clone(), &params).expect("cpu engine");
    let mut dut = target.engine(config, layout.clone(), &params);
    let dtypes = [Dtype::F32, Dtype::F16, Dtype::BF16];
    for w in 0..3 {
        for mb in 0..3 {
            let mut host: Vec<Option<(Vec<u8>, Dtype)>> = Vec::new();
            let mut kinds = Vec::new();
            for (t, info) in layout.tensors.iter().enumerate() {
                let kind = match (rng.next_u64() % 5, t == SIZES.len() - 1) {
                    (0, false) => Kind::Null,
                    (1, _) => Kind::Device,
                    (2, _) => Kind::DeviceMisaligned,
                    _ => Kind::Host,
                };
                kinds.push(kind);
                if let Kind::Null = kind {
                    host.push(None);
                    continue;
                }
                let dtype = dtypes[(rng.next_u64() % 3) as usize];
                let mut g: Vec<f32> = (0..info.numel).map(|_| rng.symmetric(2.0)).collect();
                // Drop mode: the last tensor of window 1's second micro-batch is poisoned.
                if case.drop_nonfinite && w == 1 && mb == 1 && t == SIZES.len() - 1 {
                    g[info.numel - 1] = f32::NAN;
                }
                host.push(Some((to_bytes(&g, dtype), dtype)));
            }
            let cpu_in: Vec<Option<GradInput>> = host
                .iter()
                .zip(&layout.tensors)
                .map(|(h, info)| {
                    let numel = info.numel;
                    h.as_ref().map(|(b, d)| GradInput { ptr: b.as_ptr().cast(), dtype: *d, numel })
                })
                .collect();
            let dut_in: Vec<Option<GradInput>> = cpu_in
                .iter()
                .zip(&host)
                .zip(&kinds)
                .map(|((g, h), kind)| {
                    let (g, (bytes, dtype)) = (g.as_ref()?, h.as_ref()?);
                    let ptr = match kind {
                        Kind::Device => target.upload(bytes, 0),
                        Kind::DeviceMisaligned => target.upload(bytes, dtype.size()),
                        _ => g.ptr,
                    };
                    Some(GradInput { ptr, ..*g })
                })
                .collect();
            let weight = 0.5 + f64::from(rng.unit_f32()) * 3.0;
            // SAFETY: every entry holds numel elements of its dtype.
            unsafe {
                cpu.microbatch_tensors(&cpu_in, weight).expect("cpu");
                dut.microbatch_tensors(&dut_in, weight).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            }
            if mb == 1 {
                // The same pointers again (new contents in the host buffers; the
                // device copies stay): the table cache must not change the result.
                let again: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
                for ((h, info), kind) in host.iter_mut().zip(&layout.tensors).zip(&kinds) {
                    if let (Some((bytes, dtype)), Kind::Host) = (h.as_mut(), kind) {
                        bytes.copy_from_slice(&to_bytes(&again[info.offset..info.offset + info.numel], *dtype));
                    }
                }
                // SAFETY: as above (host buffers rewritten in place, same addresses).
                unsafe {
                    cpu.microbatch_tensors(&cpu_in, 1.0).expect("cpu");
                    dut.microbatch_tensors(&dut_in, 1.0).unwrap_or_else(|e| panic!("{}: {e}", case.name));
                }
            }
        }
        let tag = |s: &str| format!("{}: window {w}: {s}", case.name);
        let (sc, sd) = (cpu.backend_mut().export_state().unwrap(), dut.backend_mut().export_state().unwrap());
        compare_f32(&tag("acc"), &sc.acc, &sd.acc, true, 0.0);
        compare_f32(&tag("comp"), &sc.comp, &sd.comp, true, 0.0);
        assert_eq!((sc.window_total, sc.window_dropped), (sd.window_total, sd.window_dropped), "{}", tag("window"));
        // The accumulator pointer of every tensor reads the same accumulator.
        for (t, info) in layout.tensors.iter().enumerate() {
            let p = dut.accumulator_ptr(t).unwrap();
            let bytes = target.read_device(p as *const c_void, info.numel * 4);
            let got: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            compare_f32(&tag("accumulator_ptr"), &sc.acc[info.offset..info.offset + info.numel], &got, true, 0.0);
        }
        let (rc, rd) = (cpu.step(true).unwrap().unwrap(), dut.step(true).unwrap().unwrap());
        assert_eq!(rc, rd, "{}", tag("step report"));
        if case.drop_nonfinite && w == 1 {
            // Once, or twice when the poisoned tensor is device memory (the repeat call
            // rewrites host buffers only).
            assert!(rc.dropped_microbatches >= 1, "{}", tag("the poisoned micro-batch was dropped"));
        }
        let (mut pc, mut pd) = (vec![0f32; n], vec![0f32; n]);
        cpu.read_params(&mut pc).unwrap();
        dut.read_params(&mut pd).unwrap();
        compare_f32(&tag("params"), &pc, &pd, true, 0.0);
    }
    target.release();
}

/// In place: the host reads the device accumulator, adds w * g and writes it back,
/// then books it; against gacc_microbatch on the CPU, bit for bit, with a window that
/// mixes the three calls.
pub fn run_inplace(target: &dyn Target) {
    let case = tensor_cases()[0];
    let config = config(&case);
    let layout = Layout::new(SIZES.iter().map(|&n| (None, n, true)).collect()).unwrap();
    let n = layout.numel;
    let mut rng = Rng::new(0xD1B5_4A32_D192_ED03);
    let params: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
    let mut cpu = Engine::new(config, layout.clone(), &params).expect("cpu engine");
    let mut dut = target.engine(config, layout.clone(), &params);
    for w in 0..2 {
        // 1: in place
        let g: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
        let weight = 2.0f64;
        for (t, info) in layout.tensors.iter().enumerate() {
            let p = dut.accumulator_ptr(t).unwrap();
            let bytes = target.read_device(p as *const c_void, info.numel * 4);
            let mut acc: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            for (a, &x) in acc.iter_mut().zip(&g[info.offset..]) {
                *a += weight as f32 * x;
            }
            let out: Vec<u8> = acc.iter().flat_map(|x| x.to_le_bytes()).collect();
            target.write_device(p as *mut c_void, &out);
        }
        dut.microbatch_inplace(weight).unwrap();
        // 2: per tensor, 3: the concatenation, on both
        let g2: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
        let g3 = to_bytes(&g2.iter().map(|x| x * 0.5).collect::<Vec<_>>(), Dtype::BF16);
        let per: Vec<Option<GradInput>> = layout
            .tensors
            .iter()
            .map(|t| Some(GradInput { ptr: g2[t.offset..].as_ptr().cast(), dtype: Dtype::F32, numel: t.numel }))
            .collect();
        let flat3 = GradInput { ptr: g3.as_ptr() as *const c_void, dtype: Dtype::BF16, numel: n };
        // SAFETY: every pointer holds its numel elements.
        unsafe {
            cpu.microbatch(&GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: n }, weight)
                .unwrap();
            cpu.microbatch_tensors(&per, 1.5).unwrap();
            dut.microbatch_tensors(&per, 1.5).unwrap();
            cpu.microbatch(&flat3, 1.0).unwrap();
            dut.microbatch(&flat3, 1.0).unwrap();
        }
        let tag = format!("in place, window {w}");
        let (sc, sd) = (cpu.backend_mut().export_state().unwrap(), dut.backend_mut().export_state().unwrap());
        compare_f32(&tag, &sc.acc, &sd.acc, true, 0.0);
        let (rc, rd) = (cpu.step(true).unwrap().unwrap(), dut.step(true).unwrap().unwrap());
        assert_eq!(rc, rd, "{tag}");
        assert_eq!((rd.microbatches, rd.total_weight), (3, 4.5));
        let (mut pc, mut pd) = (vec![0f32; n], vec![0f32; n]);
        cpu.read_params(&mut pc).unwrap();
        dut.read_params(&mut pd).unwrap();
        compare_f32(&tag, &pc, &pd, true, 0.0);
        // Zero after the step, read through the pointer.
        let p = dut.accumulator_ptr(0).unwrap();
        assert!(target.read_device(p as *const c_void, SIZES[0] * 4).iter().all(|&b| b == 0), "{tag}: zero");
    }
    target.release();
}

//! Gradients where the host has them (docs/c-api.md, v0.2) on the CPU backend, through the
//! C ABI: gacc_microbatch_tensors against gacc_microbatch on the concatenation (bit for
//! bit: mixed dtypes, NULL entries, odd sizes, many small tensors, Kahan, SUM), its
//! rejections (atomic, naming the tensor index), drop mode with the poison in the last
//! tensor; gacc_accumulator_ptr + gacc_microbatch_inplace against gacc_microbatch (bit
//! for bit), the accumulator's zero points, refusals, a window mixing all three calls,
//! checkpoints and data parallelism.
// Index loops mirror the per-element formulas.
#![allow(clippy::needless_range_loop)]

mod support;

use std::os::raw::c_void;
use std::sync::{Arc, Barrier, Mutex};

use gacc::ffi::tensors::*;
use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status::{self, *};
use support::*;

const DTYPES: [u32; 3] = [GACC_DTYPE_F32, GACC_DTYPE_F16, GACC_DTYPE_BF16];

fn specs(sizes: &[usize], rng: &mut Rng) -> Vec<TensorSpec> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec { init: (0..n).map(|_| rng.value(24, -3, 1) as f32).collect(), no_wd: i % 3 == 1 })
        .collect()
}

fn entry(g: Option<&Grad>) -> gacc_grad {
    match g {
        Some(g) => gacc_grad { data: g.ptr(), dtype: g.dtype(), numel: g.len() },
        None => gacc_grad { data: std::ptr::null(), dtype: 0, numel: 0 },
    }
}

fn tensors_call(e: &Eng, grads: &[Option<Grad>], w: f64) -> gacc_status {
    let entries: Vec<gacc_grad> = grads.iter().map(|g| entry(g.as_ref())).collect();
    unsafe { gacc_microbatch_tensors(e.h, entries.as_ptr(), entries.len(), w) }
}

/// The f32 concatenation of a per-tensor micro-batch (f16/bf16 widen exactly; NULL
/// entries are zeros): what gacc_microbatch must see to give the same sums.
fn concat(e: &Eng, grads: &[Option<Grad>]) -> Grad {
    let mut flat = vec![0f64; e.n];
    for (t, g) in grads.iter().enumerate() {
        if let Some(g) = g {
            let (o, _) = e.spans[t];
            flat[o..o + g.len()].copy_from_slice(&g.values());
        }
    }
    Grad::encode(GACC_DTYPE_F32, &flat)
}

/// The accumulator of every tensor, concatenated, through gacc_accumulator_ptr.
fn accumulator(e: &Eng) -> Vec<f32> {
    let mut out = Vec::with_capacity(e.n);
    for (t, &(_, k)) in e.spans.iter().enumerate() {
        out.extend_from_slice(acc_slice(e, t, k));
    }
    out
}

/// Tensor t's accumulator as the host sees it: the engine's own memory, which the API
/// lets the host write between calls (each use here is short-lived).
#[allow(clippy::mut_from_ref)]
fn acc_slice(e: &Eng, t: usize, k: usize) -> &mut [f32] {
    let mut p = std::ptr::null_mut();
    ok(unsafe { gacc_accumulator_ptr(e.h, t, &mut p) });
    unsafe { std::slice::from_raw_parts_mut(p, k) }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A random per-tensor micro-batch: each tensor in a random dtype (or `dtype`), some
/// entries NULL with probability `p_null`.
fn random_tensors(rng: &mut Rng, e: &Eng, dtype: Option<u32>, p_null: f64) -> Vec<Option<Grad>> {
    e.spans
        .iter()
        .map(|&(_, k)| {
            if rng.chance(p_null) {
                return None;
            }
            let d = dtype.unwrap_or_else(|| rng.pick(&DTYPES));
            Some(random_grad(rng, d, k, -6, 2, 1.0))
        })
        .collect()
}

struct Setup {
    sizes: Vec<usize>,
    reduction: u32,
    compensated: bool,
    dtype: Option<u32>,
    p_null: f64,
}

/// Runs `windows` windows of per-tensor micro-batches on one engine and the f32
/// concatenations through gacc_microbatch on another: accumulators after every
/// micro-batch, step reports and parameters must agree bit for bit.
fn per_tensor_matches_concatenation(s: &Setup, seed: u64) {
    let mut rng = Rng::new(seed);
    let tensors = specs(&s.sizes, &mut rng);
    let mut cfg = config(GACC_OPTIMIZER_ADAMW);
    cfg.grad_reduction = s.reduction;
    cfg.compensated_accumulation = s.compensated as u32;
    cfg.max_grad_norm = 1.0;
    let (a, b) = (Eng::new(&cfg, &tensors), Eng::new(&cfg, &tensors));
    for _window in 0..2 {
        for _mb in 0..3 {
            let grads = random_tensors(&mut rng, &a, s.dtype, s.p_null);
            let w = rng.range(1, 9) as f64;
            ok(tensors_call(&a, &grads, w));
            b.mb(&concat(&b, &grads), w);
            let same = bits(&accumulator(&a)) == bits(&accumulator(&b));
            assert!(same, "sizes {:?} compensated {}", s.sizes, s.compensated);
        }
        let (ia, ib) = (a.step(), b.step());
        assert_eq!(ia, ib);
        assert_eq!(ia.microbatches, 3);
        assert_eq!(bits(&a.params()), bits(&b.params()));
    }
}

#[test]
fn per_tensor_equals_concatenation_mixed_dtypes_and_null_entries() {
    let sizes = vec![1000, 3, 517, 2579, 1, 8, 33];
    for (i, reduction) in [GACC_GRADS_MEAN, GACC_GRADS_SUM].into_iter().enumerate() {
        for compensated in [false, true] {
            // Kahan: a NULL entry leaves the tensor's accumulator and compensation
            // untouched, whereas adding a zero applies the pending compensation, so
            // the concatenation (zeros there) only matches without NULL entries.
            let p_null = if compensated { 0.0 } else { 0.3 };
            let s = Setup { sizes: sizes.clone(), reduction, compensated, dtype: None, p_null };
            per_tensor_matches_concatenation(&s, 10 + i as u64 + 2 * compensated as u64);
        }
    }
}

#[test]
fn per_tensor_equals_concatenation_on_the_parallel_path() {
    // 32 Ki-element chunks: tensors that start inside, end on and span work items;
    // over 256 Ki elements in all, so the pass runs on the pool.
    let c = 32 * 1024;
    let sizes = vec![c - 1, 1, c, 2 * c + 3, 5, 3 * c + 17, 7, c + 1, 123_457];
    for dtype in [None, Some(GACC_DTYPE_F16)] {
        per_tensor_matches_concatenation(
            &Setup { sizes: sizes.clone(), reduction: GACC_GRADS_MEAN, compensated: false, dtype, p_null: 0.2 },
            20,
        );
    }
}

#[test]
fn per_tensor_equals_concatenation_with_many_small_tensors() {
    let mut rng = Rng::new(3);
    // 2000 tensors of 1..300 elements: about 300 Ki elements, parallel pass.
    let sizes: Vec<usize> = (0..2000).map(|_| rng.range(1, 300) as usize).collect();
    per_tensor_matches_concatenation(
        &Setup { sizes, reduction: GACC_GRADS_MEAN, compensated: false, dtype: None, p_null: 0.1 },
        30,
    );
}

#[test]
fn per_tensor_in_one_dtype_equals_gacc_microbatch_in_that_dtype() {
    // The narrow concatenation itself (not its f32 widening) through gacc_microbatch.
    let mut rng = Rng::new(4);
    let tensors = specs(&[301, 7, 4096, 1], &mut rng);
    for dtype in DTYPES {
        let cfg = config(GACC_OPTIMIZER_SGD);
        let (a, b) = (Eng::new(&cfg, &tensors), Eng::new(&cfg, &tensors));
        for _ in 0..3 {
            let grads = random_tensors(&mut rng, &a, Some(dtype), 0.0);
            let flat: Vec<f64> = grads.iter().flat_map(|g| g.as_ref().unwrap().values()).collect();
            ok(tensors_call(&a, &grads, 2.0));
            b.mb(&Grad::encode(dtype, &flat), 2.0);
        }
        assert_eq!(bits(&accumulator(&a)), bits(&accumulator(&b)));
        assert_eq!(a.step(), b.step());
        assert_eq!(bits(&a.params()), bits(&b.params()));
    }
}

#[test]
fn all_null_entries_count_a_microbatch_and_add_nothing() {
    let mut rng = Rng::new(5);
    let tensors = specs(&[10, 20], &mut rng);
    let e = Eng::new(&config(GACC_OPTIMIZER_SGD), &tensors);
    let g = random_tensors(&mut rng, &e, Some(GACC_DTYPE_F32), 0.0);
    ok(tensors_call(&e, &g, 3.0));
    let before = bits(&accumulator(&e));
    ok(tensors_call(&e, &[None, None], 5.0));
    assert_eq!(bits(&accumulator(&e)), before);
    let info = e.step();
    assert_eq!((info.microbatches, info.total_weight), (2, 8.0));
    // With Kahan compensation too: a NULL entry leaves the tensor's accumulator and
    // its compensation alone (a zero gradient would apply the pending compensation).
    let mut cfg = config(GACC_OPTIMIZER_SGD);
    cfg.compensated_accumulation = 1;
    let k = Eng::new(&cfg, &tensors);
    for _ in 0..5 {
        let g = random_tensors(&mut rng, &k, Some(GACC_DTYPE_F32), 0.0);
        ok(tensors_call(&k, &g, 1.0 / 3.0));
    }
    let before = bits(&accumulator(&k));
    let only_second = Some(random_grad(&mut rng, GACC_DTYPE_F32, 20, -6, 2, 1.0));
    ok(tensors_call(&k, &[None, only_second], 1.0 / 3.0));
    assert_eq!(bits(&accumulator(&k))[..10], before[..10], "a NULL entry touched tensor 0 under Kahan");
}

/// Every rejected call: the status, the index in the message, nothing changed.
#[test]
fn rejections_leave_the_window_as_it_was_and_name_the_tensor() {
    let mut rng = Rng::new(6);
    let tensors = specs(&[16, 9, 40], &mut rng);
    let e = Eng::new(&config(GACC_OPTIMIZER_ADAMW), &tensors);
    let good = random_tensors(&mut rng, &e, Some(GACC_DTYPE_F32), 0.0);
    ok(tensors_call(&e, &good, 2.0));
    let before = bits(&accumulator(&e));
    let f16 = random_grad(&mut rng, GACC_DTYPE_F16, 41, -3, 0, 1.0);
    let entries: Vec<gacc_grad> = good.iter().map(|g| entry(g.as_ref())).collect();
    let misaligned = unsafe { (f16.ptr() as *const u8).add(1) } as *const c_void;
    let cases: Vec<(&str, Vec<gacc_grad>, f64, gacc_status, &str)> = vec![
        ("n_grads short", entries[..2].to_vec(), 1.0, GACC_ERR_INVALID_ARGUMENT, "n_grads is 2"),
        ("n_grads long", [&entries[..], &entries[..1]].concat(), 1.0, GACC_ERR_INVALID_ARGUMENT, "n_grads is 4"),
        (
            "wrong numel in the last tensor",
            vec![entries[0], entries[1], gacc_grad { numel: 39, ..entries[2] }],
            1.0,
            GACC_ERR_INVALID_ARGUMENT,
            "grads[2].numel",
        ),
        (
            "unknown dtype",
            vec![entries[0], gacc_grad { dtype: 7, ..entries[1] }, entries[2]],
            1.0,
            GACC_ERR_INVALID_ARGUMENT,
            "grads[1].dtype",
        ),
        (
            "misaligned pointer",
            vec![entries[0], entries[1], gacc_grad { data: misaligned, dtype: GACC_DTYPE_F16, numel: 40 }],
            1.0,
            GACC_ERR_INVALID_ARGUMENT,
            "grads[2].data",
        ),
        ("NaN weight", entries.clone(), f64::NAN, GACC_ERR_INVALID_ARGUMENT, "weight"),
        ("negative weight", entries.clone(), -1.0, GACC_ERR_INVALID_ARGUMENT, "weight"),
    ];
    for (what, list, w, status, needle) in cases {
        let s = unsafe { gacc_microbatch_tensors(e.h, list.as_ptr(), list.len(), w) };
        assert_eq!(s, status, "{what}");
        let msg = last_error();
        assert!(msg.contains(needle), "{what}: {msg}");
        assert_eq!(bits(&accumulator(&e)), before, "{what} changed the accumulator");
    }
    assert_eq!(unsafe { gacc_microbatch_tensors(e.h, std::ptr::null(), 3, 1.0) }, GACC_ERR_NULL_POINTER);
    assert!(last_error().contains("grads"));
    let null_engine = std::ptr::null_mut();
    assert_eq!(unsafe { gacc_microbatch_tensors(null_engine, entries.as_ptr(), 3, 1.0) }, GACC_ERR_NULL_POINTER);
    let stale = 0x10 as *mut gacc_engine;
    assert_eq!(unsafe { gacc_microbatch_tensors(stale, entries.as_ptr(), 3, 1.0) }, GACC_ERR_INVALID_HANDLE);
    assert_eq!(bits(&accumulator(&e)), before);
    let info = e.step();
    assert_eq!((info.microbatches, info.total_weight), (1, 2.0), "a rejected call was counted");
}

#[test]
fn drop_mode_drops_the_whole_microbatch_when_the_last_tensor_is_poisoned() {
    let mut rng = Rng::new(7);
    let tensors = specs(&[300, 5, 70_000, 3, 200_001], &mut rng);
    for kind in 0..3 {
        let mut cfg = config(GACC_OPTIMIZER_ADAMW);
        cfg.drop_nonfinite_microbatches = 1;
        let (a, b) = (Eng::new(&cfg, &tensors), Eng::new(&cfg, &tensors));
        let clean1 = random_tensors(&mut rng, &a, None, 0.2);
        let mut bad = random_tensors(&mut rng, &a, None, 0.0);
        let last = bad.last_mut().unwrap().as_mut().unwrap();
        let at = last.len() - 1;
        last.poison(at, kind);
        let clean2 = random_tensors(&mut rng, &a, None, 0.2);
        ok(tensors_call(&a, &clean1, 2.0));
        let before = bits(&accumulator(&a));
        ok(tensors_call(&a, &bad, 4.0));
        assert_eq!(bits(&accumulator(&a)), before, "a dropped micro-batch touched the accumulator");
        ok(tensors_call(&a, &clean2, 3.0));
        b.mb(&concat(&b, &clean1), 2.0);
        b.mb(&concat(&b, &clean2), 3.0);
        let (ia, ib) = (a.step(), b.step());
        assert_eq!((ia.dropped_microbatches, ia.microbatches, ia.total_weight), (1, 3, 5.0));
        assert_eq!(ia.applied, 1);
        assert_eq!(ia.grad_norm.to_bits(), ib.grad_norm.to_bits());
        assert_eq!(bits(&a.params()), bits(&b.params()));
    }
}

/// The host's own accumulation into gacc_accumulator_ptr: a += w * g (MEAN) or a += g
/// (SUM), the same two fp32 roundings gacc's pass does.
fn add_inplace(e: &Eng, flat: &[f32], mul: f32) {
    for (t, &(o, k)) in e.spans.iter().enumerate() {
        for (a, &g) in acc_slice(e, t, k).iter_mut().zip(&flat[o..o + k]) {
            *a += mul * g;
        }
    }
}

fn f32s(g: &Grad) -> Vec<f32> {
    g.values().iter().map(|&x| x as f32).collect()
}

#[test]
fn inplace_equals_gacc_microbatch_bit_for_bit() {
    let mut rng = Rng::new(8);
    let tensors = specs(&[513, 2, 1024, 77], &mut rng);
    for reduction in [GACC_GRADS_MEAN, GACC_GRADS_SUM] {
        for precision in [GACC_PRECISION_FP32, GACC_PRECISION_FP16] {
            let mut cfg = config(GACC_OPTIMIZER_ADAMW);
            cfg.grad_reduction = reduction;
            cfg.precision = precision;
            cfg.max_grad_norm = 0.5;
            let (a, b) = (Eng::new(&cfg, &tensors), Eng::new(&cfg, &tensors));
            for _window in 0..3 {
                let scale = a.scale();
                for _mb in 0..4 {
                    let g = random_grad(&mut rng, GACC_DTYPE_F32, a.n, -6, 1, scale);
                    let w = rng.range(1, 5) as f64;
                    add_inplace(&a, &f32s(&g), if reduction == GACC_GRADS_MEAN { w as f32 } else { 1.0 });
                    ok(unsafe { gacc_microbatch_inplace(a.h, w) });
                    b.mb(&g, w);
                }
                assert_eq!(bits(&accumulator(&a)), bits(&accumulator(&b)));
                assert_eq!(a.step(), b.step());
                assert_eq!(bits(&a.params()), bits(&b.params()));
                assert_eq!(a.scale(), b.scale());
            }
        }
    }
}

#[test]
fn accumulator_holds_the_window_sum_and_is_zero_when_a_window_opens() {
    let mut rng = Rng::new(9);
    let tensors = specs(&[100, 3], &mut rng);
    let e = Eng::new(&config(GACC_OPTIMIZER_SGD), &tensors);
    let zeros = vec![0f32; e.n];
    assert_eq!(bits(&accumulator(&e)), bits(&zeros), "after gacc_create");
    // The sum itself: two micro-batches, weights 2 and 3, against an f64 sum (the
    // values are small integers times powers of two: every sum is exact).
    let g1: Vec<f64> = (0..e.n).map(|i| (i % 7) as f64 * 0.25).collect();
    let g2: Vec<f64> = (0..e.n).map(|i| (i % 5) as f64 - 2.0).collect();
    e.mb(&Grad::encode(GACC_DTYPE_F32, &g1), 2.0);
    ok(tensors_call(&e, &[Some(Grad::encode(GACC_DTYPE_F16, &g2[..100])), None], 3.0));
    let acc = accumulator(&e);
    for i in 0..e.n {
        let want = 2.0 * g1[i] + if i < 100 { 3.0 * g2[i] } else { 0.0 };
        assert_eq!(acc[i] as f64, want, "element {i}");
    }
    e.step();
    assert_eq!(bits(&accumulator(&e)), bits(&zeros), "after an applied step");
    // A skipped step: the host writes a NaN in place.
    acc_slice(&e, 1, 3)[2] = f32::NAN;
    ok(unsafe { gacc_microbatch_inplace(e.h, 1.0) });
    let info = e.step();
    assert_eq!(info.applied, 0, "a NaN written in place must skip the step");
    assert_eq!(bits(&accumulator(&e)), bits(&zeros), "after a skipped step");
    e.mb(&Grad::encode(GACC_DTYPE_F32, &g1), 1.0);
    e.zero();
    assert_eq!(bits(&accumulator(&e)), bits(&zeros), "after gacc_zero");
    // A checkpoint saved between windows loads as an empty window, over a dirty one.
    let dir = std::env::temp_dir().join(format!("gacc-tensors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = std::ffi::CString::new(dir.join("between.safetensors").to_str().unwrap()).unwrap();
    ok(unsafe { gacc_save(e.h, path.as_ptr()) });
    e.mb(&Grad::encode(GACC_DTYPE_F32, &g2), 1.0);
    ok(unsafe { gacc_load(e.h, path.as_ptr()) });
    assert_eq!(bits(&accumulator(&e)), bits(&zeros), "after gacc_load of a between-windows checkpoint");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn accumulator_ptr_rejects_bad_arguments() {
    let mut rng = Rng::new(10);
    let e = Eng::new(&config(GACC_OPTIMIZER_SGD), &specs(&[4, 4], &mut rng));
    let mut p = std::ptr::null_mut();
    assert_eq!(unsafe { gacc_accumulator_ptr(e.h, 2, &mut p) }, GACC_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("tensor index 2"), "{}", last_error());
    assert!(p.is_null());
    assert_eq!(unsafe { gacc_accumulator_ptr(e.h, 0, std::ptr::null_mut()) }, GACC_ERR_NULL_POINTER);
    assert_eq!(unsafe { gacc_accumulator_ptr(0x10 as *mut gacc_engine, 0, &mut p) }, GACC_ERR_INVALID_HANDLE);
    // Tensor t's pointer is the flat accumulator at the tensor's offset.
    let (mut p0, mut p1) = (std::ptr::null_mut(), std::ptr::null_mut());
    ok(unsafe { gacc_accumulator_ptr(e.h, 0, &mut p0) });
    ok(unsafe { gacc_accumulator_ptr(e.h, 1, &mut p1) });
    assert_eq!(unsafe { p0.add(4) }, p1);
    for w in [f64::NAN, -1.0, f64::INFINITY] {
        assert_eq!(unsafe { gacc_microbatch_inplace(e.h, w) }, GACC_ERR_INVALID_ARGUMENT);
    }
    assert_eq!(unsafe { gacc_microbatch_inplace(0x10 as *mut gacc_engine, 1.0) }, GACC_ERR_INVALID_HANDLE);
    assert_eq!(e.try_step(), GACC_ERR_INVALID_STATE, "rejected in-place calls were counted");
}

#[test]
fn inplace_is_refused_with_compensation_or_drop_mode() {
    let mut rng = Rng::new(11);
    let tensors = specs(&[8], &mut rng);
    for (option, name) in [(0, "compensated_accumulation"), (1, "drop_nonfinite_microbatches")] {
        let mut cfg = config(GACC_OPTIMIZER_SGD);
        if option == 0 {
            cfg.compensated_accumulation = 1;
        } else {
            cfg.drop_nonfinite_microbatches = 1;
        }
        let e = Eng::new(&cfg, &tensors);
        e.mb(&Grad::encode(GACC_DTYPE_F32, &[1.0; 8]), 1.0);
        let before = bits(&accumulator(&e));
        assert_eq!(unsafe { gacc_microbatch_inplace(e.h, 1.0) }, GACC_ERR_INVALID_STATE);
        assert!(last_error().contains(name), "{}", last_error());
        assert_eq!(bits(&accumulator(&e)), before);
        let info = e.step();
        assert_eq!((info.microbatches, info.total_weight), (1, 1.0));
    }
}

#[test]
fn one_window_mixes_all_three_calls() {
    let mut rng = Rng::new(12);
    let tensors = specs(&[777, 1, 4000, 12], &mut rng);
    for reduction in [GACC_GRADS_MEAN, GACC_GRADS_SUM] {
        let mut cfg = config(GACC_OPTIMIZER_ADAMW);
        cfg.grad_reduction = reduction;
        let (a, b) = (Eng::new(&cfg, &tensors), Eng::new(&cfg, &tensors));
        for _window in 0..2 {
            let g1 = random_grad(&mut rng, GACC_DTYPE_BF16, a.n, -5, 0, 1.0);
            a.mb(&g1, 1.0);
            b.mb(&g1, 1.0);
            let g2 = random_tensors(&mut rng, &a, None, 0.25);
            ok(tensors_call(&a, &g2, 2.0));
            b.mb(&concat(&b, &g2), 2.0);
            let g3 = random_grad(&mut rng, GACC_DTYPE_F32, a.n, -5, 0, 1.0);
            add_inplace(&a, &f32s(&g3), if reduction == GACC_GRADS_MEAN { 3.0 } else { 1.0 });
            ok(unsafe { gacc_microbatch_inplace(a.h, 3.0) });
            b.mb(&g3, 3.0);
            assert_eq!(bits(&accumulator(&a)), bits(&accumulator(&b)));
            let (ia, ib) = (a.step(), b.step());
            assert_eq!(ia, ib);
            assert_eq!((ia.microbatches, ia.total_weight), (3, 6.0));
            assert_eq!(bits(&a.params()), bits(&b.params()));
        }
    }
}

#[test]
fn checkpoint_mid_window_keeps_the_inplace_accumulator() {
    // Save in the middle of a window whose accumulator was written in place, load into
    // a fresh engine, finish the window there: the same step as without the break.
    let mut rng = Rng::new(13);
    let tensors = specs(&[300, 41], &mut rng);
    let cfg = config(GACC_OPTIMIZER_ADAMW);
    let (a, b) = (Eng::new(&cfg, &tensors), Eng::new(&cfg, &tensors));
    let g1 = random_grad(&mut rng, GACC_DTYPE_F32, a.n, -4, 0, 1.0);
    let g2 = random_tensors(&mut rng, &a, None, 0.3);
    add_inplace(&a, &f32s(&g1), 2.0);
    ok(unsafe { gacc_microbatch_inplace(a.h, 2.0) });
    b.mb(&g1, 2.0);
    let dir = std::env::temp_dir().join(format!("gacc-tensors-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = std::ffi::CString::new(dir.join("mid.safetensors").to_str().unwrap()).unwrap();
    ok(unsafe { gacc_save(a.h, path.as_ptr()) });
    drop(a);
    let c = Eng::new(&cfg, &specs(&[300, 41], &mut Rng::new(99)));
    ok(unsafe { gacc_load(c.h, path.as_ptr()) });
    assert_eq!(bits(&accumulator(&c)), bits(&accumulator(&b)));
    ok(tensors_call(&c, &g2, 1.0));
    b.mb(&concat(&b, &g2), 1.0);
    assert_eq!(c.step(), b.step());
    assert_eq!(bits(&c.params()), bits(&b.params()));
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------
// Data parallelism: two ranks as threads, an in-process all-reduce (f32 summed in
// rank order). Ranks feeding per-tensor and in-place micro-batches take exactly the
// steps of ranks feeding the same gradients through gacc_microbatch.

struct Group {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
}

struct RankCtx {
    group: Arc<Group>,
    rank: usize,
}

unsafe extern "C" fn allreduce(buf: *mut c_void, count: usize, dtype: u32, user: *mut c_void) -> i32 {
    let ctx = &*(user as *const RankCtx);
    let vals: Vec<f64> = match dtype {
        GACC_DTYPE_F32 => std::slice::from_raw_parts(buf as *const f32, count).iter().map(|&x| f64::from(x)).collect(),
        _ => std::slice::from_raw_parts(buf as *const f64, count).to_vec(),
    };
    ctx.group.slots.lock().unwrap()[ctx.rank] = vals;
    ctx.group.barrier.wait();
    {
        let slots = ctx.group.slots.lock().unwrap();
        for i in 0..count {
            if dtype == GACC_DTYPE_F32 {
                *(buf as *mut f32).add(i) = slots.iter().fold(0f32, |a, s| a + s[i] as f32);
            } else {
                *(buf as *mut f64).add(i) = slots.iter().map(|s| s[i]).sum();
            }
        }
    }
    ctx.group.barrier.wait();
    0
}

/// Runs 2 ranks for 2 windows; `direct`: every micro-batch through gacc_microbatch,
/// otherwise one per-tensor, one in-place, one gacc_microbatch per window. Returns
/// each rank's final parameters and the step reports, and checks that the accumulator
/// pointer stays the same across data-parallel steps.
fn run_ranks(direct: bool) -> Vec<(Vec<f32>, Vec<gacc_step_info>)> {
    let group = Arc::new(Group { barrier: Barrier::new(2), slots: Mutex::new(vec![Vec::new(); 2]) });
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let group = group.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(14);
                let tensors = specs(&[1000, 7, 300], &mut rng);
                let e = Eng::new(&config(GACC_OPTIMIZER_ADAMW), &tensors);
                let ctx = Box::new(RankCtx { group, rank });
                let user = &*ctx as *const RankCtx as *mut c_void;
                ok(unsafe { gacc_set_allreduce(e.h, Some(allreduce), user, rank as i32, 2) });
                let first = acc_slice(&e, 0, 1).as_ptr();
                let mut rng = Rng::new(100 + rank as u64);
                let mut infos = Vec::new();
                for _window in 0..2 {
                    let g1 = random_tensors(&mut rng, &e, None, 0.3);
                    let g2 = random_grad(&mut rng, GACC_DTYPE_F32, e.n, -4, 0, 1.0);
                    let g3 = random_grad(&mut rng, GACC_DTYPE_F16, e.n, -4, 0, 1.0);
                    if direct {
                        e.mb(&concat(&e, &g1), 1.0);
                        e.mb(&g2, 2.0);
                    } else {
                        ok(tensors_call(&e, &g1, 1.0));
                        add_inplace(&e, &f32s(&g2), 2.0);
                        ok(unsafe { gacc_microbatch_inplace(e.h, 2.0) });
                    }
                    e.mb(&g3, 1.0);
                    infos.push(e.step());
                    assert_eq!(acc_slice(&e, 0, 1).as_ptr(), first, "the accumulator moved");
                    assert!(accumulator(&e).iter().all(|&x| x.to_bits() == 0));
                }
                let p = e.params();
                drop(e);
                drop(ctx);
                (p, infos)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn data_parallel_ranks_with_per_tensor_and_inplace_match_gacc_microbatch() {
    let mixed = run_ranks(false);
    let direct = run_ranks(true);
    for r in 0..2 {
        assert_eq!(mixed[r].1, direct[r].1, "rank {r} step reports");
        assert_eq!(mixed[r].1[0].microbatches, 6, "global micro-batch count");
        assert_eq!(bits(&mixed[r].0), bits(&direct[r].0), "rank {r} parameters");
    }
    assert_eq!(bits(&mixed[0].0), bits(&mixed[1].0), "ranks agree");
}

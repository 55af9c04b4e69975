//! The CPU backend's byte-saving shortcuts (issue 14) change nothing a caller can see.
//!
//! A window's first micro-batch writes the accumulator instead of adding to it (no
//! zeroing pass after a step), and the step takes the gradient norm from the last
//! accumulation pass instead of reading the accumulator again. Both are turned off
//! for an engine whose host holds gacc_accumulator_ptr (the in-place contract needs
//! real zeros when every window opens), which therefore runs exactly the passes of
//! before. Two engines, one with the shortcuts and one without, are driven through
//! the same random sequence of flat and per-tensor micro-batches, zero_grad,
//! skipped and applied steps and checkpoints, and must agree bit for bit: weights,
//! working copy, every gacc_step_info field, and the bytes of every checkpoint.

mod support;

use gacc::ffi::tensors::*;
use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status::*;
use support::*;

fn entries(grads: &[Option<Grad>]) -> Vec<gacc_grad> {
    grads
        .iter()
        .map(|g| match g {
            Some(g) => gacc_grad { data: g.ptr(), dtype: g.dtype(), numel: g.len() },
            None => gacc_grad { data: std::ptr::null(), dtype: 0, numel: 0 },
        })
        .collect()
}

fn info_bits(i: &gacc_step_info) -> (u32, u32, u32, u32, u64, u32, u64, u32) {
    (
        i.applied,
        i.grad_norm.to_bits(),
        i.clip_coef.to_bits(),
        i.loss_scale.to_bits(),
        i.step,
        i.microbatches,
        i.total_weight.to_bits(),
        i.dropped_microbatches,
    )
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn save(e: &Eng, path: &std::path::Path) -> Vec<u8> {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    ok(unsafe { gacc_save(e.h, c.as_ptr()) });
    std::fs::read(path).unwrap()
}

fn random_config(rng: &mut Rng) -> gacc_config {
    let optimizer = rng.pick(&[GACC_OPTIMIZER_SGD, GACC_OPTIMIZER_ADAMW]);
    let mut c = config(optimizer);
    c.lr = 0.01;
    c.momentum = rng.pick(&[0.0, 0.9]);
    c.weight_decay = rng.pick(&[0.0, 0.01]);
    c.precision = rng.pick(&[GACC_PRECISION_FP32, GACC_PRECISION_FP16, GACC_PRECISION_BF16]);
    c.max_grad_norm = rng.pick(&[0.0, 0.5, 1e6]);
    c.grad_reduction = rng.pick(&[GACC_GRADS_MEAN, GACC_GRADS_SUM]);
    c.drop_nonfinite_microbatches = rng.chance(0.3) as u32;
    c.init_scale = rng.pick(&[1.0, 1024.0]);
    c.growth_interval = 2;
    c
}

/// One case: the same operations on both engines, compared after each.
fn run_case(seed: u64, dir: &std::path::Path) {
    let mut rng = Rng::new(seed);
    let cfg = random_config(&mut rng);
    // Sizes around the 32K-element work item and above the 256K parallel threshold.
    let sizes = [1, 17, 1000, 32 * 1024 + 3, 70_000, 300_000];
    let tensors = random_tensors(&mut rng, 5, &sizes);
    let fast = Eng::new(&cfg, &tensors);
    let eager = Eng::new(&cfg, &tensors);
    let mut acc_ptr = std::ptr::null_mut();
    ok(unsafe { gacc_accumulator_ptr(eager.h, 0, &mut acc_ptr) });
    let n = fast.n;
    let ctx = format!("seed {seed} ({} tensors, {n} params)", tensors.len());
    let drop_mode = cfg.drop_nonfinite_microbatches != 0;
    let mut open = 0; // micro-batches with weight > 0 in the open window
    for op in 0..24 {
        let what = rng.below(10);
        let weight = if rng.chance(0.1) { 0.0 } else { 0.25 + rng.unit() * 3.0 };
        if what < 4 {
            // A flat micro-batch, now and then with an inf in it.
            let dtype = rng.pick(&[GACC_DTYPE_F32, GACC_DTYPE_F16, GACC_DTYPE_BF16]);
            let mut g = random_grad(&mut rng, dtype, n, -8, 2, 1.0);
            if rng.chance(0.15) {
                let at = rng.below(n as u64) as usize;
                g.poison(at, 0);
            }
            assert_eq!(fast.try_mb(&g, weight), eager.try_mb(&g, weight), "{ctx} op {op}");
            open += (weight > 0.0) as u32;
        } else if what < 7 {
            // Per tensor, some without a gradient.
            let grads: Vec<Option<Grad>> = fast
                .spans
                .iter()
                .map(|&(_, k)| {
                    let dtype = rng.pick(&[GACC_DTYPE_F32, GACC_DTYPE_F16, GACC_DTYPE_BF16]);
                    (!rng.chance(0.3)).then(|| random_grad(&mut rng, dtype, k, -8, 2, 1.0))
                })
                .collect();
            let e = entries(&grads);
            let a = unsafe { gacc_microbatch_tensors(fast.h, e.as_ptr(), e.len(), weight) };
            let b = unsafe { gacc_microbatch_tensors(eager.h, e.as_ptr(), e.len(), weight) };
            assert_eq!(a, b, "{ctx} op {op}");
            open += (weight > 0.0) as u32;
        } else if what < 8 {
            fast.zero();
            eager.zero();
            open = 0;
        } else if what < 9 {
            let path_a = dir.join(format!("{seed}-{op}-a.gacc"));
            let path_b = dir.join(format!("{seed}-{op}-b.gacc"));
            assert!(save(&fast, &path_a) == save(&eager, &path_b), "{ctx} op {op}: checkpoints differ");
            if rng.chance(0.5) {
                // Reload into the fast engine: its window continues from the file.
                let c = std::ffi::CString::new(path_a.to_str().unwrap()).unwrap();
                ok(unsafe { gacc_load(fast.h, c.as_ptr()) });
            }
        } else {
            let (mut ia, mut ib) = (gacc_step_info::default(), gacc_step_info::default());
            let a = unsafe { gacc_step(fast.h, &mut ia) };
            let b = unsafe { gacc_step(eager.h, &mut ib) };
            assert_eq!(a, b, "{ctx} op {op}: step status");
            if a == GACC_OK {
                assert_eq!(info_bits(&ia), info_bits(&ib), "{ctx} op {op}: step info");
            } else {
                assert!(open == 0 || drop_mode, "{ctx} op {op}: step refused: {}", last_error());
            }
            open = 0;
        }
        assert!(bits(&fast.params()) == bits(&eager.params()), "{ctx} op {op}: master weights differ");
        if cfg.precision != GACC_PRECISION_FP32 {
            let dtype = if cfg.precision == GACC_PRECISION_FP16 { GACC_DTYPE_F16 } else { GACC_DTYPE_BF16 };
            assert!(fast.working(dtype) == eager.working(dtype), "{ctx} op {op}: working copies differ");
        }
    }
    // A checkpoint right after a step holds a zero accumulator on both.
    let g = random_grad(&mut rng, GACC_DTYPE_F32, n, -8, 2, 1.0);
    fast.mb(&g, 1.0);
    eager.mb(&g, 1.0);
    let (a, b) = (fast.try_step(), eager.try_step());
    assert_eq!(a, b, "{ctx}: final step");
    let path_a = dir.join(format!("{seed}-end-a.gacc"));
    let path_b = dir.join(format!("{seed}-end-b.gacc"));
    assert!(save(&fast, &path_a) == save(&eager, &path_b), "{ctx}: checkpoints after the last step differ");
    let acc = unsafe { std::slice::from_raw_parts(acc_ptr, n) };
    assert!(acc.iter().all(|&x| x.to_bits() == 0), "{ctx}: the in-place accumulator is not zero after a step");
}

#[test]
fn shortcuts_agree_bit_for_bit_with_the_eager_passes() {
    let dir = std::env::temp_dir().join(format!("gacc-window-shortcuts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for seed in 0..40 {
        run_case(seed, &dir);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// After a step the accumulator the host sees is zero, whatever the backend skipped:
/// taking gacc_accumulator_ptr after a window closed (applied or skipped) or after
/// gacc_zero gives zeros, and an in-place micro-batch added there is exactly what
/// gacc_microbatch would have given.
#[test]
fn accumulator_taken_after_a_window_reads_zero() {
    for ending in ["applied", "skipped", "zero"] {
        let mut rng = Rng::new(7);
        let tensors = random_tensors(&mut rng, 3, &[100, 40_000, 300_000]);
        let cfg = config(GACC_OPTIMIZER_ADAMW);
        let e = Eng::new(&cfg, &tensors);
        let reference = Eng::new(&cfg, &tensors);
        let mut g = Grad::F32(rng.vec(e.n, 1.0));
        if ending == "skipped" {
            g.poison(e.n / 2, 0);
        }
        e.mb(&g, 1.0);
        match ending {
            "zero" => e.zero(),
            _ => {
                e.try_step();
            }
        }
        let mut p = std::ptr::null_mut();
        ok(unsafe { gacc_accumulator_ptr(e.h, 0, &mut p) });
        let acc = unsafe { std::slice::from_raw_parts_mut(p, e.n) };
        assert!(acc.iter().all(|&x| x.to_bits() == 0), "{ending}: accumulator not zero");
        // The next window, in place, then stepped: the same as a plain micro-batch on
        // an engine with the same history.
        reference.mb(&g, 1.0);
        match ending {
            "zero" => reference.zero(),
            _ => {
                reference.try_step();
            }
        }
        let next = rng.vec(e.n, 1.0);
        for (a, &x) in acc.iter_mut().zip(&next) {
            *a += 2.0 * x;
        }
        ok(unsafe { gacc_microbatch_inplace(e.h, 2.0) });
        reference.mb_f32(&next, 2.0);
        let (ia, ib) = (e.step(), reference.step());
        assert_eq!(info_bits(&ia), info_bits(&ib), "{ending}");
        assert!(bits(&e.params()) == bits(&reference.params()), "{ending}");
    }
}

/// Buffers of 4 Mi elements and more write the first micro-batch of a window with
/// streaming stores and take the norm partials from the registers
/// (src/backend/cpu/streaming.rs): the same bits as the eager engine, in every dtype.
#[test]
fn large_buffers_stream_the_first_microbatch_bit_for_bit() {
    let mut rng = Rng::new(99);
    let n = (4 << 20) + 1037;
    let tensors =
        vec![TensorSpec { init: rng.vec(3, 1.0), no_wd: true }, TensorSpec { init: rng.vec(n - 3, 1.0), no_wd: false }];
    let mut cfg = config(GACC_OPTIMIZER_ADAMW);
    cfg.max_grad_norm = 0.5;
    let fast = Eng::new(&cfg, &tensors);
    let eager = Eng::new(&cfg, &tensors);
    let mut p = std::ptr::null_mut();
    ok(unsafe { gacc_accumulator_ptr(eager.h, 0, &mut p) });
    for (w, dtype) in [GACC_DTYPE_F32, GACC_DTYPE_F16, GACC_DTYPE_BF16, GACC_DTYPE_F32].into_iter().enumerate() {
        for k in 0..2 {
            let g = random_grad(&mut rng, dtype, n, -8, 2, 1.0);
            let weight = 1.0 + k as f64;
            fast.mb(&g, weight);
            eager.mb(&g, weight);
        }
        let (a, b) = (fast.step(), eager.step());
        assert_eq!(info_bits(&a), info_bits(&b), "window {w}");
        assert!(bits(&fast.params()) == bits(&eager.params()), "window {w}: weights");
    }
}

/// A step over 4 Mi elements and more writes the fp16/bf16 working copy with streaming
/// stores (src/backend/cpu/convert.rs): it must hold exactly the master weights
/// rounded to nearest even, as half's scalar conversions round them.
#[test]
fn large_working_copies_are_the_master_rounded_to_nearest() {
    let mut rng = Rng::new(7);
    let n = (4 << 20) + 77;
    let tensors =
        vec![TensorSpec { init: rng.vec(5, 1.0), no_wd: true }, TensorSpec { init: rng.vec(n - 5, 1.0), no_wd: false }];
    for precision in [GACC_PRECISION_FP16, GACC_PRECISION_BF16] {
        let mut cfg = config(GACC_OPTIMIZER_ADAMW);
        cfg.precision = precision;
        let e = Eng::new(&cfg, &tensors);
        for _ in 0..2 {
            let g = random_grad(&mut rng, GACC_DTYPE_F32, n, -8, 2, e.scale());
            e.mb(&g, 1.0);
            assert_eq!(e.step().applied, 1);
        }
        let master = e.params();
        let want: Vec<u16> = if precision == GACC_PRECISION_FP16 {
            master.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect()
        } else {
            master.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect()
        };
        let dtype = if precision == GACC_PRECISION_FP16 { GACC_DTYPE_F16 } else { GACC_DTYPE_BF16 };
        let got = e.working(dtype);
        let bad = got.iter().zip(&want).position(|(g, w)| g != w);
        assert!(bad.is_none(), "precision {precision}: element {bad:?} differs from the rounded master");
    }
}

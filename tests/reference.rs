//! gacc through its C ABI against an independent f64 model of docs/c-api.md and PyTorch
//! (tests/support/mod.rs; the tolerance is derived there: a first-order fp32 rounding
//! bound carried through PyTorch's formulas, times 4).
//!
//! Every comparison can fail: `negative_controls_*` run the same drivers against a
//! model with one deliberate mistake and require a mismatch.

#![allow(clippy::type_complexity, clippy::needless_range_loop)]

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};

use gacc::ffi::types::*;
use gacc::gacc_status;
use support::*;

const SMALL_SIZES: &[usize] = &[1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 100, 257, 1023, 4097];

fn random_config(rng: &mut Rng) -> gacc_config {
    let mut c = if rng.chance(0.5) {
        let mut c = config(GACC_OPTIMIZER_SGD);
        c.lr = rng.pick(&[0.1, 0.01, 0.5]);
        c.momentum = rng.pick(&[0.0, 0.0, 0.9, 0.5]);
        c.nesterov = (c.momentum > 0.0 && rng.chance(0.5)) as u32;
        c.weight_decay = rng.pick(&[0.0, 1e-2, 0.1]);
        c
    } else {
        let mut c = config(GACC_OPTIMIZER_ADAMW);
        c.lr = rng.pick(&[1e-3, 1e-2, 0.1]);
        c.beta1 = rng.pick(&[0.9, 0.0, 0.5, 0.8]);
        c.beta2 = rng.pick(&[0.999, 0.99, 0.95]);
        c.eps = rng.pick(&[1e-8, 1e-6, 1e-3]);
        c.weight_decay = rng.pick(&[0.0, 0.01, 0.1]);
        c
    };
    c.precision = rng.pick(&[GACC_PRECISION_FP32, GACC_PRECISION_FP16, GACC_PRECISION_BF16]);
    c.max_grad_norm = if rng.chance(0.5) { 0.0 } else { rng.pick(&[0.05, 0.5, 2.0, 20.0]) };
    c.init_scale = rng.pick(&[16.0, 256.0, 4096.0, 65536.0]);
    c.growth_interval = rng.pick(&[1, 2, 3, 5, 2000]);
    c.backoff_factor = rng.pick(&[0.5, 0.25]);
    c.grad_reduction = rng.pick(&[GACC_GRADS_MEAN, GACC_GRADS_SUM]);
    c
}

fn random_weight(rng: &mut Rng, first: bool) -> f64 {
    let r = rng.unit();
    if r < 0.6 || (first && r >= 0.8) {
        rng.range(1, 512) as f64
    } else if r < 0.8 {
        0.01 + rng.unit() * 4.0
    } else {
        0.0
    }
}

struct CaseOpts {
    sizes: &'static [usize],
    max_tensors: u64,
    windows: usize,
    max_mb: u64,
    poison_p: f64,
    mutation: Mutation,
    tweak: fn(&mut gacc_config),
}

impl Default for CaseOpts {
    fn default() -> Self {
        CaseOpts {
            sizes: SMALL_SIZES,
            max_tensors: 4,
            windows: 12,
            max_mb: 4,
            poison_p: 0.15,
            mutation: Mutation::None,
            tweak: |_| {},
        }
    }
}

/// One random case: random config, layout and windows; gacc and the model side by
/// side, every step checked (info, parameters, working copy, skip invariants).
#[derive(Default, Debug)]
struct Stats {
    applied: usize,
    skipped: usize,
    clipped: usize,
    fp16_backoffs: usize,
    fp16_growths: usize,
}

fn run_case(seed: u64, o: &CaseOpts) -> Stats {
    let mut st = Stats::default();
    let mut rng = Rng::new(seed);
    let mut cfg = random_config(&mut rng);
    (o.tweak)(&mut cfg);
    let tensors = random_tensors(&mut rng, o.max_tensors, o.sizes);
    let e = Eng::new(&cfg, &tensors);
    let mut m = Model::new(&cfg, &tensors);
    m.mutation = o.mutation;
    let ctx0 = format!("seed {seed} cfg {cfg:?} sizes {:?}", tensors.iter().map(|t| t.init.len()).collect::<Vec<_>>());
    check_working_copy(&e, cfg.precision, &e.params());
    for w in 0..o.windows {
        let ctx = format!("{ctx0} window {w}");
        let n_mb = 1 + rng.below(o.max_mb) as usize;
        let poison = rng
            .chance(o.poison_p)
            .then(|| (rng.below(n_mb as u64) as usize, rng.below(e.n as u64) as usize, rng.below(3) as usize));
        let lr_at = rng.chance(0.15).then(|| rng.below(n_mb as u64 + 1) as usize);
        if rng.chance(0.05) {
            // A window that is dropped: garbage (even non-finite) must not leak.
            let mut g = random_grad(&mut rng, GACC_DTYPE_F32, e.n, -8, 0, 1.0);
            g.poison(0, 2);
            e.mb(&g, 3.0);
            m.microbatch(&g.values(), 3.0);
            e.zero();
            m.zero();
        }
        let scale = e.scale();
        assert_eq!(scale.to_bits(), m.scale.to_bits(), "{ctx}: loss scale before window");
        for k in 0..n_mb {
            if lr_at == Some(k) {
                let lr = m.lr * rng.pick(&[0.5f32, 2.0, 0.0]);
                e.set_lr(lr);
                m.lr = lr;
            }
            let dtype = rng.pick(&[GACC_DTYPE_F32, GACC_DTYPE_F16, GACC_DTYPE_BF16]);
            let mut g = random_grad(&mut rng, dtype, e.n, -8, 0, scale);
            if let Some((pk, pi, kind)) = poison {
                if pk == k {
                    g.poison(pi, kind);
                }
            }
            let weight = random_weight(&mut rng, k == 0);
            e.mb(&g, weight);
            m.microbatch(&g.values(), weight);
        }
        if lr_at == Some(n_mb) {
            let lr = m.lr * 0.5;
            e.set_lr(lr);
            m.lr = lr;
        }
        let before = e.params();
        let before_wc = match cfg.precision {
            GACC_PRECISION_FP16 => e.working(GACC_DTYPE_F16),
            GACC_PRECISION_BF16 => e.working(GACC_DTYPE_BF16),
            _ => vec![],
        };
        let info = e.step();
        let want = m.step();
        assert_info_matches(&ctx, &info, &want);
        st.applied += info.applied as usize;
        st.skipped += 1 - info.applied as usize;
        st.clipped += (info.clip_coef < 1.0) as usize;
        if cfg.precision == GACC_PRECISION_FP16 {
            st.fp16_backoffs += (info.loss_scale < scale) as usize;
            st.fp16_growths += (info.loss_scale > scale) as usize;
        }
        let after = e.params();
        assert_params_match(&ctx, &after, &m);
        assert_eq!(after, e.master_via_ptr(), "{ctx}: params_read vs params_ptr(F32)");
        check_working_copy(&e, cfg.precision, &after);
        if !want.applied {
            assert!(before.iter().zip(&after).all(|(a, b)| a.to_bits() == b.to_bits()), "{ctx}: skip changed params");
            let wc = match cfg.precision {
                GACC_PRECISION_FP16 => e.working(GACC_DTYPE_F16),
                GACC_PRECISION_BF16 => e.working(GACC_DTYPE_BF16),
                _ => vec![],
            };
            assert_eq!(before_wc, wc, "{ctx}: skip changed the working copy");
            if cfg.precision != GACC_PRECISION_FP16 {
                assert_eq!(info.loss_scale, 1.0, "{ctx}");
            }
        }
    }
    // Nothing left in the window.
    assert_eq!(e.try_step(), gacc_status::GACC_ERR_INVALID_STATE);
    st
}

#[test]
fn random_configs_match_f64_model() {
    let mut total = Stats::default();
    for seed in 0..80 {
        let s = run_case(seed, &CaseOpts::default());
        total.applied += s.applied;
        total.skipped += s.skipped;
        total.clipped += s.clipped;
        total.fp16_backoffs += s.fp16_backoffs;
        total.fp16_growths += s.fp16_growths;
    }
    eprintln!("{total:?}");
    // The random cases must actually exercise every path they claim to.
    assert!(total.applied > 400 && total.skipped > 50 && total.clipped > 100, "{total:?}");
    assert!(total.fp16_backoffs > 20 && total.fp16_growths > 20, "{total:?}");
}

#[test]
fn random_long_runs_match_f64_model() {
    // Fewer, longer runs: error bounds after 150 steps, scale dynamics, lr changes.
    for seed in 1000..1006 {
        run_case(seed, &CaseOpts { sizes: &[1, 17, 33, 100], windows: 150, max_mb: 3, ..CaseOpts::default() });
    }
}

#[test]
fn large_sizes_take_the_parallel_path() {
    // > 256K elements (PARALLEL_THRESHOLD) across tensors of odd sizes that straddle
    // the 32K chunk boundaries, decay flags alternating.
    for seed in 2000..2004 {
        run_case(
            seed,
            &CaseOpts {
                sizes: &[100_003, 32_769, 131_071, 1],
                max_tensors: 5,
                windows: 3,
                max_mb: 2,
                poison_p: 0.2,
                ..CaseOpts::default()
            },
        );
    }
    run_case(
        2010,
        &CaseOpts { sizes: &[300_001], max_tensors: 1, windows: 3, max_mb: 2, poison_p: 0.0, ..CaseOpts::default() },
    );
}

fn must_fail(what: &str, f: impl FnOnce()) {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(prev);
    assert!(r.is_err(), "negative control '{what}' was not detected: the comparison is too weak");
}

#[test]
fn negative_controls_the_model_comparison_detects_mistakes() {
    let adam = |c: &mut gacc_config| {
        c.optimizer = GACC_OPTIMIZER_ADAMW;
        c.lr = 1e-2;
        c.weight_decay = 0.1;
        c.max_grad_norm = 0.0;
    };
    let sgd_nesterov = |c: &mut gacc_config| {
        c.optimizer = GACC_OPTIMIZER_SGD;
        c.momentum = 0.9;
        c.nesterov = 1;
    };
    let clip = |c: &mut gacc_config| {
        c.max_grad_norm = 1e-3;
    };
    let sgd_decay = |c: &mut gacc_config| {
        c.optimizer = GACC_OPTIMIZER_SGD;
        c.weight_decay = 0.1;
        c.max_grad_norm = 0.0;
    };
    let cases: [(Mutation, fn(&mut gacc_config), f64); 6] = [
        (Mutation::BiasCorrectionOffByOne, adam, 0.0),
        (Mutation::DecayEverything, sgd_decay, 0.0),
        (Mutation::SkipAdvancesStep, adam, 0.5),
        (Mutation::DivideByCount, |_| {}, 0.0),
        (Mutation::ClipPerMicrobatch, clip, 0.0),
        (Mutation::NoNesterov, sgd_nesterov, 0.0),
    ];
    for (mutation, tweak, poison_p) in cases {
        must_fail(&format!("{mutation:?}"), || {
            for seed in 0..6 {
                run_case(
                    seed,
                    &CaseOpts {
                        mutation,
                        tweak,
                        poison_p,
                        max_mb: 4,
                        windows: 10,
                        sizes: &[16, 33],
                        ..CaseOpts::default()
                    },
                );
            }
        });
    }
}

// ---------------------------------------------------------------------------------
// Weighting, exactly.

fn tensors_of(sizes: &[usize], init: f32) -> Vec<TensorSpec> {
    sizes.iter().map(|&n| TensorSpec { init: vec![init; n], no_wd: false }).collect()
}

/// SGD, lr 1, no decay, params 0: after one step the params are exactly -g.
fn plain_sgd(reduction: u32) -> gacc_config {
    let mut c = config(GACC_OPTIMIZER_SGD);
    c.lr = 1.0;
    c.weight_decay = 0.0;
    c.grad_reduction = reduction;
    c
}

#[test]
fn mean_and_sum_weighting_with_unequal_and_zero_weights() {
    // Integer gradients and power-of-two total weight: every operation is exact, so
    // gacc must produce the f64 values bit for bit.
    let n = 37;
    let g: Vec<Vec<f64>> = (0..4).map(|k| (0..n).map(|i| ((i * 7 + k * 13) % 23) as f64 - 11.0).collect()).collect();
    let w = [1.0, 5.0, 0.0, 2.0]; // total 8
    for (reduction, expect) in [
        (GACC_GRADS_MEAN, (0..n).map(|i| (0..4).map(|k| w[k] * g[k][i]).sum::<f64>() / 8.0).collect::<Vec<_>>()),
        (GACC_GRADS_SUM, (0..n).map(|i| (0..4).map(|k| g[k][i]).sum::<f64>() / 8.0).collect::<Vec<_>>()),
    ] {
        let e = Eng::new(&plain_sgd(reduction), &tensors_of(&[10, 27], 0.0));
        for k in 0..4 {
            e.mb(&Grad::encode(GACC_DTYPE_F32, &g[k]), w[k]);
        }
        let info = e.step();
        assert_eq!((info.microbatches, info.total_weight), (4, 8.0));
        let p = e.params();
        for i in 0..n {
            assert_eq!(p[i] as f64, -expect[i], "reduction {reduction} element {i}");
        }
        // A plain average over micro-batches (the HF accumulation bug) differs.
        let naive: f64 = (0..4).map(|k| g[k][0]).sum::<f64>() / 4.0;
        assert_ne!(p[0] as f64, -naive);
    }
}

#[test]
fn mean_weight_zero_adds_nothing_and_all_zero_window_is_invalid_state() {
    let e = Eng::new(&plain_sgd(GACC_GRADS_MEAN), &tensors_of(&[5], 0.0));
    let g = Grad::encode(GACC_DTYPE_F32, &[1.0; 5]);
    e.mb(&g, 0.0);
    assert_eq!(e.try_step(), gacc_status::GACC_ERR_INVALID_STATE);
    // The window is still open (weight 0 so far); add a real one.
    e.mb(&Grad::encode(GACC_DTYPE_F32, &[3.0; 5]), 2.0);
    let info = e.step();
    assert_eq!((info.microbatches, info.total_weight), (2, 2.0));
    assert_eq!(e.params(), vec![-3.0; 5]);
    // SUM mode: a weight-0 micro-batch still adds its gradient.
    let e = Eng::new(&plain_sgd(GACC_GRADS_SUM), &tensors_of(&[5], 0.0));
    e.mb(&g, 0.0);
    e.mb(&g, 2.0);
    e.step();
    assert_eq!(e.params(), vec![-1.0; 5]);
}

#[test]
fn rejected_microbatch_leaves_the_window_unchanged() {
    let e = Eng::new(&plain_sgd(GACC_GRADS_MEAN), &tensors_of(&[4, 3], 0.0));
    let good = Grad::encode(GACC_DTYPE_F32, &[2.0; 7]);
    e.mb(&good, 1.0);
    let short = Grad::encode(GACC_DTYPE_F32, &[100.0; 6]);
    assert_eq!(e.try_mb(&short, 1.0), gacc_status::GACC_ERR_INVALID_ARGUMENT);
    for bad_w in [f64::NAN, -1.0, f64::INFINITY] {
        assert_eq!(e.try_mb(&Grad::encode(GACC_DTYPE_F32, &[100.0; 7]), bad_w), gacc_status::GACC_ERR_INVALID_ARGUMENT);
    }
    let bad_dtype = unsafe { gacc::ffi::gacc_microbatch(e.h, good.ptr(), 3, 7, 1.0) };
    assert_eq!(bad_dtype, gacc_status::GACC_ERR_INVALID_ARGUMENT);
    let info = e.step();
    assert_eq!((info.microbatches, info.total_weight), (1, 1.0));
    assert_eq!(e.params(), vec![-2.0; 7]);
}

// ---------------------------------------------------------------------------------
// fp32 accumulation of narrow inputs.

#[test]
fn fp32_accumulation_keeps_small_bf16_contributions() {
    // 1.0 followed by 4096 micro-batches of 2^-10, all exact in bf16.
    let small = 2f64.powi(-10);
    // What accumulating in bf16 would give (independent RNE to 8 significant bits):
    let mut bf16_acc = 1.0f64;
    for _ in 0..4096 {
        bf16_acc = rne_bf16((bf16_acc + small) as f32);
    }
    assert_eq!(bf16_acc, 1.0, "bf16 accumulation loses every 2^-10 next to 1.0");
    // gacc: SUM mode, weight 1 then weight 0: g = acc / 1.
    let e = Eng::new(&plain_sgd(GACC_GRADS_SUM), &tensors_of(&[3], 0.0));
    e.mb(&Grad::encode(GACC_DTYPE_BF16, &[1.0; 3]), 1.0);
    let s = Grad::encode(GACC_DTYPE_BF16, &[small; 3]);
    for _ in 0..4096 {
        e.mb(&s, 0.0);
    }
    e.step();
    assert_eq!(e.params(), vec![-5.0; 3], "fp32 accumulation of 1 + 4096 * 2^-10 is exactly 5");
    // Same with f16 inputs and f16's own small values (2^-12 is lost next to 1 in f16).
    let e = Eng::new(&plain_sgd(GACC_GRADS_SUM), &tensors_of(&[3], 0.0));
    e.mb(&Grad::encode(GACC_DTYPE_F16, &[1.0; 3]), 1.0);
    let s = Grad::encode(GACC_DTYPE_F16, &[2f64.powi(-12); 3]);
    assert_eq!(rne_f16((1.0 + 2f64.powi(-12)) as f32), 1.0);
    for _ in 0..4096 {
        e.mb(&s, 0.0);
    }
    e.step();
    assert_eq!(e.params(), vec![-2.0; 3]);
}

#[test]
fn f16_subnormal_gradients_are_widened_exactly() {
    // f16 subnormals (2^-24 .. 2^-15) must be converted exactly, and summed in fp32.
    let vals: Vec<f64> = (0..10).map(|k| 2f64.powi(-24) * (1 + 97 * k) as f64).collect();
    let g = Grad::encode(GACC_DTYPE_F16, &vals);
    assert_eq!(g.values(), vals);
    let e = Eng::new(&plain_sgd(GACC_GRADS_SUM), &tensors_of(&[10], 0.0));
    for _ in 0..1000 {
        e.mb(&g, 0.0);
    }
    e.mb(&Grad::encode(GACC_DTYPE_F16, &[0.0; 10]), 1.0);
    e.step();
    let p = e.params();
    for i in 0..10 {
        assert_eq!(p[i] as f64, -1000.0 * vals[i], "element {i}");
    }
}

// ---------------------------------------------------------------------------------
// Skips on non-finite gradients, against a twin engine.

fn twin_cfg(optimizer: u32, precision: u32) -> gacc_config {
    let mut c = config(optimizer);
    c.precision = precision;
    c.init_scale = 256.0;
    c.max_grad_norm = 1.0;
    if optimizer == GACC_OPTIMIZER_SGD {
        c.lr = 0.1;
        c.momentum = 0.9;
        c.weight_decay = 0.05;
    } else {
        c.lr = 0.01;
        c.weight_decay = 0.1;
    }
    c
}

#[test]
fn nonfinite_in_any_position_dtype_and_microbatch_skips_the_step() {
    let sizes = [16, 1, 20]; // 37 elements; position 16 is a tensor of its own
    let positions = [0usize, 15, 16, 17, 36];
    let mut rng = Rng::new(77);
    let init: Vec<TensorSpec> = sizes
        .iter()
        .enumerate()
        .map(|(t, &n)| TensorSpec { init: (0..n).map(|_| rng.value(24, -3, 0) as f32).collect(), no_wd: t == 1 })
        .collect();
    for optimizer in [GACC_OPTIMIZER_SGD, GACC_OPTIMIZER_ADAMW] {
        for precision in [GACC_PRECISION_FP32, GACC_PRECISION_FP16, GACC_PRECISION_BF16] {
            for dtype in [GACC_DTYPE_F32, GACC_DTYPE_F16, GACC_DTYPE_BF16] {
                for kind in 0..3 {
                    for (pi, &pos) in positions.iter().enumerate() {
                        let bad_mb = (kind + pi) % 3;
                        let ctx =
                            format!("opt {optimizer} prec {precision} dtype {dtype} kind {kind} pos {pos} mb {bad_mb}");
                        let cfg = twin_cfg(optimizer, precision);
                        let a = Eng::new(&cfg, &init);
                        // The twin never sees the bad window; under FP16 it starts at the
                        // scale A will have after backing off (no growth: interval 2000).
                        let mut cfg_b = cfg;
                        cfg_b.init_scale = cfg.init_scale * cfg.backoff_factor;
                        let b = Eng::new(&cfg_b, &init);
                        let mut rng = Rng::new(pos as u64 * 31 + kind as u64);
                        let window = |e: &Eng, rng: &mut Rng, poison: Option<(usize, usize)>| {
                            let s = e.scale();
                            for k in 0..3 {
                                let mut g = random_grad(rng, dtype, 37, -6, -1, s);
                                if let Some((mb, pos)) = poison {
                                    if mb == k {
                                        g.poison(pos, kind);
                                    }
                                }
                                e.mb(&g, (k + 1) as f64);
                            }
                            e.step()
                        };
                        // Two clean windows on both (same state), with the same inputs.
                        for w in 0..2 {
                            let ia = window(&a, &mut Rng::new(w), None);
                            let ib = window(&b, &mut Rng::new(w), None);
                            assert_eq!((ia.applied, ib.applied), (1, 1), "{ctx}");
                        }
                        let pa = a.params();
                        assert_eq!(pa, b.params(), "{ctx}: twins diverged before the bad window");
                        let wdt = if precision == GACC_PRECISION_BF16 { GACC_DTYPE_BF16 } else { GACC_DTYPE_F16 };
                        let wc = (precision != GACC_PRECISION_FP32).then(|| a.working(wdt));
                        let s0 = a.scale();
                        let info = window(&a, &mut rng, Some((bad_mb, pos)));
                        assert_eq!(info.applied, 0, "{ctx}");
                        assert_eq!(info.step, 2, "{ctx}: step count advanced");
                        assert!(!info.grad_norm.is_finite(), "{ctx}");
                        let want_scale = if precision == GACC_PRECISION_FP16 { s0 * cfg.backoff_factor } else { 1.0 };
                        assert_eq!(info.loss_scale, want_scale, "{ctx}");
                        assert_eq!(a.scale(), want_scale, "{ctx}");
                        assert_eq!(a.params(), pa, "{ctx}: params changed by a skipped step");
                        if let Some(wc) = wc {
                            assert_eq!(a.working(wdt), wc, "{ctx}: working copy changed by a skipped step");
                        }
                        // The next windows: identical inputs -> identical results, bit for bit
                        // (momentum / exp_avg / exp_avg_sq, the step count and the window
                        // were untouched by the skip).
                        for w in 10..12 {
                            let ia = window(&a, &mut Rng::new(w), None);
                            let ib = window(&b, &mut Rng::new(w), None);
                            assert_eq!(ia, ib, "{ctx}: step info after the skip differs from the twin");
                        }
                        let (pa, pb) = (a.params(), b.params());
                        assert!(
                            pa.iter().zip(&pb).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{ctx}: state after the skip differs from the twin"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn overflow_by_accumulation_skips_and_backs_off() {
    // Finite inputs whose fp32 sum overflows: non-finite g, skip, FP16 backs off.
    let mut c = twin_cfg(GACC_OPTIMIZER_SGD, GACC_PRECISION_FP16);
    c.grad_reduction = GACC_GRADS_SUM;
    let e = Eng::new(&c, &tensors_of(&[9], 1.0));
    let big = Grad::encode(GACC_DTYPE_F32, &[3e38; 9]);
    e.mb(&big, 1.0);
    e.mb(&big, 1.0);
    let info = e.step();
    assert_eq!((info.applied, info.step, info.loss_scale), (0, 0, 128.0));
    assert_eq!(e.params(), vec![1.0; 9]);
    // MEAN mode: the weight multiply overflows.
    let mut c = twin_cfg(GACC_OPTIMIZER_ADAMW, GACC_PRECISION_BF16);
    c.grad_reduction = GACC_GRADS_MEAN;
    let e = Eng::new(&c, &tensors_of(&[9], 1.0));
    e.mb(&Grad::encode(GACC_DTYPE_BF16, &[1e38; 9]), 10.0);
    let info = e.step();
    assert_eq!((info.applied, info.loss_scale), (0, 1.0));
    assert_eq!(e.params(), vec![1.0; 9]);
}

// ---------------------------------------------------------------------------------
// GradScaler.

#[test]
fn grad_scaler_long_random_sequences_match_amp_update_scale() {
    let mut rng = Rng::new(4242);
    for case in 0..40 {
        let mut c = config(GACC_OPTIMIZER_SGD);
        c.lr = 0.0;
        c.precision = GACC_PRECISION_FP16;
        c.growth_interval = rng.pick(&[1, 2, 3, 5, 7]);
        c.growth_factor = rng.pick(&[2.0, 1.5, 3.0, 1.0001]);
        c.backoff_factor = rng.pick(&[0.5, 0.25, 0.8, 0.9999]);
        c.init_scale = rng.pick(&[1.0, 65536.0, 3.0e38, 1e-30, 12345.678]);
        let tensors = tensors_of(&[3], 0.5);
        let e = Eng::new(&c, &tensors);
        let mut m = Model::new(&c, &tensors);
        // Overflow in runs: a two-state chain so streaks of both kinds happen.
        let mut overflow = false;
        for w in 0..400 {
            if rng.chance(0.2) {
                overflow = !overflow;
            }
            let mut g = Grad::encode(GACC_DTYPE_F32, &[0.25, -0.5, 1.0]);
            if overflow {
                g.poison(rng.below(3) as usize, rng.below(3) as usize);
            }
            e.mb(&g, 1.0);
            m.microbatch(&g.values(), 1.0);
            let info = e.step();
            let want = m.step();
            assert_eq!(info.loss_scale.to_bits(), want.scale.to_bits(), "case {case} window {w} cfg {c:?}");
            assert_eq!(e.scale().to_bits(), want.scale.to_bits());
            assert_eq!((info.applied, info.step), (want.applied as u32, want.step), "case {case} window {w}");
        }
    }
}

#[test]
fn grad_scaler_refuses_growth_to_infinity() {
    let mut c = config(GACC_OPTIMIZER_SGD);
    c.lr = 0.0;
    c.precision = GACC_PRECISION_FP16;
    c.init_scale = 2f32.powi(127);
    c.growth_interval = 2;
    let e = Eng::new(&c, &tensors_of(&[2], 0.0));
    let g = Grad::encode(GACC_DTYPE_F32, &[1.0, 1.0]);
    let step = || {
        e.mb(&g, 1.0);
        e.step()
    };
    assert_eq!(step().loss_scale, 2f32.powi(127)); // tracker 1
    assert_eq!(step().loss_scale, 2f32.powi(127)); // growth to inf refused, tracker 0
    assert_eq!(step().loss_scale, 2f32.powi(127)); // tracker 1 (not 2: it was reset)
    let mut bad = g.clone();
    bad.poison(0, 0);
    e.mb(&bad, 1.0);
    assert_eq!(e.step().loss_scale, 2f32.powi(126));
    assert_eq!(step().loss_scale, 2f32.powi(126));
    assert_eq!(step().loss_scale, 2f32.powi(127)); // two clean in a row: grows
}

#[test]
fn bf16_and_fp32_precision_keep_scale_one() {
    for precision in [GACC_PRECISION_FP32, GACC_PRECISION_BF16] {
        let mut c = config(GACC_OPTIMIZER_ADAMW);
        c.precision = precision;
        c.growth_interval = 1;
        let e = Eng::new(&c, &tensors_of(&[4], 1.0));
        assert_eq!(e.scale(), 1.0);
        for w in 0..6 {
            let mut g = Grad::encode(GACC_DTYPE_F32, &[1.0; 4]);
            if w % 2 == 1 {
                g.poison(2, 2);
            }
            e.mb(&g, 1.0);
            let info = e.step();
            assert_eq!(info.loss_scale, 1.0);
            assert_eq!(info.applied, (w % 2 == 0) as u32);
        }
        assert_eq!(e.scale(), 1.0);
    }
}

// ---------------------------------------------------------------------------------
// Clipping.

#[test]
fn clipping_happens_once_per_window_on_the_unscaled_gradient() {
    // Three micro-batches, each with norm 10, that nearly cancel: the window's mean
    // gradient has norm well under max_norm, so nothing is clipped. Clipping each
    // micro-batch (or the scaled gradient) would change the update.
    let mut c = plain_sgd(GACC_GRADS_MEAN);
    c.max_grad_norm = 1.0;
    c.precision = GACC_PRECISION_FP16;
    c.init_scale = 1024.0;
    let e = Eng::new(&c, &tensors_of(&[2, 2], 0.0));
    let s = 1024.0;
    let gs = [[6.0, 8.0, 0.0, 0.0], [-6.0, -8.0, 0.0, 0.0], [0.0, 0.0, 6.0, 8.0]];
    let mut sum = [0.0f64; 4];
    for g in &gs {
        e.mb(&Grad::encode(GACC_DTYPE_F16, &g.map(|x| x * s)), 1.0);
        for i in 0..4 {
            sum[i] += g[i] / 3.0;
        }
    }
    let info = e.step();
    let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt(); // 10/3
    assert!((info.grad_norm as f64 - norm).abs() < 1e-6 * norm, "unscaled norm {} vs {}", info.grad_norm, norm);
    let coef = 1.0 / (norm + 1e-6);
    assert!((info.clip_coef as f64 - coef).abs() < 1e-6, "{} vs {coef}", info.clip_coef);
    let p = e.params();
    for i in 0..4 {
        assert!((p[i] as f64 + sum[i] * coef).abs() < 1e-6, "{i}: {} vs {}", p[i], -sum[i] * coef);
    }
    // Under the max: coef exactly 1 and the update unclipped.
    let mut c2 = c;
    c2.max_grad_norm = 4.0;
    let e = Eng::new(&c2, &tensors_of(&[2, 2], 0.0));
    for g in &gs {
        e.mb(&Grad::encode(GACC_DTYPE_F16, &g.map(|x| x * s)), 1.0);
    }
    let info = e.step();
    assert_eq!(info.clip_coef, 1.0);
    let p = e.params();
    for i in 0..4 {
        assert!((p[i] as f64 + sum[i]).abs() < 1e-6);
    }
}

// ---------------------------------------------------------------------------------
// Optimizers over many steps.

fn many_steps(cfg: gacc_config, steps: usize, seed: u64, mutation: Mutation) {
    let mut rng = Rng::new(seed);
    let tensors: Vec<TensorSpec> = [129usize, 1, 250, 17]
        .iter()
        .enumerate()
        .map(|(t, &n)| TensorSpec { init: (0..n).map(|_| rng.value(24, -3, 1) as f32).collect(), no_wd: t % 2 == 1 })
        .collect();
    let e = Eng::new(&cfg, &tensors);
    let mut m = Model::new(&cfg, &tensors);
    m.mutation = mutation;
    for s in 0..steps {
        for k in 0..2 {
            let g = random_grad(&mut rng, GACC_DTYPE_F32, e.n, -10, 0, 1.0);
            let w = (k + 1) as f64;
            e.mb(&g, w);
            m.microbatch(&g.values(), w);
        }
        let info = e.step();
        let want = m.step();
        let ctx = format!("{cfg:?} step {s}");
        assert_info_matches(&ctx, &info, &want);
        assert_params_match(&ctx, &e.params(), &m);
    }
}

fn sgd_cfg(momentum: f32, nesterov: bool, wd: f32) -> gacc_config {
    let mut c = config(GACC_OPTIMIZER_SGD);
    c.lr = 0.05;
    c.momentum = momentum;
    c.nesterov = nesterov as u32;
    c.weight_decay = wd;
    c
}

#[test]
fn sgd_variants_many_steps() {
    for (mom, nesterov, wd) in [
        (0.0, false, 0.0),
        (0.0, false, 0.1),
        (0.9, false, 0.0),
        (0.9, false, 0.01),
        (0.9, true, 0.01),
        (0.5, true, 0.0),
    ] {
        many_steps(sgd_cfg(mom, nesterov, wd), 300, 7, Mutation::None);
    }
}

#[test]
fn adamw_many_steps() {
    for (b1, b2, wd, clip) in
        [(0.9, 0.999, 0.01, 0.0), (0.9, 0.999, 0.1, 0.3), (0.0, 0.99, 0.0, 0.0), (0.5, 0.9, 0.05, 5.0)]
    {
        let mut c = config(GACC_OPTIMIZER_ADAMW);
        c.lr = 3e-3;
        c.beta1 = b1;
        c.beta2 = b2;
        c.weight_decay = wd;
        c.max_grad_norm = clip;
        many_steps(c, 300, 11, Mutation::None);
    }
}

#[test]
fn negative_controls_many_steps() {
    must_fail("nesterov ignored", || many_steps(sgd_cfg(0.9, true, 0.0), 50, 7, Mutation::NoNesterov));
    must_fail("decay on no_weight_decay tensors", || {
        many_steps(sgd_cfg(0.9, false, 0.1), 50, 7, Mutation::DecayEverything)
    });
    let mut c = config(GACC_OPTIMIZER_ADAMW);
    c.lr = 3e-3;
    must_fail("bias correction t+1", || many_steps(c, 300, 11, Mutation::BiasCorrectionOffByOne));
    c.weight_decay = 0.1;
    must_fail("adamw decoupled decay on all tensors", || many_steps(c, 50, 11, Mutation::DecayEverything));
}

// ---------------------------------------------------------------------------------
// Working copy.

#[test]
fn working_copy_is_round_to_nearest_even_of_the_master() {
    // Values that exercise RNE: exact ties, subnormals, overflow, signed zeros.
    let mut rng = Rng::new(99);
    let mut init: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        65504.0,
        65519.0,
        65520.0,
        -65520.0,
        1e9,
        2f32.powi(-24),
        2f32.powi(-25),
        3.0 * 2f32.powi(-26),
        2f32.powi(-26),
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        -(1.0 + 2f32.powi(-8)),
        3.0e38,
        f32::MAX,
        1e-40,
        f32::MIN_POSITIVE,
    ];
    init.extend((0..500).map(|_| f32::from_bits(rng.next_u64() as u32 & 0x7FFF_FFFF | (rng.below(2) as u32) << 31)));
    init.retain(|x| x.is_finite());
    init.extend((0..500).map(|_| rng.value(24, -30, 20) as f32));
    let n = init.len();
    let tensors = vec![
        TensorSpec { init: init[..7].to_vec(), no_wd: false },
        TensorSpec { init: init[7..].to_vec(), no_wd: true },
    ];
    for precision in [GACC_PRECISION_FP16, GACC_PRECISION_BF16] {
        let mut c = config(GACC_OPTIMIZER_SGD);
        c.precision = precision;
        c.lr = 0.01;
        c.init_scale = 1.0;
        let e = Eng::new(&c, &tensors);
        check_working_copy(&e, precision, &e.params());
        assert_eq!(e.params(), init);
        let mut rng = Rng::new(5);
        for w in 0..4 {
            let mut g = random_grad(&mut rng, GACC_DTYPE_F32, n, -12, 0, 1.0);
            if w == 2 {
                g.poison(n - 1, 0);
            }
            let wdt = if precision == GACC_PRECISION_FP16 { GACC_DTYPE_F16 } else { GACC_DTYPE_BF16 };
            let before = e.working(wdt);
            e.mb(&g, 1.0);
            let info = e.step();
            check_working_copy(&e, precision, &e.params());
            if info.applied == 0 {
                assert_eq!(e.working(wdt), before);
            } else {
                assert_ne!(e.working(wdt), before, "a step that moves params must move some of the working copy");
            }
        }
        let fresh: Vec<f32> = (0..n).map(|_| rng.value(24, -26, 17) as f32).collect();
        e.write(&fresh);
        assert_eq!(e.params(), fresh);
        check_working_copy(&e, precision, &fresh);
    }
}

#[test]
fn rne_reference_agrees_with_known_values() {
    // The test's own rounding, checked on hand-computed cases (it must be right for
    // the working-copy test to mean anything).
    assert_eq!(rne_f16(1.0 + 2f32.powi(-11)), 1.0); // tie -> even
    assert_eq!(rne_f16(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2f64.powi(-9)); // tie -> even (up)
    assert_eq!(rne_f16(65519.0), 65504.0);
    assert_eq!(rne_f16(65520.0), f64::INFINITY);
    assert_eq!(rne_f16(2f32.powi(-25)), 0.0); // tie between 0 and 2^-24 -> 0
    assert_eq!(rne_f16(3.0 * 2f32.powi(-26)), 2f64.powi(-24)); // 0.75 ulp -> up
    assert_eq!(rne_bf16(1.0 + 2f32.powi(-8)), 1.0);
    assert_eq!(rne_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f64.powi(-6));
    assert_eq!(rne_bf16(f32::MAX), f64::INFINITY);
    assert_eq!(rne_bf16(1e-40), bf16_bits_to_f64(half::bf16::from_f32(1e-40).to_bits()));
}

// ---------------------------------------------------------------------------------
// lr, params_write, zero.

#[test]
fn set_lr_takes_effect_from_the_next_step() {
    let c = sgd_cfg(0.0, false, 0.0);
    let e = Eng::new(&c, &tensors_of(&[3], 0.0));
    let g = Grad::encode(GACC_DTYPE_F32, &[1.0; 3]);
    e.mb(&g, 1.0);
    e.set_lr(0.5); // inside the window: used by the step that closes it
    e.step();
    assert_eq!(e.params(), vec![-0.5; 3]);
    e.set_lr(0.25);
    e.mb(&g, 1.0);
    e.step();
    assert_eq!(e.params(), vec![-0.75; 3]);
    let mut lr = 0f32;
    unsafe { ok(gacc::ffi::gacc_get_lr(e.h, &mut lr)) };
    assert_eq!(lr, 0.25);
    assert_eq!(unsafe { gacc::ffi::gacc_set_lr(e.h, f32::NAN) }, gacc_status::GACC_ERR_INVALID_ARGUMENT);
    assert_eq!(unsafe { gacc::ffi::gacc_set_lr(e.h, -1.0) }, gacc_status::GACC_ERR_INVALID_ARGUMENT);
    unsafe { ok(gacc::ffi::gacc_get_lr(e.h, &mut lr)) };
    assert_eq!(lr, 0.25, "a rejected set_lr changes nothing");
    // AdamW with lr 0: nothing moves (not even decoupled decay), state still advances.
    let mut c = config(GACC_OPTIMIZER_ADAMW);
    c.lr = 0.0;
    let e = Eng::new(&c, &tensors_of(&[3], 2.0));
    e.mb(&g, 1.0);
    assert_eq!(e.step().step, 1);
    assert_eq!(e.params(), vec![2.0; 3]);
}

#[test]
fn params_write_keeps_optimizer_state_and_the_open_window() {
    let mut c = config(GACC_OPTIMIZER_ADAMW);
    c.lr = 0.01;
    c.precision = GACC_PRECISION_BF16;
    let mut rng = Rng::new(3);
    let tensors = vec![
        TensorSpec { init: (0..33).map(|_| rng.value(24, -2, 0) as f32).collect(), no_wd: false },
        TensorSpec { init: (0..8).map(|_| rng.value(24, -2, 0) as f32).collect(), no_wd: true },
    ];
    let e = Eng::new(&c, &tensors);
    let mut m = Model::new(&c, &tensors);
    let mut window: Vec<(Vec<f64>, f64)> = Vec::new();
    let mut feed = |e: &Eng, m: &mut Model, rng: &mut Rng, w: f64| {
        let g = random_grad(rng, GACC_DTYPE_BF16, 41, -6, 0, 1.0);
        e.mb(&g, w);
        m.microbatch(&g.values(), w);
        window.push((g.values(), w));
    };
    for _ in 0..3 {
        feed(&e, &mut m, &mut rng, 2.0);
        e.step();
        m.step();
    }
    feed(&e, &mut m, &mut rng, 1.0); // open window
    let fresh: Vec<f32> = (0..41).map(|_| rng.value(24, -2, 0) as f32).collect();
    e.write(&fresh);
    m.write(&fresh);
    check_working_copy(&e, GACC_PRECISION_BF16, &fresh);
    feed(&e, &mut m, &mut rng, 3.0);
    let info = e.step();
    let want = m.step();
    assert_info_matches("after params_write", &info, &want);
    assert_eq!(info.microbatches, 2, "the window opened before params_write survives");
    assert_params_match("after params_write", &e.params(), &m);
    assert_eq!(info.total_weight, 4.0);
    // Control: an engine that lost its optimizer state would be detected.
    let mut lost_state = Model::new(&c, &tensors);
    lost_state.write(&fresh);
    for (g, w) in &window[window.len() - 2..] {
        lost_state.microbatch(g, *w);
    }
    lost_state.step();
    assert!(first_mismatch(&e.params(), &lost_state).is_some(), "control: a fresh optimizer state must differ");
}

#[test]
fn zero_drops_the_window() {
    let c = sgd_cfg(0.9, false, 0.0);
    let e = Eng::new(&c, &tensors_of(&[6], 1.0));
    let mut junk = Grad::encode(GACC_DTYPE_F16, &[100.0; 6]);
    junk.poison(3, 0);
    e.mb(&junk, 5.0);
    e.zero();
    assert_eq!(e.try_step(), gacc_status::GACC_ERR_INVALID_STATE, "zero leaves nothing to step");
    e.mb(&Grad::encode(GACC_DTYPE_F32, &[2.0; 6]), 4.0);
    let info = e.step();
    assert_eq!((info.applied, info.microbatches, info.total_weight, info.step), (1, 1, 4.0, 1));
    assert_eq!(e.params(), vec![1.0 - 0.05 * 2.0; 6]);
    // gacc_step with info NULL steps all the same (buf = 0.9 * 2 + 2 = 3.8).
    e.mb(&Grad::encode(GACC_DTYPE_F32, &[2.0; 6]), 1.0);
    ok(unsafe { gacc::ffi::gacc_step(e.h, std::ptr::null_mut()) });
    assert_eq!(e.params(), vec![(1.0f32 - 0.05 * 2.0) - 0.05 * 3.8; 6]);
    e.zero();
    assert_eq!(e.try_step(), gacc_status::GACC_ERR_INVALID_STATE);
}

// ---------------------------------------------------------------------------------
// Determinism and threads.

fn deterministic_run(threads: Option<usize>) -> (Vec<u32>, Vec<gacc_step_info>) {
    deterministic_run_with(threads, false)
}

/// `options`: every numerics option on (hysteresis, floor and cap, dropping a
/// non-finite micro-batch, Kahan compensation, stochastic rounding), and one
/// poisoned micro-batch per window.
fn deterministic_run_with(threads: Option<usize>, options: bool) -> (Vec<u32>, Vec<gacc_step_info>) {
    let body = || {
        let mut c = config(GACC_OPTIMIZER_ADAMW);
        c.precision = GACC_PRECISION_FP16;
        c.max_grad_norm = 0.5;
        c.lr = 1e-2;
        if options {
            c.hysteresis = 2;
            c.min_loss_scale = 1.0;
            c.max_loss_scale = 1e9;
            c.drop_nonfinite_microbatches = 1;
            c.compensated_accumulation = 1;
            c.stochastic_rounding = 1;
            c.seed = 0xDEAD_BEEF;
        }
        let mut rng = Rng::new(123);
        let tensors: Vec<TensorSpec> = [150_001usize, 3, 170_017]
            .iter()
            .enumerate()
            .map(|(t, &n)| TensorSpec { init: (0..n).map(|_| rng.value(24, -3, 0) as f32).collect(), no_wd: t == 1 })
            .collect();
        let e = Eng::new(&c, &tensors);
        let mut infos = Vec::new();
        for _ in 0..3 {
            let s = e.scale();
            for k in 0..2 {
                let g = random_grad(&mut rng, [GACC_DTYPE_F32, GACC_DTYPE_F16][k], e.n, -14, -3, s);
                e.mb(&g, (k + 3) as f64);
                if options {
                    let mut bad = vec![0.5f32; e.n];
                    bad[e.n / 3] = f32::NAN;
                    e.mb(&Grad::F32(bad), 1.0);
                }
            }
            infos.push(e.step());
        }
        let mut bits: Vec<u32> = e.params().iter().map(|x| x.to_bits()).collect();
        bits.extend(e.working(GACC_DTYPE_F16).iter().map(|&b| b as u32));
        (bits, infos)
    };
    match threads {
        None => body(),
        Some(n) => gacc::backend::cpu::pool::with_threads(n, body),
    }
}

#[test]
fn bit_identical_on_1_and_2_threads_and_run_to_run() {
    let one = deterministic_run(Some(1));
    let two = deterministic_run(Some(2));
    let three = deterministic_run(Some(3));
    let again = deterministic_run(None);
    assert!(one.1.iter().all(|i| i.applied == 1 && i.clip_coef < 1.0), "the run should clip: {:?}", one.1);
    for (name, other) in [("2 threads", &two), ("3 threads", &three), ("global pool, second run", &again)] {
        assert_eq!(
            one.1.iter().map(|i| i.grad_norm.to_bits()).collect::<Vec<_>>(),
            other.1.iter().map(|i| i.grad_norm.to_bits()).collect::<Vec<_>>(),
            "{name}: grad_norm"
        );
        assert!(one.0 == other.0, "{name}: parameters differ from the 1-thread run");
    }
}

#[test]
fn bit_identical_across_threads_and_runs_with_every_numerics_option() {
    let one = deterministic_run_with(Some(1), true);
    assert!(one.1.iter().all(|i| i.applied == 1 && i.dropped_microbatches == 2), "{:?}", one.1);
    for (name, other) in [
        ("2 threads", deterministic_run_with(Some(2), true)),
        ("3 threads", deterministic_run_with(Some(3), true)),
        ("global pool, second run", deterministic_run_with(None, true)),
    ] {
        let key = |r: &(Vec<u32>, Vec<gacc_step_info>)| {
            r.1.iter()
                .map(|i| (i.grad_norm.to_bits(), i.loss_scale.to_bits(), i.dropped_microbatches))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&one), key(&other), "{name}: step infos");
        assert!(one.0 == other.0, "{name}: parameters or working copy differ from the 1-thread run");
    }
}

#[test]
fn four_threads_share_one_handle_and_lose_nothing() {
    // SUM mode, small-integer gradients: every order of accumulation gives the same
    // exact sum, so the result checks that no micro-batch was lost or torn.
    let n = 300_007; // parallel path inside each call as well
    let c = plain_sgd(GACC_GRADS_SUM);
    let e = Eng::new(&c, &tensors_of(&[100_000, 200_007], 0.0));
    let per_thread = 8;
    let handle = e.h as usize;
    std::thread::scope(|s| {
        for t in 0..4usize {
            s.spawn(move || {
                let h = handle as *mut gacc_engine;
                for k in 0..per_thread {
                    let g: Vec<f32> = (0..n).map(|i| ((i + 3 * t + k) % 5) as f32 - 2.0).collect();
                    let st = unsafe { gacc::ffi::gacc_microbatch(h, g.as_ptr() as *const _, GACC_DTYPE_F32, n, 0.5) };
                    assert_eq!(st, gacc_status::GACC_OK);
                }
            });
        }
    });
    let info = e.step();
    assert_eq!((info.microbatches, info.total_weight), (32, 16.0));
    let p = e.params();
    for i in (0..n).step_by(997).chain([n - 1]) {
        let sum: f64 = (0..4).flat_map(|t| (0..per_thread).map(move |k| ((i + 3 * t + k) % 5) as f64 - 2.0)).sum();
        assert_eq!(p[i] as f64, -sum / 16.0, "element {i}");
    }
}

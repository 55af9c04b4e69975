//! The numerics options on the CPU backend, through the real engine: the loss-scale
//! policies against DeepSpeed's own DynamicLossScaler and torch's GradScaler rule
//! (tests/support/cuda/loss_scale.rs), dropping a
//! poisoned micro-batch, Kahan-compensated accumulation (error against an f64
//! reference for K = 1 ... 4096), and stochastic rounding (unbiased, reproducible).
//! tests/cuda_shim.rs runs the same bodies on the CUDA backend's kernels.

#![allow(clippy::needless_range_loop)] // per-element reference code reads clearer indexed

mod support;

use std::ffi::c_void;

use gacc::backend::{GradInput, ParamBuffer};
use gacc::engine::config::{Config, DeviceRequest, Dtype, RawConfig};
use gacc::engine::layout::Layout;
use gacc::engine::math;
use gacc::engine::Engine;
use gacc::ffi::types::*;
use support::Rng;

fn cpu(config: Config, layout: Layout, params: &[f32]) -> Engine {
    Engine::new(config, layout, params).expect("cpu engine")
}

fn feed(e: &mut Engine, g: &[f32], w: f64) {
    let input = GradInput { ptr: g.as_ptr() as *const c_void, dtype: Dtype::F32, numel: g.len() };
    // SAFETY: g holds numel f32 in host memory.
    unsafe { e.microbatch(&input, w).unwrap() };
}

fn params(e: &mut Engine) -> Vec<u32> {
    let mut p = vec![0f32; e.numel()];
    e.read_params(&mut p).unwrap();
    p.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn loss_scale_policies_match_deepspeed_and_gradscaler() {
    // 400 random configurations and overflow patterns (tests/python/
    // loss_scale_reference.py): DEEPSPEED against DeepSpeed's own DynamicLossScaler,
    // GRADSCALER against torch's _amp_update_scale_ rule, every step bit for bit.
    let Some(refs) = support::cuda::loss_scale::references("numerics_policies", 400, 400) else { return };
    let (ds, gs, steps) = support::cuda::loss_scale::replay(&cpu, &refs);
    let version = &refs.deepspeed_version;
    println!("CPU: {ds} DeepSpeed {version} cases and {gs} GradScaler cases, {steps} steps: identical");
    assert!(ds >= 250 && gs >= 80 && steps > 20_000);
}

#[test]
fn deepspeed_policy_in_drop_mode_and_across_checkpoints() {
    // Drop mode: each window gets a clean micro-batch and, where the pattern
    // overflows, a poisoned one that is dropped: every step is applied, and the
    // dropped micro-batch moves DeepSpeed's scale as an overflow. Checkpoints: every
    // 7 steps the engine is saved and replaced by one created from the file, so the
    // policy and its counters must survive gacc_save / gacc_create_from_checkpoint.
    let Some(refs) = support::cuda::loss_scale::references("numerics_drop_checkpoint", 120, 200) else { return };
    let dir = std::env::temp_dir().join(format!("gacc-ls-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("e.safetensors");
    for (k, case) in refs.cases.iter().enumerate() {
        let mut raw = case.raw;
        raw.drop_nonfinite_microbatches = 1;
        let mut e = cpu(Config::validate(&raw).unwrap(), Layout::new(vec![(None, 3, true)]).unwrap(), &[0.0; 3]);
        for (step, (&overflow, &want)) in case.overflow.iter().zip(&case.scale).enumerate() {
            feed(&mut e, &[0.25, -0.5, 1.0], 1.0);
            if overflow {
                feed(&mut e, &[0.25, f32::NAN, 1.0], 1.0);
            }
            let info = e.step(true).unwrap().unwrap();
            assert!(info.applied, "case {k} step {step}");
            assert_eq!(info.dropped_microbatches, u32::from(overflow), "case {k} step {step}");
            assert_eq!(f64::from(info.loss_scale), want, "case {k} step {step}: drop mode");
            if step % 7 == 6 {
                gacc::checkpoint::save(&mut e, &path).unwrap();
                e = gacc::checkpoint::create_from(&path, DeviceRequest::Cpu).unwrap();
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn deepspeed_issue_examples() {
    // The two sequences of issue 16, by hand. Hysteresis 2, window 3, no overflow:
    // DeepSpeed doubles after 4 clean steps (GradScaler's rule after 3). Window 1:
    // no growth on the first clean step after an overflow.
    let scales = |policy: u32, window: u32, pattern: &str| {
        let mut raw = RawConfig::defaults();
        raw.device = GACC_DEVICE_CPU;
        raw.precision = GACC_PRECISION_FP16;
        raw.init_scale = 1024.0;
        raw.growth_interval = window;
        raw.hysteresis = 2;
        raw.min_loss_scale = 1.0;
        raw.loss_scale_policy = policy;
        let mut e = cpu(Config::validate(&raw).unwrap(), Layout::new(vec![(None, 2, true)]).unwrap(), &[0.0; 2]);
        let mut out = Vec::new();
        for c in pattern.chars() {
            feed(&mut e, &[1.0, if c == 'X' { f32::INFINITY } else { 0.5 }], 1.0);
            out.push(e.step(true).unwrap().unwrap().loss_scale);
        }
        out
    };
    assert_eq!(scales(GACC_LOSS_SCALE_DEEPSPEED, 3, "CCCC"), [1024.0, 1024.0, 1024.0, 2048.0]);
    assert_eq!(scales(GACC_LOSS_SCALE_GRADSCALER, 3, "CCCC"), [1024.0, 1024.0, 2048.0, 2048.0]);
    // hysteresis 2: the first overflow only spends the budget, the second backs off.
    assert_eq!(scales(GACC_LOSS_SCALE_DEEPSPEED, 1, "XXCC"), [1024.0, 512.0, 512.0, 1024.0]);
    assert_eq!(scales(GACC_LOSS_SCALE_GRADSCALER, 1, "XXCC"), [1024.0, 512.0, 1024.0, 2048.0]);
}

#[test]
fn max_loss_scale_caps_growth() {
    let mut raw = RawConfig::defaults();
    raw.device = GACC_DEVICE_CPU;
    raw.precision = GACC_PRECISION_FP16;
    raw.init_scale = 1024.0;
    raw.growth_interval = 1;
    raw.max_loss_scale = 5000.0;
    let mut e = cpu(Config::validate(&raw).unwrap(), Layout::new(vec![(None, 4, true)]).unwrap(), &[0.0; 4]);
    let mut scales = Vec::new();
    for _ in 0..4 {
        feed(&mut e, &[0.1; 4], 1.0);
        scales.push(e.step(true).unwrap().unwrap().loss_scale);
    }
    assert_eq!(scales, [2048.0, 4096.0, 5000.0, 5000.0]);
}

fn drop_config(precision: u32, drop: bool) -> Config {
    let mut raw = RawConfig::defaults();
    raw.device = GACC_DEVICE_CPU;
    raw.precision = precision;
    raw.lr = 0.01;
    raw.max_grad_norm = 1.0;
    raw.init_scale = 256.0;
    raw.growth_interval = 1000;
    raw.drop_nonfinite_microbatches = u32::from(drop);
    Config::validate(&raw).unwrap()
}

#[test]
fn a_dropped_microbatch_leaves_the_window_as_if_it_never_came() {
    // Engine A drops poisoned micro-batches; engine B is fed only the clean ones.
    // Parameters, norms and totals must be bit-identical; A reports the drops.
    let layout = Layout::new(vec![(None, 1000, true), (None, 37, false)]).unwrap();
    let n = layout.numel;
    let mut rng = Rng::new(3);
    let init: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
    let mut a = cpu(drop_config(GACC_PRECISION_FP32, true), layout.clone(), &init);
    let mut b = cpu(drop_config(GACC_PRECISION_FP32, false), layout, &init);
    for w in 0..8 {
        let mut dropped = 0;
        let mut total = 0.0;
        for m in 0..4 {
            let mut g: Vec<f32> = (0..n).map(|_| rng.symmetric(2.0)).collect();
            let weight = 1.0 + m as f64;
            if (w + m) % 3 == 0 {
                g[(w * 131 + m) % n] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][m % 3];
                feed(&mut a, &g, weight);
                dropped += 1;
            } else {
                feed(&mut a, &g, weight);
                feed(&mut b, &g, weight);
                total += weight;
            }
        }
        let (ia, ib) = (a.step(true).unwrap().unwrap(), b.step(true).unwrap().unwrap());
        assert!(ia.applied, "window {w}: the window goes on");
        assert_eq!((ia.dropped_microbatches, ia.microbatches), (dropped, 4), "window {w}");
        assert_eq!(ia.total_weight, total, "window {w}: total without the dropped");
        assert_eq!(ib.dropped_microbatches, 0);
        assert_eq!((ia.grad_norm.to_bits(), ia.clip_coef.to_bits()), (ib.grad_norm.to_bits(), ib.clip_coef.to_bits()));
        assert!(params(&mut a) == params(&mut b), "window {w}: parameters differ");
    }
}

#[test]
fn an_all_dropped_window_is_skipped_and_a_drop_backs_the_scale_off() {
    let layout = Layout::new(vec![(None, 16, true)]).unwrap();
    let mut e = cpu(drop_config(GACC_PRECISION_FP16, true), layout, &[0.5; 16]);
    let bad = [f32::INFINITY; 16];
    let good = [0.25f32; 16];
    // Every micro-batch dropped: skipped on the device, not an error.
    feed(&mut e, &bad, 1.0);
    feed(&mut e, &bad, 2.0);
    let i = e.step(true).unwrap().unwrap();
    assert_eq!((i.applied, i.dropped_microbatches, i.microbatches, i.step), (false, 2, 2, 0));
    assert_eq!(i.total_weight, 0.0);
    assert!(i.grad_norm.is_nan());
    assert_eq!(i.loss_scale, 128.0, "the overflow backs the scale off");
    let before = params(&mut e);
    assert!(before.iter().all(|&b| b == 0.5f32.to_bits()), "nothing changed");
    // One dropped, one kept: applied, and the scale still backs off.
    feed(&mut e, &bad, 1.0);
    feed(&mut e, &good, 3.0);
    let i = e.step(true).unwrap().unwrap();
    assert_eq!((i.applied, i.dropped_microbatches, i.step, i.total_weight), (true, 1, 1, 3.0));
    assert_eq!(i.loss_scale, 64.0);
    // gacc_zero clears the dropped count with the window.
    feed(&mut e, &bad, 1.0);
    e.zero().unwrap();
    feed(&mut e, &good, 1.0);
    let i = e.step(true).unwrap().unwrap();
    assert_eq!((i.applied, i.dropped_microbatches, i.loss_scale), (true, 0, 64.0));
    // Without the option the same poisoned micro-batch poisons the window.
    let mut plain =
        cpu(drop_config(GACC_PRECISION_FP16, false), Layout::new(vec![(None, 16, true)]).unwrap(), &[0.5; 16]);
    feed(&mut plain, &bad, 1.0);
    feed(&mut plain, &good, 3.0);
    let i = plain.step(true).unwrap().unwrap();
    assert_eq!((i.applied, i.dropped_microbatches), (false, 0));
}

/// RMS error of the window's fp32 sum (acc - comp, rounded once: what the step
/// reads) against an f64 reference, relative to the reference's RMS, after K
/// micro-batches of `n` elements. GACC_GRADS_SUM (products exact): what is measured
/// is the summation error alone. Data: a per-element mean plus noise of the same
/// size, as gradients of one parameter across micro-batches look.
fn window_error(k: usize, n: usize, compensated: bool) -> f64 {
    let mut raw = RawConfig::defaults();
    raw.device = GACC_DEVICE_CPU;
    raw.grad_reduction = GACC_GRADS_SUM;
    raw.compensated_accumulation = u32::from(compensated);
    let mut e = cpu(Config::validate(&raw).unwrap(), Layout::new(vec![(None, n, true)]).unwrap(), &vec![0.0; n]);
    let mut rng = Rng::new(0x5EED ^ k as u64);
    let mean: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
    let mut reference = vec![0f64; n];
    let mut g = vec![0f32; n];
    for _ in 0..k {
        for i in 0..n {
            g[i] = mean[i] + rng.symmetric(1.0);
            reference[i] += f64::from(g[i]);
        }
        feed(&mut e, &g, 1.0);
    }
    let s = e.backend_mut().export_state().unwrap();
    let (mut err, mut norm) = (0f64, 0f64);
    for i in 0..n {
        let sum = if compensated { s.acc[i] - s.comp[i] } else { s.acc[i] };
        err += (f64::from(sum) - reference[i]).powi(2);
        norm += reference[i].powi(2);
    }
    (err / norm).sqrt()
}

#[test]
fn compensated_accumulation_error_does_not_grow_with_k() {
    let n = 2048;
    println!("| K | plain fp32 | Kahan-compensated |");
    println!("|---:|---:|---:|");
    let mut rows = Vec::new();
    for k in [1usize, 4, 16, 64, 256, 1024, 4096] {
        let (plain, kahan) = (window_error(k, n, false), window_error(k, n, true));
        println!("| {k} | {plain:.2e} | {kahan:.2e} |");
        rows.push((k, plain, kahan));
    }
    for &(k, plain, kahan) in &rows {
        // Kahan: within a few half-ulps of fp32 whatever K (one final rounding).
        assert!(kahan < 1e-7, "K={k}: compensated error {kahan:e}");
        if k >= 256 {
            assert!(kahan * 8.0 < plain, "K={k}: {kahan:e} is not much smaller than {plain:e}");
        }
    }
    // Plain summation error grows with K (about as sqrt(K) for these data); the
    // compensated one stays at one final rounding.
    assert!(rows[6].1 > 10.0 * rows[1].1);
    assert!(rows[6].2 < 1.5 * rows[1].2 && rows[6].1 > 30.0 * rows[6].2);
}

#[test]
fn stochastic_rounding_is_unbiased() {
    // Values strictly between two representable numbers (bf16 and f16, normal and
    // subnormal f16, both signs): the mean of N stochastic roundings (one per element
    // index) must be within 5 standard errors of the value: |mean - x| <=
    // 5 * gap * sqrt(q (1 - q) / N), q the distance fraction; and RNE's bias must not
    // pass the same test where the fraction is far from 0 and 1.
    let n = 200_000u64;
    let key = math::sr_key(42, 7);
    let cases: [(f32, bool); 8] = [
        (1.0 + 0.3 * (1.0 / 128.0), true),    // bf16, q = 0.3
        (-3.0 - 0.9 * (2.0 / 128.0), true),   // bf16, negative, q = 0.9
        (1e-30 * 1.37, true),                 // bf16, tiny normal
        (1.0 + 0.25 * (1.0 / 1024.0), false), // f16, q = 0.25
        (-700.0 - 0.6 * 0.5, false),          // f16, negative, q = 0.6
        (3.0e-6, false),                      // f16 subnormal range
        (-5.1e-8, false),                     // f16 below the smallest subnormal
        (65500.0, false),                     // f16 near the top: 65472 or 65504
    ];
    for (x, bf16) in cases {
        let to_f32 = |b: u16| {
            if bf16 {
                f32::from_bits(u32::from(b) << 16)
            } else {
                half::f16::from_bits(b).to_f32()
            }
        };
        let round = |i: u64| {
            let r = math::sr_bits(key, i);
            to_f32(if bf16 { math::f32_to_bf16_sr(x, r) } else { math::f32_to_f16_sr(x, r) })
        };
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        let mut sum = 0f64;
        for i in 0..n {
            let y = round(i);
            lo = lo.min(y);
            hi = hi.max(y);
            sum += f64::from(y);
        }
        assert!(lo < x && x < hi, "{x:e}: both neighbours must occur ({lo:e}, {hi:e})");
        let gap = f64::from(hi - lo);
        let q = (f64::from(x) - f64::from(lo)) / gap;
        let mean = sum / n as f64;
        let bound = 5.0 * gap * (q * (1.0 - q) / n as f64).sqrt();
        assert!((mean - f64::from(x)).abs() <= bound, "{x:e}: mean {mean:e}, |bias| > {bound:e} (q {q})");
        let rne = f64::from(to_f32(if bf16 {
            gacc::backend::cpu::convert::f32_to_bf16_bits(x)
        } else {
            half::f16::from_f32(x).to_bits()
        }));
        if (0.2..0.8).contains(&q) {
            assert!((rne - f64::from(x)).abs() > bound, "{x:e}: the test cannot tell RNE's bias apart");
        }
    }
    // Exactly representable values and non-finite values are left alone.
    for x in [0.0f32, -0.0, 1.5, -2.0, 65280.0, f32::INFINITY, f32::NEG_INFINITY] {
        for i in 0..64 {
            let r = math::sr_bits(key, i);
            assert_eq!(math::f32_to_f16_sr(x, r), half::f16::from_f32(x).to_bits(), "{x}");
            assert_eq!(math::f32_to_bf16_sr(x, r), half::bf16::from_f32(x).to_bits(), "{x}");
        }
    }
    assert!(half::f16::from_bits(math::f32_to_f16_sr(f32::NAN, 5)).is_nan());
    assert!(half::bf16::from_bits(math::f32_to_bf16_sr(f32::NAN, 5)).is_nan());
}

fn sr_engine(precision: u32, seed: u64) -> (Engine, Vec<u16>) {
    let mut raw = RawConfig::defaults();
    raw.device = GACC_DEVICE_CPU;
    raw.precision = precision;
    raw.stochastic_rounding = 1;
    raw.seed = seed;
    raw.lr = 1e-3;
    let n = 5000;
    let mut rng = Rng::new(11);
    let init: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
    let mut e = cpu(Config::validate(&raw).unwrap(), Layout::new(vec![(None, n, true)]).unwrap(), &init);
    for _ in 0..3 {
        let g: Vec<f32> = (0..n).map(|_| rng.symmetric(1.0)).collect();
        feed(&mut e, &g, 1.0);
        e.step(false).unwrap();
    }
    let ptr = e.backend_mut().param_ptr(0, ParamBuffer::Working).unwrap() as *const u16;
    // SAFETY: the CPU working copy holds n values.
    let w = unsafe { std::slice::from_raw_parts(ptr, n) }.to_vec();
    (e, w)
}

#[test]
fn stochastic_rounding_is_reproducible_per_seed_and_step() {
    for precision in [GACC_PRECISION_FP16, GACC_PRECISION_BF16] {
        let (mut a, wa) = sr_engine(precision, 1);
        let (_, wb) = sr_engine(precision, 1);
        let (_, wc) = sr_engine(precision, 2);
        assert_eq!(wa, wb, "same seed, same steps: same bits");
        let differ = wa.iter().zip(&wc).filter(|(x, y)| x != y).count();
        assert!(differ > wa.len() / 10, "another seed changes the rounding ({differ} of {} differ)", wa.len());
        // params_write rewrites the copy with the key of the current step: writing
        // the same master back reproduces the step's working copy exactly.
        let mut master = vec![0f32; a.numel()];
        a.read_params(&mut master).unwrap();
        a.write_params(&master).unwrap();
        let ptr = a.backend_mut().param_ptr(0, ParamBuffer::Working).unwrap() as *const u16;
        // SAFETY: as above.
        let again = unsafe { std::slice::from_raw_parts(ptr, master.len()) }.to_vec();
        assert_eq!(again, wa, "params_write at the same step: same bits");
    }
}

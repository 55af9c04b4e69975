//! Fault injection: allocation failures at every allocation of create, load and save
//! give GACC_ERR_OUT_OF_MEMORY and leave the engine usable and unchanged; and a
//! non-finite gradient in any position, dtype and window never reaches the weights.

use std::ffi::CString;

use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status::*;
use half::{bf16, f16};

mod support;
use support::{last_error, Eng, Rng, TensorSpec};

const N: usize = 96;

fn cfg(precision: u32, optimizer: u32) -> gacc_config {
    let mut c = support::config(optimizer);
    c.precision = precision;
    c.momentum = 0.5;
    c.max_grad_norm = 2.0;
    c.growth_interval = 2;
    c
}

fn try_create(c: &gacc_config, init: &[f32]) -> (gacc::gacc_status, Option<Eng>) {
    let tensors = [
        TensorSpec { init: init[..40].to_vec(), no_wd: false },
        TensorSpec { init: init[40..N].to_vec(), no_wd: true },
    ];
    match Eng::try_new(c, &tensors) {
        Ok(e) => (GACC_OK, Some(e)),
        Err(st) => (st, None),
    }
}

fn params(e: &Eng) -> Vec<u32> {
    let mut out = vec![0f32; N];
    assert_eq!(unsafe { gacc_params_read(e.h, out.as_mut_ptr(), N) }, GACC_OK);
    out.iter().map(|x| x.to_bits()).collect()
}

fn micro(e: &Eng, g: &[f32], w: f64) {
    assert_eq!(unsafe { gacc_microbatch(e.h, g.as_ptr().cast(), GACC_DTYPE_F32, N, w) }, GACC_OK);
}

fn step(e: &Eng) -> gacc_step_info {
    let mut info = gacc_step_info::default();
    assert_eq!(unsafe { gacc_step(e.h, &mut info) }, GACC_OK);
    info
}

#[test]
fn every_allocation_failure_in_create_is_out_of_memory() {
    let init: Vec<f32> = (0..N).map(|i| i as f32).collect();
    for precision in [GACC_PRECISION_FP32, GACC_PRECISION_FP16] {
        let mut failures = 0;
        for n in 1.. {
            gacc::alloc::fail_nth_allocation(n);
            let mut out = 0xdead_usize as *mut gacc_engine;
            let c = cfg(precision, GACC_OPTIMIZER_ADAMW);
            let descs =
                [gacc_tensor_desc { name: std::ptr::null(), numel: N, init: init.as_ptr(), no_weight_decay: 0 }];
            let st = unsafe { gacc_create(&c, descs.as_ptr(), 1, &mut out) };
            gacc::alloc::fail_nth_allocation(0);
            if st == GACC_OK {
                gacc_destroy(out);
                break;
            }
            assert_eq!(st, GACC_ERR_OUT_OF_MEMORY, "allocation {n}");
            assert_eq!(out, 0xdead_usize as *mut gacc_engine, "*out written on failure");
            assert!(last_error().contains("injected"), "{}", last_error());
            failures += 1;
        }
        // params staging, master, acc, exp_avg, exp_avg_sq (+ working copy)
        assert!(failures >= 5, "only {failures} allocations were exercised");
    }
}

#[test]
fn allocation_failures_in_load_and_save_leave_the_engine_unchanged() {
    let dir = std::env::temp_dir().join(format!("gacc-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.safetensors");
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let mut rng = Rng::new(3);
    let init: Vec<f32> = (0..N).map(|_| rng.symmetric(1.0)).collect();
    let g: Vec<f32> = (0..N).map(|_| rng.symmetric(1.0)).collect();
    let c = cfg(GACC_PRECISION_FP16, GACC_OPTIMIZER_ADAMW);

    // A checkpoint to load: one step and an open window.
    let (_, src) = try_create(&c, &init);
    let src = src.unwrap();
    micro(&src, &g, 3.0);
    step(&src);
    micro(&src, &g, 1.0);
    assert_eq!(unsafe { gacc_save(src.h, cpath.as_ptr()) }, GACC_OK);
    let saved = std::fs::read(&path).unwrap();

    // Victim and twin: same history; the victim suffers failed loads and saves.
    let (_, victim) = try_create(&c, &init);
    let (_, twin) = try_create(&c, &init);
    let (victim, twin) = (victim.unwrap(), twin.unwrap());
    for e in [&victim, &twin] {
        micro(e, &g, 2.0);
    }
    let mut load_failures = 0;
    for n in 1.. {
        gacc::alloc::fail_nth_allocation(n);
        let st = unsafe { gacc_load(victim.h, cpath.as_ptr()) };
        gacc::alloc::fail_nth_allocation(0);
        if st == GACC_OK {
            break;
        }
        assert_eq!(st, GACC_ERR_OUT_OF_MEMORY, "load, allocation {n}: {}", last_error());
        assert_eq!(params(&victim), params(&twin), "a failed load changed the parameters");
        load_failures += 1;
    }
    assert!(load_failures >= 4, "{load_failures}");
    // The successful load replaced the victim's state by the checkpoint's: redo the
    // twin from the checkpoint too, then check both continue identically.
    assert_eq!(unsafe { gacc_load(twin.h, cpath.as_ptr()) }, GACC_OK);

    let mut save_failures = 0;
    for n in 1.. {
        gacc::alloc::fail_nth_allocation(n);
        let st = unsafe { gacc_save(victim.h, cpath.as_ptr()) };
        gacc::alloc::fail_nth_allocation(0);
        if st == GACC_OK {
            break;
        }
        assert_eq!(st, GACC_ERR_OUT_OF_MEMORY, "save, allocation {n}");
        assert_eq!(std::fs::read(&path).unwrap(), saved, "a failed save touched the old checkpoint");
        save_failures += 1;
    }
    assert!(save_failures >= 2, "{save_failures}");
    for e in [&victim, &twin] {
        micro(e, &g, 5.0);
    }
    assert_eq!(step(&victim), step(&twin));
    assert_eq!(params(&victim), params(&twin));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Thousands of windows; in some, one element of one micro-batch (any dtype, any
/// position) is +inf, -inf or NaN. Such a window must leave every parameter
/// bit-identical and must not advance the step count; the weights stay finite.
#[test]
fn non_finite_gradients_never_reach_the_weights() {
    let mut rng = Rng::new(0x5eed);
    let mut windows_poisoned = 0;
    for (precision, optimizer) in [
        (GACC_PRECISION_FP16, GACC_OPTIMIZER_ADAMW),
        (GACC_PRECISION_BF16, GACC_OPTIMIZER_SGD),
        (GACC_PRECISION_FP32, GACC_OPTIMIZER_ADAMW),
    ] {
        let init: Vec<f32> = (0..N).map(|_| rng.symmetric(1.0)).collect();
        let (_, e) = try_create(&cfg(precision, optimizer), &init);
        let e = e.unwrap();
        let mut applied = 0u64;
        for _window in 0..1500 {
            let before = params(&e);
            let k = 1 + rng.below(4) as usize;
            let poisoned_micro = if rng.below(3) == 0 { Some(rng.below(k as u64) as usize) } else { None };
            for m in 0..k {
                let mut g: Vec<f32> = (0..N).map(|_| rng.symmetric(1.0) * 0.1).collect();
                if poisoned_micro == Some(m) {
                    g[rng.below(N as u64) as usize] =
                        [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][rng.below(3) as usize];
                }
                let weight = 1.0 + rng.below(8) as f64;
                let st = match rng.below(3) {
                    0 => unsafe { gacc_microbatch(e.h, g.as_ptr().cast(), GACC_DTYPE_F32, N, weight) },
                    1 => {
                        let h: Vec<f16> = g.iter().map(|&x| f16::from_f32(x)).collect();
                        unsafe { gacc_microbatch(e.h, h.as_ptr().cast(), GACC_DTYPE_F16, N, weight) }
                    }
                    _ => {
                        let h: Vec<bf16> = g.iter().map(|&x| bf16::from_f32(x)).collect();
                        unsafe { gacc_microbatch(e.h, h.as_ptr().cast(), GACC_DTYPE_BF16, N, weight) }
                    }
                };
                assert_eq!(st, GACC_OK);
            }
            let info = step(&e);
            let after = params(&e);
            if poisoned_micro.is_some() {
                windows_poisoned += 1;
                assert_eq!(info.applied, 0);
                assert!(!info.grad_norm.is_finite());
                assert_eq!(after, before, "a poisoned window changed the weights");
            } else {
                assert_eq!(info.applied, 1);
                applied += 1;
            }
            assert_eq!(info.step, applied, "skipped steps must not advance the count");
            assert!(after.iter().all(|&b| f32::from_bits(b).is_finite()));
        }
    }
    assert!(windows_poisoned > 1000, "{windows_poisoned}");
}

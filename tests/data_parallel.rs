//! Data parallelism through the callback transport, with ranks as threads of one
//! process and an in-process all-reduce: R ranks with K micro-batches each take the
//! same steps as one engine that sees all R*K micro-batches; ranks agree on FP16
//! skips when only one of them overflows; a failing collective is
//! GACC_ERR_COMMUNICATION and leaves the rank's window intact.

use std::os::raw::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status::*;

mod support;
use support::{last_error, split_tensors, Eng, Rng};

/// A deterministic in-process all-reduce: every rank posts its buffer in its slot,
/// then every rank sums the slots in rank order.
struct Group {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
    /// When set, every rank's collective fails (after the data exchange).
    fail_all: AtomicBool,
    failed: AtomicBool,
}

struct RankCtx {
    group: Arc<Group>,
    rank: usize,
}

unsafe extern "C" fn allreduce(buf: *mut c_void, count: usize, dtype: u32, user: *mut c_void) -> i32 {
    let ctx = &*(user as *const RankCtx);
    let g = &ctx.group;
    let values: Vec<f64> = match dtype {
        GACC_DTYPE_F32 => std::slice::from_raw_parts(buf as *const f32, count).iter().map(|&x| f64::from(x)).collect(),
        GACC_DTYPE_F64 => std::slice::from_raw_parts(buf as *const f64, count).to_vec(),
        _ => return -2,
    };
    g.slots.lock().unwrap()[ctx.rank] = values;
    g.barrier.wait();
    let failing = g.fail_all.load(Ordering::SeqCst);
    let sum: Vec<f64> = {
        let slots = g.slots.lock().unwrap();
        (0..count)
            .map(|i| {
                // f32 buffers are summed in f32, in rank order, as NCCL/MPI would.
                if dtype == GACC_DTYPE_F32 {
                    f64::from(slots.iter().fold(0f32, |acc, s| acc + s[i] as f32))
                } else {
                    slots.iter().map(|s| s[i]).sum()
                }
            })
            .collect()
    };
    g.barrier.wait();
    if failing {
        g.failed.store(true, Ordering::SeqCst);
        // A failing transport may have scribbled on the buffer: gacc must not care.
        std::slice::from_raw_parts_mut(buf as *mut u8, count * 4).fill(0xAB);
        return 7;
    }
    match dtype {
        GACC_DTYPE_F32 => {
            for (d, s) in std::slice::from_raw_parts_mut(buf as *mut f32, count).iter_mut().zip(&sum) {
                *d = *s as f32;
            }
        }
        _ => std::slice::from_raw_parts_mut(buf as *mut f64, count).copy_from_slice(&sum),
    }
    0
}

const N: usize = 257;

fn config(optimizer: u32, precision: u32) -> gacc_config {
    let mut c = support::config(optimizer);
    c.precision = precision;
    c.momentum = 0.9;
    c.lr = 0.05;
    c.max_grad_norm = 0.5;
    c.growth_interval = 2;
    c
}

/// (gradient, weight) of micro-batch k of rank r in window w.
fn micro(w: usize, r: usize, k: usize, poison: Option<(usize, usize)>) -> (Vec<f32>, f64) {
    let mut rng = Rng::new(0x1234_5678 ^ ((w as u64) << 40) ^ ((r as u64) << 20) ^ k as u64);
    let mut g: Vec<f32> = (0..N).map(|_| rng.symmetric(1.0)).collect();
    if poison == Some((w, r)) && k == 0 {
        g[N / 2] = f32::INFINITY;
    }
    (g, (1 + (w + 3 * r + 5 * k) % 7) as f64) // unequal weights per rank and micro-batch
}

struct Outcome {
    rank_params: Vec<Vec<f32>>,
    infos: Vec<Vec<gacc_step_info>>,
}

fn run_ranks(world: usize, k: usize, windows: usize, c: gacc_config, poison: Option<(usize, usize)>) -> Outcome {
    let init: Vec<f32> = (0..N).map(|i| (i as f32 * 0.37).sin()).collect();
    let group = Arc::new(Group {
        barrier: Barrier::new(world),
        slots: Mutex::new(vec![Vec::new(); world]),
        fail_all: AtomicBool::new(false),
        failed: AtomicBool::new(false),
    });
    let threads: Vec<_> = (0..world)
        .map(|r| {
            let group = group.clone();
            let mut init = init.clone();
            if r != 0 {
                init.iter_mut().for_each(|x| *x = 99.0); // rank 0's parameters must win
            }
            std::thread::spawn(move || {
                let ctx = Box::new(RankCtx { group, rank: r });
                let e = Eng::new(&c, &split_tensors(&init, 200));
                let st = unsafe {
                    gacc_set_allreduce(
                        e.h,
                        Some(allreduce),
                        &*ctx as *const RankCtx as *mut c_void,
                        r as i32,
                        world as i32,
                    )
                };
                assert_eq!(st, GACC_OK);
                let mut infos = Vec::new();
                for w in 0..windows {
                    for kk in 0..k {
                        let (g, wt) = micro(w, r, kk, poison);
                        assert_eq!(unsafe { gacc_microbatch(e.h, g.as_ptr().cast(), GACC_DTYPE_F32, N, wt) }, GACC_OK);
                    }
                    let mut info = gacc_step_info::default();
                    assert_eq!(unsafe { gacc_step(e.h, &mut info) }, GACC_OK);
                    infos.push(info);
                }
                (e.params(), infos)
            })
        })
        .collect();
    let (rank_params, infos) = threads.into_iter().map(|t| t.join().unwrap()).unzip();
    Outcome { rank_params, infos }
}

fn single_engine(
    world: usize,
    k: usize,
    windows: usize,
    c: gacc_config,
    poison: Option<(usize, usize)>,
) -> (Vec<f32>, Vec<gacc_step_info>) {
    let init: Vec<f32> = (0..N).map(|i| (i as f32 * 0.37).sin()).collect();
    let e = Eng::new(&c, &split_tensors(&init, 200));
    let mut infos = Vec::new();
    for w in 0..windows {
        for r in 0..world {
            for kk in 0..k {
                let (g, wt) = micro(w, r, kk, poison);
                assert_eq!(unsafe { gacc_microbatch(e.h, g.as_ptr().cast(), GACC_DTYPE_F32, N, wt) }, GACC_OK);
            }
        }
        let mut info = gacc_step_info::default();
        assert_eq!(unsafe { gacc_step(e.h, &mut info) }, GACC_OK);
        infos.push(info);
    }
    (e.params(), infos)
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-3)).fold(0.0, f32::max)
}

fn check_equivalence(world: usize, optimizer: u32, precision: u32) {
    let (k, windows) = (3, 12);
    let c = config(optimizer, precision);
    let dp = run_ranks(world, k, windows, c, None);
    let (reference, ref_infos) = single_engine(world, k, windows, c, None);
    for r in 1..world {
        assert_eq!(
            dp.rank_params[r].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            dp.rank_params[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "rank {r} diverged from rank 0"
        );
    }
    // The only difference to one engine is the fp32 summation order of the
    // micro-batch contributions (per rank, then across ranks): a few ulps per window,
    // which AdamW's normalisation and 12 windows amplify to ~1e-5 relative at most.
    let diff = max_rel_diff(&dp.rank_params[0], &reference);
    assert!(diff < 2e-4, "world {world}: data-parallel differs from one engine by {diff}");
    for (a, b) in dp.infos[0].iter().zip(&ref_infos) {
        assert_eq!(a.microbatches, b.microbatches, "global micro-batch count");
        assert_eq!(a.total_weight, b.total_weight, "global weight");
        assert_eq!(a.applied, b.applied);
        assert!((a.grad_norm - b.grad_norm).abs() <= 1e-5 * b.grad_norm.max(1.0));
    }
    // And the comparison can fail: rank-local training (no collective) is far off.
    let (local, _) = single_engine(1, k, windows, c, None);
    assert!(max_rel_diff(&local, &reference) > 1e-2);
}

#[test]
fn two_and_three_ranks_match_one_engine_sgd() {
    check_equivalence(2, GACC_OPTIMIZER_SGD, GACC_PRECISION_FP32);
    check_equivalence(3, GACC_OPTIMIZER_SGD, GACC_PRECISION_BF16);
}

#[test]
fn two_and_three_ranks_match_one_engine_adamw() {
    check_equivalence(2, GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP16);
    check_equivalence(3, GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP32);
}

#[test]
fn ranks_skip_together_when_one_overflows() {
    let c = config(GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP16);
    let poison = Some((3, 1)); // window 3, rank 1 only
    let dp = run_ranks(3, 2, 6, c, poison);
    for infos in &dp.infos {
        let applied: Vec<u32> = infos.iter().map(|i| i.applied).collect();
        assert_eq!(applied, vec![1, 1, 1, 0, 1, 1], "every rank skips window 3 and only it");
        assert_eq!(infos[3].loss_scale, infos[2].loss_scale / 2.0, "every rank backs off");
        assert_eq!(infos[5].step, 5);
    }
    assert!(dp.rank_params.iter().all(|p| p == &dp.rank_params[0]));
}

/// GACC_LOSS_SCALE_DEEPSPEED under data parallelism, poisoned and drop mode: every
/// rank's scale sequence and skip decisions equal one engine's that sees every
/// micro-batch (whose DEEPSPEED rule tests/numerics.rs checks against DeepSpeed's own
/// scaler), and the ranks stay identical.
#[test]
fn ranks_follow_the_deepspeed_policy_together() {
    for drop in [0u32, 1] {
        let mut c = config(GACC_OPTIMIZER_SGD, GACC_PRECISION_FP16);
        c.loss_scale_policy = GACC_LOSS_SCALE_DEEPSPEED;
        c.growth_interval = 1;
        c.hysteresis = 2;
        c.min_loss_scale = 1.0;
        c.drop_nonfinite_microbatches = drop;
        let poison = Some((3, 2));
        let dp = run_ranks(3, 2, 8, c, poison);
        let (reference, ref_infos) = single_engine(3, 2, 8, c, poison);
        let want: Vec<(u32, f32)> = ref_infos.iter().map(|i| (i.applied, i.loss_scale)).collect();
        // Window 1: DeepSpeed's first growth (stable interval 1); window 3 overflows.
        assert_eq!(want[0].1, want[1].1 / 2.0, "drop {drop}: {want:?}");
        for infos in &dp.infos {
            let got: Vec<(u32, f32)> = infos.iter().map(|i| (i.applied, i.loss_scale)).collect();
            assert_eq!(got, want, "drop {drop}");
        }
        assert!(dp.rank_params.iter().all(|p| p == &dp.rank_params[0]));
        assert!(max_rel_diff(&dp.rank_params[0], &reference) < 2e-4);
    }
}

/// drop_nonfinite_microbatches under data parallelism: rank 1's poisoned micro-batch
/// is left out on rank 1 only, the global window total and dropped count are summed
/// with the other totals, every rank applies the window, backs the FP16 scale off and
/// stays identical to the others; and the run matches one engine that sees every
/// micro-batch with the option on.
#[test]
fn ranks_drop_only_the_poisoned_microbatch() {
    let mut c = config(GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP16);
    c.drop_nonfinite_microbatches = 1;
    c.compensated_accumulation = 1;
    let poison = Some((3, 1));
    let dp = run_ranks(3, 2, 6, c, poison);
    let (reference, ref_infos) = single_engine(3, 2, 6, c, poison);
    for infos in &dp.infos {
        let applied: Vec<u32> = infos.iter().map(|i| i.applied).collect();
        assert_eq!(applied, vec![1; 6], "the window goes on");
        let dropped: Vec<u32> = infos.iter().map(|i| i.dropped_microbatches).collect();
        assert_eq!(dropped, vec![0, 0, 0, 1, 0, 0], "the global dropped count");
        assert_eq!(infos[3].loss_scale, infos[2].loss_scale / 2.0, "every rank backs off");
        for (a, b) in infos.iter().zip(&ref_infos) {
            assert_eq!((a.microbatches, a.dropped_microbatches), (b.microbatches, b.dropped_microbatches));
            assert_eq!(a.total_weight, b.total_weight, "global weight without the dropped micro-batch");
            assert_eq!(a.loss_scale, b.loss_scale);
        }
    }
    assert!(dp.rank_params.iter().all(|p| p == &dp.rank_params[0]));
    let diff = max_rel_diff(&dp.rank_params[0], &reference);
    assert!(diff < 2e-4, "data-parallel drop mode differs from one engine by {diff}");
}

/// The transport fails on every rank (as an aborted NCCL/MPI communicator does):
/// each rank gets GACC_ERR_COMMUNICATION, its parameters and window are intact, and
/// once the transport works again the retried step equals a run that never failed.
#[test]
fn failed_collective_is_communication_error_and_window_survives() {
    let world = 2;
    let c = config(GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP16);
    let run = |inject: bool| {
        let group = Arc::new(Group {
            barrier: Barrier::new(world),
            slots: Mutex::new(vec![Vec::new(); world]),
            fail_all: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        });
        let threads: Vec<_> = (0..world)
            .map(|r| {
                let group = group.clone();
                std::thread::spawn(move || {
                    let init: Vec<f32> = (0..N).map(|i| i as f32 * 0.01).collect();
                    let ctx = Box::new(RankCtx { group: group.clone(), rank: r });
                    let eng = Eng::new(&c, &split_tensors(&init, 200));
                    let e = eng.h;
                    let user = &*ctx as *const RankCtx as *mut c_void;
                    assert_eq!(
                        unsafe { gacc_set_allreduce(e, Some(allreduce), user, r as i32, world as i32) },
                        GACC_OK
                    );
                    for k in 0..2 {
                        let (g, wt) = micro(0, r, k, None);
                        assert_eq!(unsafe { gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, N, wt) }, GACC_OK);
                    }
                    let mut failures = Vec::new();
                    if inject {
                        if r == 0 {
                            group.fail_all.store(true, Ordering::SeqCst);
                        }
                        group.barrier.wait();
                        let st = unsafe { gacc_step(e, std::ptr::null_mut()) };
                        let msg = last_error();
                        failures.push((st, msg, eng.params() == init));
                        group.barrier.wait();
                        if r == 0 {
                            group.fail_all.store(false, Ordering::SeqCst);
                        }
                        group.barrier.wait();
                    }
                    let mut info = gacc_step_info::default();
                    assert_eq!(unsafe { gacc_step(e, &mut info) }, GACC_OK);
                    (failures, info, eng.params())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>()
    };
    let faulty = run(true);
    let clean = run(false);
    for (r, ((failures, info, p), (_, clean_info, clean_p))) in faulty.iter().zip(&clean).enumerate() {
        assert_eq!(failures.len(), 1);
        let (st, msg, params_intact) = &failures[0];
        assert_eq!(*st, GACC_ERR_COMMUNICATION, "rank {r}");
        assert!(msg.contains("all-reduce callback returned 7"), "{msg}");
        assert!(params_intact, "rank {r}: a failed collective changed the parameters");
        assert_eq!(info, clean_info, "rank {r}: the retried window differs from a clean one");
        assert_eq!(p, clean_p);
    }
}

/// NCCL's documented refusals without a GPU or NCCL: gacc_set_nccl on a CPU engine
/// is GACC_ERR_INVALID_STATE naming the CPU transports, and gacc_nccl_unique_id
/// without a loadable libnccl is GACC_ERR_DEVICE_UNAVAILABLE with the reason (the
/// working path is tests/fake_nccl.rs, on a fake libnccl).
#[test]
fn nccl_refusals_without_nccl() {
    let init: Vec<f32> = (0..N).map(|i| i as f32).collect();
    let e = Eng::new(&config(GACC_OPTIMIZER_SGD, GACC_PRECISION_FP32), &split_tensors(&init, 200));
    let id = gacc_nccl_id { internal: [7; 128] };
    assert_eq!(unsafe { gacc_set_nccl(e.h, &id, 0, 1) }, GACC_ERR_INVALID_STATE);
    let msg = last_error();
    assert!(msg.contains("CUDA engine") && msg.contains("gacc_set_mpi") && msg.contains("gacc_set_allreduce"), "{msg}");
    drop(e);
    // SAFETY: only probes whether a real libnccl is installed here.
    let installed = unsafe { libloading::Library::new("libnccl.so.2") }.is_ok();
    if std::env::var_os("GACC_NCCL_LIB").is_some() || installed {
        println!("skipped: the no-NCCL half of nccl_refusals_without_nccl: NCCL is installed");
        return;
    }
    let mut out = gacc_nccl_id { internal: [0; 128] };
    assert_eq!(unsafe { gacc_nccl_unique_id(&mut out) }, GACC_ERR_DEVICE_UNAVAILABLE);
    let msg = last_error();
    assert!(msg.contains("NCCL cannot be loaded") && msg.contains("libnccl.so.2"), "{msg}");
}

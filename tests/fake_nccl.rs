//! The NCCL transport without a GPU or NCCL: gacc's real CUDA runtime on the fake
//! driver (tests/doubles/fake_cuda.cpp) and gacc's real NCCL loader and device
//! data-parallel path on a fake libnccl (tests/doubles/fake_nccl.cpp, named by
//! GACC_NCCL_LIB) whose ncclAllReduce is a real in-process all-reduce across ranks
//! that are threads of this process, on the fake device memory. Needs NVRTC and g++
//! like tests/fake_driver.rs (without NVRTC: "skipped"; GACC_REQUIRE_NVRTC=1: fail).
//!
//! Data are exact (gradients multiples of 1/64, integer weights), so the summation
//! order cannot matter and R ranks with K micro-batches each are compared bit for
//! bit with one engine fed all R*K micro-batches.

mod support;
use support::cuda;

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Arc, Barrier, OnceLock};

use cudarc::driver::sys;
use gacc::backend::cuda::nvrtc;
use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status::*;
use support::{last_error, split_tensors, Eng, Rng};

struct Fakes {
    cuda: libloading::Library,
    nccl: libloading::Library,
}

/// Builds and loads the fake driver and the fake NCCL once; None (with a "skipped"
/// line) without NVRTC.
fn fakes(test: &str) -> Option<&'static Fakes> {
    if !(nvrtc::available() && nvrtc::cuda_include_dir().is_some()) {
        let why = "NVRTC or the CUDA headers not found (set GACC_NVRTC_LIB)";
        if std::env::var("GACC_REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("{test}: GACC_REQUIRE_NVRTC=1 but {why}");
        }
        println!("skipped: {test}: {why}");
        return None;
    }
    static LOADED: OnceLock<Fakes> = OnceLock::new();
    Some(LOADED.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join("gacc-shim");
        std::fs::create_dir_all(&dir).unwrap();
        let pid = std::process::id();
        let cuda = dir.join(format!("libfakecuda_nccl_{pid}.so"));
        let nccl = dir.join(format!("libfakenccl_{pid}.so"));
        cuda::build_fake_driver(&cuda);
        cuda::build_fake_nccl(&nccl);
        // Every test of this binary waits here, so no other thread reads the
        // environment while it changes.
        std::env::set_var("GACC_CACHE_DIR", tmp.join("gacc-kernel-cache"));
        std::env::set_var("GACC_NCCL_LIB", &nccl);
        // SAFETY: loading the fakes runs only C++ static initialisers. RTLD_GLOBAL and
        // the SONAME make cudarc's dlopen("libcuda.so") find the fake driver, and the
        // fake NCCL's dlsym(RTLD_DEFAULT, "cuPointerGetAttribute") find it too.
        let cuda = unsafe {
            libloading::os::unix::Library::open(Some(&cuda), libc::RTLD_NOW | libc::RTLD_GLOBAL)
                .unwrap_or_else(|e| panic!("loading the fake driver: {e}"))
        };
        // SAFETY: as above; gacc opens the same file (GACC_NCCL_LIB): one instance.
        let nccl = unsafe {
            libloading::os::unix::Library::open(Some(&nccl), libc::RTLD_NOW)
                .unwrap_or_else(|e| panic!("loading the fake NCCL: {e}"))
        };
        gacc::backend::cuda::probe(0).unwrap_or_else(|e| panic!("the fake driver was not picked up: {e}"));
        Fakes { cuda: cuda.into(), nccl: nccl.into() }
    }))
}

impl Fakes {
    /// This thread's count of "sync", "d2h" or "h2d" calls in the fake driver.
    fn thread_count(&self, what: &str) -> u64 {
        let name = std::ffi::CString::new(what).unwrap();
        // SAFETY: the fake driver exports this function with this signature.
        unsafe {
            let f = self.cuda.get::<unsafe extern "C" fn(*const i8) -> u64>(b"fake_cuda_thread_count\0").unwrap();
            f(name.as_ptr())
        }
    }
    /// This thread's ncclAllReduce calls: `skip` succeed, then `n` fail.
    fn fail_allreduce(&self, skip: i32, n: i32) {
        // SAFETY: exported by the fake NCCL with this signature.
        unsafe {
            let f = self.nccl.get::<unsafe extern "C" fn(i32, i32)>(b"fake_nccl_fail_allreduce\0").unwrap();
            f(skip, n)
        }
    }
    fn allreduce_calls(&self) -> u64 {
        // SAFETY: as above.
        unsafe { self.nccl.get::<unsafe extern "C" fn() -> u64>(b"fake_nccl_allreduce_calls\0").unwrap()() }
    }
    /// The stream of this thread's last ncclAllReduce.
    fn last_stream(&self) -> *mut c_void {
        // SAFETY: as above.
        unsafe { self.nccl.get::<unsafe extern "C" fn() -> *mut c_void>(b"fake_nccl_last_stream\0").unwrap()() }
    }
}

const N: usize = 259;

fn config(optimizer: u32, device: i32) -> gacc_config {
    let mut c = support::config(optimizer);
    c.device = device;
    c.precision = GACC_PRECISION_FP16;
    c.momentum = 0.9;
    c.lr = 0.05;
    c.max_grad_norm = 0.5;
    c.growth_interval = 2;
    c
}

fn params(e: &Eng) -> Vec<u32> {
    e.params().iter().map(|x| x.to_bits()).collect()
}

fn init_params() -> Vec<f32> {
    (0..N).map(|i| (i as f32 * 0.37).sin()).collect()
}

/// (gradient, weight) of micro-batch k of rank r in window w: multiples of 1/64 in
/// [-1, 1] and integer weights, so every sum gacc forms is exact.
fn micro(w: usize, r: usize, k: usize, poison: Option<(usize, usize)>) -> (Vec<f32>, f64) {
    let mut rng = Rng::new(0x1234_5678 ^ ((w as u64) << 40) ^ ((r as u64) << 20) ^ k as u64);
    let mut g: Vec<f32> = (0..N).map(|_| rng.below(129) as f32 / 64.0 - 1.0).collect();
    if poison == Some((w, r)) && k == 0 {
        g[N / 2] = f32::INFINITY;
    }
    (g, (1 + (w + 3 * r + 5 * k) % 7) as f64)
}

struct Rank {
    params: Vec<u32>,
    infos: Vec<gacc_step_info>,
    /// (sync, d2h, h2d) calls of the fake driver during gacc_step without info.
    step_transfers: (u64, u64, u64),
}

/// `world` ranks (threads) on the fake device, joined through gacc_set_nccl; each
/// window: K micro-batches per rank, then gacc_step (with info when `info`).
fn run_ranks(
    f: &'static Fakes,
    world: usize,
    k: usize,
    windows: usize,
    c: gacc_config,
    poison: Option<(usize, usize)>,
    info: bool,
) -> Vec<Rank> {
    let mut id = gacc_nccl_id { internal: [0; 128] };
    assert_eq!(unsafe { gacc_nccl_unique_id(&mut id) }, GACC_OK, "{}", last_error());
    let threads: Vec<_> = (0..world)
        .map(|r| {
            std::thread::spawn(move || {
                let mut init = init_params();
                if r != 0 {
                    init.iter_mut().for_each(|x| *x = 99.0); // rank 0's parameters must win
                }
                let e = Eng::new(&c, &split_tensors(&init, 200));
                // The engine's stream is the caller's: NCCL must queue on it.
                cuda::device::make_current();
                let mut stream: sys::CUstream = std::ptr::null_mut();
                cuda::device::ok(unsafe { sys::cuStreamCreate(&mut stream, 1) }, "cuStreamCreate");
                assert_eq!(unsafe { gacc_set_stream(e.h, stream as *mut c_void) }, GACC_OK);
                let st = unsafe { gacc_set_nccl(e.h, &id, r as i32, world as i32) };
                assert_eq!(st, GACC_OK, "{}", last_error());
                let mut infos = Vec::new();
                let mut transfers = (0, 0, 0);
                // gacc_accumulator_ptr stays valid across NCCL steps (the reduced
                // accumulator is copied back, never swapped in).
                use gacc::ffi::tensors::gacc_accumulator_ptr as accumulator_ptr;
                let mut acc0 = std::ptr::null_mut();
                assert_eq!(unsafe { accumulator_ptr(e.h, 0, &mut acc0) }, GACC_OK);
                for w in 0..windows {
                    for kk in 0..k {
                        let (g, wt) = micro(w, r, kk, poison);
                        e.mb_f32(&g, wt);
                    }
                    if info {
                        let mut i = gacc_step_info::default();
                        assert_eq!(unsafe { gacc_step(e.h, &mut i) }, GACC_OK, "{}", last_error());
                        infos.push(i);
                    } else {
                        let before = (f.thread_count("sync"), f.thread_count("d2h"), f.thread_count("h2d"));
                        assert_eq!(unsafe { gacc_step(e.h, std::ptr::null_mut()) }, GACC_OK, "{}", last_error());
                        transfers.0 += f.thread_count("sync") - before.0;
                        transfers.1 += f.thread_count("d2h") - before.1;
                        transfers.2 += f.thread_count("h2d") - before.2;
                    }
                    assert_eq!(f.last_stream(), stream as *mut c_void, "rank {r}: NCCL on the engine's stream");
                    let mut acc = std::ptr::null_mut();
                    assert_eq!(unsafe { accumulator_ptr(e.h, 0, &mut acc) }, GACC_OK);
                    assert_eq!(acc, acc0, "rank {r}: the accumulator moved");
                }
                let p = params(&e);
                drop(e);
                unsafe { sys::cuStreamDestroy_v2(stream) };
                Rank { params: p, infos, step_transfers: transfers }
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// One engine on the fake device fed every rank's micro-batches.
fn single_engine(
    world: usize,
    k: usize,
    windows: usize,
    c: gacc_config,
    poison: Option<(usize, usize)>,
) -> (Vec<u32>, Vec<gacc_step_info>) {
    let e = Eng::new(&c, &split_tensors(&init_params(), 200));
    let mut infos = Vec::new();
    for w in 0..windows {
        for r in 0..world {
            for kk in 0..k {
                let (g, wt) = micro(w, r, kk, poison);
                e.mb_f32(&g, wt);
            }
        }
        let mut i = gacc_step_info::default();
        assert_eq!(unsafe { gacc_step(e.h, &mut i) }, GACC_OK, "{}", last_error());
        infos.push(i);
    }
    let p = params(&e);
    drop(e);
    (p, infos)
}

fn check_equivalence(f: &'static Fakes, world: usize, c: gacc_config, poison: Option<(usize, usize)>) -> Vec<Rank> {
    let (k, windows) = (3, 6);
    let ranks = run_ranks(f, world, k, windows, c, poison, true);
    let (reference, ref_infos) = single_engine(world, k, windows, c, poison);
    for (r, rank) in ranks.iter().enumerate() {
        assert_eq!(rank.params, ranks[0].params, "rank {r} diverged from rank 0");
        assert_eq!(rank.params, reference, "world {world}, rank {r}: differs from one engine fed every micro-batch");
        for (w, (a, b)) in rank.infos.iter().zip(&ref_infos).enumerate() {
            assert_eq!(a, b, "world {world}, rank {r}, window {w}: step info (global window)");
        }
    }
    // And the comparison can fail: rank 0 alone differs.
    let (local, _) = single_engine(1, k, windows, c, poison);
    assert_ne!(local, reference);
    ranks
}

#[test]
fn nccl_two_and_three_ranks_match_one_engine_sgd_and_adamw_fp16() {
    let Some(f) = fakes("nccl_two_and_three_ranks_match_one_engine_sgd_and_adamw_fp16") else { return };
    for world in [2, 3] {
        for opt in [GACC_OPTIMIZER_SGD, GACC_OPTIMIZER_ADAMW] {
            let ranks = check_equivalence(f, world, config(opt, 0), None);
            assert!(ranks[0].infos.iter().all(|i| i.applied == 1));
            assert_eq!(ranks[0].infos[0].microbatches, 3 * world as u32, "global micro-batch count");
        }
    }
}

#[test]
fn nccl_ranks_skip_together_when_one_overflows() {
    let Some(f) = fakes("nccl_ranks_skip_together_when_one_overflows") else { return };
    let ranks = check_equivalence(f, 3, config(GACC_OPTIMIZER_ADAMW, 0), Some((3, 1)));
    for rank in &ranks {
        let applied: Vec<u32> = rank.infos.iter().map(|i| i.applied).collect();
        assert_eq!(applied, vec![1, 1, 1, 0, 1, 1], "every rank skips window 3 and only it");
        assert_eq!(rank.infos[3].loss_scale, rank.infos[2].loss_scale / 2.0, "every rank backs off");
    }
}

/// Kahan compensation (the reduced value is acc - comp, folded on the device) and
/// drop mode (the device's window total and dropped count are summed too).
#[test]
fn nccl_compensated_and_drop_mode_match_one_engine() {
    let Some(f) = fakes("nccl_compensated_and_drop_mode_match_one_engine") else { return };
    let mut c = config(GACC_OPTIMIZER_ADAMW, 0);
    c.compensated_accumulation = 1;
    c.drop_nonfinite_microbatches = 1;
    let ranks = check_equivalence(f, 2, c, Some((2, 1)));
    let dropped: Vec<u32> = ranks[0].infos.iter().map(|i| i.dropped_microbatches).collect();
    assert_eq!(dropped, vec![0, 0, 1, 0, 0, 0]);
    assert!(ranks[0].infos.iter().all(|i| i.applied == 1));
}

/// gacc_step without info: no synchronisation, no device-to-host or host-to-device
/// copy on the calling thread (counted by the fake driver), two ncclAllReduce calls
/// per rank, on the engine's stream (checked in run_ranks), and the same parameters
/// as the run with info.
#[test]
fn nccl_step_without_info_never_waits_or_copies() {
    let Some(f) = fakes("nccl_step_without_info_never_waits_or_copies") else { return };
    let c = config(GACC_OPTIMIZER_ADAMW, 0);
    let calls_before = f.allreduce_calls();
    let quiet = run_ranks(f, 2, 3, 4, c, None, false);
    let calls = f.allreduce_calls() - calls_before;
    for (r, rank) in quiet.iter().enumerate() {
        assert_eq!(rank.step_transfers, (0, 0, 0), "rank {r}: (sync, d2h, h2d) during gacc_step without info");
    }
    // Other tests run in parallel: at least join (1) + 4 windows x 2 per rank.
    assert!(calls >= 2 * (1 + 4 * 2), "{calls} ncclAllReduce calls");
    let loud = run_ranks(f, 2, 3, 4, c, None, true);
    assert_eq!(quiet[0].params, loud[0].params);
    assert_eq!(quiet[1].params, quiet[0].params);
    // The counters do count: a step with info reads the device back.
    let e = Eng::new(&c, &split_tensors(&init_params(), 200));
    let (g, w) = micro(0, 0, 0, None);
    e.mb_f32(&g, w);
    let before = f.thread_count("d2h");
    let mut i = gacc_step_info::default();
    assert_eq!(unsafe { gacc_step(e.h, &mut i) }, GACC_OK);
    assert!(f.thread_count("d2h") > before);
    drop(e);
}

/// The fake NCCL fails the totals all-reduce (skip 0) or the accumulator one (skip 1)
/// on every rank: GACC_ERR_COMMUNICATION with NCCL's message, parameters intact, and
/// the retried step equals a run that never failed.
#[test]
fn nccl_failed_allreduce_is_communication_error_and_window_survives() {
    let Some(f) = fakes("nccl_failed_allreduce_is_communication_error_and_window_survives") else { return };
    for compensated in [0, 1] {
        let mut c = config(GACC_OPTIMIZER_ADAMW, 0);
        c.compensated_accumulation = compensated;
        let clean = run_ranks(f, 2, 2, 1, c, None, true);
        for skip in [0, 1] {
            let mut id = gacc_nccl_id { internal: [0; 128] };
            assert_eq!(unsafe { gacc_nccl_unique_id(&mut id) }, GACC_OK);
            let world = 2;
            let barrier = Arc::new(Barrier::new(world));
            let threads: Vec<_> = (0..world)
                .map(|r| {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let e = Eng::new(&c, &split_tensors(&init_params(), 200));
                        assert_eq!(unsafe { gacc_set_nccl(e.h, &id, r as i32, world as i32) }, GACC_OK);
                        let before = params(&e);
                        for kk in 0..2 {
                            let (g, wt) = micro(0, r, kk, None);
                            e.mb_f32(&g, wt);
                        }
                        barrier.wait();
                        f.fail_allreduce(skip, 1);
                        let st = unsafe { gacc_step(e.h, std::ptr::null_mut()) };
                        let msg = last_error();
                        assert_eq!(st, GACC_ERR_COMMUNICATION, "rank {r}, skip {skip}: {msg}");
                        assert!(msg.contains("injected failure") && msg.contains("ncclAllReduce"), "{msg}");
                        assert_eq!(params(&e), before, "rank {r}: a failed collective changed the parameters");
                        barrier.wait();
                        let mut i = gacc_step_info::default();
                        assert_eq!(unsafe { gacc_step(e.h, &mut i) }, GACC_OK, "{}", last_error());
                        let p = params(&e);
                        drop(e);
                        (i, p)
                    })
                })
                .collect();
            for (r, t) in threads.into_iter().enumerate() {
                let (info, p) = t.join().unwrap();
                assert_eq!(info, clean[r].infos[0], "rank {r}, skip {skip}: retried window differs from a clean one");
                assert_eq!(p, clean[r].params);
            }
        }
    }
}

/// The documented refusals: a CPU engine (GACC_ERR_INVALID_STATE naming the
/// alternatives), a non-empty window, a bad rank, NULL id, and a host transport
/// after NCCL; a global window of weight 0 is skipped on the device.
#[test]
fn nccl_refusals_and_empty_global_window() {
    let Some(_f) = fakes("nccl_refusals_and_empty_global_window") else { return };
    let mut id = gacc_nccl_id { internal: [0; 128] };
    assert_eq!(unsafe { gacc_nccl_unique_id(&mut id) }, GACC_OK);
    assert_eq!(unsafe { gacc_nccl_unique_id(std::ptr::null_mut()) }, GACC_ERR_NULL_POINTER);
    let cpu = Eng::new(&config(GACC_OPTIMIZER_SGD, GACC_DEVICE_CPU), &split_tensors(&init_params(), 200));
    assert_eq!(unsafe { gacc_set_nccl(cpu.h, &id, 0, 1) }, GACC_ERR_INVALID_STATE);
    let msg = last_error();
    assert!(msg.contains("gacc_set_mpi") && msg.contains("gacc_set_allreduce"), "{msg}");
    drop(cpu);

    let e = Eng::new(&config(GACC_OPTIMIZER_SGD, 0), &split_tensors(&init_params(), 200));
    assert_eq!(unsafe { gacc_set_nccl(e.h, &id, 1, 1) }, GACC_ERR_INVALID_ARGUMENT);
    assert_eq!(unsafe { gacc_set_nccl(e.h, std::ptr::null(), 0, 1) }, GACC_ERR_NULL_POINTER);
    let (g, w) = micro(0, 0, 0, None);
    e.mb_f32(&g, w);
    assert_eq!(unsafe { gacc_set_nccl(e.h, &id, 0, 1) }, GACC_ERR_INVALID_STATE);
    assert_eq!(unsafe { gacc_zero(e.h) }, GACC_OK);
    let before = params(&e);
    assert_eq!(unsafe { gacc_set_nccl(e.h, &id, 0, 1) }, GACC_OK, "{}", last_error());
    assert_eq!(params(&e), before, "world size 1: the broadcast keeps the parameters");
    // Weight 0 everywhere: skipped on the device, not an error; the scale stays.
    let mut scale = 0f32;
    assert_eq!(unsafe { gacc_loss_scale(e.h, &mut scale) }, GACC_OK);
    e.mb_f32(&g, 0.0);
    let mut info = gacc_step_info::default();
    assert_eq!(unsafe { gacc_step(e.h, &mut info) }, GACC_OK, "{}", last_error());
    assert_eq!((info.applied, info.microbatches, info.total_weight, info.step), (0, 1, 0.0, 0));
    assert_eq!(info.loss_scale, scale);
    assert_eq!(params(&e), before);
    // Then an ordinary window applies.
    e.mb_f32(&g, w);
    assert_eq!(unsafe { gacc_step(e.h, &mut info) }, GACC_OK);
    assert_eq!((info.applied, info.total_weight), (1, w));
    unsafe extern "C" fn never(_: *mut c_void, _: usize, _: u32, _: *mut c_void) -> i32 {
        1
    }
    let st = unsafe { gacc_set_allreduce(e.h, Some(never), std::ptr::null_mut(), 0, 1) };
    assert_eq!(st, GACC_ERR_INVALID_STATE);
    drop(e);
}

#[test]
fn nccl_world_size_one_body_on_the_fake_driver() {
    if fakes("nccl_world_size_one_body_on_the_fake_driver").is_some() {
        cuda::device::nccl_world_size_one();
    }
}

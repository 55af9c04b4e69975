//! The bodies of the device tests, shared by tests/gpu.rs (a real GPU) and
//! tests/fake_driver.rs (gacc's real CUDA runtime on a fake libcuda whose kernels
//! run on the host shim). They talk to the driver through cudarc's sys layer.

use std::cell::RefCell;
use std::ffi::c_void;

use super::Target;
use crate::support::last_error;
use cudarc::driver::sys;
use gacc::engine::config::{Config, DeviceRequest};
use gacc::engine::layout::Layout;
use gacc::engine::Engine;
use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status;

pub fn ok(r: sys::CUresult, what: &str) {
    assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "{what}");
}

/// Makes device 0's primary context current on this thread (the engine uses it).
pub fn make_current() {
    // SAFETY: plain driver calls with out-pointers to locals.
    unsafe {
        let mut dev = 0;
        ok(sys::cuDeviceGet(&mut dev, 0), "cuDeviceGet");
        let mut ctx = std::ptr::null_mut();
        ok(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "retain");
        ok(sys::cuCtxSetCurrent(ctx), "set current");
    }
}

pub struct GpuTarget {
    pub live: RefCell<Vec<u64>>,
}

impl Target for GpuTarget {
    fn engine(&self, mut config: Config, layout: Layout, params: &[f32]) -> Engine {
        config.device = DeviceRequest::Cuda(0);
        let e = Engine::new(config, layout, params).unwrap_or_else(|e| panic!("CUDA engine: {e}"));
        make_current();
        e
    }
    fn read_device(&self, ptr: *const c_void, bytes: usize) -> Vec<u8> {
        make_current();
        let mut out = vec![0xA5u8; bytes];
        // SAFETY: ptr is device memory of at least `bytes`; the copy is synchronous
        // with respect to the legacy default stream, and the engine's work is waited
        // for by the synchronisation before it.
        unsafe {
            ok(sys::cuCtxSynchronize(), "sync");
            ok(sys::cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, ptr as u64, bytes), "dtoh");
        }
        out
    }
    /// The copy is a synchronous cuMemcpyHtoD from pageable memory: it may land after
    /// the call returns, ordered on the legacy stream; the engine's blocking stream
    /// (or a blocking caller stream) orders its reads after it. The fake driver makes
    /// the copy land late, so an engine on a non-blocking stream fails the matrix.
    fn upload(&self, data: &[u8], offset: usize) -> *const c_void {
        make_current();
        let mut p = 0u64;
        // SAFETY: p gets data.len() + offset bytes.
        unsafe {
            ok(sys::cuMemAlloc_v2(&mut p, data.len() + offset), "alloc");
            ok(sys::cuMemcpyHtoD_v2(p + offset as u64, data.as_ptr() as *const c_void, data.len()), "htod");
        }
        self.live.borrow_mut().push(p);
        (p + offset as u64) as *const c_void
    }
    fn write_device(&self, ptr: *mut c_void, data: &[u8]) {
        make_current();
        // SAFETY: ptr is device memory of at least data.len() bytes; the engine's work
        // is waited for first (the host's in-place writes are ordered after it).
        unsafe {
            ok(sys::cuCtxSynchronize(), "sync");
            ok(sys::cuMemcpyHtoD_v2(ptr as u64, data.as_ptr() as *const c_void, data.len()), "htod");
        }
    }
    fn release(&self) {
        make_current();
        for p in self.live.borrow_mut().drain(..) {
            // SAFETY: allocated by upload(); cuMemFree waits for work using it.
            unsafe {
                sys::cuCtxSynchronize();
                sys::cuMemFree_v2(p);
            }
        }
    }
}

/// Every case of the matrix, against the CPU backend.
pub fn matches_cpu_on_every_case() {
    let target = GpuTarget { live: RefCell::new(Vec::new()) };
    for case in super::cases() {
        super::run_case(&target, &case);
    }
}

/// The numerics options (hysteresis, drop, Kahan, stochastic rounding), every case.
pub fn matches_cpu_with_numerics_options() {
    let target = GpuTarget { live: RefCell::new(Vec::new()) };
    for case in super::option_cases() {
        super::run_case(&target, &case);
    }
    super::run_determinism_with_options(&target);
}

/// Both loss-scale policies against DeepSpeed's own scaler and torch's rule
/// (tests/support/cuda/loss_scale.rs), through the real CUDA runtime.
pub fn loss_scale_policies(test: &str, n: usize, max_steps: usize) {
    let Some(refs) = super::loss_scale::references(test, n, max_steps) else { return };
    let target = GpuTarget { live: RefCell::new(Vec::new()) };
    let make = |config: Config, layout: Layout, params: &[f32]| target.engine(config, layout, params);
    let (ds, gs, steps) = super::loss_scale::replay(&make, &refs);
    let version = &refs.deepspeed_version;
    println!("{test}: {ds} DeepSpeed {version} cases, {gs} GradScaler cases, {steps} steps: identical");
    assert!(ds > 0 && gs > 0);
}

/// Same inputs twice: bit-identical results.
pub fn deterministic() {
    super::run_determinism(&GpuTarget { live: RefCell::new(Vec::new()) });
}

/// The C API on a CUDA engine: host and device gradients, the caller's stream,
/// the device loss-scale pointer.
pub fn c_api_stream_loss_scale_ptr_and_pointer_kinds() {
    let n = 10_000usize;
    unsafe {
        let mut cfg = std::mem::zeroed::<gacc_config>();
        gacc_config_init(&mut cfg);
        cfg.device = 0;
        cfg.precision = GACC_PRECISION_FP16;
        let init = vec![0.25f32; n];
        let desc = gacc_tensor_desc { name: std::ptr::null(), numel: n, init: init.as_ptr(), no_weight_decay: 0 };
        let mut e: *mut gacc_engine = std::ptr::null_mut();
        assert_eq!(gacc_create(&cfg, &desc, 1, &mut e), gacc_status::GACC_OK);
        let mut device = -5;
        assert_eq!(gacc_device(e, &mut device), gacc_status::GACC_OK);
        assert_eq!(device, 0);
        make_current();
        let mut stream: sys::CUstream = std::ptr::null_mut();
        ok(sys::cuStreamCreate(&mut stream, 0), "stream");
        assert_eq!(gacc_set_stream(e, stream as *mut c_void), gacc_status::GACC_OK);

        let host = vec![1.0f32; n];
        let mut dev = 0u64;
        ok(sys::cuMemAlloc_v2(&mut dev, 4 * n), "alloc");
        ok(sys::cuMemcpyHtoD_v2(dev, host.as_ptr() as *const c_void, 4 * n), "htod");
        assert_eq!(gacc_microbatch(e, host.as_ptr() as *const c_void, GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
        assert_eq!(gacc_microbatch(e, dev as *const c_void, GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
        assert_eq!(gacc_step(e, std::ptr::null_mut()), gacc_status::GACC_OK);

        let mut sp: *const f32 = std::ptr::null();
        assert_eq!(gacc_loss_scale_ptr(e, &mut sp), gacc_status::GACC_OK);
        ok(sys::cuStreamSynchronize(stream), "sync");
        let mut on_device = f32::NAN;
        ok(sys::cuMemcpyDtoH_v2(&mut on_device as *mut f32 as *mut c_void, sp as u64, 4), "dtoh");
        let mut s = f32::NAN;
        assert_eq!(gacc_loss_scale(e, &mut s), gacc_status::GACC_OK);
        assert_eq!(s.to_bits(), on_device.to_bits());

        let mut out = vec![f32::NAN; n];
        assert_eq!(gacc_params_read(e, out.as_mut_ptr(), n), gacc_status::GACC_OK);
        // One AdamW step on a constant gradient moves every parameter by ~lr.
        assert!(out.iter().all(|&p| (p - (0.25 * (1.0 - 1e-3 * 0.01) - 1e-3)).abs() < 1e-5), "{}", out[0]);
        assert_eq!(gacc_set_stream(e, std::ptr::null_mut()), gacc_status::GACC_OK);
        gacc_destroy(e);
        sys::cuMemFree_v2(dev);
        sys::cuStreamDestroy_v2(stream);
    }
}

/// NCCL with world size 1 (tests/gpu.rs on a real GPU with libnccl; tests/fake_nccl.rs
/// on the fakes): an engine joined through gacc_set_nccl takes bit for bit the steps
/// of an engine without a transport, with and without step info, and reports the
/// same windows. Says "skipped" when NCCL cannot be loaded.
pub fn nccl_world_size_one() {
    let mut id = gacc_nccl_id { internal: [0; 128] };
    let st = unsafe { gacc_nccl_unique_id(&mut id) };
    if st == gacc_status::GACC_ERR_DEVICE_UNAVAILABLE {
        println!("skipped: nccl_world_size_one: NCCL cannot be loaded (set GACC_NCCL_LIB)");
        return;
    }
    assert_eq!(st, gacc_status::GACC_OK);
    let n = 1031usize;
    let init: Vec<f32> = (0..n).map(|i| (i as f32 * 0.1).cos()).collect();
    let make = || {
        let mut c: gacc_config = unsafe { std::mem::zeroed() };
        unsafe { gacc_config_init(&mut c) };
        c.device = 0;
        c.optimizer = GACC_OPTIMIZER_ADAMW;
        c.precision = GACC_PRECISION_FP16;
        c.max_grad_norm = 1.0;
        c.compensated_accumulation = 1;
        let d = gacc_tensor_desc { name: std::ptr::null(), numel: n, init: init.as_ptr(), no_weight_decay: 0 };
        let mut e = std::ptr::null_mut();
        assert_eq!(unsafe { gacc_create(&c, &d, 1, &mut e) }, gacc_status::GACC_OK);
        e
    };
    let (plain, nccl) = (make(), make());
    assert_eq!(unsafe { gacc_set_nccl(nccl, &id, 0, 1) }, gacc_status::GACC_OK);
    for w in 0..5usize {
        for k in 0..3usize {
            let g: Vec<f32> = (0..n).map(|i| ((i * 7 + w * 13 + k * 29) % 61) as f32 / 32.0 - 0.9).collect();
            let weight = (1 + (w + k) % 4) as f64;
            for e in [plain, nccl] {
                let st = unsafe { gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n, weight) };
                assert_eq!(st, gacc_status::GACC_OK);
            }
        }
        let (mut a, mut b) = (gacc_step_info::default(), gacc_step_info::default());
        let info = w % 2 == 0;
        for (e, i) in [(plain, &mut a), (nccl, &mut b)] {
            let p = if info { i as *mut gacc_step_info } else { std::ptr::null_mut() };
            assert_eq!(unsafe { gacc_step(e, p) }, gacc_status::GACC_OK);
        }
        assert_eq!(a, b, "window {w}: step info");
    }
    let read = |e| {
        let mut out = vec![0f32; n];
        assert_eq!(unsafe { gacc_params_read(e, out.as_mut_ptr(), n) }, gacc_status::GACC_OK);
        out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(read(plain), read(nccl), "world size 1 over NCCL differs from no transport");
    gacc_destroy(plain);
    gacc_destroy(nccl);
}

// ---- issue 11: the caller's streams, contexts and pointers, graphs, faults ----

/// CU_STREAM_LEGACY and CU_STREAM_PER_THREAD, as cuda.h defines them.
pub const STREAM_LEGACY: sys::CUstream = 0x1 as sys::CUstream;
pub const STREAM_PER_THREAD: sys::CUstream = 0x2 as sys::CUstream;

fn current_ctx() -> sys::CUcontext {
    let mut c: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: writes one handle.
    ok(unsafe { sys::cuCtxGetCurrent(&mut c) }, "cuCtxGetCurrent");
    c
}

/// A small FP16 AdamW engine on `device` (CUDA ordinal or GACC_DEVICE_CPU).
fn small_engine(device: i32, init: &[f32]) -> *mut gacc_engine {
    let mut cfg: gacc_config = unsafe { std::mem::zeroed() };
    // SAFETY: plain C API calls with valid pointers.
    unsafe {
        gacc_config_init(&mut cfg);
        cfg.device = device;
        cfg.optimizer = GACC_OPTIMIZER_ADAMW;
        cfg.precision = GACC_PRECISION_FP16;
        cfg.lr = 0.01;
        cfg.max_grad_norm = 1.0;
        let numel = init.len();
        let desc = gacc_tensor_desc { name: std::ptr::null(), numel, init: init.as_ptr(), no_weight_decay: 0 };
        let mut e = std::ptr::null_mut();
        let st = gacc_create(&cfg, &desc, 1, &mut e);
        assert_eq!(st, gacc_status::GACC_OK, "gacc_create on device {device}: {}", last_error());
        e
    }
}

fn grad_values(n: usize, window: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 13 + window * 7 + k * 31) % 97) as f32 / 48.0 - 1.0).collect()
}

fn params_of(e: *mut gacc_engine, n: usize) -> Vec<u32> {
    let mut out = vec![0f32; n];
    // SAFETY: out holds n floats.
    let st = unsafe { gacc_params_read(e, out.as_mut_ptr(), n) };
    assert_eq!(st, gacc_status::GACC_OK, "gacc_params_read: {}", last_error());
    out.iter().map(|x| x.to_bits()).collect()
}

/// How a test's "caller" queues its own work.
#[derive(Clone, Copy, Debug)]
pub enum CallerStream {
    /// No gacc_set_stream; the caller uses the legacy default stream (cuMemcpyHtoD/DtoH).
    DefaultLegacy,
    /// gacc_set_stream(CU_STREAM_LEGACY); the caller's work is on the legacy stream too.
    Legacy,
    /// gacc_set_stream(CU_STREAM_PER_THREAD); the caller's work on the per-thread stream.
    PerThread,
    /// A stream the caller created with these flags (0 blocking, 1 non-blocking).
    Created(u32),
}

/// Item 1 of issue 11: whatever stream the caller works on, gacc reads a device
/// gradient only after the caller's copy into it has landed, the caller's next write
/// into the same buffer comes after gacc read it, and the caller's reads of the
/// working copy (gacc_params_ptr) and the loss scale (gacc_loss_scale_ptr), queued on
/// its stream right after gacc_step without info, see the step's results. Checked bit
/// for bit against a CPU engine fed the same gradients. The copies are the caller's
/// only synchronisation.
pub fn ordering_with_the_callers_stream(kind: CallerStream) {
    let n = 4099usize;
    let init: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let cpu = small_engine(GACC_DEVICE_CPU, &init);
    make_current();
    let e = small_engine(0, &init);
    unsafe {
        let mut own: sys::CUstream = std::ptr::null_mut();
        let stream = match kind {
            CallerStream::DefaultLegacy => std::ptr::null_mut(),
            CallerStream::Legacy => STREAM_LEGACY,
            CallerStream::PerThread => STREAM_PER_THREAD,
            CallerStream::Created(flags) => {
                ok(sys::cuStreamCreate(&mut own, flags), "cuStreamCreate");
                own
            }
        };
        if !matches!(kind, CallerStream::DefaultLegacy) {
            assert_eq!(gacc_set_stream(e, stream as *mut c_void), gacc_status::GACC_OK, "{}", last_error());
        }
        let on_legacy = matches!(kind, CallerStream::DefaultLegacy | CallerStream::Legacy);
        let mut grad = 0u64;
        ok(sys::cuMemAlloc_v2(&mut grad, 4 * n), "alloc");
        let mut working: *mut c_void = std::ptr::null_mut();
        assert_eq!(gacc_params_ptr(e, 0, GACC_DTYPE_F16, &mut working), gacc_status::GACC_OK);
        let mut scale_ptr: *const f32 = std::ptr::null();
        assert_eq!(gacc_loss_scale_ptr(e, &mut scale_ptr), gacc_status::GACC_OK);
        // Host sources stay alive until the end (async copies read them when they run).
        let mut sources: Vec<Vec<f32>> = Vec::new();
        for w in 0..3 {
            for k in 0..2 {
                let g = grad_values(n, w, k);
                assert_eq!(gacc_microbatch(cpu, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
                if on_legacy {
                    ok(sys::cuMemcpyHtoD_v2(grad, g.as_ptr().cast(), 4 * n), "htod");
                } else {
                    ok(sys::cuMemcpyHtoDAsync_v2(grad, g.as_ptr().cast(), 4 * n, stream), "htod async");
                }
                sources.push(g);
                let st = gacc_microbatch(e, grad as *const c_void, GACC_DTYPE_F32, n, 1.0);
                assert_eq!(st, gacc_status::GACC_OK, "{kind:?}: {}", last_error());
            }
            assert_eq!(gacc_step(cpu, std::ptr::null_mut()), gacc_status::GACC_OK);
            assert_eq!(gacc_step(e, std::ptr::null_mut()), gacc_status::GACC_OK, "{}", last_error());
            // The caller's next work on its stream: read what the step wrote.
            let mut half = vec![0u16; n];
            let mut scale = f32::NAN;
            if on_legacy {
                ok(sys::cuMemcpyDtoH_v2(half.as_mut_ptr().cast(), working as u64, 2 * n), "dtoh");
                ok(sys::cuMemcpyDtoH_v2((&mut scale as *mut f32).cast(), scale_ptr as u64, 4), "dtoh");
            } else {
                ok(sys::cuMemcpyDtoHAsync_v2(half.as_mut_ptr().cast(), working as u64, 2 * n, stream), "dtoh");
                ok(sys::cuMemcpyDtoHAsync_v2((&mut scale as *mut f32).cast(), scale_ptr as u64, 4, stream), "dtoh");
                ok(sys::cuStreamSynchronize(stream), "sync");
            }
            let mut cpu_working: *mut c_void = std::ptr::null_mut();
            assert_eq!(gacc_params_ptr(cpu, 0, GACC_DTYPE_F16, &mut cpu_working), gacc_status::GACC_OK);
            let expect = std::slice::from_raw_parts(cpu_working as *const u16, n);
            let bad = (0..n).filter(|&i| half[i] != expect[i]).count();
            assert_eq!(bad, 0, "{kind:?} window {w}: {bad} of {n} working-copy elements differ from the CPU engine");
            let mut cpu_scale = 0f32;
            gacc_loss_scale(cpu, &mut cpu_scale);
            assert_eq!(scale.to_bits(), cpu_scale.to_bits(), "{kind:?} window {w}: loss scale");
        }
        assert_eq!(params_of(e, n), params_of(cpu, n), "{kind:?}: master weights");
        gacc_destroy(e);
        sys::cuMemFree_v2(grad);
        if !own.is_null() {
            sys::cuStreamDestroy_v2(own);
        }
        gacc_destroy(cpu);
    }
}

/// Every kind of caller stream of [`ordering_with_the_callers_stream`].
pub fn ordering_with_every_kind_of_stream() {
    for kind in [
        CallerStream::DefaultLegacy,
        CallerStream::Legacy,
        CallerStream::PerThread,
        CallerStream::Created(0),
        CallerStream::Created(1),
    ] {
        ordering_with_the_callers_stream(kind);
    }
}

/// Calls every device-touching entry point once on `e` and checks after each that
/// the thread's current context is still `expect`.
fn calls_keep_context(e: *mut gacc_engine, n: usize, expect: sys::CUcontext, what: &str) {
    let g = grad_values(n, 1, 2);
    let check = |call: &str| assert_eq!(current_ctx(), expect, "{what}: {call} changed the current context");
    unsafe {
        assert_eq!(gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
        check("gacc_microbatch");
        let mut info = gacc_step_info::default();
        assert_eq!(gacc_step(e, &mut info), gacc_status::GACC_OK, "{}", last_error());
        check("gacc_step");
        let mut s = 0f32;
        assert_eq!(gacc_loss_scale(e, &mut s), gacc_status::GACC_OK);
        check("gacc_loss_scale");
        params_of(e, n);
        check("gacc_params_read");
        let p = vec![0.5f32; n];
        assert_eq!(gacc_params_write(e, p.as_ptr(), n), gacc_status::GACC_OK);
        check("gacc_params_write");
        assert_eq!(gacc_set_stream(e, STREAM_LEGACY as *mut c_void), gacc_status::GACC_OK, "{}", last_error());
        assert_eq!(gacc_set_stream(e, std::ptr::null_mut()), gacc_status::GACC_OK);
        check("gacc_set_stream");
        // A failing call restores it too.
        let st = gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n + 1, 1.0);
        assert_eq!(st, gacc_status::GACC_ERR_INVALID_ARGUMENT);
        check("a failed gacc_microbatch");
        gacc_destroy(e);
        check("gacc_destroy");
    }
}

/// Item 2 of issue 11: a thread with no current context can use gacc, and still has
/// none afterwards; a thread whose current context is its own (cuCtxCreate) has that
/// one current after every gacc call, failed ones included.
pub fn caller_context_is_kept() {
    let n = 1000usize;
    let init = vec![0.25f32; n];
    std::thread::spawn(move || {
        assert!(current_ctx().is_null(), "a fresh thread has no current context");
        let e = small_engine(0, &init);
        assert!(current_ctx().is_null(), "gacc_create left a context current on a thread that had none");
        calls_keep_context(e, n, std::ptr::null_mut(), "no context");

        let mut dev = 0;
        let mut own: sys::CUcontext = std::ptr::null_mut();
        unsafe {
            ok(sys::cuDeviceGet(&mut dev, 0), "cuDeviceGet");
            ok(sys::cuCtxCreate_v4(&mut own, std::ptr::null_mut(), 0, dev), "cuCtxCreate");
        }
        assert_eq!(current_ctx(), own, "cuCtxCreate makes the new context current");
        let e = small_engine(0, &init);
        assert_eq!(current_ctx(), own, "gacc_create replaced the caller's context");
        calls_keep_context(e, n, own, "own context");
        unsafe { ok(sys::cuCtxDestroy_v2(own), "cuCtxDestroy") };
    })
    .join()
    .expect("context test thread");
}

/// Item 3 of issue 11: a gradient in memory of another context (cuCtxCreate on the
/// engine's device) or of another device (device 1, where there is one) is refused
/// with GACC_ERR_INVALID_ARGUMENT naming it, never launched on: the engine's window
/// is intact and its next steps equal a CPU engine's.
pub fn foreign_gradient_pointers_are_refused() {
    let n = 777usize;
    let init: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).cos()).collect();
    std::thread::spawn(move || {
        let cpu = small_engine(GACC_DEVICE_CPU, &init);
        let e = small_engine(0, &init);
        let mut count = 0;
        unsafe { ok(sys::cuDeviceGetCount(&mut count), "cuDeviceGetCount") };
        let g = grad_values(n, 0, 0);
        let mut foreign = Vec::new();
        for ordinal in 0..count.min(2) {
            let mut dev = 0;
            let mut ctx: sys::CUcontext = std::ptr::null_mut();
            let mut p = 0u64;
            unsafe {
                ok(sys::cuDeviceGet(&mut dev, ordinal), "cuDeviceGet");
                ok(sys::cuCtxCreate_v4(&mut ctx, std::ptr::null_mut(), 0, dev), "cuCtxCreate");
                ok(sys::cuMemAlloc_v2(&mut p, 4 * n), "alloc");
                ok(sys::cuMemcpyHtoD_v2(p, g.as_ptr().cast(), 4 * n), "htod");
                ok(sys::cuCtxSynchronize(), "sync");
                let mut popped = std::ptr::null_mut();
                ok(sys::cuCtxPopCurrent_v2(&mut popped), "pop");
            }
            foreign.push((ordinal, ctx, p));
        }
        for &(ordinal, _, p) in &foreign {
            let st = unsafe { gacc_microbatch(e, p as *const c_void, GACC_DTYPE_F32, n, 1.0) };
            assert_eq!(st, gacc_status::GACC_ERR_INVALID_ARGUMENT, "device {ordinal}'s memory: {}", last_error());
            let msg = last_error();
            let named = if ordinal == 0 { "another CUDA context".to_string() } else { format!("device {ordinal}") };
            assert!(msg.contains(&named), "the error names {named}: {msg}");
        }
        // Nothing was lost or launched: the engine goes on like the CPU one.
        for w in 0..2 {
            let g = grad_values(n, w, 5);
            for x in [cpu, e] {
                unsafe {
                    assert_eq!(gacc_microbatch(x, g.as_ptr().cast(), GACC_DTYPE_F32, n, 2.0), gacc_status::GACC_OK);
                    let mut info = gacc_step_info::default();
                    assert_eq!(gacc_step(x, &mut info), gacc_status::GACC_OK, "{}", last_error());
                    assert_eq!(info.applied, 1);
                }
            }
        }
        assert_eq!(params_of(e, n), params_of(cpu, n));
        unsafe {
            gacc_destroy(e);
            gacc_destroy(cpu);
            for (_, ctx, p) in foreign {
                ok(sys::cuCtxPushCurrent_v2(ctx), "push");
                sys::cuMemFree_v2(p);
                ok(sys::cuCtxDestroy_v2(ctx), "cuCtxDestroy");
            }
        }
    })
    .join()
    .expect("foreign pointer test thread");
}

/// What the capture tests share: their own thread (device 0's primary context
/// current), a non-blocking stream set on the engine under capture, and
/// thread-local capture mode (other tests' threads may allocate meanwhile).
fn on_capture_thread(body: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        make_current();
        body()
    })
    .join()
    .expect("capture test thread");
}

/// What the capture tests with a direct twin share: on the capture thread, a direct
/// engine and the engine under capture, both from `init` (in that order), and a new
/// non-blocking stream set on the one under capture. `body` gets (direct, captured,
/// stream) and frees them (end_capture_test).
fn with_direct_and_captured(
    init: Vec<f32>,
    body: impl FnOnce(*mut gacc_engine, *mut gacc_engine, sys::CUstream) + Send + 'static,
) {
    on_capture_thread(move || {
        let direct = small_engine(0, &init);
        let captured = small_engine(0, &init);
        // SAFETY: `captured` is a live engine.
        let stream = unsafe { capture_stream(captured) };
        body(direct, captured, stream)
    });
}

/// Issue 14: ONE gacc_microbatch (device gradient) captured on the caller's stream and
/// replayed K times per window, each window closed by one direct micro-batch and a
/// direct gacc_step, gives bit for bit the parameters, loss scale and step info
/// (norm, clip coefficient, applied, step count) of the same windows of direct
/// calls: whether the replayed kernel writes (first of a window: the accumulator is
/// stale after a step) or adds is read from the device, not frozen in the graph.
/// Then gacc_accumulator_ptr after a step points at zeros in device memory (the
/// stale accumulator is materialised).
pub fn captured_microbatch_replayed_matches_direct_calls() {
    let (n, k_mb, windows) = (2053usize, 3usize, 3usize);
    let init: Vec<f32> = (0..n).map(|i| (i as f32 * 0.07).cos()).collect();
    with_direct_and_captured(init, move |direct, captured, stream| {
        unsafe {
            let mut grad = 0u64;
            ok(sys::cuMemAlloc_v2(&mut grad, 4 * n), "alloc");
            begin_capture(stream);
            let st = gacc_microbatch(captured, grad as *const c_void, GACC_DTYPE_F32, n, 1.5);
            assert_eq!(st, gacc_status::GACC_OK, "captured microbatch: {}", last_error());
            let graph = end_capture(stream, "end capture");
            for w in 0..windows {
                for k in 0..k_mb {
                    let v = grad_values(n, w, k);
                    ok(sys::cuMemcpyHtoDAsync_v2(grad, v.as_ptr().cast(), 4 * n, stream), "refill");
                    ok(sys::cuGraphLaunch(graph.1, stream), "graph launch");
                    let st = gacc_microbatch(direct, v.as_ptr().cast(), GACC_DTYPE_F32, n, 1.5);
                    assert_eq!(st, gacc_status::GACC_OK);
                    // The refill of the next replay must wait for this one.
                    ok(sys::cuStreamSynchronize(stream), "sync");
                }
                // The host's window of the captured engine holds only what it saw:
                // the captured call (window 0) and this direct one.
                let last = grad_values(n, w, 9);
                for e in [direct, captured] {
                    assert_eq!(gacc_microbatch(e, last.as_ptr().cast(), GACC_DTYPE_F32, n, 0.5), gacc_status::GACC_OK);
                }
                let (mut a, mut b) = (gacc_step_info::default(), gacc_step_info::default());
                assert_eq!(gacc_step(direct, &mut a), gacc_status::GACC_OK, "{}", last_error());
                assert_eq!(gacc_step(captured, &mut b), gacc_status::GACC_OK, "{}", last_error());
                assert_eq!(
                    (a.grad_norm.to_bits(), a.clip_coef.to_bits(), a.applied, a.step, a.loss_scale.to_bits()),
                    (b.grad_norm.to_bits(), b.clip_coef.to_bits(), b.applied, b.step, b.loss_scale.to_bits()),
                    "window {w}: step info"
                );
                assert_eq!(params_of(captured, n), params_of(direct, n), "window {w}: parameters");
            }
            let mut acc: *mut f32 = std::ptr::null_mut();
            let st = gacc::ffi::tensors::gacc_accumulator_ptr(captured, 0, &mut acc);
            assert_eq!(st, gacc_status::GACC_OK, "{}", last_error());
            let mut host = vec![1u32; n];
            ok(sys::cuCtxSynchronize(), "sync");
            ok(sys::cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), acc as u64, 4 * n), "read the accumulator");
            assert!(host.iter().all(|&a| a == 0), "gacc_accumulator_ptr after a step: zeros in device memory");
            end_capture_test(graph, &[captured, direct], &[grad], stream);
        }
    });
}

/// A new non-blocking stream, set as `e`'s stream.
unsafe fn capture_stream(e: *mut gacc_engine) -> sys::CUstream {
    let mut stream: sys::CUstream = std::ptr::null_mut();
    ok(sys::cuStreamCreate(&mut stream, 1), "cuStreamCreate");
    assert_eq!(gacc_set_stream(e, stream as *mut c_void), gacc_status::GACC_OK);
    stream
}

unsafe fn begin_capture(stream: sys::CUstream) {
    ok(
        sys::cuStreamBeginCapture_v2(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
        "begin capture",
    );
}

/// Ends the capture (`what` says why it must still be valid) and instantiates it.
unsafe fn end_capture(stream: sys::CUstream, what: &str) -> (sys::CUgraph, sys::CUgraphExec) {
    let mut graph: sys::CUgraph = std::ptr::null_mut();
    ok(sys::cuStreamEndCapture(stream, &mut graph), what);
    let mut exec: sys::CUgraphExec = std::ptr::null_mut();
    ok(sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0), "instantiate");
    (graph, exec)
}

/// Frees what a capture test made: the graph, the engines, device buffers, the stream.
unsafe fn end_capture_test(
    (graph, exec): (sys::CUgraph, sys::CUgraphExec),
    engines: &[*mut gacc_engine],
    buffers: &[u64],
    stream: sys::CUstream,
) {
    ok(sys::cuGraphExecDestroy(exec), "exec destroy");
    ok(sys::cuGraphDestroy(graph), "graph destroy");
    for &e in engines {
        gacc_destroy(e);
    }
    for &b in buffers {
        sys::cuMemFree_v2(b);
    }
    sys::cuStreamDestroy_v2(stream);
}

/// Issue 11, CUDA graphs with a fixed learning rate: K gacc_microbatch calls with
/// device gradients and gacc_step without info, captured on the caller's stream and
/// replayed N times (the caller refilling the gradient buffers before each replay),
/// give bit for bit the parameters and loss scale of N windows of direct calls.
pub fn captured_window_matches_direct_calls() {
    let (n, k_mb, replays) = (2053usize, 3usize, 4usize);
    let init: Vec<f32> = (0..n).map(|i| (i as f32 * 0.05).sin()).collect();
    with_direct_and_captured(init, move |direct, captured, stream| {
        unsafe {
            let mut grads = vec![0u64; k_mb];
            for g in grads.iter_mut() {
                ok(sys::cuMemAlloc_v2(g, 4 * n), "alloc");
            }
            let weights = [1.0f64, 2.5, 0.5];
            // Capture once.
            begin_capture(stream);
            for (k, g) in grads.iter().enumerate() {
                let st = gacc_microbatch(captured, *g as *const c_void, GACC_DTYPE_F32, n, weights[k]);
                assert_eq!(st, gacc_status::GACC_OK, "captured microbatch: {}", last_error());
            }
            assert_eq!(gacc_step(captured, std::ptr::null_mut()), gacc_status::GACC_OK, "{}", last_error());
            let graph = end_capture(stream, "end capture");
            let mut sources = Vec::new();
            for r in 0..replays {
                for (k, g) in grads.iter().enumerate() {
                    let v = grad_values(n, r, k);
                    ok(sys::cuMemcpyHtoDAsync_v2(*g, v.as_ptr().cast(), 4 * n, stream), "refill");
                    let st = gacc_microbatch(direct, v.as_ptr().cast(), GACC_DTYPE_F32, n, weights[k]);
                    assert_eq!(st, gacc_status::GACC_OK);
                    sources.push(v);
                }
                assert_eq!(gacc_step(direct, std::ptr::null_mut()), gacc_status::GACC_OK);
                ok(sys::cuGraphLaunch(graph.1, stream), "graph launch");
            }
            ok(sys::cuStreamSynchronize(stream), "sync");
            assert_eq!(params_of(captured, n), params_of(direct, n), "replayed windows differ from direct calls");
            let (mut a, mut b) = (0f32, 0f32);
            gacc_loss_scale(direct, &mut a);
            gacc_loss_scale(captured, &mut b);
            assert_eq!(a.to_bits(), b.to_bits(), "loss scale");
            end_capture_test(graph, &[captured, direct], &grads, stream);
        }
    });
}

/// Issue 11 item 4 (needs the device-resident learning rate and step count, branch
/// `cudamisc`): gacc_set_lr between replays is honoured and gacc_step with info
/// after the replays reports the right step count.
pub fn captured_window_honours_lr_and_step_count() {
    let (n, replays) = (1024usize, 3usize);
    let init: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
    with_direct_and_captured(init, move |direct, captured, stream| {
        unsafe {
            let mut grad = 0u64;
            ok(sys::cuMemAlloc_v2(&mut grad, 4 * n), "alloc");
            let g = grad_values(n, 3, 3);
            ok(sys::cuMemcpyHtoDAsync_v2(grad, g.as_ptr().cast(), 4 * n, stream), "fill");
            begin_capture(stream);
            assert_eq!(gacc_microbatch(captured, grad as *const c_void, GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
            assert_eq!(gacc_step(captured, std::ptr::null_mut()), gacc_status::GACC_OK);
            let graph = end_capture(stream, "end capture");
            for r in 0..replays {
                let lr = 0.01 / (1 + r) as f32;
                assert_eq!(gacc_set_lr(direct, lr), gacc_status::GACC_OK);
                assert_eq!(gacc_set_lr(captured, lr), gacc_status::GACC_OK);
                assert_eq!(gacc_microbatch(direct, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
                assert_eq!(gacc_step(direct, std::ptr::null_mut()), gacc_status::GACC_OK);
                ok(sys::cuGraphLaunch(graph.1, stream), "graph launch");
            }
            ok(sys::cuStreamSynchronize(stream), "sync");
            assert_eq!(params_of(captured, n), params_of(direct, n), "gacc_set_lr between replays not honoured");
            // One more direct window on both: the step count is the replays' + 1.
            for e in [direct, captured] {
                assert_eq!(gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
            }
            let (mut a, mut b) = (gacc_step_info::default(), gacc_step_info::default());
            assert_eq!(gacc_step(direct, &mut a), gacc_status::GACC_OK);
            assert_eq!(gacc_step(captured, &mut b), gacc_status::GACC_OK, "{}", last_error());
            assert_eq!(a.step, replays as u64 + 1);
            assert_eq!(a, b, "step info after the replays");
            end_capture_test(graph, &[captured, direct], &[grad], stream);
        }
    });
}

/// Calls that cannot be captured (a host gradient, gacc_step with info, reading the
/// parameters or the loss scale back) return GACC_ERR_INVALID_STATE saying so while
/// the engine's stream is capturing, without invalidating the capture or changing
/// the window; afterwards the engine works as before.
pub fn capture_refuses_what_it_cannot_record() {
    let n = 515usize;
    let init = vec![0.5f32; n];
    on_capture_thread(move || {
        let cpu = small_engine(GACC_DEVICE_CPU, &init);
        let e = small_engine(0, &init);
        unsafe {
            let stream = capture_stream(e);
            let g = grad_values(n, 2, 2);
            begin_capture(stream);
            let refused = |st: gacc_status, what: &str| {
                assert_eq!(st, gacc_status::GACC_ERR_INVALID_STATE, "{what} during capture: {}", last_error());
                assert!(last_error().contains("captur"), "{what}: the message says why: {}", last_error());
            };
            refused(gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0), "a host gradient");
            let mut out = vec![0f32; n];
            refused(gacc_params_read(e, out.as_mut_ptr(), n), "gacc_params_read");
            let mut s = 0f32;
            refused(gacc_loss_scale(e, &mut s), "gacc_loss_scale");
            let mut graph: sys::CUgraph = std::ptr::null_mut();
            ok(sys::cuStreamEndCapture(stream, &mut graph), "the capture is still valid");
            sys::cuGraphDestroy(graph);
            // gacc_step with info, refused before anything changes: needs a window.
            let mut dev = 0u64;
            ok(sys::cuMemAlloc_v2(&mut dev, 4 * n), "alloc");
            ok(sys::cuMemcpyHtoDAsync_v2(dev, g.as_ptr().cast(), 4 * n, stream), "fill");
            begin_capture(stream);
            assert_eq!(gacc_microbatch(e, dev as *const c_void, GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
            let mut info = gacc_step_info::default();
            refused(gacc_step(e, &mut info), "gacc_step with info");
            let graph = end_capture(stream, "the capture is still valid");
            ok(sys::cuGraphLaunch(graph.1, stream), "replay the captured micro-batch");
            // The window holds that one micro-batch: step it with info, like the CPU.
            assert_eq!(gacc_microbatch(cpu, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0), gacc_status::GACC_OK);
            let (mut a, mut b) = (gacc_step_info::default(), gacc_step_info::default());
            assert_eq!(gacc_step(cpu, &mut a), gacc_status::GACC_OK);
            assert_eq!(gacc_step(e, &mut b), gacc_status::GACC_OK, "{}", last_error());
            assert_eq!((a.applied, a.microbatches, a.step), (b.applied, b.microbatches, b.step));
            assert_eq!(params_of(e, n), params_of(cpu, n));
            end_capture_test(graph, &[e, cpu], &[dev], stream);
        }
    });
}

/// Per-tensor micro-batches and in-place accumulation (tests/support/cuda/tensors.rs)
/// against the CPU backend, and the same through the C API: gacc_accumulator_ptr
/// returns device memory on the engine's device, tensor t at the tensor's offset.
pub fn per_tensor_and_inplace_match_cpu() {
    let target = GpuTarget { live: RefCell::new(Vec::new()) };
    for case in super::tensors::tensor_cases() {
        super::tensors::run_tensor_case(&target, &case);
    }
    super::tensors::run_inplace(&target);
    unsafe {
        let mut cfg = std::mem::zeroed::<gacc_config>();
        gacc_config_init(&mut cfg);
        cfg.device = 0;
        let descs: Vec<gacc_tensor_desc> = [6usize, 10]
            .iter()
            .map(|&numel| gacc_tensor_desc {
                name: std::ptr::null(),
                numel,
                init: std::ptr::null(),
                no_weight_decay: 0,
            })
            .collect();
        let mut e = std::ptr::null_mut();
        assert_eq!(gacc_create(&cfg, descs.as_ptr(), 2, &mut e), gacc_status::GACC_OK);
        let (mut a0, mut a1) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(gacc::ffi::tensors::gacc_accumulator_ptr(e, 0, &mut a0), gacc_status::GACC_OK);
        assert_eq!(gacc::ffi::tensors::gacc_accumulator_ptr(e, 1, &mut a1), gacc_status::GACC_OK);
        assert_eq!(a0.add(6), a1, "tensor 1 at offset 6");
        make_current();
        let mut kind: u32 = 0;
        ok(
            sys::cuPointerGetAttribute(
                &mut kind as *mut u32 as *mut c_void,
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                a0 as u64,
            ),
            "pointer attribute",
        );
        assert_eq!(kind, sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32, "the accumulator is device memory");
        // One host, one NULL entry; then the rest in place; the accumulator holds both.
        let g0 = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let grads = [
            gacc::ffi::tensors::gacc_grad { data: g0.as_ptr() as *const c_void, dtype: GACC_DTYPE_F32, numel: 6 },
            gacc::ffi::tensors::gacc_grad { data: std::ptr::null(), dtype: 0, numel: 0 },
        ];
        assert_eq!(gacc::ffi::tensors::gacc_microbatch_tensors(e, grads.as_ptr(), 2, 1.0), gacc_status::GACC_OK);
        let target = GpuTarget { live: RefCell::new(Vec::new()) };
        let ones: Vec<u8> = [1.0f32; 10].iter().flat_map(|x| x.to_le_bytes()).collect();
        target.write_device(a1 as *mut c_void, &ones);
        assert_eq!(gacc::ffi::tensors::gacc_microbatch_inplace(e, 1.0), gacc_status::GACC_OK);
        let acc = target.read_device(a0 as *const c_void, 16 * 4);
        let acc: Vec<f32> = acc.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(&acc[..6], &g0);
        assert!(acc[6..].iter().all(|&x| x == 1.0));
        let mut info = gacc_step_info::default();
        assert_eq!(gacc_step(e, &mut info), gacc_status::GACC_OK);
        assert_eq!((info.microbatches, info.total_weight, info.applied), (2, 2.0, 1));
        assert!(target.read_device(a0 as *const c_void, 16 * 4).iter().all(|&b| b == 0), "zero after the step");
        gacc_destroy(e);
    }
}

//! The real CUDA runtime (src/backend/cuda/driver.rs, every cudarc call) without a
//! GPU: tests/doubles/fake_cuda.cpp is a libcuda.so stand-in whose cuLaunchKernel runs
//! the host-compiled kernels, loaded by absolute path before cudarc looks for the
//! driver. NVRTC is real: engines compile the embedded kernels to an sm_90 cubin,
//! which the fake checks (a CUDA ELF holding every kernel name) before "loading" it.
//! The bodies are those of tests/gpu.rs. Needs NVRTC (GACC_NVRTC_LIB, see
//! scripts/install-cuda-deps.sh) and g++; without NVRTC the tests say "skipped"
//! (GACC_REQUIRE_NVRTC=1: fail).

mod support;
use support::cuda;

use std::path::PathBuf;
use std::sync::OnceLock;

use cuda::device;
use gacc::backend::cuda::nvrtc;

/// Builds and loads the fake driver once; false (with a "skipped" line) without NVRTC.
fn fake_driver(test: &str) -> bool {
    if !(nvrtc::available() && nvrtc::cuda_include_dir().is_some()) {
        let why = "NVRTC or the CUDA headers not found (set GACC_NVRTC_LIB)";
        if std::env::var("GACC_REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("{test}: GACC_REQUIRE_NVRTC=1 but {why}");
        }
        println!("skipped: {test}: {why}");
        return false;
    }
    static LOADED: OnceLock<()> = OnceLock::new();
    LOADED.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let out_dir = tmp.join("gacc-shim");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join(format!("libfakecuda_{}.so", std::process::id()));
        cuda::build_fake_driver(&out);
        // Every test of this binary waits here, so no other thread reads the
        // environment while it changes: keep compiled kernels out of ~/.cache.
        std::env::set_var("GACC_CACHE_DIR", tmp.join("gacc-kernel-cache"));
        // SAFETY: loading the fake runs only C++ static initialisers. RTLD_GLOBAL and
        // the SONAME libcuda.so make cudarc's dlopen("libcuda.so") find it.
        let lib = unsafe {
            libloading::os::unix::Library::open(Some(&out), libc::RTLD_NOW | libc::RTLD_GLOBAL)
                .unwrap_or_else(|e| panic!("loading the fake driver: {e}"))
        };
        std::mem::forget(lib);
        gacc::backend::cuda::probe(0).unwrap_or_else(|e| panic!("the fake driver was not picked up: {e}"));
    });
    true
}

#[test]
fn fake_driver_matches_cpu_on_every_case() {
    if fake_driver("fake_driver_matches_cpu_on_every_case") {
        device::matches_cpu_on_every_case();
    }
}

#[test]
fn fake_driver_matches_cpu_with_numerics_options() {
    if fake_driver("fake_driver_matches_cpu_with_numerics_options") {
        device::matches_cpu_with_numerics_options();
    }
}

#[test]
fn fake_driver_loss_scale_policies_match_deepspeed_and_gradscaler() {
    if fake_driver("fake_driver_loss_scale_policies") {
        device::loss_scale_policies("fake_driver_policies", 12, 30);
    }
}

#[test]
fn fake_driver_is_deterministic() {
    if fake_driver("fake_driver_is_deterministic") {
        device::deterministic();
    }
}

#[test]
fn fake_driver_c_api_stream_loss_scale_ptr_and_pointer_kinds() {
    if fake_driver("fake_driver_c_api_stream_loss_scale_ptr_and_pointer_kinds") {
        device::c_api_stream_loss_scale_ptr_and_pointer_kinds();
    }
}

#[test]
fn fake_driver_ordinals_and_auto() {
    if !fake_driver("fake_driver_ordinals_and_auto") {
        return;
    }
    gacc::backend::cuda::probe(1).expect("the fake has two devices");
    let err = gacc::backend::cuda::probe(2).unwrap_err();
    assert_eq!(err.status, gacc::gacc_status::GACC_ERR_DEVICE_UNAVAILABLE);
    assert!(err.message.contains("2 device(s)"), "{}", err.message);
    use gacc::ffi::types::*;
    use gacc::ffi::*;
    unsafe {
        let mut cfg = std::mem::zeroed::<gacc_config>();
        gacc_config_init(&mut cfg);
        let desc = gacc_tensor_desc { name: std::ptr::null(), numel: 5, init: std::ptr::null(), no_weight_decay: 0 };
        let mut e: *mut gacc_engine = std::ptr::null_mut();
        assert_eq!(gacc_create(&cfg, &desc, 1, &mut e), gacc::gacc_status::GACC_OK);
        let mut device = -9;
        gacc_device(e, &mut device);
        assert_eq!(device, 0, "AUTO takes the (fake) CUDA device");
        gacc_destroy(e);
    }
}

// ---- issue 11 (bodies in tests/support/cuda/device.rs; GPU twins in tests/gpu.rs) ----

#[test]
fn fake_driver_orders_with_every_kind_of_caller_stream() {
    if fake_driver("fake_driver_orders_with_every_kind_of_caller_stream") {
        device::ordering_with_every_kind_of_stream();
    }
}

#[test]
fn fake_driver_keeps_the_callers_context() {
    if fake_driver("fake_driver_keeps_the_callers_context") {
        device::caller_context_is_kept();
    }
}

#[test]
fn fake_driver_refuses_foreign_gradient_pointers() {
    if fake_driver("fake_driver_refuses_foreign_gradient_pointers") {
        device::foreign_gradient_pointers_are_refused();
    }
}

#[test]
fn fake_driver_captured_window_matches_direct_calls() {
    if fake_driver("fake_driver_captured_window_matches_direct_calls") {
        device::captured_window_matches_direct_calls();
    }
}

#[test]
fn fake_driver_captured_microbatch_replayed_matches_direct_calls() {
    if fake_driver("fake_driver_captured_microbatch_replayed_matches_direct_calls") {
        device::captured_microbatch_replayed_matches_direct_calls();
    }
}

#[test]
fn fake_driver_captured_window_honours_lr_and_step_count() {
    if fake_driver("fake_driver_captured_window_honours_lr_and_step_count") {
        device::captured_window_honours_lr_and_step_count();
    }
}

#[test]
fn fake_driver_capture_refuses_what_it_cannot_record() {
    if fake_driver("fake_driver_capture_refuses_what_it_cannot_record") {
        device::capture_refuses_what_it_cannot_record();
    }
}

fn fake_hook<T>(name: &[u8]) -> libloading::os::unix::Symbol<T> {
    // SAFETY: the fake driver is loaded globally; the caller names a hook with type T.
    unsafe {
        let this = libloading::os::unix::Library::this();
        let sym = this.get::<T>(name).unwrap_or_else(|e| panic!("fake driver hook: {e}"));
        std::mem::forget(this);
        sym
    }
}

fn last_error() -> String {
    // SAFETY: gacc_last_error returns a NUL-terminated per-thread string.
    unsafe { std::ffi::CStr::from_ptr(gacc::ffi::gacc_last_error()).to_string_lossy().into_owned() }
}

/// Faults (fake only: a GPU cannot be made to fault on demand). An injected
/// out-of-memory at create is GACC_ERR_OUT_OF_MEMORY (another allocation error
/// GACC_ERR_DEVICE), and a failed launch
/// GACC_ERR_DEVICE naming the driver's error; after a kernel faults (a sticky
/// CUDA_ERROR_ILLEGAL_ADDRESS), every device call returns GACC_ERR_DEVICE naming it,
/// nothing aborts, gacc_save writes no file, and a checkpoint saved before loads into
/// a fresh engine with the parameters it had. On device 1, which no other test uses.
#[test]
fn fake_driver_device_faults_are_reported_not_hidden() {
    if !fake_driver("fake_driver_device_faults_are_reported_not_hidden") {
        return;
    }
    use gacc::ffi::types::*;
    use gacc::ffi::*;
    use gacc::gacc_status::*;
    let fail_next = fake_hook::<unsafe extern "C" fn(*const i8, i32, i32, i32)>(b"fake_cuda_fail_next\0");
    let fault_next_launch = fake_hook::<unsafe extern "C" fn()>(b"fake_cuda_fault_next_launch\0");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gacc-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("good.safetensors"), dir.join("bad.safetensors"));
    let _ = std::fs::remove_file(&bad);
    let path = |p: &PathBuf| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let n = 3001usize;
    let init: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
    let make = || unsafe {
        let mut c = std::mem::zeroed::<gacc_config>();
        gacc_config_init(&mut c);
        c.device = 1;
        let d = gacc_tensor_desc { name: std::ptr::null(), numel: n, init: init.as_ptr(), no_weight_decay: 0 };
        let mut e = std::ptr::null_mut();
        (gacc_create(&c, &d, 1, &mut e), e)
    };
    let g: Vec<f32> = (0..n).map(|i| (i % 17) as f32 / 8.0 - 1.0).collect();
    unsafe {
        fail_next(c"cuMemAlloc_v2".as_ptr(), 1, 1, 2);
        let (st, e) = make();
        assert_eq!(st, GACC_ERR_OUT_OF_MEMORY, "{}", last_error());
        assert!(e.is_null());
        assert!(last_error().contains("CUDA_ERROR_OUT_OF_MEMORY"), "{}", last_error());
        // Any other allocation failure is the device's, not "out of memory".
        fail_next(c"cuMemAlloc_v2".as_ptr(), 2, 1, 999);
        let (st, e) = make();
        assert_eq!(st, GACC_ERR_DEVICE, "{}", last_error());
        assert!(e.is_null());

        let (st, e) = make();
        assert_eq!(st, GACC_OK, "{}", last_error());
        fail_next(c"cuLaunchKernel".as_ptr(), 0, 1, 719);
        assert_eq!(gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0), GACC_ERR_DEVICE);
        assert!(last_error().contains("CUDA_ERROR_LAUNCH_FAILED"), "{}", last_error());
        assert_eq!(gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0), GACC_OK, "{}", last_error());
        let mut info = gacc_step_info::default();
        assert_eq!(gacc_step(e, &mut info), GACC_OK, "{}", last_error());
        assert_eq!((info.applied, info.microbatches), (1, 1), "the failed micro-batch did not count");
        let mut before = vec![0f32; n];
        assert_eq!(gacc_params_read(e, before.as_mut_ptr(), n), GACC_OK);
        assert_eq!(gacc_save(e, path(&good).as_ptr()), GACC_OK, "{}", last_error());

        // A kernel faults: queued without error, reported at the next wait.
        fault_next_launch();
        let st = gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0);
        assert!(st == GACC_OK || st == GACC_ERR_DEVICE, "{st:?}");
        let sticky = |st: gacc::gacc_status, call: &str| {
            assert_eq!(st, GACC_ERR_DEVICE, "{call} after a device fault: {}", last_error());
            assert!(last_error().contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{call}: {}", last_error());
        };
        sticky(gacc_step(e, &mut info), "gacc_step with info");
        sticky(gacc_microbatch(e, g.as_ptr().cast(), GACC_DTYPE_F32, n, 1.0), "gacc_microbatch");
        let mut out = vec![0f32; n];
        sticky(gacc_params_read(e, out.as_mut_ptr(), n), "gacc_params_read");
        sticky(gacc_params_write(e, out.as_ptr(), n), "gacc_params_write");
        let mut s = 0f32;
        sticky(gacc_loss_scale(e, &mut s), "gacc_loss_scale");
        sticky(gacc_save(e, path(&bad).as_ptr()), "gacc_save");
        assert!(!bad.exists(), "gacc_save wrote a file from a failed device");
        sticky(gacc_load(e, path(&good).as_ptr()), "gacc_load");
        gacc_destroy(e);

        // The last engine on device 1 is gone, and with it the failed context: a fresh
        // engine gets a fresh one and takes the earlier checkpoint.
        let (st, fresh) = make();
        assert_eq!(st, GACC_OK, "{}", last_error());
        assert_eq!(gacc_load(fresh, path(&good).as_ptr()), GACC_OK, "{}", last_error());
        let mut after = vec![0f32; n];
        assert_eq!(gacc_params_read(fresh, after.as_mut_ptr(), n), GACC_OK);
        assert_eq!(
            before.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            after.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        gacc_destroy(fresh);
    }
}

/// The fake itself is as strict as promised (docs/cuda.md), so the tests above can
/// fail: a missing dependency between streams shows as unwritten (poisoned) data,
/// queries say NOT_READY before work ran, calls without a context fail, another
/// context's memory is a sticky illegal address in that context only, and a
/// synchronisation during capture invalidates it.
#[test]
fn fake_driver_is_as_strict_as_documented() {
    if !fake_driver("fake_driver_is_as_strict_as_documented") {
        return;
    }
    use cudarc::driver::sys;
    use cudarc::driver::sys::CUresult::*;
    std::thread::spawn(|| unsafe {
        let mut p = 0u64;
        assert_eq!(sys::cuMemAlloc_v2(&mut p, 64), CUDA_ERROR_INVALID_CONTEXT, "no context");
        let mut dev = 0;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        device::ok(sys::cuDeviceGet(&mut dev, 0), "cuDeviceGet");
        device::ok(sys::cuCtxCreate_v4(&mut ctx, std::ptr::null_mut(), 0, dev), "cuCtxCreate");
        let n = 4096usize;
        let (mut a, mut b) = (0u64, 0u64);
        device::ok(sys::cuMemAlloc_v2(&mut a, n), "alloc");
        device::ok(sys::cuMemAlloc_v2(&mut b, n), "alloc");
        let src = vec![7u8; n];
        for flags in [1u32, 0] {
            let mut s: sys::CUstream = std::ptr::null_mut();
            device::ok(sys::cuStreamCreate(&mut s, flags), "stream");
            // Legacy-stream copy into a, then a -> b on s, then read b on s.
            device::ok(sys::cuMemcpyHtoD_v2(a, src.as_ptr().cast(), n), "htod");
            device::ok(sys::cuMemcpyDtoDAsync_v2(b, a, n, s), "dtod");
            let mut out = vec![0u8; n];
            device::ok(sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), b, n, s), "dtoh");
            assert_eq!(sys::cuStreamQuery(s), CUDA_ERROR_NOT_READY, "queued work has not run yet");
            device::ok(sys::cuStreamSynchronize(s), "sync");
            if flags == 1 {
                assert!(out.iter().all(|&x| x == 0xFF), "non-blocking: read before the legacy copy landed");
            } else {
                assert!(out.iter().all(|&x| x == 7), "blocking: ordered after the legacy copy");
            }
            device::ok(sys::cuCtxSynchronize(), "ctx sync");
            // Poison again for the next round.
            device::ok(sys::cuMemsetD8Async(b, 0xFF, n, s), "memset");
            device::ok(sys::cuStreamSynchronize(s), "sync");
            sys::cuStreamDestroy_v2(s);
        }
        // Capture: a synchronisation invalidates it.
        let mut s: sys::CUstream = std::ptr::null_mut();
        device::ok(sys::cuStreamCreate(&mut s, 1), "stream");
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        device::ok(sys::cuStreamBeginCapture_v2(s, mode), "begin");
        assert_eq!(sys::cuStreamSynchronize(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        let mut g: sys::CUgraph = std::ptr::null_mut();
        assert_eq!(sys::cuStreamEndCapture(s, &mut g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        // Another context's memory: sticky in the context that touched it only.
        let mut other: sys::CUcontext = std::ptr::null_mut();
        device::ok(sys::cuCtxCreate_v4(&mut other, std::ptr::null_mut(), 0, dev), "cuCtxCreate");
        let mut c = 0u64;
        device::ok(sys::cuMemAlloc_v2(&mut c, n), "alloc in the other context");
        device::ok(sys::cuMemcpyDtoDAsync_v2(c, a, n, std::ptr::null_mut()), "queued: checked when it runs");
        assert_eq!(sys::cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
        assert_eq!(sys::cuMemAlloc_v2(&mut p, 64), CUDA_ERROR_ILLEGAL_ADDRESS, "sticky");
        device::ok(sys::cuCtxDestroy_v2(other), "destroy the failed context");
        assert_eq!(device_current(), ctx, "the first context is current again");
        device::ok(sys::cuMemAlloc_v2(&mut p, 64), "the first context is unaffected");
        sys::cuStreamDestroy_v2(s);
        device::ok(sys::cuCtxDestroy_v2(ctx), "cuCtxDestroy");
    })
    .join()
    .expect("strictness test thread");
}

fn device_current() -> cudarc::driver::sys::CUcontext {
    let mut c = std::ptr::null_mut();
    // SAFETY: writes one handle.
    unsafe { cudarc::driver::sys::cuCtxGetCurrent(&mut c) };
    c
}

#[test]
fn fake_driver_per_tensor_and_inplace_match_cpu() {
    if fake_driver("fake_driver_per_tensor_and_inplace_match_cpu") {
        device::per_tensor_and_inplace_match_cpu();
    }
}

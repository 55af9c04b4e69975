//! The real CUDA runtime (src/backend/cuda/driver.rs, every cudarc call) without a
//! GPU: kernels/shim/fake_cuda.cpp is a libcuda.so stand-in whose cuLaunchKernel runs
//! the host-compiled kernels, loaded by absolute path before cudarc looks for the
//! driver. NVRTC is real: engines compile the embedded kernels to an sm_90 cubin,
//! which the fake checks (a CUDA ELF holding every kernel name) before "loading" it.
//! The bodies are those of tests/gpu.rs. Needs NVRTC (GACC_NVRTC_LIB, see
//! scripts/install-cuda-deps.sh) and g++; without NVRTC the tests say "skipped"
//! (GACC_REQUIRE_NVRTC=1: fail).

#[path = "cuda_common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::device;
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
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let out_dir = tmp.join("gacc-shim");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join(format!("libfakecuda_{}.so", std::process::id()));
        common::build_host_library(
            &out,
            Some("libcuda.so"),
            &[root.join("kernels/shim/shim_main.cpp"), root.join("kernels/shim/fake_cuda.cpp")],
        );
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
    let err = gacc::backend::cuda::probe(1).unwrap_err();
    assert_eq!(err.status, gacc::gacc_status::GACC_ERR_DEVICE_UNAVAILABLE);
    assert!(err.message.contains("1 device(s)"), "{}", err.message);
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

#[test]
fn fake_driver_per_tensor_and_inplace_match_cpu() {
    if fake_driver("fake_driver_per_tensor_and_inplace_match_cpu") {
        device::per_tensor_and_inplace_match_cpu();
    }
}

//! CUDA availability at the C boundary, on whatever machine runs the tests: without
//! a driver, an explicit ordinal is GACC_ERR_DEVICE_UNAVAILABLE with the reason and
//! GACC_DEVICE_AUTO falls back to the CPU; nothing panics.

use gacc::ffi::types::*;
use gacc::ffi::*;
use gacc::gacc_status;

unsafe fn create(device: i32) -> (gacc_status, *mut gacc_engine) {
    let mut cfg = std::mem::zeroed::<gacc_config>();
    gacc_config_init(&mut cfg);
    cfg.device = device;
    let desc = gacc_tensor_desc { name: std::ptr::null(), numel: 16, init: std::ptr::null(), no_weight_decay: 0 };
    let mut e: *mut gacc_engine = std::ptr::null_mut();
    (gacc_create(&cfg, &desc, 1, &mut e), e)
}

#[test]
fn explicit_ordinal_without_a_device_is_unavailable_and_auto_falls_back() {
    let probe = gacc::backend::cuda::probe(0);
    unsafe {
        let (status, e) = create(0);
        match &probe {
            Err(reason) => {
                assert_eq!(status, gacc_status::GACC_ERR_DEVICE_UNAVAILABLE);
                assert!(e.is_null());
                let msg = std::ffi::CStr::from_ptr(gacc_last_error()).to_string_lossy().into_owned();
                assert!(msg.contains(&reason.message), "{msg}");
                println!("no CUDA device here: {msg}");
            }
            Ok(()) => {
                assert_eq!(status, gacc_status::GACC_OK);
                gacc_destroy(e);
            }
        }
        let (status, e) = create(GACC_DEVICE_AUTO);
        assert_eq!(status, gacc_status::GACC_OK);
        let mut device = -7;
        assert_eq!(gacc_device(e, &mut device), gacc_status::GACC_OK);
        assert_eq!(device, if probe.is_ok() { 0 } else { GACC_DEVICE_CPU });
        // An ordinal that no machine has is unavailable, never a panic.
        let (status, _) = create(4096);
        assert_eq!(status, gacc_status::GACC_ERR_DEVICE_UNAVAILABLE);
        gacc_destroy(e);
    }
}

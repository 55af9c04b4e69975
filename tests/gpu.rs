//! Layer 3 of the CUDA verification: the same test bodies as tests/cuda_shim.rs, on
//! a real device (CUDA device 0, kernels compiled by NVRTC), plus the C API paths
//! only a device has (device/host gradient pointers, gacc_set_stream,
//! gacc_loss_scale_ptr). Without a usable device each test prints
//! "skipped: <test>: no CUDA device (<reason>)" and passes.
//!
//! gpu_nccl_world_size_one also needs NCCL (libnccl.so.2 or GACC_NCCL_LIB).
//!
//! On a GPU machine: eval "$(scripts/install-cuda-deps.sh)"; cargo test --test gpu

mod support;
use support::cuda;

use cuda::device;

fn gpu_or_skip(test: &str) -> bool {
    match gacc::backend::cuda::probe(0) {
        Ok(()) => true,
        Err(e) => {
            println!("skipped: {test}: no CUDA device ({})", e.message);
            false
        }
    }
}

#[test]
fn gpu_matches_cpu_on_every_case() {
    if gpu_or_skip("gpu_matches_cpu_on_every_case") {
        device::matches_cpu_on_every_case();
    }
}

#[test]
fn gpu_matches_cpu_with_numerics_options() {
    if gpu_or_skip("gpu_matches_cpu_with_numerics_options") {
        device::matches_cpu_with_numerics_options();
    }
}

#[test]
fn gpu_loss_scale_policies_match_deepspeed_and_gradscaler() {
    if gpu_or_skip("gpu_loss_scale_policies") {
        device::loss_scale_policies("gpu_policies", 400, 400);
    }
}

#[test]
fn gpu_is_deterministic() {
    if gpu_or_skip("gpu_is_deterministic") {
        device::deterministic();
    }
}

#[test]
fn gpu_c_api_stream_loss_scale_ptr_and_pointer_kinds() {
    if gpu_or_skip("gpu_c_api_stream_loss_scale_ptr_and_pointer_kinds") {
        device::c_api_stream_loss_scale_ptr_and_pointer_kinds();
    }
}

#[test]
fn gpu_per_tensor_and_inplace_match_cpu() {
    if gpu_or_skip("gpu_per_tensor_and_inplace_match_cpu") {
        device::per_tensor_and_inplace_match_cpu();
    }
}

/// NCCL with world size 1 on a real GPU (needs libnccl.so.2 or GACC_NCCL_LIB;
/// without it the body says "skipped"): the joined engine equals an engine without
/// a transport bit for bit.
#[test]
fn gpu_nccl_world_size_one() {
    if gpu_or_skip("gpu_nccl_world_size_one") {
        device::nccl_world_size_one();
    }
}

/// One engine above 2^31 parameters (a 32-bit index would wrap): SGD with lr 1 from
/// zeros, FP16 precision with loss scale 1, one f16 device micro-batch
/// g[i] = (i % 2039) - 1019 (exact in f16; 2039 is prime, so an index that wraps at
/// 2^31 or 2^32 reads a different value). Every parameter must be exactly -g[i], the
/// fp16 working copy too (checked where it crosses 2^31), and the norm equal the f64
/// norm. Needs about 26 GB of device memory (skipped, naming the reason, on a
/// smaller device).
#[test]
fn gpu_engine_above_2_31_parameters() {
    use cudarc::driver::sys;
    use gacc::ffi::types::*;
    use gacc::ffi::*;
    use gacc::gacc_status;
    let test = "gpu_engine_above_2_31_parameters";
    if !gpu_or_skip(test) {
        return;
    }
    let n: usize = (1usize << 31) + 4099;
    let g = |i: usize| (i % 2039) as f32 - 1019.0;
    unsafe {
        let mut cfg = std::mem::zeroed::<gacc_config>();
        gacc_config_init(&mut cfg);
        cfg.device = 0;
        cfg.optimizer = GACC_OPTIMIZER_SGD;
        cfg.lr = 1.0;
        cfg.weight_decay = 0.0;
        cfg.precision = GACC_PRECISION_FP16;
        cfg.init_scale = 1.0;
        cfg.max_grad_norm = 1e30; // clipping on: the norm pass runs, the coefficient is 1
        let desc = gacc_tensor_desc { name: std::ptr::null(), numel: n, init: std::ptr::null(), no_weight_decay: 0 };
        let mut e: *mut gacc_engine = std::ptr::null_mut();
        let st = gacc_create(&cfg, &desc, 1, &mut e);
        if st == gacc_status::GACC_ERR_INVALID_ARGUMENT {
            let msg = std::ffi::CStr::from_ptr(gacc_last_error()).to_string_lossy().into_owned();
            assert!(msg.contains("numel"), "{msg}");
            println!("skipped: {test}: the device is too small ({msg})");
            return;
        }
        assert_eq!(st, gacc_status::GACC_OK);
        device::make_current();
        let host: Vec<half::f16> = (0..n).map(|i| half::f16::from_f32(g(i))).collect();
        let mut grad = 0u64;
        device::ok(sys::cuMemAlloc_v2(&mut grad, 2 * n), "alloc the gradient");
        device::ok(sys::cuMemcpyHtoD_v2(grad, host.as_ptr().cast(), 2 * n), "upload the gradient");
        drop(host);
        let st = gacc_microbatch(e, grad as *const std::ffi::c_void, GACC_DTYPE_F16, n, 1.0);
        assert_eq!(st, gacc_status::GACC_OK);
        let mut info = gacc_step_info::default();
        assert_eq!(gacc_step(e, &mut info), gacc_status::GACC_OK);
        assert_eq!(info.applied, 1);
        let norm = (0..n).map(|i| (g(i) as f64).powi(2)).sum::<f64>().sqrt();
        let rel = (info.grad_norm as f64 - norm).abs() / norm;
        assert!(rel < 1e-5, "norm {} vs f64 {norm} (rel {rel:e})", info.grad_norm);
        assert_eq!(info.clip_coef, 1.0);

        let mut out = vec![f32::NAN; n];
        assert_eq!(gacc_params_read(e, out.as_mut_ptr(), n), gacc_status::GACC_OK);
        let bad: Vec<usize> = (0..n).filter(|&i| out[i] != -g(i)).take(5).collect();
        assert!(bad.is_empty(), "parameters differ at {bad:?}: {:?}", bad.iter().map(|&i| out[i]).collect::<Vec<_>>());
        drop(out);
        // The working copy around 2^31 and at the end.
        let mut wp: *mut std::ffi::c_void = std::ptr::null_mut();
        assert_eq!(gacc_params_ptr(e, 0, GACC_DTYPE_F16, &mut wp), gacc_status::GACC_OK);
        device::make_current();
        device::ok(sys::cuCtxSynchronize(), "sync");
        for start in [(1usize << 31) - 8, n - 8] {
            let mut w = [0u16; 8];
            device::ok(sys::cuMemcpyDtoH_v2(w.as_mut_ptr().cast(), wp as u64 + 2 * start as u64, 16), "dtoh");
            for (k, &bits) in w.iter().enumerate() {
                assert_eq!(half::f16::from_bits(bits).to_f32(), -g(start + k), "working copy at {}", start + k);
            }
        }
        gacc_destroy(e);
        sys::cuMemFree_v2(grad);
    }
}

// ---- issue 11: the same bodies as tests/fake_driver.rs (the fault-injection test
// has no twin: a GPU cannot be made to fault on demand) ----

#[test]
fn gpu_orders_with_every_kind_of_caller_stream() {
    if gpu_or_skip("gpu_orders_with_every_kind_of_caller_stream") {
        device::ordering_with_every_kind_of_stream();
    }
}

#[test]
fn gpu_keeps_the_callers_context() {
    if gpu_or_skip("gpu_keeps_the_callers_context") {
        device::caller_context_is_kept();
    }
}

/// With one GPU, only the other-context half runs (there is no device 1).
#[test]
fn gpu_refuses_foreign_gradient_pointers() {
    if gpu_or_skip("gpu_refuses_foreign_gradient_pointers") {
        device::foreign_gradient_pointers_are_refused();
    }
}

#[test]
fn gpu_captured_window_matches_direct_calls() {
    if gpu_or_skip("gpu_captured_window_matches_direct_calls") {
        device::captured_window_matches_direct_calls();
    }
}

#[test]
fn gpu_captured_microbatch_replayed_matches_direct_calls() {
    if gpu_or_skip("gpu_captured_microbatch_replayed_matches_direct_calls") {
        device::captured_microbatch_replayed_matches_direct_calls();
    }
}

#[test]
fn gpu_captured_window_honours_lr_and_step_count() {
    if gpu_or_skip("gpu_captured_window_honours_lr_and_step_count") {
        device::captured_window_honours_lr_and_step_count();
    }
}

#[test]
fn gpu_capture_refuses_what_it_cannot_record() {
    if gpu_or_skip("gpu_capture_refuses_what_it_cannot_record") {
        device::capture_refuses_what_it_cannot_record();
    }
}

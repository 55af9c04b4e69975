//! Layer 3 of the CUDA verification: the same test bodies as tests/cuda_shim.rs, on
//! a real device (CUDA device 0, kernels compiled by NVRTC), plus the C API paths
//! only a device has (device/host gradient pointers, gacc_set_stream,
//! gacc_loss_scale_ptr). Without a usable device each test prints
//! "skipped: <test>: no CUDA device (<reason>)" and passes.
//!
//! gpu_nccl_world_size_one also needs NCCL (libnccl.so.2 or GACC_NCCL_LIB).
//!
//! On a GPU machine: eval "$(scripts/install-cuda-deps.sh)"; cargo test --test gpu

#[path = "cuda_common/mod.rs"]
mod common;

use common::device;

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

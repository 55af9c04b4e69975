//! The CUDA sources (kernels/*.cu), embedded in the library.
//!
//! The library compiles one bundle (every kernel file in this order, sharing
//! common.cuh, which NVRTC receives as an in-memory header), so a running engine
//! needs no file from the source tree. Each file also compiles on its own given
//! only include paths (tests/nvrtc_compile.rs checks both).

/// The shared header, as NVRTC sees it under the name "common.cuh".
pub const COMMON_CUH: &str = include_str!("../../../kernels/common.cuh");

/// (file name, source) of every kernel file.
pub const KERNEL_FILES: [(&str, &str); 6] = [
    ("accumulate.cu", include_str!("../../../kernels/accumulate.cu")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    ("scaler.cu", include_str!("../../../kernels/scaler.cu")),
    ("update.cu", include_str!("../../../kernels/update.cu")),
    ("convert.cu", include_str!("../../../kernels/convert.cu")),
    ("dp.cu", include_str!("../../../kernels/dp.cu")),
];

/// Every `extern "C"` kernel the backend launches.
pub const KERNEL_NAMES: [&str; 17] = [
    "gacc_accumulate_f32",
    "gacc_accumulate_f16",
    "gacc_accumulate_bf16",
    "gacc_norm_partials",
    "gacc_finalize",
    "gacc_update_adamw",
    "gacc_update_sgd_momentum",
    "gacc_update_sgd",
    "gacc_write_working",
    "gacc_check_finite",
    "gacc_dp_pack_totals",
    "gacc_dp_unpack_totals",
    "gacc_dp_fold",
    "gacc_store_lr",
    "gacc_accumulate_tensors",
    "gacc_check_finite_tensors",
    "gacc_materialize_zero",
];

/// The whole program as one translation unit.
pub fn bundle_source() -> String {
    let mut s = String::new();
    for (name, src) in KERNEL_FILES {
        s.push_str(&format!("// ---- {name} ----\n"));
        s.push_str(src);
        s.push('\n');
    }
    s
}

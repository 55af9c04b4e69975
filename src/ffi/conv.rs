//! Conversions between the C API's types and the engine's, in one place (as
//! wgpu-native's conv.rs): the engine and the backends never see a C struct or a C
//! sentinel value.

use std::os::raw::c_char;

use super::types::{gacc_nccl_id, gacc_step_info, GACC_DEVICE_CPU, GACC_DTYPE_BF16, GACC_DTYPE_F16, GACC_DTYPE_F32};
use crate::distributed::nccl::NcclUniqueId;
use crate::engine::config::{Device, Dtype};
use crate::engine::StepInfo;
use crate::status::{Error, Result};

/// A gradient dtype from C (`field` names the argument in the error).
pub fn dtype_from_c(raw: u32, field: &str) -> Result<Dtype> {
    match raw {
        GACC_DTYPE_F32 => Ok(Dtype::F32),
        GACC_DTYPE_F16 => Ok(Dtype::F16),
        GACC_DTYPE_BF16 => Ok(Dtype::BF16),
        _ => Err(Error::invalid_argument(format!(
            "{field}: unknown dtype {raw} (expected GACC_DTYPE_F32=0, F16=1 or BF16=2)"
        ))),
    }
}

/// The C value of a device: GACC_DEVICE_CPU (-1) or the CUDA ordinal.
pub fn device_to_c(device: Device) -> i32 {
    match device {
        Device::Cpu => GACC_DEVICE_CPU,
        // Ordinals come from the C API's i32 (DeviceRequest::from_raw), so they fit.
        Device::Cuda(n) => i32::try_from(n).unwrap_or(i32::MAX),
    }
}

/// The C struct gacc_step writes.
pub fn step_info_to_c(info: &StepInfo) -> gacc_step_info {
    gacc_step_info {
        applied: u32::from(info.applied),
        grad_norm: info.grad_norm,
        clip_coef: info.clip_coef,
        loss_scale: info.loss_scale,
        step: info.step,
        microbatches: info.microbatches,
        total_weight: info.total_weight,
        dropped_microbatches: info.dropped_microbatches,
    }
}

/// NCCL's id (c_char bytes) as the C API's plain bytes.
pub fn nccl_id_to_c(id: &NcclUniqueId) -> gacc_nccl_id {
    let mut bytes = [0u8; 128];
    for (b, c) in bytes.iter_mut().zip(id.internal.iter()) {
        *b = *c as u8;
    }
    gacc_nccl_id { internal: bytes }
}

/// The C API's id bytes as NCCL's.
pub fn nccl_id_from_c(id: &gacc_nccl_id) -> NcclUniqueId {
    let mut nccl_id = NcclUniqueId { internal: [0; 128] };
    for (c, b) in nccl_id.internal.iter_mut().zip(id.internal.iter()) {
        *c = *b as c_char;
    }
    nccl_id
}

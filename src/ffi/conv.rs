//! Conversions between the C API's types and the engine's, in one place (as
//! wgpu-native's conv.rs): the engine and the backends never see a C struct or a C
//! sentinel value.

use std::os::raw::c_char;

use super::types::*;
use crate::distributed::nccl::NcclUniqueId;
use crate::engine::config::{codes, Device, Dtype, RawConfig};
use crate::engine::StepInfo;
use crate::status::{Error, Result};

// The engine's codes are the C API's values (and the checkpoint's): checked here, at
// compile time, because cbindgen needs the GACC_* constants as literals.
const _: () = {
    assert!(GACC_DEVICE_AUTO == codes::DEVICE_AUTO && GACC_DEVICE_CPU == codes::DEVICE_CPU);
    assert!(GACC_OPTIMIZER_SGD == codes::OPTIMIZER_SGD && GACC_OPTIMIZER_ADAMW == codes::OPTIMIZER_ADAMW);
    assert!(GACC_PRECISION_FP32 == codes::PRECISION_FP32);
    assert!(GACC_PRECISION_FP16 == codes::PRECISION_FP16 && GACC_PRECISION_BF16 == codes::PRECISION_BF16);
    assert!(GACC_GRADS_MEAN == codes::GRADS_MEAN && GACC_GRADS_SUM == codes::GRADS_SUM);
    assert!(GACC_LOSS_SCALE_GRADSCALER == codes::LOSS_SCALE_GRADSCALER);
    assert!(GACC_LOSS_SCALE_DEEPSPEED == codes::LOSS_SCALE_DEEPSPEED);
    assert!(GACC_CHECKPOINT_FORMAT_VERSION == crate::checkpoint::FORMAT_VERSION);
};

/// The fields of the caller's gacc_config for `Config::validate` (struct_size is the
/// boundary's business: ffi::sized has already read that many bytes).
pub fn config_from_c(c: &gacc_config) -> RawConfig {
    RawConfig {
        device: c.device,
        optimizer: c.optimizer,
        lr: c.lr,
        momentum: c.momentum,
        nesterov: c.nesterov,
        beta1: c.beta1,
        beta2: c.beta2,
        eps: c.eps,
        weight_decay: c.weight_decay,
        precision: c.precision,
        max_grad_norm: c.max_grad_norm,
        init_scale: c.init_scale,
        growth_factor: c.growth_factor,
        backoff_factor: c.backoff_factor,
        growth_interval: c.growth_interval,
        grad_reduction: c.grad_reduction,
        hysteresis: c.hysteresis,
        consecutive_hysteresis: c.consecutive_hysteresis,
        min_loss_scale: c.min_loss_scale,
        max_loss_scale: c.max_loss_scale,
        drop_nonfinite_microbatches: c.drop_nonfinite_microbatches,
        compensated_accumulation: c.compensated_accumulation,
        stochastic_rounding: c.stochastic_rounding,
        seed: c.seed,
        loss_scale_policy: c.loss_scale_policy,
    }
}

/// A whole gacc_config of this library (struct_size = its size) holding `raw`.
pub fn config_to_c(raw: &RawConfig) -> gacc_config {
    gacc_config {
        struct_size: std::mem::size_of::<gacc_config>() as u32,
        device: raw.device,
        optimizer: raw.optimizer,
        lr: raw.lr,
        momentum: raw.momentum,
        nesterov: raw.nesterov,
        beta1: raw.beta1,
        beta2: raw.beta2,
        eps: raw.eps,
        weight_decay: raw.weight_decay,
        precision: raw.precision,
        max_grad_norm: raw.max_grad_norm,
        init_scale: raw.init_scale,
        growth_factor: raw.growth_factor,
        backoff_factor: raw.backoff_factor,
        growth_interval: raw.growth_interval,
        grad_reduction: raw.grad_reduction,
        hysteresis: raw.hysteresis,
        consecutive_hysteresis: raw.consecutive_hysteresis,
        min_loss_scale: raw.min_loss_scale,
        max_loss_scale: raw.max_loss_scale,
        drop_nonfinite_microbatches: raw.drop_nonfinite_microbatches,
        compensated_accumulation: raw.compensated_accumulation,
        stochastic_rounding: raw.stochastic_rounding,
        seed: raw.seed,
        loss_scale_policy: raw.loss_scale_policy,
    }
}

/// What gacc_config_init writes: the defaults of docs/c-api.md.
pub fn default_config() -> gacc_config {
    config_to_c(&RawConfig::defaults())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_the_c_struct() {
        let mut raw = RawConfig::defaults();
        // A distinct value in every field, so a field copied to the wrong place shows.
        raw.device = 3;
        raw.optimizer = 10;
        raw.lr = 11.0;
        raw.momentum = 12.0;
        raw.nesterov = 13;
        raw.beta1 = 14.0;
        raw.beta2 = 15.0;
        raw.eps = 16.0;
        raw.weight_decay = 17.0;
        raw.precision = 18;
        raw.max_grad_norm = 19.0;
        raw.init_scale = 20.0;
        raw.growth_factor = 21.0;
        raw.backoff_factor = 22.0;
        raw.growth_interval = 23;
        raw.grad_reduction = 24;
        raw.hysteresis = 25;
        raw.consecutive_hysteresis = 26;
        raw.min_loss_scale = 27.0;
        raw.max_loss_scale = 28.0;
        raw.drop_nonfinite_microbatches = 29;
        raw.compensated_accumulation = 30;
        raw.stochastic_rounding = 31;
        raw.seed = 32;
        raw.loss_scale_policy = 33;
        let c = config_to_c(&raw);
        assert_eq!(c.struct_size as usize, std::mem::size_of::<gacc_config>());
        assert_eq!((c.lr, c.seed, c.loss_scale_policy, c.min_loss_scale), (11.0, 32, 33, 27.0));
        assert_eq!(config_from_c(&c), raw);
        assert_eq!(config_from_c(&default_config()), RawConfig::defaults());
    }
}

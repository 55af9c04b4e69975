//! The validated, Rust-typed engine configuration: a leaf module (it uses only
//! [`crate::status`]) that the engine, the backends and the checkpoints share.
//!
//! [`RawConfig`] holds a configuration's fields as the caller gave them (numeric codes,
//! 0/1 flags): the C API's `gacc_config` is converted into it by the ffi layer
//! (ffi::conv), and a checkpoint's metadata stores and reads it. `Config::validate`
//! turns it into typed values, checking every rule of docs/c-api.md and naming the
//! offending field in the error message.

use crate::status::{Error, Result};

/// The numeric codes of [`RawConfig`]'s fields. They are the C API's values
/// (ffi::types names them GACC_*; ffi::conv checks at compile time that they agree)
/// and the values checkpoint files store, so they never change. Crate-private so that
/// cbindgen does not put them in the header (it exports every `pub const`).
pub(crate) mod codes {
    /// GACC_DEVICE_AUTO: CUDA device 0 when usable, otherwise the CPU.
    pub(crate) const DEVICE_AUTO: i32 = -2;
    /// GACC_DEVICE_CPU.
    pub(crate) const DEVICE_CPU: i32 = -1;
    /// GACC_OPTIMIZER_SGD.
    pub(crate) const OPTIMIZER_SGD: u32 = 0;
    /// GACC_OPTIMIZER_ADAMW.
    pub(crate) const OPTIMIZER_ADAMW: u32 = 1;
    /// GACC_PRECISION_FP32.
    pub(crate) const PRECISION_FP32: u32 = 0;
    /// GACC_PRECISION_FP16.
    pub(crate) const PRECISION_FP16: u32 = 1;
    /// GACC_PRECISION_BF16.
    pub(crate) const PRECISION_BF16: u32 = 2;
    /// GACC_GRADS_MEAN.
    pub(crate) const GRADS_MEAN: u32 = 0;
    /// GACC_GRADS_SUM.
    pub(crate) const GRADS_SUM: u32 = 1;
    /// GACC_LOSS_SCALE_GRADSCALER.
    pub(crate) const LOSS_SCALE_GRADSCALER: u32 = 0;
    /// GACC_LOSS_SCALE_DEEPSPEED.
    pub(crate) const LOSS_SCALE_DEEPSPEED: u32 = 1;
}

use codes::*;

/// Where an engine lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(u32),
}

impl DeviceRequest {
    /// Validates a raw device value (codes::DEVICE_*, or a CUDA ordinal).
    pub fn from_raw(raw: i32) -> Result<DeviceRequest> {
        match raw {
            DEVICE_AUTO => Ok(DeviceRequest::Auto),
            DEVICE_CPU => Ok(DeviceRequest::Cpu),
            n if n >= 0 => Ok(DeviceRequest::Cuda(n as u32)),
            n => Err(Error::invalid_argument(format!(
                "device: {n} is neither GACC_DEVICE_AUTO (-2), GACC_DEVICE_CPU (-1) nor a CUDA ordinal"
            ))),
        }
    }
}

/// Where an engine runs (the C API's -1 for the CPU, or an ordinal, is converted at
/// the boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

/// Element type of a gradient or a working copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
        }
    }
}

/// Dtype of the working copy, which also decides loss scaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    /// The dtype of the working copy, if there is one.
    pub fn working_dtype(self) -> Option<Dtype> {
        match self {
            Precision::Fp32 => None,
            Precision::Fp16 => Some(Dtype::F16),
            Precision::Bf16 => Some(Dtype::BF16),
        }
    }
    /// Only FP16 uses a dynamic loss scale; the others keep S = 1.
    pub fn scales_loss(self) -> bool {
        self == Precision::Fp16
    }
}

/// How micro-batch gradients are folded into the accumulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// acc += weight * grad
    Mean,
    /// acc += grad
    Sum,
}

/// Optimizer and its hyper-parameters (lr lives in the engine: it can change).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Sgd { momentum: f32, nesterov: bool, weight_decay: f32 },
    AdamW { beta1: f32, beta2: f32, eps: f32, weight_decay: f32 },
}

impl Optimizer {
    pub fn weight_decay(&self) -> f32 {
        match *self {
            Optimizer::Sgd { weight_decay, .. } | Optimizer::AdamW { weight_decay, .. } => weight_decay,
        }
    }
    /// Number of fp32 state buffers the optimizer keeps per parameter.
    pub fn state_buffers(&self) -> usize {
        match *self {
            Optimizer::Sgd { momentum, .. } => usize::from(momentum != 0.0),
            Optimizer::AdamW { .. } => 2,
        }
    }
}

/// Which rule moves the FP16 loss scale (math::ScalerState::update).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScalePolicy {
    /// torch.amp.GradScaler's `_amp_update_scale_` (plus gacc's hysteresis, floor, cap).
    #[default]
    GradScaler,
    /// DeepSpeed's DynamicLossScaler.update_scale (stable-interval growth).
    DeepSpeed,
}

/// Loss-scaler settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerConfig {
    pub policy: ScalePolicy,
    pub init_scale: f32,
    pub growth_factor: f32,
    pub backoff_factor: f32,
    pub growth_interval: u32,
    /// Overflows tolerated before backing off (>= 1; 1 = GradScaler).
    pub hysteresis: u32,
    /// Every clean step restores the hysteresis budget (DeepSpeed's
    /// consecutive_hysteresis); otherwise only a growth does.
    pub consecutive_hysteresis: bool,
    /// Floor of the scale on backoff (0: none).
    pub min_scale: f32,
    /// Cap of the scale on growth (0: none).
    pub max_scale: f32,
}

/// The numerics options of the accumulation window and the working copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Numerics {
    /// Leave a non-finite micro-batch out of the window instead of poisoning it.
    pub drop_nonfinite: bool,
    /// Kahan-compensated accumulation.
    pub compensated: bool,
    /// Stochastic rounding of the FP16/BF16 working copy.
    pub stochastic_rounding: bool,
    /// Seed of the stochastic rounding.
    pub seed: u64,
}

/// A configuration that passed validation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub device: DeviceRequest,
    pub optimizer: Optimizer,
    pub lr: f32,
    pub precision: Precision,
    /// None: no clipping.
    pub max_grad_norm: Option<f32>,
    pub scaler: ScalerConfig,
    pub reduction: Reduction,
    pub numerics: Numerics,
}

/// A configuration's fields before validation, named and typed as in the C struct
/// `gacc_config` (without its `struct_size`, which only the ffi layer reads): codes
/// from `codes`, 0/1 flags. Checkpoints store these fields in their metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawConfig {
    pub device: i32,
    pub optimizer: u32,
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: u32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub precision: u32,
    pub max_grad_norm: f32,
    pub init_scale: f32,
    pub growth_factor: f32,
    pub backoff_factor: f32,
    pub growth_interval: u32,
    pub grad_reduction: u32,
    pub hysteresis: u32,
    pub consecutive_hysteresis: u32,
    pub min_loss_scale: f32,
    pub max_loss_scale: f32,
    pub drop_nonfinite_microbatches: u32,
    pub compensated_accumulation: u32,
    pub stochastic_rounding: u32,
    pub seed: u64,
    pub loss_scale_policy: u32,
}

impl RawConfig {
    /// The defaults of docs/c-api.md (PyTorch's AdamW and GradScaler defaults): what
    /// gacc_config_init writes. (Not `Default`: callers change fields after it.)
    pub fn defaults() -> RawConfig {
        RawConfig {
            device: DEVICE_AUTO,
            optimizer: OPTIMIZER_ADAMW,
            lr: 1e-3,
            momentum: 0.0,
            nesterov: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            precision: PRECISION_FP32,
            max_grad_norm: 0.0,
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            grad_reduction: GRADS_MEAN,
            hysteresis: 1,
            consecutive_hysteresis: 0,
            min_loss_scale: 0.0,
            max_loss_scale: 0.0,
            drop_nonfinite_microbatches: 0,
            compensated_accumulation: 0,
            stochastic_rounding: 0,
            seed: 0,
            loss_scale_policy: LOSS_SCALE_GRADSCALER,
        }
    }
}

fn flag(value: u32, field: &str) -> Result<bool> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        n => Err(Error::invalid_argument(format!("{field} must be 0 or 1 (got {n})"))),
    }
}

fn finite_nonneg(value: f32, field: &str) -> Result<f32> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(Error::invalid_argument(format!("{field} must be finite and >= 0 (got {value})")))
    }
}

fn unit_interval(value: f32, field: &str) -> Result<f32> {
    if (0.0..1.0).contains(&value) {
        Ok(value)
    } else {
        Err(Error::invalid_argument(format!("{field} must be in [0, 1) (got {value})")))
    }
}

/// Validates the learning rate (also used by gacc_set_lr).
pub fn validate_lr(lr: f32) -> Result<f32> {
    finite_nonneg(lr, "lr")
}

/// DeepSpeed's scaler has one factor (scale_factor: multiply on growth, divide on
/// overflow) and no cap: growth_factor must be exactly 1 / backoff_factor (which makes
/// it a power of two, so the f32 scale equals DeepSpeed's Python float) and
/// max_loss_scale 0.
fn check_deepspeed(raw: &RawConfig) -> Result<()> {
    if f64::from(raw.growth_factor) * f64::from(raw.backoff_factor) != 1.0 {
        return Err(Error::invalid_argument(format!(
            "backoff_factor ({}) must be exactly 1 / growth_factor ({}) with GACC_LOSS_SCALE_DEEPSPEED: \
             DeepSpeed divides by its one scale_factor on overflow (a power of two, e.g. 2 and 0.5)",
            raw.backoff_factor, raw.growth_factor
        )));
    }
    if raw.max_loss_scale != 0.0 {
        return Err(Error::invalid_argument(format!(
            "max_loss_scale ({}) must be 0 with GACC_LOSS_SCALE_DEEPSPEED: DeepSpeed's DynamicLossScaler has no cap",
            raw.max_loss_scale
        )));
    }
    Ok(())
}

impl Config {
    /// Checks every field of a raw configuration.
    pub fn validate(raw: &RawConfig) -> Result<Config> {
        let device = DeviceRequest::from_raw(raw.device)?;
        let lr = validate_lr(raw.lr)?;
        let weight_decay = finite_nonneg(raw.weight_decay, "weight_decay")?;
        let momentum = finite_nonneg(raw.momentum, "momentum")?;
        let nesterov = match raw.nesterov {
            0 => false,
            1 => true,
            n => return Err(Error::invalid_argument(format!("nesterov must be 0 or 1 (got {n})"))),
        };
        let beta1 = unit_interval(raw.beta1, "beta1")?;
        let beta2 = unit_interval(raw.beta2, "beta2")?;
        if !(raw.eps.is_finite() && raw.eps > 0.0) {
            return Err(Error::invalid_argument(format!("eps must be finite and > 0 (got {})", raw.eps)));
        }
        let optimizer = match raw.optimizer {
            OPTIMIZER_SGD => {
                if nesterov && momentum == 0.0 {
                    // torch.optim.SGD raises the same error.
                    return Err(Error::invalid_argument("nesterov: Nesterov momentum requires momentum > 0"));
                }
                Optimizer::Sgd { momentum, nesterov, weight_decay }
            }
            OPTIMIZER_ADAMW => Optimizer::AdamW { beta1, beta2, eps: raw.eps, weight_decay },
            n => {
                return Err(Error::invalid_argument(format!(
                    "optimizer: unknown value {n} (expected GACC_OPTIMIZER_SGD=0 or ADAMW=1)"
                )))
            }
        };
        let precision = match raw.precision {
            PRECISION_FP32 => Precision::Fp32,
            PRECISION_FP16 => Precision::Fp16,
            PRECISION_BF16 => Precision::Bf16,
            n => {
                return Err(Error::invalid_argument(format!(
                    "precision: unknown value {n} (expected GACC_PRECISION_FP32=0, FP16=1 or BF16=2)"
                )))
            }
        };
        if !raw.max_grad_norm.is_finite() {
            return Err(Error::invalid_argument(format!(
                "max_grad_norm must be finite (got {}); use a value <= 0 to disable clipping",
                raw.max_grad_norm
            )));
        }
        let max_grad_norm = (raw.max_grad_norm > 0.0).then_some(raw.max_grad_norm);
        if !(raw.init_scale.is_finite() && raw.init_scale > 0.0) {
            return Err(Error::invalid_argument(format!("init_scale must be finite and > 0 (got {})", raw.init_scale)));
        }
        if !(raw.growth_factor.is_finite() && raw.growth_factor > 1.0) {
            return Err(Error::invalid_argument(format!(
                "growth_factor must be finite and > 1 (got {})",
                raw.growth_factor
            )));
        }
        if !(raw.backoff_factor > 0.0 && raw.backoff_factor < 1.0) {
            return Err(Error::invalid_argument(format!(
                "backoff_factor must be in (0, 1) (got {})",
                raw.backoff_factor
            )));
        }
        if raw.growth_interval < 1 {
            return Err(Error::invalid_argument("growth_interval must be >= 1 (got 0)"));
        }
        let reduction = match raw.grad_reduction {
            GRADS_MEAN => Reduction::Mean,
            GRADS_SUM => Reduction::Sum,
            n => {
                return Err(Error::invalid_argument(format!(
                    "grad_reduction: unknown value {n} (expected GACC_GRADS_MEAN=0 or GACC_GRADS_SUM=1)"
                )))
            }
        };
        // 0 means 1 (back off at the first overflow), so a zero-filled struct keeps
        // GradScaler's rule.
        let hysteresis = raw.hysteresis.max(1);
        let consecutive_hysteresis = flag(raw.consecutive_hysteresis, "consecutive_hysteresis")?;
        let min_scale = finite_nonneg(raw.min_loss_scale, "min_loss_scale")?;
        if min_scale > raw.init_scale {
            return Err(Error::invalid_argument(format!(
                "min_loss_scale ({min_scale}) must be <= init_scale ({})",
                raw.init_scale
            )));
        }
        let max_scale = finite_nonneg(raw.max_loss_scale, "max_loss_scale")?;
        if max_scale != 0.0 && max_scale < raw.init_scale {
            return Err(Error::invalid_argument(format!(
                "max_loss_scale ({max_scale}) must be 0 (no cap) or >= init_scale ({})",
                raw.init_scale
            )));
        }
        let policy = match raw.loss_scale_policy {
            LOSS_SCALE_GRADSCALER => ScalePolicy::GradScaler,
            LOSS_SCALE_DEEPSPEED => {
                check_deepspeed(raw)?;
                ScalePolicy::DeepSpeed
            }
            n => {
                return Err(Error::invalid_argument(format!(
                    "loss_scale_policy: unknown value {n} (expected GACC_LOSS_SCALE_GRADSCALER=0 or \
                     GACC_LOSS_SCALE_DEEPSPEED=1)"
                )))
            }
        };
        let stochastic_rounding = flag(raw.stochastic_rounding, "stochastic_rounding")?;
        if stochastic_rounding && precision == Precision::Fp32 {
            return Err(Error::invalid_argument(
                "stochastic_rounding needs precision FP16 or BF16 (FP32 has no working copy to round)",
            ));
        }
        let numerics = Numerics {
            drop_nonfinite: flag(raw.drop_nonfinite_microbatches, "drop_nonfinite_microbatches")?,
            compensated: flag(raw.compensated_accumulation, "compensated_accumulation")?,
            stochastic_rounding,
            seed: raw.seed,
        };
        Ok(Config {
            device,
            optimizer,
            lr,
            precision,
            max_grad_norm,
            scaler: ScalerConfig {
                policy,
                init_scale: raw.init_scale,
                growth_factor: raw.growth_factor,
                backoff_factor: raw.backoff_factor,
                growth_interval: raw.growth_interval,
                hysteresis,
                consecutive_hysteresis,
                min_scale,
                max_scale,
            },
            reduction,
            numerics,
        })
    }
}

impl Config {
    /// The raw fields this configuration validates from (round-trips through
    /// `Config::validate`).
    pub fn to_raw(&self) -> RawConfig {
        let mut raw = RawConfig::defaults();
        raw.device = match self.device {
            DeviceRequest::Auto => DEVICE_AUTO,
            DeviceRequest::Cpu => DEVICE_CPU,
            DeviceRequest::Cuda(n) => n as i32,
        };
        raw.lr = self.lr;
        match self.optimizer {
            Optimizer::Sgd { momentum, nesterov, weight_decay } => {
                raw.optimizer = OPTIMIZER_SGD;
                raw.momentum = momentum;
                raw.nesterov = u32::from(nesterov);
                raw.weight_decay = weight_decay;
            }
            Optimizer::AdamW { beta1, beta2, eps, weight_decay } => {
                raw.optimizer = OPTIMIZER_ADAMW;
                raw.beta1 = beta1;
                raw.beta2 = beta2;
                raw.eps = eps;
                raw.weight_decay = weight_decay;
            }
        }
        raw.precision = match self.precision {
            Precision::Fp32 => PRECISION_FP32,
            Precision::Fp16 => PRECISION_FP16,
            Precision::Bf16 => PRECISION_BF16,
        };
        raw.max_grad_norm = self.max_grad_norm.unwrap_or(0.0);
        raw.init_scale = self.scaler.init_scale;
        raw.growth_factor = self.scaler.growth_factor;
        raw.backoff_factor = self.scaler.backoff_factor;
        raw.growth_interval = self.scaler.growth_interval;
        raw.grad_reduction = match self.reduction {
            Reduction::Mean => GRADS_MEAN,
            Reduction::Sum => GRADS_SUM,
        };
        raw.hysteresis = self.scaler.hysteresis;
        raw.consecutive_hysteresis = u32::from(self.scaler.consecutive_hysteresis);
        raw.min_loss_scale = self.scaler.min_scale;
        raw.max_loss_scale = self.scaler.max_scale;
        raw.drop_nonfinite_microbatches = u32::from(self.numerics.drop_nonfinite);
        raw.compensated_accumulation = u32::from(self.numerics.compensated);
        raw.stochastic_rounding = u32::from(self.numerics.stochastic_rounding);
        raw.seed = self.numerics.seed;
        raw.loss_scale_policy = match self.scaler.policy {
            ScalePolicy::GradScaler => LOSS_SCALE_GRADSCALER,
            ScalePolicy::DeepSpeed => LOSS_SCALE_DEEPSPEED,
        };
        raw
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn to_raw_round_trips() {
        let mut raw = RawConfig::defaults();
        raw.optimizer = OPTIMIZER_SGD;
        raw.momentum = 0.9;
        raw.nesterov = 1;
        raw.precision = PRECISION_FP16;
        raw.max_grad_norm = 1.5;
        raw.grad_reduction = GRADS_SUM;
        raw.device = DEVICE_CPU;
        raw.hysteresis = 3;
        raw.consecutive_hysteresis = 1;
        raw.min_loss_scale = 1.0;
        raw.max_loss_scale = 1e9;
        raw.drop_nonfinite_microbatches = 1;
        raw.compensated_accumulation = 1;
        raw.stochastic_rounding = 1;
        raw.seed = u64::MAX - 5;
        let cfg = Config::validate(&raw).unwrap();
        assert_eq!(Config::validate(&cfg.to_raw()).unwrap(), cfg);
        raw.max_loss_scale = 0.0;
        raw.loss_scale_policy = LOSS_SCALE_DEEPSPEED;
        let cfg = Config::validate(&raw).unwrap();
        assert_eq!(cfg.scaler.policy, ScalePolicy::DeepSpeed);
        assert_eq!(Config::validate(&cfg.to_raw()).unwrap(), cfg);
    }

    use super::*;

    #[test]
    fn defaults_validate_to_pytorch_defaults() {
        let cfg = Config::validate(&RawConfig::defaults()).unwrap();
        assert_eq!(cfg.optimizer, Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 });
        assert_eq!(cfg.lr, 1e-3);
        assert_eq!(cfg.max_grad_norm, None);
        assert_eq!(cfg.scaler.init_scale, 65536.0);
        assert_eq!(cfg.scaler.growth_interval, 2000);
        assert_eq!(cfg.reduction, Reduction::Mean);
        assert_eq!(cfg.device, DeviceRequest::Auto);
        // The numerics options default to today's behaviour (GradScaler's rule).
        assert_eq!(
            (cfg.scaler.hysteresis, cfg.scaler.consecutive_hysteresis, cfg.scaler.min_scale, cfg.scaler.max_scale),
            (1, false, 0.0, 0.0)
        );
        assert_eq!(cfg.numerics, Numerics::default());
        assert_eq!(cfg.scaler.policy, ScalePolicy::GradScaler);
        // A zero-filled numerics block is the same as the defaults.
        let mut zeroed = RawConfig::defaults();
        zeroed.hysteresis = 0;
        assert_eq!(Config::validate(&zeroed).unwrap(), cfg);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut RawConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("lr", Box::new(|c| c.lr = f32::NAN)),
            ("lr", Box::new(|c| c.lr = -1.0)),
            ("momentum", Box::new(|c| c.momentum = f32::INFINITY)),
            ("weight_decay", Box::new(|c| c.weight_decay = -0.1)),
            ("beta1", Box::new(|c| c.beta1 = 1.0)),
            ("beta2", Box::new(|c| c.beta2 = -0.1)),
            ("eps", Box::new(|c| c.eps = 0.0)),
            ("max_grad_norm", Box::new(|c| c.max_grad_norm = f32::NAN)),
            ("init_scale", Box::new(|c| c.init_scale = 0.0)),
            ("growth_factor", Box::new(|c| c.growth_factor = 1.0)),
            ("backoff_factor", Box::new(|c| c.backoff_factor = 1.0)),
            ("backoff_factor", Box::new(|c| c.backoff_factor = 0.0)),
            ("growth_interval", Box::new(|c| c.growth_interval = 0)),
            ("optimizer", Box::new(|c| c.optimizer = 7)),
            ("precision", Box::new(|c| c.precision = 3)),
            ("grad_reduction", Box::new(|c| c.grad_reduction = 2)),
            ("nesterov", Box::new(|c| c.nesterov = 2)),
            ("device", Box::new(|c| c.device = -3)),
            ("consecutive_hysteresis", Box::new(|c| c.consecutive_hysteresis = 2)),
            ("min_loss_scale", Box::new(|c| c.min_loss_scale = -1.0)),
            ("min_loss_scale", Box::new(|c| c.min_loss_scale = f32::NAN)),
            ("min_loss_scale", Box::new(|c| c.min_loss_scale = 1e6)),
            ("max_loss_scale", Box::new(|c| c.max_loss_scale = 2.0)),
            ("max_loss_scale", Box::new(|c| c.max_loss_scale = f32::INFINITY)),
            ("drop_nonfinite_microbatches", Box::new(|c| c.drop_nonfinite_microbatches = 2)),
            ("compensated_accumulation", Box::new(|c| c.compensated_accumulation = 5)),
            ("stochastic_rounding", Box::new(|c| c.stochastic_rounding = 2)),
            ("stochastic_rounding", Box::new(|c| c.stochastic_rounding = 1)),
            ("loss_scale_policy", Box::new(|c| c.loss_scale_policy = 2)),
            (
                "backoff_factor",
                Box::new(|c| {
                    c.loss_scale_policy = LOSS_SCALE_DEEPSPEED;
                    c.backoff_factor = 0.25;
                }),
            ),
            (
                "backoff_factor",
                Box::new(|c| {
                    c.loss_scale_policy = LOSS_SCALE_DEEPSPEED;
                    c.growth_factor = 1.5;
                    c.backoff_factor = 1.0 / 1.5;
                }),
            ),
            (
                "max_loss_scale",
                Box::new(|c| {
                    c.loss_scale_policy = LOSS_SCALE_DEEPSPEED;
                    c.max_loss_scale = 1e9;
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut raw = RawConfig::defaults();
            mutate(&mut raw);
            let err = Config::validate(&raw).unwrap_err();
            assert_eq!(err.status, crate::gacc_status::GACC_ERR_INVALID_ARGUMENT);
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
    }
}

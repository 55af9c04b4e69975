//! The scalar arithmetic of a step, written once and mirrored operation for operation
//! by the CUDA kernels (kernels/*.cu) so that every backend rounds the same way.
//!
//! Each formula follows PyTorch's own order of operations (torch.optim.SGD and AdamW
//! single-tensor paths, torch.amp.GradScaler, torch.nn.utils.clip_grad_norm_), with
//! Python-double scalars rounded to f32 where PyTorch hands them to an f32 kernel.

use super::config::{ScalePolicy, ScalerConfig};

/// Added to the norm before dividing, as clip_grad_norm_ does.
pub(crate) const CLIP_EPS: f32 = 1e-6;

/// g = acc * factor, with factor = 1 / (total * S) rounded once to f32, as GradScaler
/// computes inv_scale = (float)(1.0 / (double)scale).
pub fn unscale_factor(total_weight: f64, scale: f32) -> f32 {
    (1.0 / (total_weight * f64::from(scale))) as f32
}

/// clip_grad_norm_: coef = min(1, max_norm / (norm + 1e-6)), in f32.
pub fn clip_coef(max_norm: f32, norm: f32) -> f32 {
    let coef = max_norm / (norm + CLIP_EPS);
    if coef < 1.0 {
        coef
    } else {
        1.0
    }
}

/// Dynamic loss scale, its growth tracker and its hysteresis budget.
///
/// Two policies (config::ScalePolicy) share one state and differ only in when the
/// scale grows and how it backs off:
///
/// - overflow: if hysteresis_left <= 1 { scale = max(backed_off, min_scale) } else
///   { hysteresis_left -= 1 }; tracker = 0 (the step is skipped either way), where
///   backed_off = scale * backoff (GRADSCALER) or scale / growth (DEEPSPEED, whose one
///   scale_factor divides; exact since growth = 1 / backoff is a power of two);
/// - clean step: if consecutive { hysteresis_left = hysteresis }; then
///   GRADSCALER (torch's `_amp_update_scale_`, aten/src/ATen/native/cpu/
///   AmpGradScalerKernels.cpp): tracker += 1, and when it reaches growth_interval the
///   scale grows and tracker = 0;
///   DEEPSPEED (deepspeed/runtime/fp16/loss_scaler.py, DynamicLossScaler.update_scale):
///   it grows when stable_interval = cur_iter - last_overflow_iter - 1 (the clean
///   steps since the last overflow, before this one) is > 0 and a multiple of
///   scale_window. The tracker holds stable_interval reduced to 0 (none yet) or
///   1..=growth_interval, so it never wraps: it grows when tracker == growth_interval
///   and then tracker = 1, else tracker += 1;
///   on growth: grown = scale * growth, taken (capped at max_scale when there is a
///   cap, GRADSCALER only) only if finite; if !consecutive { hysteresis_left =
///   hysteresis }.
///
/// With the default options (hysteresis 1, no floor, no cap) GRADSCALER is exactly
/// `_amp_update_scale_`. DEEPSPEED is exactly DeepSpeed's sequence while DeepSpeed's
/// Python-float scale stays below f32's largest value (2^128 with a power-of-two
/// start); beyond it gacc keeps the largest finite scale (docs/numerics.md).
///
/// Mirrored by gacc_scaler_update in kernels/scaler.cu.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerState {
    pub scale: f32,
    pub growth_tracker: u32,
    pub hysteresis_left: u32,
}

impl ScalerState {
    pub fn new(cfg: &ScalerConfig, enabled: bool) -> ScalerState {
        ScalerState {
            scale: if enabled { cfg.init_scale } else { 1.0 },
            growth_tracker: 0,
            hysteresis_left: cfg.hysteresis,
        }
    }

    /// One update after a window (see the type's documentation).
    pub fn update(&mut self, cfg: &ScalerConfig, found_inf: bool) {
        if found_inf {
            if self.hysteresis_left <= 1 {
                let backed_off = match cfg.policy {
                    ScalePolicy::GradScaler => self.scale * cfg.backoff_factor,
                    ScalePolicy::DeepSpeed => self.scale / cfg.growth_factor,
                };
                self.scale = if backed_off < cfg.min_scale { cfg.min_scale } else { backed_off };
            } else {
                self.hysteresis_left -= 1;
            }
            self.growth_tracker = 0;
            return;
        }
        if cfg.consecutive_hysteresis {
            self.hysteresis_left = cfg.hysteresis;
        }
        let grows = match cfg.policy {
            ScalePolicy::GradScaler => {
                let successful = self.growth_tracker + 1;
                self.growth_tracker = if successful == cfg.growth_interval { 0 } else { successful };
                successful == cfg.growth_interval
            }
            ScalePolicy::DeepSpeed => {
                let grows = self.growth_tracker == cfg.growth_interval;
                self.growth_tracker = if grows { 1 } else { self.growth_tracker + 1 };
                grows
            }
        };
        if grows {
            let grown = self.scale * cfg.growth_factor;
            if grown.is_finite() {
                self.scale = if cfg.max_scale > 0.0 && grown > cfg.max_scale { cfg.max_scale } else { grown };
            }
            if !cfg.consecutive_hysteresis {
                self.hysteresis_left = cfg.hysteresis;
            }
        }
    }

    /// The largest growth_tracker the policy's state can hold (checkpoint validation).
    pub fn max_tracker(cfg: &ScalerConfig) -> u32 {
        match cfg.policy {
            ScalePolicy::GradScaler => cfg.growth_interval - 1,
            ScalePolicy::DeepSpeed => cfg.growth_interval,
        }
    }
}

/// splitmix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
#[inline(always)]
pub fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64's increment (the golden ratio in 64 bits).
const SR_GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The stochastic-rounding key of one rewrite of the working copy: a function of the
/// seed and the applied-step count only (mirrored by gacc_sr_key in common.cuh).
#[inline(always)]
pub fn sr_key(seed: u64, step: u64) -> u64 {
    mix64(seed ^ mix64(step.wrapping_add(SR_GOLDEN)))
}

/// 64 uniform random bits for element `index` under `key`: splitmix64's stream
/// started at `key`, element index + 1 (counter-based: any element, any order).
#[inline(always)]
pub fn sr_bits(key: u64, index: u64) -> u64 {
    mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(SR_GOLDEN)))
}

/// f32 -> bf16 with stochastic rounding: the low 16 bits of `r` are added to the
/// magnitude's bit pattern, then the low 16 bits are cut. Within a binade the bf16
/// neighbours are 2^16 f32 patterns apart, so x rounds away from zero with
/// probability exactly (distance to the lower neighbour) / (gap): unbiased. inf and
/// NaN take the round-to-nearest-even path (they have no neighbours); a finite value
/// above the largest bf16 may round to inf (as far as the gap allows).
#[inline(always)]
pub fn f32_to_bf16_sr(x: f32, r: u64) -> u16 {
    if !x.is_finite() {
        return crate::backend::cpu::convert::f32_to_bf16_bits(x);
    }
    let bits = x.to_bits();
    (bits.wrapping_add((r & 0xFFFF) as u32) >> 16) as u16
}

/// f16's smallest normal, 2^-14.
const F16_MIN_NORMAL: f32 = 6.103_515_6e-5;

/// f32 -> f16 with stochastic rounding between the two neighbouring f16 values,
/// with probability proportional to the distance (exact, integer arithmetic):
/// - |x| >= 2^-14 (f16 normal range): f16 neighbours are 2^13 f32 patterns apart
///   inside a binade, so the low 13 bits of `r` are added to |x|'s bit pattern, the
///   low 13 bits cut, and the result (an f16 value, or >= 65536) converted with
///   round-to-nearest-even (exact, or inf above 65504);
/// - |x| < 2^-14 (f16 subnormals, spacing 2^-24): s = |x| * 2^24 (exact), the f16
///   bits are floor(s) + (low 24 bits of r < frac(s) * 2^24).
///   inf and NaN take the round-to-nearest-even path. The sign is kept.
#[inline(always)]
pub fn f32_to_f16_sr(x: f32, r: u64) -> u16 {
    if !x.is_finite() {
        return half::f16::from_f32(x).to_bits();
    }
    let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
    let a = x.abs();
    let magnitude = if a >= F16_MIN_NORMAL {
        let t = (a.to_bits().wrapping_add((r & 0x1FFF) as u32)) & !0x1FFFu32;
        half::f16::from_f32(f32::from_bits(t)).to_bits()
    } else {
        let s = a * 16_777_216.0;
        let fl = s.floor();
        let frac = ((s - fl) * 16_777_216.0) as u32;
        fl as u16 + u16::from(((r & 0xFF_FFFF) as u32) < frac)
    };
    sign | magnitude
}

/// Per-step AdamW scalars, computed in f64 like PyTorch's Python floats, then
/// rounded to f32 where PyTorch passes them to f32 tensor kernels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamScalars {
    /// 1 - lr * wd: multiplies parameters of tensors that decay.
    pub decay_mult: f32,
    /// lerp weight 1 - beta1.
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// -lr / (1 - beta1^t)
    pub neg_step_size: f32,
    /// sqrt(1 - beta2^t)
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
}

impl AdamScalars {
    /// `t` is the number of this update (1 for the first applied update).
    pub fn new(lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, t: u64) -> AdamScalars {
        let (lr, b1, b2) = (f64::from(lr), f64::from(beta1), f64::from(beta2));
        let t = t as f64;
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2 = 1.0 - b2.powf(t);
        AdamScalars {
            decay_mult: (1.0 - lr * f64::from(weight_decay)) as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2,
            one_minus_beta2: (1.0 - b2) as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps,
        }
    }
}

/// torch.lerp's CPU formula: exact at both ends, two forms split at weight 0.5.
#[inline(always)]
pub fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// One AdamW element: returns (param, exp_avg, exp_avg_sq).
/// `decay_mult` is `AdamScalars::decay_mult` for decaying tensors and 1 otherwise
/// (callers skip the multiply entirely for non-decaying tensors).
#[inline(always)]
pub fn adamw_element(p: f32, m: f32, v: f32, g: f32, decay: bool, s: &AdamScalars) -> (f32, f32, f32) {
    let p = if decay { p * s.decay_mult } else { p };
    let m = lerp(m, g, s.one_minus_beta1);
    let v = v * s.beta2;
    let v = v + s.one_minus_beta2 * g * g;
    let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
    let p = p + s.neg_step_size * m / denom;
    (p, m, v)
}

/// Per-step SGD scalars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdScalars {
    pub neg_lr: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub nesterov: bool,
    /// True on the first applied update: the momentum buffer is set to d.
    pub first: bool,
}

/// One SGD element with momentum: returns (param, momentum_buffer).
#[inline(always)]
pub fn sgd_momentum_element(p: f32, buf: f32, g: f32, decay: bool, s: &SgdScalars) -> (f32, f32) {
    let d = if decay { g + s.weight_decay * p } else { g };
    let buf = if s.first { d } else { buf * s.momentum + d };
    let d = if s.nesterov { d + s.momentum * buf } else { buf };
    (p + s.neg_lr * d, buf)
}

/// One SGD element without momentum.
#[inline(always)]
pub fn sgd_plain_element(p: f32, g: f32, decay: bool, s: &SgdScalars) -> f32 {
    let d = if decay { g + s.weight_decay * p } else { g };
    p + s.neg_lr * d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_matches_gradscaler_rule() {
        let cfg = ScalerConfig {
            policy: ScalePolicy::GradScaler,
            init_scale: 8.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 3,
            hysteresis: 1,
            consecutive_hysteresis: false,
            min_scale: 0.0,
            max_scale: 0.0,
        };
        let st = |scale, growth_tracker| ScalerState { scale, growth_tracker, hysteresis_left: 1 };
        let mut s = ScalerState::new(&cfg, true);
        s.update(&cfg, true);
        assert_eq!(s, st(4.0, 0));
        s.update(&cfg, false);
        s.update(&cfg, false);
        assert_eq!(s, st(4.0, 2));
        s.update(&cfg, false);
        assert_eq!(s, st(8.0, 0));
        // growth that would overflow is not taken, but the tracker resets
        let mut big = st(f32::MAX, 2);
        big.update(&cfg, false);
        assert_eq!(big, st(f32::MAX, 0));
    }

    #[test]
    fn scaler_hysteresis_floor_and_cap() {
        let cfg = ScalerConfig {
            policy: ScalePolicy::GradScaler,
            init_scale: 8.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2,
            hysteresis: 2,
            consecutive_hysteresis: false,
            min_scale: 2.0,
            max_scale: 12.0,
        };
        let mut s = ScalerState::new(&cfg, true);
        s.update(&cfg, true); // tolerated
        assert_eq!((s.scale, s.hysteresis_left), (8.0, 1));
        s.update(&cfg, false); // clean, not consecutive: budget not restored
        s.update(&cfg, true); // backs off
        assert_eq!((s.scale, s.hysteresis_left, s.growth_tracker), (4.0, 1, 0));
        s.update(&cfg, true);
        s.update(&cfg, true); // floor
        assert_eq!(s.scale, 2.0);
        s.update(&cfg, false);
        s.update(&cfg, false); // growth restores the budget
        assert_eq!((s.scale, s.hysteresis_left), (4.0, 2));
        for _ in 0..4 {
            s.update(&cfg, false);
        }
        assert_eq!(s.scale, 12.0, "capped");
        let consecutive = ScalerConfig { consecutive_hysteresis: true, ..cfg };
        let mut c = ScalerState::new(&consecutive, true);
        c.update(&consecutive, true);
        c.update(&consecutive, false); // restores the budget
        c.update(&consecutive, true);
        assert_eq!((c.scale, c.hysteresis_left), (8.0, 1));
    }

    #[test]
    fn clip_coef_formula() {
        assert_eq!(clip_coef(1.0, 0.5), 1.0);
        let c = clip_coef(1.0, 4.0);
        assert_eq!(c, 1.0f32 / (4.0f32 + 1e-6f32));
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        // With bias correction the first AdamW update of a constant gradient is ~lr*sign(g).
        let s = AdamScalars::new(0.1, 0.9, 0.999, 1e-8, 0.0, 1);
        let (p, m, v) = adamw_element(1.0, 0.0, 0.0, 3.0, false, &s);
        assert!((p - 0.9).abs() < 1e-6, "{p}");
        assert!((m - 0.3).abs() < 1e-6);
        assert!((v - 0.009).abs() < 1e-6);
    }

    #[test]
    fn lerp_is_exact_at_ends() {
        assert_eq!(lerp(2.0, 5.0, 0.0), 2.0);
        assert_eq!(lerp(2.0, 5.0, 1.0), 5.0);
    }
}

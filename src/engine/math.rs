//! The scalar arithmetic of a step, written once and mirrored operation for operation
//! by the CUDA kernels (kernels/*.cu) so that every backend rounds the same way.
//!
//! Each formula follows PyTorch's own order of operations (torch.optim.SGD and AdamW
//! single-tensor paths, torch.amp.GradScaler, torch.nn.utils.clip_grad_norm_), with
//! Python-double scalars rounded to f32 where PyTorch hands them to an f32 kernel.

use super::config::ScalerConfig;

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

/// Dynamic loss scale and its growth tracker (torch's _amp_update_scale_).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerState {
    pub scale: f32,
    pub growth_tracker: u32,
}

impl ScalerState {
    pub fn new(cfg: &ScalerConfig, enabled: bool) -> ScalerState {
        ScalerState { scale: if enabled { cfg.init_scale } else { 1.0 }, growth_tracker: 0 }
    }

    /// One update after a window: back off on overflow, grow after growth_interval
    /// clean steps in a row (only when the grown value is finite).
    pub fn update(&mut self, cfg: &ScalerConfig, found_inf: bool) {
        if found_inf {
            self.scale *= cfg.backoff_factor;
            self.growth_tracker = 0;
        } else {
            let successful = self.growth_tracker + 1;
            if successful == cfg.growth_interval {
                let grown = self.scale * cfg.growth_factor;
                if grown.is_finite() {
                    self.scale = grown;
                }
                self.growth_tracker = 0;
            } else {
                self.growth_tracker = successful;
            }
        }
    }
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
        let cfg = ScalerConfig { init_scale: 8.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 3 };
        let mut s = ScalerState::new(&cfg, true);
        s.update(&cfg, true);
        assert_eq!(s, ScalerState { scale: 4.0, growth_tracker: 0 });
        s.update(&cfg, false);
        s.update(&cfg, false);
        assert_eq!(s, ScalerState { scale: 4.0, growth_tracker: 2 });
        s.update(&cfg, false);
        assert_eq!(s, ScalerState { scale: 8.0, growth_tracker: 0 });
        // growth that would overflow is not taken, but the tracker resets
        let mut big = ScalerState { scale: f32::MAX, growth_tracker: 2 };
        big.update(&cfg, false);
        assert_eq!(big, ScalerState { scale: f32::MAX, growth_tracker: 0 });
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

//! The step on the CPU: one or two passes over memory.
//!
//! 1. Norm pass: sum of squares of g = acc * factor in f64, per fixed chunk, chunks
//!    summed in order (deterministic for any thread count). A non-finite g makes the
//!    sum non-finite, which is how inf/NaN is detected: no separate pass. Skipped
//!    when the last accumulation pass already computed the same partials on the side
//!    (accumulate.rs [`Norms`](super::accumulate::Norms)) for the same factor.
//! 2. Fused pass: g = (acc * factor) * coef, optimizer update of master and state,
//!    working copy rewrite. The accumulator is not zeroed: the backend marks it
//!    logically zero and the next micro-batch writes instead of adding (mod.rs),
//!    except where zeros must be real (`eager_zero`): then acc = 0 here, as before.
//!    On a skipped step nothing is written (or only acc = 0, eagerly).

use super::convert::{self, f32_to_bf16_slice, f32_to_f16_slice};
use super::isa::{isa, Isa};
use super::parallel::{for_each_item, map_items, SharedMut, WorkItem};
use super::slices::{add_squares, LANES};
use super::streaming;
use super::{CpuBackend, WorkingCopy};
use crate::backend::{StepReport, StepRequest};
use crate::engine::config::Optimizer;
use crate::engine::math::{self, AdamScalars, SgdScalars};

/// Sum of squares of (acc[i] * factor) over one chunk, in a fixed order.
fn chunk_sum_sq(acc: &[f32], factor: f32) -> f64 {
    let mut lanes = [0f64; LANES];
    add_squares(&mut lanes, acc, factor);
    lanes.iter().sum()
}

/// As chunk_sum_sq, of the compensated sum: g = (acc - comp) * factor.
fn chunk_sum_sq_comp(acc: &[f32], comp: &[f32], factor: f32) -> f64 {
    let mut lanes = [0f64; LANES];
    for (i, (&a, &c)) in acc.iter().zip(comp).enumerate() {
        let g = f64::from((a - c) * factor);
        lanes[i % LANES] += g * g;
    }
    lanes.iter().sum()
}

/// Sum of squares of the unscaled gradient over the whole buffer (of acc - comp
/// when `comp` is not empty).
pub fn sum_of_squares(items: &[WorkItem], acc: &[f32], comp: &[f32], factor: f32) -> f64 {
    map_items(items, acc.len(), |item| {
        let a = &acc[item.start..item.end];
        if comp.is_empty() {
            chunk_sum_sq(a, factor)
        } else {
            chunk_sum_sq_comp(a, &comp[item.start..item.end], factor)
        }
    })
    .into_iter()
    .sum()
}

/// The whole buffer's sum of squares from per-chunk partials, added exactly as
/// [`sum_of_squares`] adds its chunks.
pub fn sum_partials(partials: &[f64]) -> f64 {
    partials.iter().sum()
}

/// acc = 0 (nothing when the buffer is empty: an absent compensation buffer).
pub fn zero(items: &[WorkItem], acc: &mut [f32]) {
    if acc.is_empty() {
        return;
    }
    let base = SharedMut(acc.as_mut_ptr());
    for_each_item(items, acc.len(), |item| {
        // SAFETY: disjoint items inside acc.
        unsafe { base.slice(item) }.fill(0.0);
    });
}

/// Rewrites the whole working copy from the master weights: round to nearest even,
/// or stochastic rounding under key `sr`.
pub fn write_working_copy(items: &[WorkItem], master: &[f32], working: &mut WorkingCopy, sr: Option<u64>) {
    match working {
        WorkingCopy::None => {}
        WorkingCopy::F16(w) => {
            let base = SharedMut(w.as_mut_ptr());
            for_each_item(items, master.len(), |item| {
                // SAFETY: disjoint items inside w (same length as master).
                convert_f16(&master[item.start..item.end], unsafe { base.slice(item) }, item.start, sr);
            });
        }
        WorkingCopy::Bf16(w) => {
            let base = SharedMut(w.as_mut_ptr());
            for_each_item(items, master.len(), |item| {
                // SAFETY: as above.
                convert_bf16(&master[item.start..item.end], unsafe { base.slice(item) }, item.start, sr);
            });
        }
    }
}

/// dst = f16(src), RNE or stochastic (element i of the slice is global index start + i).
fn convert_f16(src: &[f32], dst: &mut [half::f16], start: usize, sr: Option<u64>) {
    match sr {
        None => f32_to_f16_slice(src, dst),
        Some(key) => {
            for (i, (d, &x)) in dst.iter_mut().zip(src).enumerate() {
                let r = math::sr_bits(key, (start + i) as u64);
                *d = half::f16::from_bits(math::f32_to_f16_sr(x, r));
            }
        }
    }
}

/// dst = bf16(src), RNE or stochastic.
fn convert_bf16(src: &[f32], dst: &mut [half::bf16], start: usize, sr: Option<u64>) {
    match sr {
        None => f32_to_bf16_slice(src, dst),
        Some(key) => {
            for (i, (d, &x)) in dst.iter_mut().zip(src).enumerate() {
                let r = math::sr_bits(key, (start + i) as u64);
                *d = half::bf16::from_bits(math::f32_to_bf16_sr(x, r));
            }
        }
    }
}

/// Base pointers of every buffer the fused pass writes.
#[derive(Clone, Copy)]
struct Buffers {
    master: SharedMut<f32>,
    acc: SharedMut<f32>,
    /// Kahan compensation (None: plain accumulation).
    comp: Option<SharedMut<f32>>,
    state1: SharedMut<f32>,
    state2: SharedMut<f32>,
    f16: Option<SharedMut<half::f16>>,
    bf16: Option<SharedMut<half::bf16>>,
    /// Stochastic-rounding key of this step (None: RNE).
    sr: Option<u64>,
    /// Write acc = 0 (eager zeroing); otherwise acc is only read.
    zero_acc: bool,
    /// Write the working copy with streaming stores (a model much larger than the
    /// caches; round to nearest only).
    stream_working: bool,
}

/// The per-step scalars of the chosen optimizer.
#[derive(Clone, Copy)]
enum Update {
    AdamW(AdamScalars),
    SgdMomentum(SgdScalars),
    Sgd(SgdScalars),
}

/// Runs the fused update of one chunk with the widest vector unit the CPU has
/// (isa.rs): the AVX2 and AVX-512 copies are the same code compiled for wider
/// vectors and give bit-identical results.
fn update_chunk(b: &Buffers, item: &WorkItem, update: &Update, factor: f32, coef: f32) {
    update_chunk_on(isa(), b, item, update, factor, coef)
}

fn update_chunk_on(unit: Isa, b: &Buffers, item: &WorkItem, update: &Update, factor: f32, coef: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `unit` is never wider than the CPU supports (isa.rs).
        unsafe {
            match unit {
                Isa::Avx512 => return update_chunk_avx512(b, item, update, factor, coef),
                Isa::Avx2 => return update_chunk_avx2(b, item, update, factor, coef),
                Isa::Portable => {}
            }
        }
    }
    let _ = unit;
    update_chunk_body(b, item, update, factor, coef)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn update_chunk_avx2(b: &Buffers, item: &WorkItem, update: &Update, factor: f32, coef: f32) {
    update_chunk_body(b, item, update, factor, coef)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
unsafe fn update_chunk_avx512(b: &Buffers, item: &WorkItem, update: &Update, factor: f32, coef: f32) {
    update_chunk_body(b, item, update, factor, coef)
}

#[inline(always)]
fn update_chunk_body(b: &Buffers, item: &WorkItem, update: &Update, factor: f32, coef: f32) {
    if b.zero_acc {
        update_body::<true>(b, item, update, factor, coef)
    } else {
        update_body::<false>(b, item, update, factor, coef)
    }
}

/// The update of one chunk; ZERO_ACC: also write acc = 0.
#[inline(always)]
fn update_body<const ZERO_ACC: bool>(b: &Buffers, item: &WorkItem, update: &Update, factor: f32, coef: f32) {
    // SAFETY: items are disjoint and inside every buffer that exists for this
    // optimizer (state buffers are only touched by the optimizers that allocate them).
    let (p, acc) = unsafe { (b.master.slice(item), b.acc.slice(item)) };
    if let Some(comp) = b.comp {
        // The compensated sum: acc - comp (then comp = 0, as acc).
        let c = unsafe { comp.slice(item) };
        for (a, c) in acc.iter_mut().zip(c.iter_mut()) {
            *a -= *c;
            *c = 0.0;
        }
    }
    match update {
        Update::AdamW(s) => {
            let (m, v) = unsafe { (b.state1.slice(item), b.state2.slice(item)) };
            let decay = item.decay;
            for i in 0..p.len() {
                let g = (acc[i] * factor) * coef;
                let (np, nm, nv) = math::adamw_element(p[i], m[i], v[i], g, decay, s);
                p[i] = np;
                m[i] = nm;
                v[i] = nv;
                if ZERO_ACC {
                    acc[i] = 0.0;
                }
            }
        }
        Update::SgdMomentum(s) => {
            let buf = unsafe { b.state1.slice(item) };
            for i in 0..p.len() {
                let g = (acc[i] * factor) * coef;
                let (np, nb) = math::sgd_momentum_element(p[i], buf[i], g, item.decay, s);
                p[i] = np;
                buf[i] = nb;
                if ZERO_ACC {
                    acc[i] = 0.0;
                }
            }
        }
        Update::Sgd(s) => {
            for i in 0..p.len() {
                let g = (acc[i] * factor) * coef;
                p[i] = math::sgd_plain_element(p[i], g, item.decay, s);
                if ZERO_ACC {
                    acc[i] = 0.0;
                }
            }
        }
    }
    // The chunk's master values are hot in cache: convert them now.
    if let Some(w) = b.f16 {
        let dst = unsafe { w.slice(item) };
        if !(b.stream_working && convert::f32_to_f16_stream(p, dst)) {
            convert_f16(p, dst, item.start, b.sr);
        }
    }
    if let Some(w) = b.bf16 {
        let dst = unsafe { w.slice(item) };
        if !(b.stream_working && convert::f32_to_bf16_stream(p, dst)) {
            convert_bf16(p, dst, item.start, b.sr);
        }
    }
}

/// One whole step; returns its report.
///
/// Drop mode: the window's total is the backend's own (the dropped micro-batches
/// left out); a window whose micro-batches were all dropped (total 0) is skipped
/// (its g = 0 * inf is NaN: the norm is NaN, as on the device). A dropped micro-batch
/// counts as an overflow for the loss scale even when the step is applied.
pub fn run_step(be: &mut CpuBackend, request: &StepRequest) -> StepReport {
    let drop_mode = be.config.numerics.drop_nonfinite;
    let (total, dropped) = if drop_mode { (be.window_total, be.window_dropped) } else { (request.total_weight, 0) };
    let window_total = if drop_mode { total } else { 0.0 };
    be.window_total = 0.0;
    be.window_dropped = 0;
    be.seen_total = 0.0;
    // A window that never wrote the accumulator (every micro-batch dropped) reads
    // real zeros, as before: its norm is NaN (0 * inf), not whatever the memory holds.
    be.materialize_zeros();
    let factor = math::unscale_factor(total, be.scaler.scale);
    let sum_sq = match be.norms.take(factor) {
        Some(partials) => sum_partials(partials),
        None => sum_of_squares(&be.items, &be.acc, &be.comp, factor),
    };
    let found_inf = !sum_sq.is_finite() || total <= 0.0;
    let grad_norm = sum_sq.sqrt() as f32;
    let cfg = be.config;

    if found_inf {
        be.end_window();
        be.scaler_update(true);
        return StepReport {
            applied: false,
            grad_norm,
            clip_coef: 1.0,
            loss_scale: be.scaler.scale,
            step: be.applied_steps,
            window_total,
            dropped,
        };
    }

    let coef = match cfg.max_grad_norm {
        Some(max_norm) => math::clip_coef(max_norm, grad_norm),
        None => 1.0,
    };
    let t = be.applied_steps + 1;
    let update = match cfg.optimizer {
        Optimizer::AdamW { beta1, beta2, eps, weight_decay } => {
            Update::AdamW(AdamScalars::new(request.lr, beta1, beta2, eps, weight_decay, t))
        }
        Optimizer::Sgd { momentum, nesterov, weight_decay } => {
            let s = SgdScalars { neg_lr: -request.lr, weight_decay, momentum, nesterov, first: t == 1 };
            if momentum != 0.0 {
                Update::SgdMomentum(s)
            } else {
                Update::Sgd(s)
            }
        }
    };
    let (f16, bf16) = match &mut be.working {
        WorkingCopy::None => (None, None),
        WorkingCopy::F16(w) => (Some(SharedMut(w.as_mut_ptr())), None),
        WorkingCopy::Bf16(w) => (None, Some(SharedMut(w.as_mut_ptr()))),
    };
    let sr = be.sr_key(t);
    let buffers = Buffers {
        master: SharedMut(be.master.as_mut_ptr()),
        acc: SharedMut(be.acc.as_mut_ptr()),
        comp: (!be.comp.is_empty()).then_some(SharedMut(be.comp.as_mut_ptr())),
        state1: SharedMut(be.state1.as_mut_ptr()),
        state2: SharedMut(be.state2.as_mut_ptr()),
        f16,
        bf16,
        sr,
        zero_acc: be.eager_zero,
        stream_working: sr.is_none() && be.master.len() >= streaming::MIN_ELEMENTS,
    };
    for_each_item(&be.items, be.master.len(), |item| update_chunk(&buffers, item, &update, factor, coef));
    // Eagerly the update pass wrote acc = 0 (and comp = 0); otherwise the next
    // micro-batch writes over what is left.
    be.acc_stale = !be.eager_zero;

    be.applied_steps = t;
    be.scaler_update(dropped > 0);
    StepReport {
        applied: true,
        grad_norm,
        clip_coef: coef,
        loss_scale: be.scaler.scale,
        step: t,
        window_total,
        dropped,
    }
}

impl CpuBackend {
    fn scaler_update(&mut self, found_inf: bool) {
        if self.config.precision.scales_loss() {
            self.scaler.update(&self.config.scaler, found_inf);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX2 and AVX-512 copies of the fused loop must round exactly like the
    /// portable one (meaningful in release builds, where all are vectorised), with
    /// and without the acc = 0 write.
    #[test]
    fn every_unit_updates_like_the_portable_copy_bit_for_bit() {
        let n = 1003;
        let mut state = 0x1234_5678u32;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 20001) as f32 * 1e-4 - 1.0
        };
        let p0: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let acc0: Vec<f32> = (0..n).map(|_| rnd() * 3.0).collect();
        let s10: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let s20: Vec<f32> = (0..n).map(|_| rnd().abs() * 0.1).collect();
        let updates = [
            Update::AdamW(AdamScalars::new(1e-3, 0.9, 0.999, 1e-8, 0.01, 3)),
            Update::AdamW(AdamScalars::new(1e-2, 0.3, 0.99, 1e-6, 0.1, 1)),
            Update::SgdMomentum(SgdScalars {
                neg_lr: -0.1,
                weight_decay: 0.01,
                momentum: 0.9,
                nesterov: true,
                first: false,
            }),
            Update::SgdMomentum(SgdScalars {
                neg_lr: -0.1,
                weight_decay: 0.0,
                momentum: 0.5,
                nesterov: false,
                first: true,
            }),
            Update::Sgd(SgdScalars { neg_lr: -0.05, weight_decay: 0.1, momentum: 0.0, nesterov: false, first: false }),
        ];
        for update in updates {
            for (decay, zero_acc, stream) in
                [(true, true, false), (false, true, false), (true, false, false), (true, false, true)]
            {
                let run = |unit: Isa, stream_working: bool| {
                    let (mut p, mut acc, mut s1, mut s2) = (p0.clone(), acc0.clone(), s10.clone(), s20.clone());
                    let mut w = vec![half::f16::ZERO; n];
                    let b = Buffers {
                        master: SharedMut(p.as_mut_ptr()),
                        acc: SharedMut(acc.as_mut_ptr()),
                        comp: None,
                        sr: None,
                        state1: SharedMut(s1.as_mut_ptr()),
                        state2: SharedMut(s2.as_mut_ptr()),
                        f16: Some(SharedMut(w.as_mut_ptr())),
                        bf16: None,
                        zero_acc,
                        stream_working,
                    };
                    let item = WorkItem { start: 0, end: n, decay };
                    update_chunk_on(unit, &b, &item, &update, 0.37, 0.9);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    (bits(&p), bits(&acc), bits(&s1), bits(&s2), w.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                };
                let portable = run(Isa::Portable, false);
                for unit in super::super::isa::available() {
                    let what = format!("{unit:?} decay {decay} zero_acc {zero_acc} streaming working copy {stream}");
                    assert!(run(unit, stream) == portable, "{what}");
                }
            }
        }
    }
}

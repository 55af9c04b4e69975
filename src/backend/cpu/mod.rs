//! The CPU backend: host buffers, all cores, loops the compiler vectorises.
//!
//! Memory traffic per parameter (fp32 master, AdamW, fp16 working copy):
//! - accumulate: read grad (2-4 B) + read/write acc (8 B): one pass; the first
//!   micro-batch of a window only writes acc (4 B), and every full-buffer pass also
//!   computes the step's norm partials on the side (no extra traffic);
//! - step: the fused pass reads acc, p, m, v and writes p, m, v and the working copy
//!   (16 B read + 14 B written); a separate norm pass (reads acc, 4 B) only when the
//!   partials are not valid (see below).
//!
//! The accumulator is not zeroed between windows: after a step or zero_grad it is
//! *logically zero* (`acc_stale`) and the next micro-batch writes instead of adding.
//! Zeros are made real wherever something else reads acc (a checkpoint, an
//! all-reduce, the per-tensor path's tensors without a gradient, the host through
//! gacc_accumulator_ptr). Eager zeroing, as every step did before, stays where it is
//! needed (`eager_zero`): compensated accumulation, and once the host holds the
//! accumulator's address (an in-place host relies on zeros when a window opens).
//! Either way every value the caller can see is bit-identical.

mod accumulate;
pub mod convert;
pub mod isa;
pub mod parallel;
pub mod pool;
mod slices;
mod step;
mod streaming;
mod tensors;

use std::os::raw::c_void;

use half::{bf16, f16};

use super::{Backend, BackendInit, GradInput, ParamBuffer, StateSnapshot, StepReport, StepRequest, TensorGrad};
use crate::engine::config::{Config, Optimizer, Precision};
use crate::engine::math::ScalerState;
use crate::status::{Error, Result};
use parallel::WorkItem;
use slices::{Grad, Mode};

/// The fp16/bf16 working copy, if the precision asks for one.
pub(crate) enum WorkingCopy {
    None,
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

/// All host state of a CPU engine.
pub struct CpuBackend {
    config: Config,
    items: Vec<WorkItem>,
    master: Vec<f32>,
    acc: Vec<f32>,
    /// SGD momentum buffer, or AdamW exp_avg.
    state1: Vec<f32>,
    /// AdamW exp_avg_sq.
    state2: Vec<f32>,
    working: WorkingCopy,
    /// Kahan compensation of acc (empty unless compensated_accumulation).
    comp: Vec<f32>,
    /// Drop mode: the window's total weight and dropped count.
    window_total: f64,
    window_dropped: u32,
    scaler: ScalerState,
    applied_steps: u64,
    last: StepReport,
    /// Receive buffer of the data-parallel all-reduce (allocated on first use), so a
    /// failed collective never leaves a half-reduced accumulator.
    reduce_scratch: Vec<f32>,
    /// The accumulator's memory stands for zero (the window is empty and nothing has
    /// written it since the last step or zero_grad): the next pass writes, not adds.
    acc_stale: bool,
    /// Zero the accumulator at every step and zero_grad instead (compensated
    /// accumulation; once the host holds gacc_accumulator_ptr). Never stale then.
    eager_zero: bool,
    /// The norm partials of the last full-buffer accumulation pass.
    norms: NormCache,
    /// The window's total weight as this backend has seen it (outside drop mode,
    /// which keeps `window_total`): the step's factor is predicted from it.
    seen_total: f64,
}

/// Per-work-item sums of squares that an accumulation pass computed for the step,
/// and the unscale factor they were computed with.
struct NormCache {
    partials: Vec<f64>,
    /// Bits of the factor; None: not valid (something changed acc since, or no pass
    /// computed them).
    factor: Option<u32>,
}

impl NormCache {
    /// The partials, if they were computed for exactly `factor`; they are used up
    /// either way (a step ends the window).
    fn take(&mut self, factor: f32) -> Option<&[f64]> {
        let valid = self.factor.take() == Some(factor.to_bits());
        valid.then_some(&self.partials[..])
    }

    fn invalidate(&mut self) {
        self.factor = None;
    }
}

use crate::alloc::try_copy;
pub(crate) use crate::alloc::try_zeroed;

impl CpuBackend {
    pub fn new(init: BackendInit<'_>) -> Result<CpuBackend> {
        let n = init.layout.numel;
        let mut master = try_zeroed::<f32>(n, "fp32 master weights")?;
        master.copy_from_slice(init.params);
        let acc = try_zeroed::<f32>(n, "gradient accumulator")?;
        let n_state = init.config.optimizer.state_buffers();
        let state1 = try_zeroed::<f32>(if n_state >= 1 { n } else { 0 }, "optimizer state")?;
        let state2 = try_zeroed::<f32>(if n_state >= 2 { n } else { 0 }, "optimizer state")?;
        let working = match init.config.precision {
            Precision::Fp32 => WorkingCopy::None,
            Precision::Fp16 => WorkingCopy::F16(try_zeroed(n, "fp16 working copy")?),
            Precision::Bf16 => WorkingCopy::Bf16(try_zeroed(n, "bf16 working copy")?),
        };
        let scaler = ScalerState::new(&init.config.scaler, init.config.precision.scales_loss());
        let comp = try_zeroed::<f32>(if init.config.numerics.compensated { n } else { 0 }, "compensation buffer")?;
        let items = parallel::work_items(&init.layout.runs);
        let partials = try_zeroed::<f64>(items.len(), "norm partials")?;
        let mut backend = CpuBackend {
            config: *init.config,
            items,
            master,
            acc,
            state1,
            state2,
            working,
            comp,
            window_total: 0.0,
            window_dropped: 0,
            scaler,
            applied_steps: 0,
            reduce_scratch: Vec::new(),
            acc_stale: false,
            eager_zero: init.config.numerics.compensated,
            norms: NormCache { partials, factor: None },
            seen_total: 0.0,
            last: StepReport {
                applied: false,
                grad_norm: f32::NAN,
                clip_coef: 1.0,
                loss_scale: scaler.scale,
                step: 0,
                window_total: 0.0,
                dropped: 0,
            },
        };
        backend.refresh_working_copy();
        Ok(backend)
    }

    /// Rewrites the working copy from the master weights; stochastic rounding (when
    /// on) keys on the current applied-step count.
    fn refresh_working_copy(&mut self) {
        let sr = self.sr_key(self.applied_steps);
        step::write_working_copy(&self.items, &self.master, &mut self.working, sr);
    }

    /// The stochastic-rounding key for a rewrite at applied-step count `step`
    /// (None: round to nearest even).
    fn sr_key(&self, step: u64) -> Option<u64> {
        let n = &self.config.numerics;
        n.stochastic_rounding.then(|| crate::engine::math::sr_key(n.seed, step))
    }

    /// Makes a logically zero accumulator really zero (before anything reads it).
    fn materialize_zeros(&mut self) {
        if self.acc_stale {
            step::zero(&self.items, &mut self.acc);
            self.acc_stale = false;
        }
    }

    /// Ends the window without an update (a skipped step, zero_grad): the
    /// accumulator becomes logically zero (really zero, with its compensation, when
    /// zeroing is eager).
    fn end_window(&mut self) {
        if self.eager_zero {
            step::zero(&self.items, &mut self.acc);
            step::zero(&self.items, &mut self.comp);
        } else {
            self.acc_stale = true;
        }
        self.norms.invalidate();
        self.seen_total = 0.0;
    }

    /// Books a micro-batch before its pass: in drop mode, first checks the gradient
    /// (`any_bad`) and counts a non-finite one as dropped (false: leave it out).
    fn admit(&mut self, any_bad: impl FnOnce(&[WorkItem]) -> bool, weight: f64) -> bool {
        if self.config.numerics.drop_nonfinite {
            if any_bad(&self.items) {
                self.window_dropped = self.window_dropped.saturating_add(1);
                return false;
            }
            self.window_total += weight;
        } else {
            self.seen_total += weight;
        }
        true
    }

    /// The unscale factor the step will use if the window ends after the
    /// micro-batch just booked (the norm partials are computed with it; the step
    /// checks that it is the same).
    fn predicted_factor(&self) -> f32 {
        let total = if self.config.numerics.drop_nonfinite { self.window_total } else { self.seen_total };
        crate::engine::math::unscale_factor(total, self.scaler.scale)
    }

    /// Whether a full-buffer pass should compute the step's norm partials: not with
    /// compensation (the norm is of acc - comp) and not once the host can write acc.
    fn fuses_norms(&self) -> bool {
        !self.eager_zero
    }

    /// The optimizer type this backend was built for.
    pub fn optimizer(&self) -> Optimizer {
        self.config.optimizer
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", pool::current_threads())
    }

    unsafe fn accumulate(&mut self, grad: &GradInput, mul: f32, weight: f64) -> Result<()> {
        // SAFETY: the caller guarantees numel readable, aligned elements of dtype.
        let g = Grad::from_raw(grad.ptr, grad.dtype, grad.numel);
        if !self.admit(|items| accumulate::any_nonfinite(items, g), weight) {
            return Ok(());
        }
        if !self.comp.is_empty() {
            accumulate::accumulate_kahan(&self.items, &mut self.acc, &mut self.comp, g, mul);
            return Ok(());
        }
        let mode = if self.acc_stale { Mode::Write } else { Mode::Add };
        let factor = self.fuses_norms().then(|| self.predicted_factor());
        let norms = factor.map(|factor| accumulate::Norms { factor, partials: &mut self.norms.partials });
        accumulate::accumulate(&self.items, &mut self.acc, g, mul, mode, norms);
        self.acc_stale = false;
        self.norms.factor = factor.map(f32::to_bits);
        Ok(())
    }

    unsafe fn accumulate_tensors(&mut self, grads: &[TensorGrad], mul: f32, weight: f64) -> Result<()> {
        let pass = tensors::PerTensor::new(grads);
        let total = self.acc.len();
        // SAFETY: the caller guarantees numel readable, aligned elements per tensor,
        // at disjoint ranges inside the layout, listed in layout order.
        if !self.admit(|items| pass.any_nonfinite(items, total), weight) {
            return Ok(());
        }
        // Logically zero: listed tensors are written over, the others zeroed.
        let mode = if self.acc_stale { Mode::Write } else { Mode::Add };
        let factor = self.fuses_norms().then(|| self.predicted_factor());
        let norms = factor.map(|factor| accumulate::Norms { factor, partials: &mut self.norms.partials });
        pass.accumulate(&self.items, &mut self.acc, &mut self.comp, mul, mode, norms);
        self.acc_stale = false;
        self.norms.factor = factor.map(f32::to_bits);
        Ok(())
    }

    fn accumulator_ptr(&mut self, offset: usize) -> Result<*mut f32> {
        if offset >= self.acc.len() {
            return Err(Error::internal("accumulator offset outside the layout"));
        }
        // The host may write here whenever it likes from now on: zeros are real
        // from here on, at every window's start.
        self.materialize_zeros();
        self.eager_zero = true;
        self.norms.invalidate();
        Ok(self.acc[offset..].as_mut_ptr())
    }

    fn book_inplace(&mut self, weight: f64) -> Result<()> {
        self.seen_total += weight;
        self.norms.invalidate();
        Ok(())
    }

    fn zero_window(&mut self) -> Result<()> {
        self.end_window();
        self.window_total = 0.0;
        self.window_dropped = 0;
        Ok(())
    }

    fn step(&mut self, request: &StepRequest) -> Result<()> {
        self.last = step::run_step(self, request);
        Ok(())
    }

    fn last_report(&mut self) -> Result<StepReport> {
        Ok(self.last)
    }

    fn read_params(&mut self, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(&self.master);
        Ok(())
    }

    fn write_params(&mut self, src: &[f32]) -> Result<()> {
        self.master.copy_from_slice(src);
        self.refresh_working_copy();
        Ok(())
    }

    fn param_ptr(&mut self, offset: usize, which: ParamBuffer) -> Option<*mut c_void> {
        match which {
            ParamBuffer::Master => Some(self.master[offset..].as_mut_ptr() as *mut c_void),
            ParamBuffer::Working => match &mut self.working {
                WorkingCopy::None => None,
                WorkingCopy::F16(w) => Some(w[offset..].as_mut_ptr() as *mut c_void),
                WorkingCopy::Bf16(w) => Some(w[offset..].as_mut_ptr() as *mut c_void),
            },
        }
    }

    fn loss_scale(&mut self) -> Result<f32> {
        Ok(self.scaler.scale)
    }

    fn allreduce_accumulator(&mut self, comm: &mut dyn crate::distributed::Collective) -> Result<()> {
        // A rank whose window is empty contributes zeros.
        self.materialize_zeros();
        self.norms.invalidate();
        if self.reduce_scratch.len() != self.acc.len() {
            self.reduce_scratch = try_zeroed(self.acc.len(), "all-reduce buffer")?;
        }
        self.reduce_scratch.copy_from_slice(&self.acc);
        // What is summed is the compensated value acc - comp.
        for (r, c) in self.reduce_scratch.iter_mut().zip(&self.comp) {
            *r -= *c;
        }
        comm.allreduce_f32(&mut self.reduce_scratch)?;
        // A copy, not a swap: the accumulator's address is part of the API
        // (gacc_accumulator_ptr is stable until gacc_destroy).
        self.acc.copy_from_slice(&self.reduce_scratch);
        self.comp.fill(0.0);
        Ok(())
    }

    fn loss_scale_ptr(&mut self) -> Result<*const f32> {
        Ok(&self.scaler.scale as *const f32)
    }

    fn mirror_window_total(&mut self, total: f64) -> Result<()> {
        self.seen_total = total;
        Ok(())
    }

    fn window_counts(&mut self) -> Result<(f64, u32)> {
        Ok((self.window_total, self.window_dropped))
    }

    fn set_window_counts(&mut self, total: f64, dropped: u32) -> Result<()> {
        self.window_total = total;
        self.window_dropped = dropped;
        Ok(())
    }

    fn export_state(&mut self) -> Result<StateSnapshot> {
        // A checkpoint of an empty window holds a zero accumulator.
        self.materialize_zeros();
        Ok(StateSnapshot {
            master: try_copy(&self.master, "checkpoint copy of the master weights")?,
            acc: try_copy(&self.acc, "checkpoint copy of the accumulator")?,
            state1: try_copy(&self.state1, "checkpoint copy of the optimizer state")?,
            state2: try_copy(&self.state2, "checkpoint copy of the optimizer state")?,
            loss_scale: self.scaler.scale,
            growth_tracker: self.scaler.growth_tracker,
            hysteresis_left: self.scaler.hysteresis_left,
            applied_steps: self.applied_steps,
            comp: try_copy(&self.comp, "checkpoint copy of the compensation buffer")?,
            window_total: self.window_total,
            window_dropped: self.window_dropped,
        })
    }

    fn import_state(&mut self, s: &StateSnapshot) -> Result<()> {
        let lengths_match = s.master.len() == self.master.len()
            && s.acc.len() == self.acc.len()
            && s.state1.len() == self.state1.len()
            && s.state2.len() == self.state2.len()
            && s.comp.len() == self.comp.len();
        if !lengths_match {
            return Err(Error::internal("state snapshot does not match this backend's buffers"));
        }
        self.master.copy_from_slice(&s.master);
        self.acc.copy_from_slice(&s.acc);
        self.state1.copy_from_slice(&s.state1);
        self.state2.copy_from_slice(&s.state2);
        self.comp.copy_from_slice(&s.comp);
        self.scaler =
            ScalerState { scale: s.loss_scale, growth_tracker: s.growth_tracker, hysteresis_left: s.hysteresis_left };
        self.applied_steps = s.applied_steps;
        self.window_total = s.window_total;
        self.window_dropped = s.window_dropped;
        self.acc_stale = false;
        self.norms.invalidate();
        self.refresh_working_copy();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::{Dtype, RawConfig};
    use crate::engine::layout::Layout;

    /// A plain AdamW/fp32 CPU backend over tensors of these sizes (values 0.5).
    fn backend(sizes: &[usize]) -> CpuBackend {
        let config = Config::validate(&RawConfig::defaults()).unwrap();
        let layout = Layout::new(sizes.iter().map(|&n| (None, n, true)).collect()).unwrap();
        let params = vec![0.5f32; layout.numel];
        CpuBackend::new(BackendInit { config: &config, layout: &layout, params: &params }).unwrap()
    }

    fn add(be: &mut CpuBackend, g: &[f32], weight: f64) {
        let grad = GradInput { ptr: g.as_ptr().cast(), dtype: Dtype::F32, numel: g.len() };
        unsafe { be.accumulate(&grad, weight as f32, weight) }.unwrap();
    }

    fn step(be: &mut CpuBackend, total_weight: f64) -> StepReport {
        be.step(&StepRequest { total_weight, lr: 1e-3 }).unwrap();
        be.last_report().unwrap()
    }

    /// After a step the next micro-batch writes the accumulator without reading it:
    /// whatever the memory held (poisoned with NaN here) does not matter. Before the
    /// shortcut the step zeroed acc and the next pass added to it: NaN + x = NaN.
    #[test]
    fn first_microbatch_of_a_window_writes_without_reading() {
        let n = 300_000;
        let mut be = backend(&[n]);
        let g: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.01 - 0.4).collect();
        add(&mut be, &g, 1.0);
        assert!(step(&mut be, 1.0).applied);
        assert!(be.acc_stale, "the step should leave the accumulator logically zero");
        be.acc.fill(f32::NAN);
        add(&mut be, &g, 0.5);
        assert!(be.acc.iter().zip(&g).all(|(&a, &g)| a.to_bits() == (0.0 + 0.5 * g).to_bits()));
    }

    /// The step sums the partials the last accumulation pass computed instead of
    /// reading acc again: planting known partials shows which one it used.
    #[test]
    fn step_takes_the_norm_from_the_accumulation_pass() {
        let mut be = backend(&[100, 40_000]);
        let g = vec![0.25f32; be.acc.len()];
        add(&mut be, &g, 1.0);
        let partials: Vec<f64> = be.norms.partials.clone();
        // What the separate norm pass would give, from acc itself.
        let want = step::sum_of_squares(&be.items, &be.acc, &be.comp, 1.0);
        assert_eq!(step::sum_partials(&partials).to_bits(), want.to_bits());
        be.norms.partials.fill(0.0);
        be.norms.partials[0] = 4.0;
        assert_eq!(step(&mut be, 1.0).grad_norm, 2.0);
    }

    /// When the step's factor is not the one the partials were computed with (a
    /// total the backend did not see), the step runs the norm pass.
    #[test]
    fn a_different_factor_falls_back_to_the_norm_pass() {
        let mut be = backend(&[1000]);
        let g = vec![0.5f32; 1000];
        add(&mut be, &g, 1.0);
        be.norms.partials.fill(1e9); // wrong on purpose: must not be used
        let want = step::sum_of_squares(&be.items, &be.acc, &be.comp, 0.5).sqrt() as f32;
        assert_eq!(step(&mut be, 2.0).grad_norm, want);
    }

    /// Neither shortcut once the host holds the accumulator's address: it sees real
    /// zeros after every step, and the step reads the accumulator it may have written.
    #[test]
    fn the_host_holding_the_accumulator_turns_the_shortcuts_off() {
        let mut be = backend(&[1000]);
        let p = be.accumulator_ptr(0).unwrap();
        let g = vec![0.5f32; 1000];
        add(&mut be, &g, 1.0);
        assert!(be.norms.factor.is_none());
        step(&mut be, 1.0);
        assert!(!be.acc_stale);
        assert!(unsafe { std::slice::from_raw_parts(p, 1000) }.iter().all(|&x| x.to_bits() == 0));
    }
}

//! The CPU backend: host buffers, all cores, loops the compiler vectorises.
//!
//! Memory traffic per parameter (fp32 master, AdamW, fp16 working copy):
//! - accumulate: read grad (2-4 B) + read/write acc (8 B): one pass;
//! - step: norm pass reads acc (4 B); the fused pass reads acc, p, m, v and writes p,
//!   m, v, the working copy and acc = 0 (16 B read + 18 B written).

mod accumulate;
pub mod convert;
pub mod parallel;
mod step;
mod tensors;

use std::os::raw::c_void;

use half::{bf16, f16};

use super::{Backend, BackendInit, GradInput, ParamBuffer, StateSnapshot, StepReport, StepRequest, TensorGrad};
use crate::engine::config::{Config, Dtype, Optimizer, Precision};
use crate::engine::math::ScalerState;
use crate::status::{Error, Result};
use parallel::WorkItem;

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
        let mut backend = CpuBackend {
            config: *init.config,
            items: parallel::work_items(&init.layout.runs),
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

    /// Read access to the accumulator (tests and checkpoints).
    pub fn accumulator(&self) -> &[f32] {
        &self.acc
    }

    /// The optimizer type this backend was built for.
    pub fn optimizer(&self) -> Optimizer {
        self.config.optimizer
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    unsafe fn accumulate(&mut self, grad: &GradInput, mul: f32, weight: f64) -> Result<()> {
        let n = grad.numel;
        let items = &self.items;
        // SAFETY: the caller guarantees numel readable, aligned elements of dtype.
        if self.config.numerics.drop_nonfinite {
            let bad = match grad.dtype {
                Dtype::F32 => {
                    accumulate::any_nonfinite_f32(items, std::slice::from_raw_parts(grad.ptr as *const f32, n))
                }
                Dtype::F16 => {
                    accumulate::any_nonfinite_f16(items, std::slice::from_raw_parts(grad.ptr as *const f16, n))
                }
                Dtype::BF16 => {
                    accumulate::any_nonfinite_bf16(items, std::slice::from_raw_parts(grad.ptr as *const u16, n))
                }
            };
            if bad {
                self.window_dropped = self.window_dropped.saturating_add(1);
                return Ok(());
            }
            self.window_total += weight;
        }
        let (acc, comp) = (&mut self.acc, &mut self.comp);
        let kahan = !comp.is_empty();
        match grad.dtype {
            Dtype::F32 => {
                let g = std::slice::from_raw_parts(grad.ptr as *const f32, n);
                if kahan {
                    accumulate::accumulate_f32_kahan(items, acc, comp, g, mul);
                } else {
                    accumulate::accumulate_f32(items, acc, g, mul);
                }
            }
            Dtype::F16 => {
                let g = std::slice::from_raw_parts(grad.ptr as *const f16, n);
                if kahan {
                    accumulate::accumulate_f16_kahan(items, acc, comp, g, mul);
                } else {
                    accumulate::accumulate_f16(items, acc, g, mul);
                }
            }
            Dtype::BF16 => {
                let g = std::slice::from_raw_parts(grad.ptr as *const u16, n);
                if kahan {
                    accumulate::accumulate_bf16_kahan(items, acc, comp, g, mul);
                } else {
                    accumulate::accumulate_bf16(items, acc, g, mul);
                }
            }
        }
        Ok(())
    }

    unsafe fn accumulate_tensors(&mut self, grads: &[TensorGrad], mul: f32, weight: f64) -> Result<()> {
        let plan = tensors::Plan::new(grads);
        // SAFETY: the caller guarantees numel readable, aligned elements per tensor,
        // at disjoint ranges inside the layout.
        if self.config.numerics.drop_nonfinite {
            if plan.any_nonfinite() {
                self.window_dropped = self.window_dropped.saturating_add(1);
                return Ok(());
            }
            self.window_total += weight;
        }
        plan.accumulate(&mut self.acc, &mut self.comp, mul);
        Ok(())
    }

    fn accumulator_ptr(&mut self, offset: usize) -> Result<*mut f32> {
        if offset >= self.acc.len() {
            return Err(Error::internal("accumulator offset outside the layout"));
        }
        Ok(self.acc[offset..].as_mut_ptr())
    }

    fn zero_window(&mut self) -> Result<()> {
        step::zero(&self.items, &mut self.acc);
        step::zero(&self.items, &mut self.comp);
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

    fn window_counts(&mut self) -> Result<(f64, u32)> {
        Ok((self.window_total, self.window_dropped))
    }

    fn set_window_counts(&mut self, total: f64, dropped: u32) -> Result<()> {
        self.window_total = total;
        self.window_dropped = dropped;
        Ok(())
    }

    fn export_state(&mut self) -> Result<StateSnapshot> {
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
        self.refresh_working_copy();
        Ok(())
    }
}

//! The accumulation window as a state machine.
//!
//! States: an open window (acc, total weight, micro-batch count) that `microbatch`
//! grows, `step` closes with an update (or a skip) and `zero` drops. The engine
//! validates every request before it touches the backend, so a rejected call changes
//! nothing.

pub mod config;
pub mod layout;
pub mod math;

use std::os::raw::c_void;

use crate::backend::{self, Backend, BackendInit, GradInput, ParamBuffer, StateSnapshot, StepRequest, TensorGrad};
use crate::distributed::{Collective, CommStats, DeviceCollective};
use crate::status::{Error, Result};
use config::{Config, Device, Dtype, Reduction};
use layout::Layout;

/// What a step did (the C API's gacc_step_info; the ffi layer converts).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepInfo {
    /// The update was applied (false: skipped, the gradient was not finite).
    pub applied: bool,
    /// ||g||_2 of the unscaled, averaged gradient before clipping.
    pub grad_norm: f32,
    /// The factor the gradient was multiplied by (1: not clipped).
    pub clip_coef: f32,
    /// The loss scale for the next window.
    pub loss_scale: f32,
    /// Applied updates so far.
    pub step: u64,
    /// Micro-batches in the window just closed.
    pub microbatches: u32,
    /// Total weight of the window just closed (without dropped micro-batches).
    pub total_weight: f64,
    /// Micro-batches dropped for a non-finite gradient.
    pub dropped_microbatches: u32,
}

/// Everything an engine holds, on the host: what a checkpoint saves and restores.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineSnapshot {
    pub config: Config,
    pub layout: Layout,
    pub lr: f32,
    pub total_weight: f64,
    pub microbatches: u32,
    pub state: StateSnapshot,
}

/// An engine: configuration, layout, the host-known part of the window and a backend.
pub struct Engine {
    config: Config,
    layout: Layout,
    lr: f32,
    total_weight: f64,
    microbatches: u32,
    backend: Box<dyn Backend>,
    /// Where the engine runs.
    device: Device,
    /// Data-parallel transport; None: a single process.
    comm: Option<Box<dyn Collective>>,
    /// Device transport (NCCL, CUDA engines); None: none. At most one of `comm` and
    /// `device_comm` is set.
    device_comm: Option<Box<dyn DeviceCollective>>,
    comm_stats: CommStats,
}

impl Drop for Engine {
    /// Transports first: an NCCL communicator is destroyed while the backend's
    /// stream and context are still alive (fields would drop in declaration order,
    /// the backend first).
    fn drop(&mut self) {
        self.device_comm = None;
        self.comm = None;
    }
}

impl Engine {
    /// Builds an engine on the device the configuration asks for.
    pub fn new(config: Config, layout: Layout, params: &[f32]) -> Result<Engine> {
        if params.len() != layout.numel {
            return Err(Error::internal("initial parameters do not match the layout"));
        }
        let init = BackendInit { config: &config, layout: &layout, params };
        let (backend, device) = backend::create(init)?;
        Ok(Engine::from_parts(config, layout, backend, device))
    }

    /// Checks, before anything is allocated, that an engine with this configuration
    /// and layout can fit the machine (GACC_ERR_INVALID_ARGUMENT naming numel if not).
    pub fn check_fits(config: &Config, layout: &Layout) -> Result<()> {
        backend::check_fits(config, layout)
    }

    /// Assembles an engine around an already built backend (tests use this to drive
    /// other backends through the same window logic).
    pub fn from_parts(config: Config, layout: Layout, backend: Box<dyn Backend>, device: Device) -> Engine {
        Engine {
            lr: config.lr,
            config,
            layout,
            total_weight: 0.0,
            microbatches: 0,
            backend,
            device,
            comm: None,
            device_comm: None,
            comm_stats: CommStats::default(),
        }
    }

    pub fn numel(&self) -> usize {
        self.layout.numel
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn describe(&self) -> String {
        self.backend.describe()
    }
    pub fn lr(&self) -> f32 {
        self.lr
    }
    /// (total weight, micro-batch count) of the open window.
    pub fn window(&self) -> (f64, u32) {
        (self.total_weight, self.microbatches)
    }

    /// Folds one micro-batch gradient into the window.
    ///
    /// # Safety
    /// `grad.ptr` must point to `grad.numel` readable elements of `grad.dtype` in memory
    /// the backend can read.
    pub unsafe fn microbatch(&mut self, grad: &GradInput, weight: f64) -> Result<()> {
        if grad.numel != self.layout.numel {
            return Err(Error::invalid_argument(format!(
                "numel is {} but the engine holds {} parameters",
                grad.numel, self.layout.numel
            )));
        }
        let (mul, new_total) = self.check_weight(weight)?;
        // MEAN with weight 0 adds nothing: no pass over memory.
        if !(self.config.reduction == Reduction::Mean && weight == 0.0) {
            self.backend.accumulate(grad, mul, weight)?;
        }
        self.book(new_total);
        Ok(())
    }

    /// Folds one micro-batch given tensor by tensor into the window: `grads[t]` is
    /// tensor t's gradient (None: no gradient in this micro-batch). Everything is
    /// validated before anything is added; messages name the tensor index.
    ///
    /// # Safety
    /// Every `Some` entry must point to `numel` readable elements of its dtype in
    /// memory the backend can read.
    pub unsafe fn microbatch_tensors(&mut self, grads: &[Option<GradInput>], weight: f64) -> Result<()> {
        let n = self.layout.tensors.len();
        if grads.len() != n {
            return Err(Error::invalid_argument(format!("n_grads is {} but the engine has {n} tensors", grads.len())));
        }
        let mut listed = Vec::with_capacity(n);
        for (index, (g, t)) in grads.iter().zip(&self.layout.tensors).enumerate() {
            let Some(g) = g else { continue };
            if g.numel != t.numel {
                return Err(Error::invalid_argument(format!(
                    "grads[{index}].numel is {} but tensor {index} has {} elements",
                    g.numel, t.numel
                )));
            }
            listed.push(TensorGrad { grad: *g, offset: t.offset, index });
        }
        let (mul, new_total) = self.check_weight(weight)?;
        if !(self.config.reduction == Reduction::Mean && weight == 0.0) {
            self.backend.accumulate_tensors(&listed, mul, weight)?;
        }
        self.book(new_total);
        Ok(())
    }

    /// The fp32 accumulator of one tensor (device memory on a CUDA engine), stable
    /// until the engine is dropped.
    pub fn accumulator_ptr(&mut self, tensor: usize) -> Result<*mut f32> {
        let n = self.layout.tensors.len();
        let info = self.layout.tensors.get(tensor).ok_or_else(|| {
            Error::invalid_argument(format!("tensor index {tensor} is out of range (the engine has {n})"))
        })?;
        let offset = info.offset;
        self.backend.accumulator_ptr(offset)
    }

    /// Books one micro-batch that the host added into the accumulator itself: total
    /// += weight, one micro-batch counted; no data moves. Refused (INVALID_STATE)
    /// with compensated accumulation or drop mode: the engine never sees the
    /// gradient, so it can neither compensate nor check it.
    pub fn microbatch_inplace(&mut self, weight: f64) -> Result<()> {
        for (on, option) in [
            (self.config.numerics.compensated, "compensated_accumulation"),
            (self.config.numerics.drop_nonfinite, "drop_nonfinite_microbatches"),
        ] {
            if on {
                return Err(Error::invalid_state(format!(
                    "gacc_microbatch_inplace is not available with {option}: the engine never sees an in-place \
                     gradient (use gacc_microbatch or gacc_microbatch_tensors)"
                )));
            }
        }
        let (_, new_total) = self.check_weight(weight)?;
        self.backend.book_inplace(weight)?;
        self.book(new_total);
        Ok(())
    }

    /// Validates a micro-batch weight: (the accumulation multiplier, the new total).
    fn check_weight(&self, weight: f64) -> Result<(f32, f64)> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::invalid_argument(format!("weight must be finite and >= 0 (got {weight})")));
        }
        let new_total = self.total_weight + weight;
        if !new_total.is_finite() {
            return Err(Error::invalid_argument("weight: the window's total weight would overflow"));
        }
        let mul = match self.config.reduction {
            Reduction::Mean => {
                let w = weight as f32;
                if !w.is_finite() {
                    return Err(Error::invalid_argument(format!(
                        "weight {weight} is too large for an fp32 multiplier (GACC_GRADS_MEAN)"
                    )));
                }
                w
            }
            Reduction::Sum => 1.0,
        };
        Ok((mul, new_total))
    }

    /// Counts one accepted micro-batch.
    fn book(&mut self, new_total: f64) {
        self.total_weight = new_total;
        self.microbatches = self.microbatches.saturating_add(1);
    }

    /// Closes the window with one optimizer step (or a skip). When `want_info` is
    /// false the backend is not waited for.
    pub fn step(&mut self, want_info: bool) -> Result<Option<StepInfo>> {
        // Refused before anything changes: a captured read-back would not be replayed.
        if want_info {
            self.backend.check_capturable("gacc_step with a step-info pointer (it reads the result back)")?;
        }
        if self.comm.is_some() {
            self.backend.check_capturable("a data-parallel gacc_step over a host transport")?;
        }
        if self.device_comm.is_some() {
            return self.step_device_collective(want_info);
        }
        if self.comm.is_some() {
            return self.step_data_parallel(want_info);
        }
        self.step_local(want_info)
    }

    fn step_local(&mut self, want_info: bool) -> Result<Option<StepInfo>> {
        if self.total_weight <= 0.0 {
            return Err(Error::invalid_state(if self.microbatches == 0 {
                "nothing accumulated in this window (call gacc_microbatch first)".to_string()
            } else {
                format!("the window's total weight is 0 after {} micro-batches", self.microbatches)
            }));
        }
        let request = StepRequest { total_weight: self.total_weight, lr: self.lr };
        self.backend.step(&request)?;
        let (total_weight, microbatches) = (self.total_weight, self.microbatches);
        self.total_weight = 0.0;
        self.microbatches = 0;
        if !want_info {
            return Ok(None);
        }
        let r = self.backend.last_report()?;
        // Drop mode: the total without the dropped micro-batches is the backend's
        // (summed on the device for CUDA), read back only now.
        let drop_mode = self.config.numerics.drop_nonfinite;
        Ok(Some(StepInfo {
            applied: r.applied,
            grad_norm: r.grad_norm,
            clip_coef: r.clip_coef,
            loss_scale: r.loss_scale,
            step: r.step,
            microbatches,
            total_weight: if drop_mode { r.window_total } else { total_weight },
            dropped_microbatches: r.dropped,
        }))
    }

    /// The data-parallel step: sum the window totals, then the accumulators, across
    /// ranks (one collective each), then the ordinary step on the global window. A
    /// failed collective leaves this rank's window as it was.
    fn step_data_parallel(&mut self, want_info: bool) -> Result<Option<StepInfo>> {
        let Some(comm) = self.comm.as_mut() else {
            return Err(Error::internal("data-parallel step without a transport"));
        };
        // Drop mode: the backend's window total (dropped micro-batches left out) and
        // dropped count travel with the host's totals (this waits for the device; a
        // data-parallel step waits for its collectives anyway).
        let drop_mode = self.config.numerics.drop_nonfinite;
        let local_counts = if drop_mode { Some(self.backend.window_counts()?) } else { None };
        let local_weight = self.total_weight;
        let mut totals = [self.total_weight, f64::from(self.microbatches), 0.0, 0.0];
        if let Some((total, dropped)) = local_counts {
            totals[2] = total;
            totals[3] = f64::from(dropped);
        }
        let totals = &mut totals[..if drop_mode { 4 } else { 2 }];
        comm.allreduce_f64(totals)?;
        let (global_weight, global_count) = (totals[0], totals[1]);
        if !(global_weight > 0.0 && global_weight.is_finite()) {
            return Err(Error::invalid_state(format!(
                "the global window's total weight is {global_weight} across {} ranks",
                comm.world_size()
            )));
        }
        if drop_mode {
            self.backend.set_window_counts(totals[2], totals[3].min(f64::from(u32::MAX)) as u32)?;
        }
        if let Err(e) = self.backend.allreduce_accumulator(comm.as_mut()) {
            // The window stays this rank's own.
            if let Some((total, dropped)) = local_counts {
                self.backend.set_window_counts(total, dropped)?;
            }
            self.backend.mirror_window_total(local_weight)?;
            return Err(e);
        }
        self.backend.mirror_window_total(global_weight)?;
        self.comm_stats.collectives += 2;
        self.comm_stats.bytes += (self.layout.numel * 4 + totals.len() * 8) as u64;
        // From here the window is the global one (accumulator and totals agree).
        self.total_weight = global_weight;
        self.microbatches = global_count.min(f64::from(u32::MAX)) as u32;
        self.step_local(want_info)
    }

    /// The data-parallel step over a device collective (NCCL): the window totals and
    /// the accumulator are summed across ranks on the engine's stream and the kernels
    /// read the global total from device memory, so without `want_info` nothing
    /// waits for the device. A window whose global total is 0 is skipped on the
    /// device (applied = 0). A collective refused when queued leaves this rank's
    /// window as it was.
    fn step_device_collective(&mut self, want_info: bool) -> Result<Option<StepInfo>> {
        let Some(comm) = self.device_comm.as_mut() else {
            return Err(Error::internal("device step without a transport"));
        };
        let group = self.backend.device_group().ok_or_else(no_device_group)?;
        group.device_allreduce_window(comm.as_mut(), self.total_weight, self.microbatches)?;
        self.comm_stats.collectives += 2;
        self.comm_stats.bytes += (self.layout.numel * 4 + 4 * 8) as u64;
        // The host's total is a placeholder: the kernels take the device's.
        let request = StepRequest { total_weight: 1.0, lr: self.lr };
        self.total_weight = 0.0;
        self.microbatches = 0;
        self.backend.step(&request)?;
        if !want_info {
            return Ok(None);
        }
        let r = self.backend.last_report()?;
        let (_, microbatches) = self.backend.device_group().ok_or_else(no_device_group)?.device_window()?;
        Ok(Some(StepInfo {
            applied: r.applied,
            grad_norm: r.grad_norm,
            clip_coef: r.clip_coef,
            loss_scale: r.loss_scale,
            step: r.step,
            microbatches,
            total_weight: r.window_total,
            dropped_microbatches: r.dropped,
        }))
    }

    /// Drops the window without stepping.
    pub fn zero(&mut self) -> Result<()> {
        self.backend.zero_window()?;
        self.total_weight = 0.0;
        self.microbatches = 0;
        Ok(())
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len != self.layout.numel {
            return Err(Error::invalid_argument(format!(
                "numel is {len} but the engine holds {} parameters",
                self.layout.numel
            )));
        }
        Ok(())
    }

    pub fn read_params(&mut self, out: &mut [f32]) -> Result<()> {
        self.check_len(out.len())?;
        self.backend.read_params(out)
    }

    pub fn write_params(&mut self, src: &[f32]) -> Result<()> {
        self.check_len(src.len())?;
        self.backend.write_params(src)
    }

    /// The engine's own buffer for one tensor: the fp32 master (F32) or the working
    /// copy (the dtype of the precision).
    pub fn params_ptr(&mut self, tensor: usize, dtype: Dtype) -> Result<*mut c_void> {
        let n = self.layout.tensors.len();
        let info = self.layout.tensors.get(tensor).ok_or_else(|| {
            Error::invalid_argument(format!("tensor index {tensor} is out of range (the engine has {n})"))
        })?;
        let which = if dtype == Dtype::F32 {
            ParamBuffer::Master
        } else if self.config.precision.working_dtype() == Some(dtype) {
            ParamBuffer::Working
        } else {
            return Err(Error::invalid_argument(format!(
                "dtype {} has no buffer: the engine keeps an f32 master{}",
                dtype.name(),
                match self.config.precision.working_dtype() {
                    Some(w) => format!(" and an {} working copy", w.name()),
                    None => " only (precision FP32)".to_string(),
                }
            )));
        };
        let offset = info.offset;
        self.backend.param_ptr(offset, which).ok_or_else(|| Error::internal("the backend has no such parameter buffer"))
    }

    pub fn loss_scale(&mut self) -> Result<f32> {
        self.backend.loss_scale()
    }

    /// Copies the whole state to the host (waits for the device).
    pub fn snapshot(&mut self) -> Result<EngineSnapshot> {
        Ok(EngineSnapshot {
            config: self.config,
            layout: self.layout.clone(),
            lr: self.lr,
            total_weight: self.total_weight,
            microbatches: self.microbatches,
            state: self.backend.export_state()?,
        })
    }

    /// Replaces the whole state with a snapshot whose layout, optimizer kind,
    /// precision and reduction match this engine (the caller validated sizes).
    /// Hyper-parameters other than the learning rate stay the engine's own.
    pub fn restore(&mut self, snap: &EngineSnapshot) -> Result<()> {
        self.backend.import_state(&snap.state)?;
        self.backend.set_lr(snap.lr)?;
        self.backend.mirror_window_total(snap.total_weight)?;
        self.lr = snap.lr;
        self.total_weight = snap.total_weight;
        self.microbatches = snap.microbatches;
        Ok(())
    }

    /// Joins a data-parallel group. The window must be empty. Rank 0's parameters
    /// are sent to every rank (one all-reduce where the other ranks contribute zeros),
    /// so all ranks start identical.
    pub fn set_collective(&mut self, mut comm: Box<dyn Collective>) -> Result<()> {
        if self.device_comm.is_some() {
            return Err(Error::invalid_state("the engine already has an NCCL transport (gacc_set_nccl)"));
        }
        if self.microbatches != 0 || self.total_weight != 0.0 {
            return Err(Error::invalid_state(
                "set the data-parallel transport before the first micro-batch of a window",
            ));
        }
        let mut params = crate::alloc::try_zeroed::<f32>(self.layout.numel, "parameter broadcast buffer")?;
        if comm.rank() == 0 {
            self.backend.read_params(&mut params)?;
        }
        comm.allreduce_f32(&mut params)?;
        self.backend.write_params(&params)?;
        self.comm_stats = CommStats { collectives: 1, bytes: (params.len() * 4) as u64 };
        self.comm = Some(comm);
        Ok(())
    }

    /// Checks that this engine can take a device collective (a CUDA engine with an
    /// empty window), allocates the device buffers the group needs (an error here
    /// leaves no communicator behind) and makes its device current on this thread
    /// until the returned scope drops (the caller's context is back then), for
    /// creating the communicator.
    pub fn prepare_device_collective(&mut self) -> Result<crate::backend::DeviceScope> {
        if self.device == Device::Cpu {
            return Err(Error::invalid_state(
                "gacc_set_nccl needs a CUDA engine; a CPU engine joins a data-parallel group with gacc_set_mpi or \
                 gacc_set_allreduce",
            ));
        }
        if self.comm.is_some() {
            return Err(Error::invalid_state(
                "the engine already has a host transport (gacc_set_allreduce or gacc_set_mpi)",
            ));
        }
        if self.microbatches != 0 || self.total_weight != 0.0 {
            return Err(Error::invalid_state(
                "set the data-parallel transport before the first micro-batch of a window",
            ));
        }
        let group = self.backend.device_group().ok_or_else(no_device_group)?;
        group.reserve_device_group()?;
        group.bind_device()
    }

    /// Joins a data-parallel group over a device collective (NCCL). The window must
    /// be empty ([`Engine::prepare_device_collective`]). Rank 0's parameters are sent
    /// to every rank on the device; from then on every step is a data-parallel one.
    pub fn set_device_collective(&mut self, mut comm: Box<dyn DeviceCollective>) -> Result<()> {
        let _device = self.prepare_device_collective()?;
        self.backend.device_group().ok_or_else(no_device_group)?.join_device_group(comm.as_mut())?;
        self.comm_stats = CommStats { collectives: 1, bytes: (self.layout.numel * 4) as u64 };
        self.device_comm = Some(comm);
        Ok(())
    }

    /// What the collectives moved so far (per rank).
    pub fn comm_stats(&self) -> CommStats {
        self.comm_stats
    }

    /// (rank, world size); (0, 1) without a transport.
    pub fn rank_and_size(&self) -> (u32, u32) {
        if let Some(c) = &self.device_comm {
            return (c.rank(), c.world_size());
        }
        self.comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()))
    }

    /// Runs the engine's work on `stream` (CUDA); NULL, the engine's own stream, is
    /// accepted by every engine.
    pub fn set_stream(&mut self, stream: *mut c_void) -> Result<()> {
        if stream.is_null() && self.device == Device::Cpu {
            return Ok(());
        }
        self.backend.set_stream(stream)
    }

    pub fn loss_scale_ptr(&mut self) -> Result<*const f32> {
        self.backend.loss_scale_ptr()
    }

    /// Direct access to the backend (checkpoints, tests).
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    /// Sets the learning rate of the next step (on a CUDA engine also in device
    /// memory, queued on the engine's stream: a captured step reads it at replay).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        let lr = config::validate_lr(lr)?;
        self.backend.set_lr(lr)?;
        self.lr = lr;
        Ok(())
    }
}

/// A device collective asked of a backend without one.
fn no_device_group() -> Error {
    Error::invalid_state("only CUDA engines take a device collective")
}

//! Backends move the bytes; the engine decides what happens.
//!
//! A backend owns every per-parameter buffer (fp32 master, working copy, fp32
//! accumulator, optimizer state) and the device-side step state (loss scale, growth
//! tracker, applied-step count, last norm). The engine keeps only host-known values:
//! the window's total weight, its micro-batch count and the learning rate.

pub mod cpu;
pub mod cuda;

use std::os::raw::c_void;

use crate::engine::config::{Config, Device, Dtype};
use crate::engine::layout::Layout;
use crate::status::Result;

/// A device context made current on the calling thread for a while: dropping it
/// gives the thread back the context that was current before (CUDA: gacc's context
/// is pushed on the thread's context stack, and popped here).
pub struct DeviceScope(Option<Box<dyn FnOnce()>>);

impl DeviceScope {
    /// A scope that restores nothing (no device).
    pub fn none() -> DeviceScope {
        DeviceScope(None)
    }
    /// A scope that runs `restore` when dropped.
    pub fn new(restore: impl FnOnce() + 'static) -> DeviceScope {
        DeviceScope(Some(Box::new(restore)))
    }
}

impl std::fmt::Debug for DeviceScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "DeviceScope(active)" } else { "DeviceScope(none)" })
    }
}

impl Drop for DeviceScope {
    fn drop(&mut self) {
        if let Some(restore) = self.0.take() {
            restore();
        }
    }
}

/// A micro-batch gradient as the C caller handed it over.
///
/// The ffi layer has checked that `ptr` is non-null and aligned for `dtype`; the C
/// caller promises `numel` readable elements behind it (host memory, or device
/// memory on a CUDA engine).
#[derive(Clone, Copy, Debug)]
pub struct GradInput {
    pub ptr: *const c_void,
    pub dtype: Dtype,
    pub numel: usize,
}

/// One tensor's gradient in a per-tensor micro-batch (`gacc_microbatch_tensors`):
/// a [`GradInput`] of exactly the tensor's numel, added at `offset` of the flat
/// accumulator. Tensors without a gradient are simply not listed.
#[derive(Clone, Copy, Debug)]
pub struct TensorGrad {
    pub grad: GradInput,
    /// Offset of the tensor in the flat buffers (its layout offset).
    pub offset: usize,
    /// The tensor's index (for messages).
    pub index: usize,
}

/// Host-known inputs of one step. The CUDA backend reads both from device memory
/// instead (kept there by [`Backend::set_lr`], the accumulate kernel and
/// [`Backend::mirror_window_total`]), so a replayed CUDA graph needs no host value.
#[derive(Clone, Copy, Debug)]
pub struct StepRequest {
    /// Sum of the window's weights (> 0).
    pub total_weight: f64,
    pub lr: f32,
}

/// What the last step did, read back from the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    pub applied: bool,
    pub grad_norm: f32,
    pub clip_coef: f32,
    /// S for the next window.
    pub loss_scale: f32,
    /// Applied updates so far.
    pub step: u64,
    /// Drop mode: the window's total weight without the dropped micro-batches, as
    /// the backend summed it (on the device for CUDA). 0 otherwise.
    pub window_total: f64,
    /// Drop mode: micro-batches of the window left out. 0 otherwise.
    pub dropped: u32,
}

/// Every piece of state a backend holds, on the host: what a checkpoint stores.
/// The working copy is not included: it is a function of the master weights.
#[derive(Clone, Debug, PartialEq)]
pub struct StateSnapshot {
    pub master: Vec<f32>,
    pub acc: Vec<f32>,
    /// SGD momentum buffer or AdamW exp_avg (empty when the optimizer keeps none).
    pub state1: Vec<f32>,
    /// AdamW exp_avg_sq (empty otherwise).
    pub state2: Vec<f32>,
    pub loss_scale: f32,
    pub growth_tracker: u32,
    /// Overflows still tolerated before the next backoff (the scaler's hysteresis).
    pub hysteresis_left: u32,
    pub applied_steps: u64,
    /// Kahan compensation of the accumulator (empty unless compensated_accumulation).
    pub comp: Vec<f32>,
    /// Drop mode: the open window's total weight and dropped count as the backend
    /// keeps them (0 otherwise).
    pub window_total: f64,
    pub window_dropped: u32,
}

impl StateSnapshot {
    /// Folds the Kahan compensation into the accumulator (acc = acc - comp, comp = 0):
    /// what a data-parallel reduction sums.
    pub fn fold_compensation(&mut self) {
        for (a, c) in self.acc.iter_mut().zip(self.comp.iter_mut()) {
            *a -= *c;
            *c = 0.0;
        }
    }
}

/// Which parameter buffer `param_ptr` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamBuffer {
    Master,
    Working,
}

/// The operations an engine needs from where its memory lives.
pub trait Backend: Send {
    /// "cpu" or "cuda:N (device name)".
    fn describe(&self) -> String;

    /// acc += mul * grad, converting the gradient to fp32 on the fly (Kahan-
    /// compensated when configured). In drop mode (drop_nonfinite_microbatches) the
    /// backend first checks the gradient and, if it holds inf/NaN, leaves it out and
    /// counts it as dropped; otherwise it adds it and adds `weight` to its own window
    /// total (the host cannot know which happened without waiting for the device).
    ///
    /// # Safety
    /// `grad.ptr` must point to `grad.numel` readable elements of `grad.dtype`, in
    /// memory this backend can read (host memory for the CPU backend).
    unsafe fn accumulate(&mut self, grad: &GradInput, mul: f32, weight: f64) -> Result<()>;

    /// One micro-batch given tensor by tensor: for every listed tensor, acc[offset..
    /// offset + numel] += mul * grad, exactly as [`Backend::accumulate`] would add the
    /// concatenation (same per-element arithmetic, bit for bit); unlisted tensors add
    /// nothing. In drop mode the micro-batch is dropped when any listed tensor holds
    /// inf/NaN, and booked (`weight`) otherwise, even when no tensor is listed.
    ///
    /// # Safety
    /// Every `grads[i].grad.ptr` must point to `numel` readable elements of its dtype
    /// in memory this backend can read; the ranges lie inside the layout and are
    /// disjoint.
    unsafe fn accumulate_tensors(&mut self, grads: &[TensorGrad], mul: f32, weight: f64) -> Result<()>;

    /// Address of element `offset` of the fp32 accumulator (device memory on a CUDA
    /// engine). Stable for the backend's lifetime: no operation reallocates or swaps
    /// the accumulator.
    fn accumulator_ptr(&mut self, offset: usize) -> Result<*mut f32>;

    /// Books an in-place micro-batch (gacc_microbatch_inplace): the host already added
    /// its gradient into the accumulator. CUDA adds `weight` to the device's window
    /// total (the step reads that); the CPU has nothing to do.
    fn book_inplace(&mut self, _weight: f64) -> Result<()> {
        Ok(())
    }

    /// Empties the window: the accumulator (and the compensation, and the drop-mode
    /// window total and count) reads as zero from now on. A backend may leave the
    /// memory as it is and have the next micro-batch write instead of add, as long
    /// as everything that reads the accumulator (export, all-reduce, the host through
    /// [`Backend::accumulator_ptr`]) sees zeros.
    fn zero_window(&mut self) -> Result<()>;

    /// Unscale, check, clip, update, rescale, rewrite the working copy and leave the
    /// accumulator reading as zero (see [`Backend::zero_window`]); need not wait for
    /// the device.
    fn step(&mut self, request: &StepRequest) -> Result<()>;

    /// The report of the last step (waits for the device).
    fn last_report(&mut self) -> Result<StepReport>;

    /// Copies the fp32 master weights to the host.
    fn read_params(&mut self, out: &mut [f32]) -> Result<()>;

    /// Replaces the fp32 master weights and rewrites the working copy.
    fn write_params(&mut self, src: &[f32]) -> Result<()>;

    /// Address of element `offset` of a parameter buffer (None: no such buffer).
    fn param_ptr(&mut self, offset: usize, which: ParamBuffer) -> Option<*mut c_void>;

    /// The current loss scale S (waits for the device).
    fn loss_scale(&mut self) -> Result<f32>;

    /// Orders the engine's work after, and before, the caller's work on `stream` (a
    /// CUstream; NULL: the engine's own stream). Only CUDA engines have streams.
    fn set_stream(&mut self, _stream: *mut c_void) -> Result<()> {
        Err(crate::status::Error::invalid_state("a CPU engine has no CUDA stream"))
    }

    /// The learning rate of the next step. Backends that keep it in device memory
    /// (CUDA: the step's kernels read it there, so a step captured in a CUDA graph
    /// honours later calls) queue the update here, ordered with the engine's work and
    /// without a host sync; the CPU backend takes it from each [`StepRequest`].
    fn set_lr(&mut self, _lr: f32) -> Result<()> {
        Ok(())
    }

    /// The open window's total weight as the engine holds it, for backends that keep
    /// their own copy where the step reads it (CUDA: device memory, summed there by
    /// each micro-batch). Called when the engine replaced its window (checkpoint
    /// restore, a host data-parallel step's global window). Drop mode keeps the
    /// backend's own total (see [`Backend::set_window_counts`]). The CPU backend reads
    /// [`StepRequest::total_weight`] and ignores this.
    fn mirror_window_total(&mut self, _total: f64) -> Result<()> {
        Ok(())
    }

    /// Address of the current loss scale S (an f32): device memory on a CUDA engine,
    /// so a loss kernel can read it without a sync; host memory on the CPU.
    fn loss_scale_ptr(&mut self) -> Result<*const f32>;

    /// Sums the accumulator across the ranks of `comm`, in place. On failure the
    /// accumulator is left as it was. The default goes through host copies of the
    /// whole state; backends override it with a direct path.
    fn allreduce_accumulator(&mut self, comm: &mut dyn crate::distributed::Collective) -> Result<()> {
        let mut state = self.export_state()?;
        state.fold_compensation();
        comm.allreduce_f32(&mut state.acc)?;
        self.import_state(&state)
    }

    /// Drop mode: the open window's total weight and dropped count as the backend
    /// keeps them (waits for the device). Data parallelism sums them across ranks.
    fn window_counts(&mut self) -> Result<(f64, u32)> {
        let s = self.export_state()?;
        Ok((s.window_total, s.window_dropped))
    }

    /// Drop mode: replaces the open window's total weight and dropped count (with the
    /// global ones, under data parallelism).
    fn set_window_counts(&mut self, total: f64, dropped: u32) -> Result<()> {
        let mut s = self.export_state()?;
        s.window_total = total;
        s.window_dropped = dropped;
        self.import_state(&s)
    }

    /// Fails with GACC_ERR_INVALID_STATE, naming `what`, when the engine's stream is
    /// being captured into a CUDA graph: for calls that would read back, wait or
    /// record something a replay cannot repeat. CPU engines: always fine.
    fn check_capturable(&mut self, _what: &str) -> Result<()> {
        Ok(())
    }

    /// The device collective part (NCCL) of a backend that has one (CUDA); None
    /// where it does not exist (the CPU).
    fn device_group(&mut self) -> Option<&mut dyn DeviceGroup> {
        None
    }

    /// Copies all state to the host (waits for the device).
    fn export_state(&mut self) -> Result<StateSnapshot>;

    /// Replaces all state (sizes already validated against the layout) and rewrites
    /// the working copy from the imported master weights.
    fn import_state(&mut self, snapshot: &StateSnapshot) -> Result<()>;
}

/// What a backend on a device offers a device collective group (NCCL), reached
/// through [`Backend::device_group`] only where it exists.
pub trait DeviceGroup {
    /// Makes the engine's device current on the calling thread until the returned
    /// scope is dropped (then the caller's current context is back), for a device
    /// library (NCCL) that creates a communicator for it.
    fn bind_device(&mut self) -> Result<DeviceScope>;

    /// Allocates what a device collective group needs (CUDA: the reduction buffers),
    /// before the communicator is created, so that a device too full for it fails
    /// here (GACC_ERR_OUT_OF_MEMORY) and not in the middle of joining the group.
    fn reserve_device_group(&mut self) -> Result<()>;

    /// Joins a device collective group (NCCL): rank 0's master weights go to every
    /// rank through one device all-reduce (the other ranks contribute zeros), and
    /// from now on the step takes the window total from the device (the global one
    /// that [`DeviceGroup::device_allreduce_window`] leaves there). Waits for the device.
    fn join_device_group(&mut self, comm: &mut dyn crate::distributed::DeviceCollective) -> Result<()>;

    /// Queues, on the engine's stream, the cross-rank sums of the window totals
    /// (this rank's `weight` and `microbatches`, and in drop mode the device's total
    /// and dropped count) and of the fp32 accumulator (acc - comp), into scratch
    /// buffers that replace the window only when every collective was accepted. No
    /// host synchronisation, no device-to-host copy.
    fn device_allreduce_window(
        &mut self,
        comm: &mut dyn crate::distributed::DeviceCollective,
        weight: f64,
        microbatches: u32,
    ) -> Result<()>;

    /// The global (total weight, micro-batch count) of the last window reduced by
    /// [`DeviceGroup::device_allreduce_window`] (waits for the device).
    fn device_window(&mut self) -> Result<(f64, u32)>;
}

/// What a backend is built from.
pub struct BackendInit<'a> {
    pub config: &'a Config,
    pub layout: &'a Layout,
    /// Initial fp32 parameters, `layout.numel` of them.
    pub params: &'a [f32],
}

/// Bytes of per-parameter state an engine with this configuration keeps.
pub fn bytes_per_param(config: &Config) -> usize {
    let working = config.precision.working_dtype().map_or(0, |d| d.size());
    let comp = if config.numerics.compensated { 4 } else { 0 };
    4 /* master */ + 4 /* acc */ + comp + 4 * config.optimizer.state_buffers() + working
}

fn physical_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// Fails with GACC_ERR_INVALID_ARGUMENT naming numel when `numel * bytes_each` bytes of
/// `what` cannot fit in this machine's physical memory.
fn check_host_fits(numel: usize, bytes_each: usize, what: &str) -> Result<()> {
    let need = (numel as u64).saturating_mul(bytes_each as u64);
    if let Some(have) = physical_memory_bytes() {
        if need > have {
            return Err(crate::status::Error::invalid_argument(format!(
                "numel: {numel} parameters need {need} bytes of {what}, more than this machine's {have} bytes of memory"
            )));
        }
    }
    Ok(())
}

/// Checks, before anything is allocated, that an engine of this size can fit: the
/// host always holds the fp32 initial values while the engine is built, and an
/// explicit CPU engine holds all its state on the host. (AUTO may still become a CUDA
/// engine, whose memory is checked where it is allocated; when it becomes a CPU
/// engine, `create_cpu` checks the full state.)
pub fn check_fits(config: &Config, layout: &Layout) -> Result<()> {
    check_host_fits(layout.numel, 4, "host memory for the initial values")?;
    if config.device == crate::engine::config::DeviceRequest::Cpu {
        check_host_fits(layout.numel, bytes_per_param(config), "state")?;
    }
    Ok(())
}

fn create_cpu(init: BackendInit<'_>) -> Result<(Box<dyn Backend>, Device)> {
    check_host_fits(init.layout.numel, bytes_per_param(init.config), "state")?;
    Ok((Box::new(cpu::CpuBackend::new(init)?), Device::Cpu))
}

/// Builds the backend the configuration asks for: AUTO takes CUDA device 0 when it
/// is usable and the CPU otherwise; an explicit ordinal never falls back.
pub fn create(init: BackendInit<'_>) -> Result<(Box<dyn Backend>, Device)> {
    use crate::engine::config::DeviceRequest;
    match init.config.device {
        DeviceRequest::Cpu => create_cpu(init),
        DeviceRequest::Auto => match cuda_probe(0) {
            Ok(()) => create_cuda(init, 0),
            Err(_) => create_cpu(init),
        },
        DeviceRequest::Cuda(ordinal) => {
            cuda_probe(ordinal)?;
            create_cuda(init, ordinal)
        }
    }
}

fn cuda_probe(ordinal: u32) -> Result<()> {
    cuda::probe(ordinal)
}

fn create_cuda(init: BackendInit<'_>, ordinal: u32) -> Result<(Box<dyn Backend>, Device)> {
    Ok((cuda::create(init, ordinal)?, Device::Cuda(ordinal)))
}

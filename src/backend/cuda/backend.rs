//! The CUDA backend's orchestration, generic over the device runtime.
//!
//! Buffers (all device memory, one flat allocation each): fp32 master, fp32
//! accumulator, optimizer state (0-2 fp32 buffers), the fp16/bf16 working copy, the
//! gacc_state struct, the norm partials (one double per norm block), the decay run
//! ends, and a staging buffer for gradients handed over in host memory (allocated on
//! first use).
//!
//! Launches: a micro-batch is one launch (two with drop_nonfinite_microbatches: the
//! check pass, then the gated add; plus a host-to-device copy when the gradient is
//! in host memory); a step is two (finalize, fused update) when the window's last
//! change to the accumulator was a flat micro-batch that produced the norm partials,
//! else three (norm partials first), whatever the number of tensors. A step queues
//! its work and returns: no device-to-host transfer, no synchronisation.
//!
//! Lazy zeroing (issue 14, docs/cuda.md "Bytes"): a step or gacc_zero does not
//! write zeros into the accumulator but marks it stale in the device state
//! (acc_stale); the next flat micro-batch writes instead of adding. Eager zeroing as
//! before with compensated accumulation and once gacc_accumulator_ptr was taken
//! (device flag eager_zero). What must see real zeros gets them: checkpoint export
//! (the snapshot holds zeros), the per-tensor kernel (it zeroes what no listed
//! tensor covers), an in-place booking and a device all-reduce
//! (gacc_materialize_zero first).
//!
//! Everything that changes from window to window lives in device memory, not in
//! kernel arguments: the window's total weight (added by the accumulate kernel), the
//! learning rate (gacc_set_lr queues gacc_store_lr), the step count, the loss scale.
//! So a window captured in a CUDA graph replays correctly: the arguments a replay
//! reuses are pointers, sizes, the micro-batch weights and drop mode's per-window
//! micro-batch numbers, all the same in every replay of that window.

use std::ffi::c_void;

use super::buffers::{ptr_or_null, DevBuf, DeviceBuffers};
use super::launch::{self, UpdateBuffers, UpdateKind};
use super::runtime::{DevPtr, Runtime};
use super::state::{bytes_of, DeviceState, Hyper};
use crate::backend::{
    Backend, BackendInit, DeviceGroup, GradInput, ParamBuffer, StateSnapshot, StepReport, StepRequest, TensorGrad,
};
use crate::engine::config::{Config, Dtype, Optimizer, ScalePolicy};
use crate::status::{Error, Result};

/// A CUDA engine's device state, driven through runtime `R`.
pub struct CudaBackend<R: Runtime> {
    pub(super) rt: R,
    /// Every device allocation below, freed together when the backend drops.
    pub(super) bufs: DeviceBuffers,
    pub(super) n: usize,
    pub(super) master: DevBuf,
    pub(super) acc: DevBuf,
    /// Kahan compensation (compensated_accumulation only).
    pub(super) comp: Option<DevBuf>,
    pub(super) state1: Option<DevBuf>,
    pub(super) state2: Option<DevBuf>,
    /// The fp16/bf16 working copy (not with precision FP32).
    pub(super) working: Option<Working>,
    /// One gacc_state.
    pub(super) state: DevBuf,
    partials: DevBuf,
    run_ends: DevBuf,
    n_runs: u32,
    first_decay: u32,
    /// Host gradients are copied here (allocated on the first one).
    staging: Option<DevBuf>,
    pub(super) grids: launch::Grids,
    norm_grid: u32,
    pub(super) hyper: Hyper,
    update_kind: UpdateKind,
    /// Drop mode: number of the last micro-batch within the open window
    /// (gacc_check_finite's flag value; 0 when the window is empty).
    seq: u32,
    pub(super) drop_mode: bool,
    /// Stochastic rounding: on (1) / off (0), and its seed.
    sr: u32,
    seed: u64,
    /// Device collective (NCCL): n f32 that the accumulator is reduced into (then
    /// copied into acc, whose address never changes), and the 4 doubles of window
    /// totals (allocated by gacc_set_nccl).
    pub(super) dp_scratch: Option<DevBuf>,
    pub(super) dp_totals: Option<DevBuf>,
    /// Per-tensor micro-batches: the device table and what it was built from.
    tables: super::tensors::TableCache,
    /// Eager zeroing (compensated accumulation, or gacc_accumulator_ptr taken): the
    /// host's copy of the device's eager_zero.
    eager: bool,
    /// The device accumulator may be stale (a lazy step or zero since the last
    /// launch that surely cleared the flag): what needs real zeros materialises them.
    maybe_stale: bool,
    /// The partials buffer holds the norm pass's result for the current window (the
    /// last change to acc and to the window total was a flat micro-batch that wrote
    /// them, with this window's loss scale): the step skips the norm pass.
    partials_valid: bool,
    /// Flat micro-batches produce the norm partials (off: the pre-issue-14 launch
    /// sequence, for tests and benchmarks comparing both).
    fused_norm: bool,
}

/// The working copy's element type, as the kernels number it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkingDtype {
    F16,
    BF16,
}

impl WorkingDtype {
    /// The working dtype of a precision's working copy (None: FP32, no copy).
    pub fn of(d: Option<Dtype>) -> Option<WorkingDtype> {
        match d? {
            Dtype::F16 => Some(WorkingDtype::F16),
            Dtype::BF16 => Some(WorkingDtype::BF16),
            Dtype::F32 => None,
        }
    }

    /// The kernels' `working_dtype` argument (kernels/update.cu: 1 fp16, 2 bf16).
    pub fn code(self) -> i32 {
        match self {
            WorkingDtype::F16 => 1,
            WorkingDtype::BF16 => 2,
        }
    }
}

/// The working copy: its buffer and element type.
#[derive(Clone, Copy, Debug)]
pub struct Working {
    pub buf: DevBuf,
    pub dtype: WorkingDtype,
}

/// The per-parameter buffers [`CudaBackend::new`] allocates.
struct Allocated {
    master: DevBuf,
    acc: DevBuf,
    comp: Option<DevBuf>,
    state1: Option<DevBuf>,
    state2: Option<DevBuf>,
    working: Option<Working>,
    state: DevBuf,
    partials: DevBuf,
    run_ends: DevBuf,
}

fn allocate<R: Runtime>(
    rt: &mut R,
    bufs: &mut DeviceBuffers,
    config: &Config,
    n: usize,
    norm_grid: u32,
    runs: usize,
) -> Result<Allocated> {
    let f32_bytes = n * 4;
    let master = bufs.alloc(rt, f32_bytes)?;
    let acc = bufs.alloc(rt, f32_bytes)?;
    let comp = if config.numerics.compensated { Some(bufs.alloc(rt, f32_bytes)?) } else { None };
    let n_state = config.optimizer.state_buffers();
    let state1 = if n_state >= 1 { Some(bufs.alloc(rt, f32_bytes)?) } else { None };
    let state2 = if n_state >= 2 { Some(bufs.alloc(rt, f32_bytes)?) } else { None };
    let working = match (config.precision.working_dtype(), WorkingDtype::of(config.precision.working_dtype())) {
        (Some(d), Some(dtype)) => Some(Working { buf: bufs.alloc(rt, n * d.size())?, dtype }),
        _ => None,
    };
    let state = bufs.alloc(rt, std::mem::size_of::<DeviceState>())?;
    let partials = bufs.alloc(rt, 8 * norm_grid as usize)?;
    let run_ends = bufs.alloc(rt, 8 * runs)?;
    Ok(Allocated { master, acc, comp, state1, state2, working, state, partials, run_ends })
}

/// Device bytes an engine of `n` parameters needs, the staging buffer for host
/// gradients (4 bytes per parameter, allocated on the first host micro-batch)
/// included. Not included: what gacc_set_nccl adds ([`device_group_bytes`]), checked
/// there before the communicator is created.
pub fn device_bytes(config: &Config, n: usize, runs: usize, norm_blocks: u32) -> u64 {
    let per_param = crate::backend::bytes_per_param(config) as u64 + 4 /* staging */;
    (n as u64).saturating_mul(per_param)
        + std::mem::size_of::<DeviceState>() as u64
        + 8 * u64::from(norm_blocks)
        + 8 * runs as u64
        + 7 * 256 // allocation rounding
}

/// Device bytes a device collective (NCCL) adds: the reduction scratch buffer (n
/// f32) and the window totals (4 doubles).
pub fn device_group_bytes(n: usize) -> u64 {
    (n as u64).saturating_mul(4) + 4 * 8 + 2 * 256
}

impl<R: Runtime> CudaBackend<R> {
    /// Allocates and initialises every buffer on the runtime's device.
    pub fn new(rt: R, init: BackendInit<'_>) -> Result<CudaBackend<R>> {
        let config = *init.config;
        let n = init.layout.numel;
        let mut rt = rt;
        let update_kind = match config.optimizer {
            Optimizer::AdamW { .. } => UpdateKind::AdamW,
            Optimizer::Sgd { momentum, .. } if momentum != 0.0 => UpdateKind::SgdMomentum,
            Optimizer::Sgd { .. } => UpdateKind::Sgd,
        };
        let grids = launch::Grids::new(&mut rt, n, update_kind);
        let norm_grid = grids.norm;
        let need = device_bytes(&config, n, init.layout.runs.len(), norm_grid);
        let (free, total) = rt.memory_info()?;
        if need > free {
            return Err(Error::invalid_argument(format!(
                "numel: {n} parameters need {need} bytes of device memory, more than the {free} bytes free \
                 ({total} total) on {}",
                rt.describe()
            )));
        }
        let mut bufs = DeviceBuffers::default();
        let a = match allocate(&mut rt, &mut bufs, &config, n, norm_grid, init.layout.runs.len()) {
            Ok(a) => a,
            Err(e) => {
                // SAFETY: allocated on rt just now, never handed out.
                unsafe { bufs.free_all(&mut rt) };
                return Err(e);
            }
        };
        let mut backend = CudaBackend {
            rt,
            bufs,
            n,
            master: a.master,
            acc: a.acc,
            comp: a.comp,
            state1: a.state1,
            state2: a.state2,
            working: a.working,
            state: a.state,
            partials: a.partials,
            run_ends: a.run_ends,
            n_runs: init.layout.runs.len() as u32,
            first_decay: u32::from(init.layout.runs.first().is_some_and(|r| r.decay)),
            staging: None,
            grids,
            norm_grid,
            hyper: hyper_of(&config),
            update_kind,
            seq: 0,
            drop_mode: config.numerics.drop_nonfinite,
            sr: u32::from(config.numerics.stochastic_rounding),
            seed: config.numerics.seed,
            dp_scratch: None,
            dp_totals: None,
            tables: Default::default(),
            eager: config.numerics.compensated,
            maybe_stale: false,
            partials_valid: false,
            fused_norm: true,
        };
        let f32_bytes = n * 4;
        let run_ends: Vec<u64> = init.layout.runs.iter().map(|r| r.end as u64).collect();

        let initial = DeviceState {
            loss_scale: if config.precision.scales_loss() { config.scaler.init_scale } else { 1.0 },
            grad_norm: f32::NAN,
            clip_coef: 1.0,
            hysteresis_left: config.scaler.hysteresis,
            lr: config.lr,
            eager_zero: u32::from(config.numerics.compensated),
            ..DeviceState::default()
        };
        // SAFETY: every destination was just allocated with at least these sizes.
        unsafe {
            backend.rt.copy_h2d(backend.master.ptr(), init.params.as_ptr() as *const u8, f32_bytes)?;
            backend.rt.memset(backend.acc.ptr(), 0, f32_bytes)?;
            for s in [backend.comp, backend.state1, backend.state2].into_iter().flatten() {
                backend.rt.memset(s.ptr(), 0, f32_bytes)?;
            }
            backend.rt.copy_h2d(
                backend.state.ptr(),
                bytes_of(&initial).as_ptr(),
                std::mem::size_of::<DeviceState>(),
            )?;
            backend.rt.memset(backend.partials.ptr(), 0, 8 * norm_grid as usize)?;
            backend.rt.copy_h2d(backend.run_ends.ptr(), run_ends.as_ptr() as *const u8, 8 * run_ends.len())?;
        }
        backend.refresh_working_copy()?;
        // Initial uploads are from host memory that dies with this call.
        backend.rt.synchronize()?;
        Ok(backend)
    }

    /// The runtime (tests inspect the shim's launch log; `test-support` builds only).
    #[cfg(feature = "test-support")]
    pub fn runtime(&self) -> &R {
        &self.rt
    }

    /// The runtime, mutably (benchmarks time and synchronise through it;
    /// `test-support` builds only).
    #[cfg(feature = "test-support")]
    pub fn runtime_mut(&mut self) -> &mut R {
        &mut self.rt
    }

    /// The grid of every kernel (tests check the launches against it; `test-support`
    /// builds only).
    #[cfg(feature = "test-support")]
    pub fn grids(&self) -> launch::Grids {
        self.grids
    }

    /// Whether flat micro-batches produce the norm partials (default on). Off gives
    /// the launch sequence from before issue 14 (a separate norm pass in every step),
    /// so tests and benchmarks can compare both; every result is the same.
    pub fn set_fused_norm(&mut self, on: bool) {
        self.fused_norm = on;
        self.partials_valid = false;
    }

    /// The device address of the accumulator, without switching to eager zeroing as
    /// gacc_accumulator_ptr does (tests poison it to show what a kernel reads).
    pub fn accumulator_device_ptr(&self) -> DevPtr {
        self.acc.ptr()
    }

    /// Makes a possibly stale accumulator real zeros on the device (one launch,
    /// which writes only when the device flag says stale); `make_eager` also
    /// switches the steps to eager zeroing for good. Under capture the launch is
    /// recorded even when the host thinks acc is not stale: a replay may follow a step.
    pub(super) fn materialize_zeros(&mut self, make_eager: bool) -> Result<()> {
        if self.eager || !(self.maybe_stale || make_eager || self.rt.capturing()?) {
            return Ok(());
        }
        // SAFETY: acc holds n f32, state is this engine's gacc_state.
        unsafe {
            launch::materialize_zero(
                &mut self.rt,
                self.acc.ptr(),
                self.n,
                self.state.ptr(),
                make_eager,
                self.grids.materialize,
            )?
        };
        self.maybe_stale = false;
        Ok(())
    }

    /// An import wrote acc and the device state (acc_stale = 0): nothing is stale and
    /// the partials do not describe the imported window.
    pub(super) fn clear_stale_after_import(&mut self) {
        self.maybe_stale = false;
        self.partials_valid = false;
    }

    /// Something other than a partials-producing flat micro-batch changed the
    /// accumulator or the window total: the next step runs the norm pass.
    pub(super) fn invalidate_partials(&mut self) {
        self.partials_valid = false;
    }

    pub(super) fn refresh_working_copy(&mut self) -> Result<()> {
        let Some(working) = self.working else {
            return Ok(());
        };
        // SAFETY: master and working hold n elements.
        unsafe {
            launch::write_working(
                &mut self.rt,
                self.master.ptr(),
                working.buf.ptr(),
                working.dtype.code(),
                self.n,
                self.grids.write_working,
                self.state.ptr(),
                self.sr,
                self.seed,
            )
        }
    }

    pub(super) fn read_state(&mut self) -> Result<DeviceState> {
        let mut st = DeviceState::default();
        // SAFETY: state holds one DeviceState; st is plain data.
        unsafe {
            self.rt.copy_d2h(
                &mut st as *mut DeviceState as *mut u8,
                self.state.ptr(),
                std::mem::size_of::<DeviceState>(),
            )?
        };
        Ok(st)
    }

    /// Replaces the device's gacc_state (the copy waits for the host source).
    pub(super) fn write_state(&mut self, st: &DeviceState) -> Result<()> {
        // SAFETY: state holds one DeviceState.
        unsafe { self.rt.copy_h2d(self.state.ptr(), bytes_of(st).as_ptr(), std::mem::size_of::<DeviceState>()) }
    }

    /// Copies a buffer of n f32 to the host.
    pub(super) fn read_f32(&mut self, src: DevBuf, out: &mut [f32]) -> Result<()> {
        if out.len() * 4 > src.bytes() {
            return Err(Error::internal("device read larger than its buffer"));
        }
        // SAFETY: src holds at least out.len() f32 (checked above).
        unsafe { self.rt.copy_d2h(out.as_mut_ptr() as *mut u8, src.ptr(), out.len() * 4) }
    }

    /// Copies host f32 into a device buffer.
    pub(super) fn write_f32(&mut self, dst: DevBuf, src: &[f32]) -> Result<()> {
        if src.len() * 4 > dst.bytes() {
            return Err(Error::internal("device write larger than its buffer"));
        }
        // SAFETY: dst holds at least src.len() f32 (checked above).
        unsafe { self.rt.copy_h2d(dst.ptr(), src.as_ptr() as *const u8, src.len() * 4) }
    }

    /// The device collective's buffers (scratch of n f32, 4 doubles of totals),
    /// allocated on first use.
    pub(super) fn dp_buffers(&mut self) -> Result<(DevBuf, DevBuf)> {
        if self.dp_scratch.is_none() {
            self.dp_scratch = Some(self.bufs.alloc(&mut self.rt, self.n * 4)?);
        }
        if self.dp_totals.is_none() {
            self.dp_totals = Some(self.bufs.alloc(&mut self.rt, 4 * 8)?);
        }
        match (self.dp_scratch, self.dp_totals) {
            (Some(scratch), Some(totals)) => Ok((scratch, totals)),
            _ => Err(Error::internal("device collective buffers missing")),
        }
    }

    fn staging_buffer(&mut self) -> Result<DevPtr> {
        staging_of(&mut self.staging, &mut self.rt, &mut self.bufs, self.n)
    }

    /// The address of a field of the device's gacc_state.
    pub(super) fn state_field(&self, offset: usize) -> DevPtr {
        self.state.at(offset)
    }
}

/// The staging buffer for host gradients (4 bytes per parameter), allocated on first use.
fn staging_of<R: Runtime>(
    staging: &mut Option<DevBuf>,
    rt: &mut R,
    bufs: &mut DeviceBuffers,
    n: usize,
) -> Result<DevPtr> {
    if staging.is_none() {
        *staging = Some(bufs.alloc(rt, n * 4)?);
    }
    Ok(ptr_or_null(*staging))
}

fn hyper_of(c: &Config) -> Hyper {
    let mut h = Hyper {
        max_norm: c.max_grad_norm.unwrap_or(0.0),
        scales_loss: u32::from(c.precision.scales_loss()),
        growth_factor: c.scaler.growth_factor,
        backoff_factor: c.scaler.backoff_factor,
        growth_interval: c.scaler.growth_interval,
        hysteresis: c.scaler.hysteresis,
        consecutive_hysteresis: u32::from(c.scaler.consecutive_hysteresis),
        min_scale: c.scaler.min_scale,
        max_scale: c.scaler.max_scale,
        loss_scale_policy: u32::from(c.scaler.policy == ScalePolicy::DeepSpeed),
        ..Hyper::default()
    };
    match c.optimizer {
        Optimizer::AdamW { beta1, beta2, eps, weight_decay } => {
            h.optimizer = 1;
            h.beta1 = beta1;
            h.beta2 = beta2;
            h.eps = eps;
            h.weight_decay = weight_decay;
        }
        Optimizer::Sgd { momentum, nesterov, weight_decay } => {
            h.optimizer = 0;
            h.momentum = momentum;
            h.nesterov = u32::from(nesterov);
            h.weight_decay = weight_decay;
        }
    }
    h
}

impl<R: Runtime> Drop for CudaBackend<R> {
    fn drop(&mut self) {
        // Not synchronize(): the caller's stream may already be destroyed.
        let _ = self.rt.finish();
        // SAFETY: every buffer was allocated by this runtime and is never used after drop.
        unsafe { self.bufs.free_all(&mut self.rt) };
    }
}

impl<R: Runtime> Backend for CudaBackend<R> {
    fn describe(&self) -> String {
        self.rt.describe()
    }

    unsafe fn accumulate(&mut self, grad: &GradInput, mul: f32, weight: f64) -> Result<()> {
        let bytes = grad.numel * grad.dtype.size();
        let src = if self.rt.is_device_pointer(grad.ptr)? {
            grad.ptr as DevPtr
        } else {
            self.check_capturable("gacc_microbatch with a gradient in host memory")?;
            let staging = self.staging_buffer()?;
            // SAFETY: the caller provides numel readable elements; staging holds 4n bytes.
            self.rt.copy_h2d(staging, grad.ptr as *const u8, bytes)?;
            staging
        };
        let state = self.state.ptr();
        let comp = ptr_or_null(self.comp);
        // The engine checked numel == n: a full-buffer pass, which can produce the
        // norm partials (not with Kahan compensation: that keeps the norm pass).
        let fused = self.fused_norm && comp == 0 && grad.numel == self.n;
        let partials = if fused { self.partials.ptr() } else { 0 };
        let mut opts = launch::AccumulateOptions { comp, state, seq: 0, weight, partials };
        if self.drop_mode {
            // Numbered within the window, never 0: bad_seq is 0 when a window starts.
            self.seq = self.seq.wrapping_add(1).max(1);
            launch::check_finite(&mut self.rt, src, grad.dtype, grad.numel, state, self.seq, self.grids.check_finite)?;
            opts.seq = self.seq;
        }
        let grid = if fused { self.norm_grid } else { self.grids.accumulate(grad.dtype) };
        launch::accumulate(&mut self.rt, self.acc.ptr(), src, grad.dtype, grad.numel, mul, grid, &opts)?;
        self.partials_valid = fused;
        // A kept micro-batch clears the device's stale flag; in drop mode it may have
        // been dropped, so the flag may still be set.
        if !self.drop_mode {
            self.maybe_stale = false;
        }
        Ok(())
    }

    unsafe fn accumulate_tensors(&mut self, grads: &[TensorGrad], mul: f32, weight: f64) -> Result<()> {
        use super::tensors;
        // A stale accumulator is handled by the kernel itself: listed tensors are
        // written, the rest zeroed (the table's gaps). No norm partials from it.
        self.invalidate_partials();
        let (acc, comp, state, n) = (self.acc.ptr(), ptr_or_null(self.comp), self.state.ptr(), self.n);
        let staging = &mut self.staging;
        let p = tensors::prepare(&mut self.rt, &mut self.bufs, &mut self.tables, grads, acc, n, |rt, bufs| {
            staging_of(staging, rt, bufs, n)
        })?;
        let mut seq = 0;
        if self.drop_mode {
            // Numbered within the window, never 0: bad_seq is 0 when a window starts.
            self.seq = self.seq.wrapping_add(1).max(1);
            seq = self.seq;
            tensors::check_finite(&mut self.rt, &p, state, seq)?;
        }
        tensors::accumulate(&mut self.rt, &p, acc, comp, mul, state, seq, weight)?;
        // A kept micro-batch that listed a tensor cleared the device's stale flag.
        if !self.drop_mode && !grads.is_empty() {
            self.maybe_stale = false;
        }
        Ok(())
    }

    /// An in-place micro-batch moves no data, but its weight joins the device's
    /// window total (the step reads that, not a host value): one booking launch.
    fn book_inplace(&mut self, weight: f64) -> Result<()> {
        // The host wrote acc itself (into zeros, once gacc_accumulator_ptr switched to
        // eager zeroing); the partials do not describe it.
        self.materialize_zeros(false)?;
        self.invalidate_partials();
        let none = super::tensors::Prepared { table: 0, n_tensors: 0, n_chunks: 0 };
        let (acc, comp, state) = (self.acc.ptr(), ptr_or_null(self.comp), self.state.ptr());
        // SAFETY: with no chunk the kernel touches only the state (thread 0 books).
        unsafe { super::tensors::accumulate(&mut self.rt, &none, acc, comp, 1.0, state, 0, weight) }
    }

    fn accumulator_ptr(&mut self, offset: usize) -> Result<*mut f32> {
        if offset >= self.n {
            return Err(Error::internal("accumulator offset outside the layout"));
        }
        // In-place hosts write acc themselves and rely on it being zero whenever a
        // window opens: real zeros now, and eager zeroing from here on.
        if !self.eager {
            self.materialize_zeros(true)?;
            self.eager = true;
        }
        Ok(self.acc.at(4 * offset) as *mut f32)
    }

    fn zero_window(&mut self) -> Result<()> {
        self.invalidate_partials();
        if self.eager {
            // SAFETY: acc (and comp) hold n f32.
            unsafe {
                self.rt.memset(self.acc.ptr(), 0, self.n * 4)?;
                if let Some(comp) = self.comp {
                    self.rt.memset(comp.ptr(), 0, self.n * 4)?;
                }
            }
        } else {
            // Lazy: acc is marked stale (any nonzero word: a byte memset of 0x01).
            let stale = self.state_field(std::mem::offset_of!(DeviceState, acc_stale));
            // SAFETY: the field is one u32 inside the DeviceState at `state`.
            unsafe { self.rt.memset(stale, 1, 4)? };
            self.maybe_stale = true;
        }
        // The device's window total, dropped count and drop mode's flag word (0.0 is
        // all-zero bytes): stream-ordered memsets, no sync.
        let field = |offset: usize| self.state_field(offset);
        let (total, dropped, bad_seq) = (
            field(std::mem::offset_of!(DeviceState, window_total)),
            field(std::mem::offset_of!(DeviceState, window_dropped)),
            field(std::mem::offset_of!(DeviceState, bad_seq)),
        );
        // SAFETY: the fields lie inside the one DeviceState at `state`.
        unsafe {
            self.rt.memset(total, 0, 8)?;
            self.rt.memset(dropped, 0, 4)?;
            self.rt.memset(bad_seq, 0, 4)?;
        }
        self.seq = 0;
        Ok(())
    }

    /// The request's total weight and learning rate are not used: the kernels read
    /// the device's (see the module docs).
    fn step(&mut self, _request: &StepRequest) -> Result<()> {
        let buffers = UpdateBuffers {
            acc: self.acc.ptr(),
            comp: ptr_or_null(self.comp),
            master: self.master.ptr(),
            state1: ptr_or_null(self.state1),
            state2: ptr_or_null(self.state2),
            working: ptr_or_null(self.working.map(|w| w.buf)),
            working_dtype: self.working.map_or(0, |w| w.dtype.code()),
            state: self.state.ptr(),
            run_ends: self.run_ends.ptr(),
            n_runs: self.n_runs,
            first_decay: self.first_decay,
            sr: self.sr,
            seed: self.seed,
        };
        // The next window's micro-batches are numbered from 1 again (finalize resets
        // the device's flag word).
        self.seq = 0;
        let fused = std::mem::replace(&mut self.partials_valid, false);
        // SAFETY: every buffer was allocated for n elements (partials for norm_grid).
        unsafe {
            if !fused {
                launch::norm_partials(
                    &mut self.rt,
                    buffers.acc,
                    buffers.comp,
                    self.n,
                    buffers.state,
                    self.partials.ptr(),
                    self.norm_grid,
                )?;
            }
            launch::finalize(&mut self.rt, buffers.state, self.partials.ptr(), self.norm_grid, &self.hyper)?;
            launch::update(&mut self.rt, self.update_kind, &buffers, self.n, self.grids.update)?;
        }
        // gacc_finalize marked acc stale (lazy mode).
        self.maybe_stale = !self.eager;
        Ok(())
    }

    fn last_report(&mut self) -> Result<StepReport> {
        let st = self.read_state()?;
        Ok(StepReport {
            applied: st.applied != 0,
            grad_norm: st.grad_norm,
            clip_coef: st.clip_coef,
            loss_scale: st.loss_scale,
            step: st.step,
            window_total: st.last_total,
            dropped: st.last_dropped,
        })
    }

    fn read_params(&mut self, out: &mut [f32]) -> Result<()> {
        self.read_f32(self.master, out)
    }

    fn write_params(&mut self, src: &[f32]) -> Result<()> {
        self.write_f32(self.master, src)?;
        self.refresh_working_copy()
    }

    fn param_ptr(&mut self, offset: usize, which: ParamBuffer) -> Option<*mut c_void> {
        match which {
            ParamBuffer::Master => Some(self.master.at(4 * offset) as *mut c_void),
            ParamBuffer::Working => self.working.map(|w| w.buf.at(2 * offset) as *mut c_void),
        }
    }

    fn loss_scale(&mut self) -> Result<f32> {
        Ok(self.read_state()?.loss_scale)
    }

    fn set_stream(&mut self, stream: *mut c_void) -> Result<()> {
        self.rt.set_stream(stream)
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        // SAFETY: state is this engine's gacc_state.
        unsafe { launch::store_lr(&mut self.rt, self.state.ptr(), lr) }
    }

    fn mirror_window_total(&mut self, total: f64) -> Result<()> {
        if self.drop_mode {
            // The device's total is the kept micro-batches' (set_window_counts).
            return Ok(());
        }
        self.invalidate_partials();
        let field = self.state_field(std::mem::offset_of!(DeviceState, window_total));
        // SAFETY: the field is one f64 inside the DeviceState at `state`.
        unsafe { self.rt.copy_h2d(field, total.to_le_bytes().as_ptr(), 8) }
    }

    fn window_counts(&mut self) -> Result<(f64, u32)> {
        let st = self.read_state()?;
        Ok((st.window_total, st.window_dropped))
    }

    fn set_window_counts(&mut self, total: f64, dropped: u32) -> Result<()> {
        self.invalidate_partials();
        let mut st = self.read_state()?;
        st.window_total = total;
        st.window_dropped = dropped;
        self.write_state(&st)
    }

    fn check_capturable(&mut self, what: &str) -> Result<()> {
        if self.rt.capturing()? {
            return Err(Error::invalid_state(format!(
                "{what} cannot be captured into a CUDA graph (the engine's stream is capturing); only \
                 gacc_microbatch with a device gradient and gacc_step without info can be"
            )));
        }
        Ok(())
    }

    fn device_group(&mut self) -> Option<&mut dyn DeviceGroup> {
        Some(self)
    }

    fn loss_scale_ptr(&mut self) -> Result<*const f32> {
        Ok(self.state_field(std::mem::offset_of!(DeviceState, loss_scale)) as *const f32)
    }

    fn export_state(&mut self) -> Result<StateSnapshot> {
        self.export()
    }

    fn import_state(&mut self, s: &StateSnapshot) -> Result<()> {
        self.import(s)
    }
}

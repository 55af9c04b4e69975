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
//! in host memory); a step is three (norm partials, finalize, fused
//! update), whatever the number of tensors. A step queues its work and returns: no
//! device-to-host transfer, no synchronisation.
//!
//! Everything that changes from window to window lives in device memory, not in
//! kernel arguments: the window's total weight (added by the accumulate kernel), the
//! learning rate (gacc_set_lr queues gacc_store_lr), the step count, the loss scale.
//! So a window captured in a CUDA graph replays correctly: the arguments a replay
//! reuses are pointers, sizes, the micro-batch weights and drop mode's per-window
//! micro-batch numbers, all the same in every replay of that window.

use std::ffi::c_void;

use super::launch::{self, UpdateBuffers, UpdateKind};
use super::runtime::{DevPtr, Runtime};
use super::state::{bytes_of, DeviceState, Hyper};
use crate::backend::{
    Backend, BackendInit, DeviceScope, GradInput, ParamBuffer, StateSnapshot, StepReport, StepRequest, TensorGrad,
};
use crate::engine::config::{Config, Optimizer, Precision, ScalePolicy};
use crate::status::{Error, Result};

/// A CUDA engine's device state, driven through runtime `R`.
pub struct CudaBackend<R: Runtime> {
    rt: R,
    n: usize,
    master: DevPtr,
    acc: DevPtr,
    /// Kahan compensation (0 unless compensated_accumulation).
    comp: DevPtr,
    state1: DevPtr,
    state2: DevPtr,
    working: DevPtr,
    working_dtype: i32,
    state: DevPtr,
    partials: DevPtr,
    run_ends: DevPtr,
    n_runs: u32,
    first_decay: u32,
    staging: DevPtr,
    grids: launch::Grids,
    norm_grid: u32,
    hyper: Hyper,
    update_kind: UpdateKind,
    /// Drop mode: number of the last micro-batch within the open window
    /// (gacc_check_finite's flag value; 0 when the window is empty).
    seq: u32,
    drop_mode: bool,
    /// Stochastic rounding: on (1) / off (0), and its seed.
    sr: u32,
    seed: u64,
    /// Device collective (NCCL): n f32 that the accumulator is reduced into (then
    /// copied into acc, whose address never changes), and the 4 doubles of window totals (0 until used).
    dp_scratch: DevPtr,
    dp_totals: DevPtr,
    /// Per-tensor micro-batches: the device table and what it was built from.
    tables: super::tensors::TableCache,
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
        let mut backend = CudaBackend {
            rt,
            n,
            master: 0,
            acc: 0,
            comp: 0,
            state1: 0,
            state2: 0,
            working: 0,
            working_dtype: 0,
            state: 0,
            partials: 0,
            run_ends: 0,
            n_runs: init.layout.runs.len() as u32,
            first_decay: u32::from(init.layout.runs.first().is_some_and(|r| r.decay)),
            staging: 0,
            grids,
            norm_grid,
            hyper: hyper_of(&config),
            update_kind,
            seq: 0,
            drop_mode: config.numerics.drop_nonfinite,
            sr: u32::from(config.numerics.stochastic_rounding),
            seed: config.numerics.seed,
            dp_scratch: 0,
            dp_totals: 0,
            tables: Default::default(),
        };
        let need = device_bytes(&config, n, init.layout.runs.len(), norm_grid);
        let (free, total) = backend.rt.memory_info()?;
        if need > free {
            return Err(Error::invalid_argument(format!(
                "numel: {n} parameters need {need} bytes of device memory, more than the {free} bytes free \
                 ({total} total) on {}",
                backend.rt.describe()
            )));
        }
        let f32_bytes = n * 4;
        backend.master = backend.rt.alloc(f32_bytes)?;
        backend.acc = backend.rt.alloc(f32_bytes)?;
        if config.numerics.compensated {
            backend.comp = backend.rt.alloc(f32_bytes)?;
        }
        let n_state = config.optimizer.state_buffers();
        if n_state >= 1 {
            backend.state1 = backend.rt.alloc(f32_bytes)?;
        }
        if n_state >= 2 {
            backend.state2 = backend.rt.alloc(f32_bytes)?;
        }
        if let Some(d) = config.precision.working_dtype() {
            backend.working = backend.rt.alloc(n * d.size())?;
            backend.working_dtype = match config.precision {
                Precision::Fp16 => 1,
                _ => 2,
            };
        }
        backend.state = backend.rt.alloc(std::mem::size_of::<DeviceState>())?;
        backend.partials = backend.rt.alloc(8 * norm_grid as usize)?;
        let run_ends: Vec<u64> = init.layout.runs.iter().map(|r| r.end as u64).collect();
        backend.run_ends = backend.rt.alloc(8 * run_ends.len())?;

        let initial = DeviceState {
            loss_scale: if config.precision.scales_loss() { config.scaler.init_scale } else { 1.0 },
            grad_norm: f32::NAN,
            clip_coef: 1.0,
            hysteresis_left: config.scaler.hysteresis,
            lr: config.lr,
            ..DeviceState::default()
        };
        // SAFETY: every destination was just allocated with at least these sizes.
        unsafe {
            backend.rt.copy_h2d(backend.master, init.params.as_ptr() as *const u8, f32_bytes)?;
            backend.rt.memset(backend.acc, 0, f32_bytes)?;
            for s in [backend.comp, backend.state1, backend.state2] {
                if s != 0 {
                    backend.rt.memset(s, 0, f32_bytes)?;
                }
            }
            backend.rt.copy_h2d(backend.state, bytes_of(&initial).as_ptr(), std::mem::size_of::<DeviceState>())?;
            backend.rt.memset(backend.partials, 0, 8 * norm_grid as usize)?;
            backend.rt.copy_h2d(backend.run_ends, run_ends.as_ptr() as *const u8, 8 * run_ends.len())?;
        }
        backend.refresh_working_copy()?;
        // Initial uploads are from host memory that dies with this call.
        backend.rt.synchronize()?;
        Ok(backend)
    }

    /// The runtime (tests inspect the shim's launch log).
    pub fn runtime(&self) -> &R {
        &self.rt
    }

    /// The runtime, mutably (benchmarks time and synchronise through it).
    pub fn runtime_mut(&mut self) -> &mut R {
        &mut self.rt
    }

    /// The grid of every kernel.
    pub fn grids(&self) -> launch::Grids {
        self.grids
    }

    fn refresh_working_copy(&mut self) -> Result<()> {
        if self.working == 0 {
            return Ok(());
        }
        // SAFETY: master and working hold n elements.
        unsafe {
            launch::write_working(
                &mut self.rt,
                self.master,
                self.working,
                self.working_dtype,
                self.n,
                self.grids.write_working,
                self.state,
                self.sr,
                self.seed,
            )
        }
    }

    fn read_state(&mut self) -> Result<DeviceState> {
        let mut st = DeviceState::default();
        // SAFETY: state holds one DeviceState; st is plain data.
        unsafe {
            self.rt.copy_d2h(&mut st as *mut DeviceState as *mut u8, self.state, std::mem::size_of::<DeviceState>())?
        };
        Ok(st)
    }

    fn read_f32(&mut self, src: DevPtr, out: &mut [f32]) -> Result<()> {
        // SAFETY: src holds out.len() f32 (callers pass engine buffers of n).
        unsafe { self.rt.copy_d2h(out.as_mut_ptr() as *mut u8, src, out.len() * 4) }
    }

    fn dp_buffers(&mut self) -> Result<(DevPtr, DevPtr)> {
        if self.dp_scratch == 0 {
            self.dp_scratch = self.rt.alloc(self.n * 4)?;
        }
        if self.dp_totals == 0 {
            self.dp_totals = self.rt.alloc(4 * 8)?;
        }
        Ok((self.dp_scratch, self.dp_totals))
    }

    fn staging_buffer(&mut self) -> Result<DevPtr> {
        if self.staging == 0 {
            self.staging = self.rt.alloc(self.n * 4)?;
        }
        Ok(self.staging)
    }
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
        drop_nonfinite: u32::from(c.numerics.drop_nonfinite),
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
        let ptrs = [
            self.master,
            self.acc,
            self.comp,
            self.state1,
            self.state2,
            self.working,
            self.state,
            self.partials,
            self.run_ends,
            self.staging,
            self.dp_scratch,
            self.dp_totals,
            self.tables.device_table(),
        ];
        for p in ptrs {
            if p != 0 {
                // SAFETY: allocated by this runtime, never used after drop.
                unsafe { self.rt.free(p) };
            }
        }
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
        let mut opts = launch::AccumulateOptions { comp: self.comp, state: self.state, seq: 0, weight };
        if self.drop_mode {
            // Numbered within the window, never 0: bad_seq is 0 when a window starts.
            self.seq = self.seq.wrapping_add(1).max(1);
            launch::check_finite(
                &mut self.rt,
                src,
                grad.dtype,
                grad.numel,
                self.state,
                self.seq,
                self.grids.check_finite,
            )?;
            opts.seq = self.seq;
        }
        launch::accumulate(
            &mut self.rt,
            self.acc,
            src,
            grad.dtype,
            grad.numel,
            mul,
            self.grids.accumulate(grad.dtype),
            &opts,
        )
    }

    unsafe fn accumulate_tensors(&mut self, grads: &[TensorGrad], mul: f32, weight: f64) -> Result<()> {
        use super::tensors;
        let acc = self.acc;
        let p = tensors::prepare(&mut self.rt, &mut self.tables, grads, acc, |rt| {
            if self.staging == 0 {
                self.staging = rt.alloc(self.n * 4)?;
            }
            Ok(self.staging)
        })?;
        let mut seq = 0;
        if self.drop_mode {
            // Numbered within the window, never 0: bad_seq is 0 when a window starts.
            self.seq = self.seq.wrapping_add(1).max(1);
            seq = self.seq;
            tensors::check_finite(&mut self.rt, &p, self.state, seq)?;
        }
        tensors::accumulate(&mut self.rt, &p, acc, self.comp, mul, self.state, seq, weight)
    }

    /// An in-place micro-batch moves no data, but its weight joins the device's
    /// window total (the step reads that, not a host value): one booking launch.
    fn book_inplace(&mut self, weight: f64) -> Result<()> {
        let none = super::tensors::Prepared { table: 0, n_tensors: 0, n_chunks: 0 };
        // SAFETY: with no chunk the kernel touches only the state (thread 0 books).
        unsafe { super::tensors::accumulate(&mut self.rt, &none, self.acc, self.comp, 1.0, self.state, 0, weight) }
    }

    fn accumulator_ptr(&mut self, offset: usize) -> Result<*mut f32> {
        if offset >= self.n {
            return Err(Error::internal("accumulator offset outside the layout"));
        }
        Ok((self.acc + 4 * offset as u64) as *mut f32)
    }

    fn zero_window(&mut self) -> Result<()> {
        // SAFETY: acc (and comp) hold n f32.
        unsafe {
            self.rt.memset(self.acc, 0, self.n * 4)?;
            if self.comp != 0 {
                self.rt.memset(self.comp, 0, self.n * 4)?;
            }
        }
        // The device's window total, dropped count and drop mode's flag word (0.0 is
        // all-zero bytes): stream-ordered memsets, no sync.
        let field = |offset: usize| self.state + offset as u64;
        // SAFETY: the fields lie inside the one DeviceState at `state`.
        unsafe {
            self.rt.memset(field(std::mem::offset_of!(DeviceState, window_total)), 0, 8)?;
            self.rt.memset(field(std::mem::offset_of!(DeviceState, window_dropped)), 0, 4)?;
            self.rt.memset(field(std::mem::offset_of!(DeviceState, bad_seq)), 0, 4)?;
        }
        self.seq = 0;
        Ok(())
    }

    /// The request's total weight and learning rate are not used: the kernels read
    /// the device's (see the module docs).
    fn step(&mut self, _request: &StepRequest) -> Result<()> {
        let buffers = UpdateBuffers {
            acc: self.acc,
            comp: self.comp,
            master: self.master,
            state1: self.state1,
            state2: self.state2,
            working: self.working,
            working_dtype: self.working_dtype,
            state: self.state,
            run_ends: self.run_ends,
            n_runs: self.n_runs,
            first_decay: self.first_decay,
            sr: self.sr,
            seed: self.seed,
        };
        // The next window's micro-batches are numbered from 1 again (finalize resets
        // the device's flag word).
        self.seq = 0;
        // SAFETY: every buffer was allocated for n elements (partials for norm_grid).
        unsafe {
            launch::norm_partials(
                &mut self.rt,
                self.acc,
                self.comp,
                self.n,
                self.state,
                self.partials,
                self.norm_grid,
            )?;
            launch::finalize(&mut self.rt, self.state, self.partials, self.norm_grid, &self.hyper)?;
            launch::update(&mut self.rt, self.update_kind, &buffers, self.n, self.grids.update)
        }
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
        // SAFETY: master holds n f32; src has n (checked by the engine).
        unsafe { self.rt.copy_h2d(self.master, src.as_ptr() as *const u8, self.n * 4)? };
        self.refresh_working_copy()
    }

    fn param_ptr(&mut self, offset: usize, which: ParamBuffer) -> Option<*mut c_void> {
        match which {
            ParamBuffer::Master => Some((self.master + 4 * offset as u64) as *mut c_void),
            ParamBuffer::Working if self.working != 0 => Some((self.working + 2 * offset as u64) as *mut c_void),
            ParamBuffer::Working => None,
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
        unsafe { launch::store_lr(&mut self.rt, self.state, lr) }
    }

    fn mirror_window_total(&mut self, total: f64) -> Result<()> {
        if self.drop_mode {
            // The device's total is the kept micro-batches' (set_window_counts).
            return Ok(());
        }
        let field = self.state + std::mem::offset_of!(DeviceState, window_total) as u64;
        // SAFETY: the field is one f64 inside the DeviceState at `state`.
        unsafe { self.rt.copy_h2d(field, total.to_le_bytes().as_ptr(), 8) }
    }

    fn window_counts(&mut self) -> Result<(f64, u32)> {
        let st = self.read_state()?;
        Ok((st.window_total, st.window_dropped))
    }

    fn set_window_counts(&mut self, total: f64, dropped: u32) -> Result<()> {
        let mut st = self.read_state()?;
        st.window_total = total;
        st.window_dropped = dropped;
        // SAFETY: state holds one DeviceState (the copy waits for the host source).
        unsafe { self.rt.copy_h2d(self.state, bytes_of(&st).as_ptr(), std::mem::size_of::<DeviceState>()) }
    }

    fn bind_device(&mut self) -> Result<DeviceScope> {
        self.rt.enter()
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

    fn reserve_device_group(&mut self) -> Result<()> {
        if self.dp_scratch == 0 || self.dp_totals == 0 {
            let need = device_group_bytes(self.n);
            let (free, total) = self.rt.memory_info()?;
            if need > free {
                return Err(Error::out_of_memory(format!(
                    "gacc_set_nccl: the NCCL reduction buffers of {} parameters need {need} bytes of device memory, \
                     more than the {free} bytes free ({total} total) on {}",
                    self.n,
                    self.rt.describe()
                )));
            }
        }
        self.dp_buffers().map(|_| ())
    }

    fn join_device_group(&mut self, comm: &mut dyn crate::distributed::DeviceCollective) -> Result<()> {
        let (scratch, _) = self.dp_buffers()?;
        let _cx = self.rt.enter()?;
        let stream = self.rt.stream_handle();
        // SAFETY: scratch and master hold n f32 on this device.
        unsafe {
            if comm.rank() == 0 {
                self.rt.copy_d2d(scratch, self.master, self.n * 4)?;
            } else {
                self.rt.memset(scratch, 0, self.n * 4)?;
            }
            comm.allreduce(scratch, scratch, self.n, false, stream)?;
            self.rt.copy_d2d(self.master, scratch, self.n * 4)?;
        }
        self.refresh_working_copy()?;
        self.rt.synchronize()?;
        self.hyper.device_total = 1;
        Ok(())
    }

    fn device_allreduce_window(
        &mut self,
        comm: &mut dyn crate::distributed::DeviceCollective,
        _weight: f64,
        microbatches: u32,
    ) -> Result<()> {
        let (scratch, totals) = self.dp_buffers()?;
        let _cx = self.rt.enter()?;
        let stream = self.rt.stream_handle();
        // SAFETY: totals holds 4 doubles, scratch/acc/comp n f32, state one gacc_state,
        // all on this device; everything is queued on the engine's stream.
        unsafe {
            // The rank's total is the device's (equal to the host's `_weight` outside
            // drop mode), so a captured window packs the replay's own.
            launch::dp_pack_totals(&mut self.rt, totals, self.state, microbatches)?;
            comm.allreduce(totals, totals, 4, true, stream)?;
            if self.comp != 0 {
                launch::dp_fold(&mut self.rt, scratch, self.acc, self.comp, self.n, self.grids.dp_fold)?;
                comm.allreduce(scratch, scratch, self.n, false, stream)?;
            } else {
                comm.allreduce(self.acc, scratch, self.n, false, stream)?;
            }
            // Every collective was accepted: the global window replaces this rank's.
            launch::dp_unpack_totals(&mut self.rt, totals, self.state, self.hyper.drop_nonfinite != 0)?;
            if self.comp != 0 {
                self.rt.memset(self.comp, 0, self.n * 4)?;
            }
        }
        // A copy, not a swap: the accumulator's address is part of the API
        // (gacc_accumulator_ptr is stable until gacc_destroy).
        // SAFETY: both hold n f32 on this device; stream-ordered after the reduction.
        unsafe { self.rt.copy_d2d(self.acc, scratch, self.n * 4)? };
        Ok(())
    }

    fn device_window(&mut self) -> Result<(f64, u32)> {
        let mut t = [0f64; 4];
        if self.dp_totals == 0 {
            return Ok((0.0, 0));
        }
        // SAFETY: dp_totals holds 4 doubles.
        unsafe { self.rt.copy_d2h(t.as_mut_ptr() as *mut u8, self.dp_totals, 32)? };
        Ok((t[0], t[1].min(f64::from(u32::MAX)) as u32))
    }

    fn loss_scale_ptr(&mut self) -> Result<*const f32> {
        Ok((self.state + std::mem::offset_of!(DeviceState, loss_scale) as u64) as *const f32)
    }

    fn export_state(&mut self) -> Result<StateSnapshot> {
        let n = self.n;
        let mut master = vec![0f32; n];
        let mut acc = vec![0f32; n];
        self.read_f32(self.master, &mut master)?;
        self.read_f32(self.acc, &mut acc)?;
        let mut state1 = Vec::new();
        let mut state2 = Vec::new();
        if self.state1 != 0 {
            state1 = vec![0f32; n];
            self.read_f32(self.state1, &mut state1)?;
        }
        if self.state2 != 0 {
            state2 = vec![0f32; n];
            self.read_f32(self.state2, &mut state2)?;
        }
        let mut comp = Vec::new();
        if self.comp != 0 {
            comp = vec![0f32; n];
            self.read_f32(self.comp, &mut comp)?;
        }
        let st = self.read_state()?;
        Ok(StateSnapshot {
            master,
            acc,
            state1,
            state2,
            loss_scale: st.loss_scale,
            growth_tracker: st.growth_tracker,
            hysteresis_left: st.hysteresis_left,
            applied_steps: st.step,
            comp,
            // Outside drop mode the device total only mirrors the engine's (which the
            // snapshot holds): as on the CPU, the backend reports 0.
            window_total: if self.drop_mode { st.window_total } else { 0.0 },
            window_dropped: st.window_dropped,
        })
    }

    fn import_state(&mut self, s: &StateSnapshot) -> Result<()> {
        let n = self.n;
        let expect = |v: &Vec<f32>, present: bool| v.len() == if present { n } else { 0 };
        if !(s.master.len() == n
            && s.acc.len() == n
            && expect(&s.state1, self.state1 != 0)
            && expect(&s.state2, self.state2 != 0)
            && expect(&s.comp, self.comp != 0))
        {
            return Err(Error::internal("state snapshot does not match this backend's buffers"));
        }
        let mut st = self.read_state()?;
        st.loss_scale = s.loss_scale;
        st.growth_tracker = s.growth_tracker;
        st.hysteresis_left = s.hysteresis_left;
        st.step = s.applied_steps;
        if self.drop_mode {
            st.window_total = s.window_total;
        }
        // Outside drop mode the device total stays (the engine mirrors its own after
        // a restore: mirror_window_total).
        st.window_dropped = s.window_dropped;
        // SAFETY: every destination holds n f32 (state: one DeviceState).
        unsafe {
            self.rt.copy_h2d(self.master, s.master.as_ptr() as *const u8, n * 4)?;
            self.rt.copy_h2d(self.acc, s.acc.as_ptr() as *const u8, n * 4)?;
            if self.state1 != 0 {
                self.rt.copy_h2d(self.state1, s.state1.as_ptr() as *const u8, n * 4)?;
            }
            if self.state2 != 0 {
                self.rt.copy_h2d(self.state2, s.state2.as_ptr() as *const u8, n * 4)?;
            }
            if self.comp != 0 {
                self.rt.copy_h2d(self.comp, s.comp.as_ptr() as *const u8, n * 4)?;
            }
            self.rt.copy_h2d(self.state, bytes_of(&st).as_ptr(), std::mem::size_of::<DeviceState>())?;
        }
        self.refresh_working_copy()?;
        self.rt.synchronize()
    }
}

//! Host mirrors of the structs shared with the kernels (kernels/common.cuh,
//! kernels/scaler.cu). The host-shim tests check the sizes against the C++ side.

/// `struct gacc_state`: the engine's step state, in device memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceState {
    pub step: u64,
    pub sumsq: f64,
    pub window_total: f64,
    pub last_total: f64,
    pub loss_scale: f32,
    pub growth_tracker: u32,
    pub applied: u32,
    pub grad_norm: f32,
    pub clip_coef: f32,
    pub factor: f32,
    pub decay_mult: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub neg_step_size: f32,
    pub bc2_sqrt: f32,
    pub eps: f32,
    pub neg_lr: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub nesterov: u32,
    pub first: u32,
    pub hysteresis_left: u32,
    pub window_dropped: u32,
    pub last_dropped: u32,
    pub bad_seq: u32,
    /// The learning rate of the next step (gacc_store_lr).
    pub lr: f32,
    /// Nonzero: the accumulator is logically zero whatever it holds (lazy zeroing,
    /// issue 14; set by gacc_finalize and gacc_zero, cleared by the next kept
    /// full-buffer accumulation or gacc_materialize_zero).
    pub acc_stale: u32,
    /// Nonzero: steps write acc = 0 (compensated accumulation, or after
    /// gacc_accumulator_ptr) and acc_stale is never set.
    pub eager_zero: u32,
    /// The last-block-done counter (0 between launches).
    pub blocks_done: u32,
}

/// `struct gacc_hyper`: the fixed hyper-parameters gacc_finalize takes by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Hyper {
    pub max_norm: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub optimizer: u32,
    pub nesterov: u32,
    pub scales_loss: u32,
    pub growth_factor: f32,
    pub backoff_factor: f32,
    pub growth_interval: u32,
    pub hysteresis: u32,
    pub consecutive_hysteresis: u32,
    pub min_scale: f32,
    pub max_scale: f32,
    /// 0: GRADSCALER, 1: DEEPSPEED (math::ScalerState::update).
    pub loss_scale_policy: u32,
}

/// The raw bytes of a #[repr(C)] plain-data value (for by-value kernel arguments
/// and copies).
pub fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is plain data without padding-sensitive invariants; reading its
    // bytes is always valid for the structs above (all fields 4 or 8 bytes, the
    // total a multiple of 8, so there are no uninitialised padding bytes).
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

//! The `#[repr(C)]` structs and constants of the C API, exactly as docs/c-api.md names them.

use std::os::raw::c_char;

/// Major version of the library (matches Cargo.toml; checked by a test).
pub const GACC_VERSION_MAJOR: u32 = 0;
/// Minor version of the library.
pub const GACC_VERSION_MINOR: u32 = 1;
/// Patch version of the library.
pub const GACC_VERSION_PATCH: u32 = 0;
/// MAJOR * 10000 + MINOR * 100 + PATCH, the value `gacc_version_number()` returns.
/// Compare the two to detect a header/library mismatch at run time.
pub const GACC_VERSION_NUMBER: u32 = 100;
/// ABI generation: bumped only when a change breaks binary compatibility.
/// 2: gacc_config starts with `struct_size` (fields appended later no longer break
/// programs built against an older header).
pub const GACC_ABI_VERSION: u32 = 2;

/// Version of the checkpoint format gacc_save writes (metadata "format_version");
/// gacc_load refuses other versions with GACC_ERR_CORRUPT.
pub const GACC_CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// CUDA device 0 when a usable GPU and driver are present, otherwise the CPU.
pub const GACC_DEVICE_AUTO: i32 = -2;
/// The CPU backend (multithreaded, SIMD).
pub const GACC_DEVICE_CPU: i32 = -1;

/// 32-bit IEEE float.
pub const GACC_DTYPE_F32: u32 = 0;
/// IEEE half precision (binary16).
pub const GACC_DTYPE_F16: u32 = 1;
/// bfloat16.
pub const GACC_DTYPE_BF16: u32 = 2;

/// 64-bit IEEE float: only in all-reduce callbacks (window totals), never a
/// gradient dtype.
pub const GACC_DTYPE_F64: u32 = 3;

/// torch.optim.SGD (momentum, dampening 0, nesterov, L2 weight decay).
pub const GACC_OPTIMIZER_SGD: u32 = 0;
/// torch.optim.AdamW (decoupled weight decay).
pub const GACC_OPTIMIZER_ADAMW: u32 = 1;

/// No working copy; no loss scaling.
pub const GACC_PRECISION_FP32: u32 = 0;
/// fp16 working copy and dynamic loss scaling.
pub const GACC_PRECISION_FP16: u32 = 1;
/// bf16 working copy; no loss scaling.
pub const GACC_PRECISION_BF16: u32 = 2;

/// Each micro-batch gradient is of a mean-reduced loss: acc += weight * grad.
pub const GACC_GRADS_MEAN: u32 = 0;
/// Each micro-batch gradient is of a sum-reduced loss: acc += grad.
pub const GACC_GRADS_SUM: u32 = 1;

/// Loss-scale policy (FP16): torch.amp.GradScaler's rule, exactly (the default).
pub const GACC_LOSS_SCALE_GRADSCALER: u32 = 0;
/// Loss-scale policy (FP16): DeepSpeed's DynamicLossScaler, exactly
/// (docs/numerics.md).
pub const GACC_LOSS_SCALE_DEEPSPEED: u32 = 1;

/// Opaque engine handle, created by `gacc_create` and released by `gacc_destroy`.
/// Handles are never reused, so a stale handle is always detected.
pub struct gacc_engine {
    _private: [u8; 0],
}

/// Engine configuration. Fill it with `gacc_config_init`, then change what you need.
///
/// The struct grows at its end as gacc gains options. `struct_size` tells the library
/// how much of it the caller's program knows: gacc_config_init sets it to the size of
/// the struct in the header the program was compiled with, and gacc_create takes the
/// fields past it at their defaults, so a program built against an older header keeps
/// working with a newer library.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gacc_config {
    /// sizeof(gacc_config) as the caller compiled it; set by gacc_config_init.
    /// gacc_create refuses 0 (a struct not filled by gacc_config_init), a size below
    /// the first ABI-2 layout, and a size larger than this library's struct.
    pub struct_size: u32,
    /// GACC_DEVICE_AUTO, GACC_DEVICE_CPU, or a CUDA ordinal (no fallback).
    pub device: i32,
    /// GACC_OPTIMIZER_SGD or GACC_OPTIMIZER_ADAMW.
    pub optimizer: u32,
    /// Learning rate, finite and >= 0.
    pub lr: f32,
    /// SGD momentum, finite and >= 0.
    pub momentum: f32,
    /// SGD Nesterov momentum: 0 or 1 (needs momentum > 0).
    pub nesterov: u32,
    /// AdamW beta1 in [0, 1).
    pub beta1: f32,
    /// AdamW beta2 in [0, 1).
    pub beta2: f32,
    /// AdamW epsilon, > 0.
    pub eps: f32,
    /// SGD: L2 (g += wd * p); AdamW: decoupled (p *= 1 - lr * wd). Finite, >= 0.
    pub weight_decay: f32,
    /// Dtype of the working copy: GACC_PRECISION_*; FP16 turns on dynamic loss scaling.
    pub precision: u32,
    /// Clip the global L2 norm to this value once per window; <= 0: no clipping.
    pub max_grad_norm: f32,
    /// Initial loss scale (FP16), finite and > 0.
    pub init_scale: f32,
    /// Scale multiplier after growth_interval clean steps, > 1.
    pub growth_factor: f32,
    /// Scale multiplier on overflow, in (0, 1).
    pub backoff_factor: f32,
    /// Applied updates in a row before the scale grows, >= 1.
    pub growth_interval: u32,
    /// GACC_GRADS_MEAN or GACC_GRADS_SUM.
    pub grad_reduction: u32,
    /// Loss-scale hysteresis (FP16): the number of overflows tolerated before the
    /// scale backs off, as DeepSpeed's `hysteresis` (delayed_shift). 1 (default; 0
    /// means the same): back off at the first overflow, as torch.amp.GradScaler does.
    pub hysteresis: u32,
    /// 0 (default): the hysteresis budget is restored only when the scale grows
    /// (overflows need not be consecutive to use it up); 1: restored by every clean
    /// step (only consecutive overflows use it up). DeepSpeed's consecutive_hysteresis.
    pub consecutive_hysteresis: u32,
    /// Floor of the loss scale on backoff (FP16), finite and >= 0, <= init_scale;
    /// 0 (default): no floor.
    pub min_loss_scale: f32,
    /// Cap of the loss scale on growth (FP16), finite; 0 (default): no cap; otherwise
    /// >= init_scale.
    pub max_loss_scale: f32,
    /// 1: a micro-batch gradient holding inf/NaN is left out of the accumulator and
    /// of the total weight (decided on the device, no host sync), the window goes on,
    /// and gacc_step_info.dropped_microbatches counts it; the loss scale backs off
    /// (FP16) as for an overflow. 0 (default): it poisons the window, whose step is
    /// skipped.
    pub drop_nonfinite_microbatches: u32,
    /// 1: Kahan-compensated accumulation (one more fp32 buffer, +4 B per parameter;
    /// +8 B of traffic per parameter and micro-batch): the window's rounding error no
    /// longer grows with the number of micro-batches. 0 (default): plain fp32 sums.
    pub compensated_accumulation: u32,
    /// 1: the FP16/BF16 working copy is written with stochastic rounding (unbiased,
    /// reproducible from `seed` and the applied-step count); needs precision FP16 or
    /// BF16. 0 (default): round to nearest even.
    pub stochastic_rounding: u32,
    /// Seed of the stochastic rounding (any value; default 0).
    pub seed: u64,
    /// FP16 loss-scale rule: GACC_LOSS_SCALE_GRADSCALER (default) or
    /// GACC_LOSS_SCALE_DEEPSPEED (needs growth_factor * backoff_factor == 1 and no
    /// max_loss_scale). Added after `seed`: an older program's struct ends before it
    /// and gets GRADSCALER.
    pub loss_scale_policy: u32,
}

/// One parameter tensor. Tensors are laid out in creation order in one flat buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gacc_tensor_desc {
    /// Optional name (NUL-terminated, copied); may be NULL.
    pub name: *const c_char,
    /// Number of elements, > 0.
    pub numel: usize,
    /// Host fp32 initial values (numel of them), or NULL for zeros.
    pub init: *const f32,
    /// 1: weight decay is not applied to this tensor (biases, norms); 0: it is.
    pub no_weight_decay: u32,
}

/// What `gacc_step` did; written only when a pointer is passed (the call then waits
/// for the device).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct gacc_step_info {
    /// 1: the update was applied; 0: skipped because the gradient was not finite.
    pub applied: u32,
    /// ||g||_2 of the unscaled, averaged gradient before clipping (non-finite when skipped).
    pub grad_norm: f32,
    /// The factor the gradient was multiplied by; 1 when not clipped (or skipped).
    pub clip_coef: f32,
    /// The loss scale S for the next window.
    pub loss_scale: f32,
    /// Applied updates so far.
    pub step: u64,
    /// gacc_microbatch calls in the window just closed.
    pub microbatches: u32,
    /// Sum of the weights of the window just closed (without the dropped
    /// micro-batches when drop_nonfinite_microbatches is on).
    pub total_weight: f64,
    /// Micro-batches of the window just closed that were dropped because their
    /// gradient was not finite (always 0 unless drop_nonfinite_microbatches is on).
    pub dropped_microbatches: u32,
}

/// An NCCL unique id (ncclUniqueId's 128 bytes): made once by `gacc_nccl_unique_id`
/// (on one rank) and handed by the caller's own means (MPI_Bcast, a file, a TCP
/// socket) to every rank's `gacc_set_nccl`. Plain bytes: copy it freely.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct gacc_nccl_id {
    /// Opaque to gacc's callers.
    pub internal: [u8; 128],
}

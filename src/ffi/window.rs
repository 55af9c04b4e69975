//! The accumulation window: one micro-batch given as one concatenated gradient, the
//! step that closes the window, and dropping it.
#![allow(clippy::missing_safety_doc)]

use std::os::raw::c_void;

use super::boundary::{guard, require, require_aligned};
use super::types::*;
use super::{conv, registry};
use crate::backend::GradInput;
use crate::status::gacc_status;

/// Folds one micro-batch gradient into the window. `grad` holds the gradient of all
/// parameters, tensors concatenated in creation order, `numel` (== gacc_numel)
/// elements of `dtype`. CPU engine: host memory; CUDA engine: device or host memory.
/// `weight` (finite, >= 0) is the number of samples or tokens behind it.
/// GACC_GRADS_MEAN: acc += weight * grad; GACC_GRADS_SUM: acc += grad; both: total +=
/// weight. A rejected call leaves the window as it was. With
/// drop_nonfinite_microbatches a gradient holding inf/NaN is left out (decided on the
/// device, no sync); with compensated_accumulation the sum is Kahan-compensated.
#[no_mangle]
pub unsafe extern "C" fn gacc_microbatch(
    e: *mut gacc_engine,
    grad: *const c_void,
    dtype: u32,
    numel: usize,
    weight: f64,
) -> gacc_status {
    guard("gacc_microbatch", || {
        require(grad, "grad")?;
        let dtype = conv::dtype_from_c(dtype, "dtype")?;
        require_aligned(grad, dtype.size(), "grad")?;
        let input = GradInput { ptr: grad, dtype, numel };
        // SAFETY: checked non-null and aligned; the caller provides numel elements.
        registry::with_engine(e, |eng| unsafe { eng.microbatch(&input, weight) })
    })
}

/// Closes the window: g = acc / (total * S); skip on any non-finite value (FP16:
/// S *= backoff_factor); otherwise clip by global norm, apply SGD/AdamW, grow S after
/// growth_interval clean steps, rewrite the working copy. acc and total are zeroed
/// either way. total == 0 is GACC_ERR_INVALID_STATE. With `info` NULL the call does
/// not wait for the device; with `info` it does, and fills it.
/// With drop_nonfinite_microbatches the total is the device's (dropped micro-batches
/// left out); a window whose micro-batches were all dropped is skipped (applied 0),
/// not an error. The loss scale follows hysteresis/min/max_loss_scale (docs/numerics.md).
/// CUDA graphs: on a CUDA engine the step's kernels read the learning rate, the
/// window's total weight and the step count from device memory, so a window of
/// gacc_microbatch calls with device gradients and gacc_step with `info` NULL,
/// captured on the stream given to gacc_set_stream, may be replayed: each replay is
/// one window with the learning rate last set by gacc_set_lr. A replay reuses the
/// captured gradient addresses (their contents may change), micro-batch count and
/// weights. gacc_step with `info`, host gradients and calls that read back cannot
/// be captured. After replays the host's window is empty and the next gacc_step
/// info reports the device's step count (docs/cuda.md, "CUDA graphs").
#[no_mangle]
pub unsafe extern "C" fn gacc_step(e: *mut gacc_engine, info: *mut gacc_step_info) -> gacc_status {
    guard("gacc_step", || {
        let report = registry::with_engine(e, |eng| eng.step(!info.is_null()))?;
        if let Some(report) = report {
            // SAFETY: report is Some only when info is non-null.
            unsafe { info.write(conv::step_info_to_c(&report)) };
        }
        Ok(())
    })
}

/// Drops the open window (acc and total) without stepping.
#[no_mangle]
pub unsafe extern "C" fn gacc_zero(e: *mut gacc_engine) -> gacc_status {
    guard("gacc_zero", || registry::with_engine(e, |eng| eng.zero()))
}

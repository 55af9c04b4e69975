//! Gradients where the host has them (docs/c-api.md, v0.2 additions): one micro-batch
//! given tensor by tensor (`gacc_microbatch_tensors`), and in-place accumulation
//! into the engine's own fp32 accumulator (`gacc_accumulator_ptr`,
//! `gacc_microbatch_inplace`). Same shape as every export: guard, NULL and alignment
//! checks, a handle lookup, one call into the engine.
#![allow(clippy::missing_safety_doc)]

use std::os::raw::c_void;

use super::boundary::{guard, require, require_aligned};
use super::registry;
use super::types::gacc_engine;
use crate::backend::GradInput;
use crate::status::gacc_status;

/// One tensor's gradient in a per-tensor micro-batch (gacc_microbatch_tensors).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gacc_grad {
    /// This tensor's gradient, aligned for its dtype; NULL: zero in this micro-batch
    /// (adds nothing, costs no memory traffic). CPU engine: host memory; CUDA engine:
    /// host or device memory (told apart per pointer).
    pub data: *const c_void,
    /// GACC_DTYPE_F32, _F16 or _BF16; ignored when data is NULL.
    pub dtype: u32,
    /// Must equal the tensor's numel; ignored when data is NULL.
    pub numel: usize,
}

/// Reads and checks the caller's entries (dtype, alignment): None for a NULL entry.
unsafe fn read_grads(grads: *const gacc_grad, n_grads: usize) -> crate::Result<Vec<Option<GradInput>>> {
    if n_grads == 0 {
        return Ok(Vec::new());
    }
    require(grads, "grads")?;
    require_aligned(grads, std::mem::align_of::<gacc_grad>(), "grads")?;
    // SAFETY: non-null, aligned; the caller provides n_grads entries.
    let entries = unsafe { std::slice::from_raw_parts(grads, n_grads) };
    let mut out = Vec::with_capacity(n_grads);
    for (i, g) in entries.iter().enumerate() {
        if g.data.is_null() {
            out.push(None);
            continue;
        }
        let dtype = super::conv::dtype_from_c(g.dtype, &format!("grads[{i}].dtype"))?;
        require_aligned(g.data, dtype.size(), &format!("grads[{i}].data"))?;
        out.push(Some(GradInput { ptr: g.data, dtype, numel: g.numel }));
    }
    Ok(out)
}

/// Folds one micro-batch given tensor by tensor into the window: `grads[t]` is tensor
/// t's gradient (creation order), `n_grads` must equal the number of tensors. Same
/// meaning as gacc_microbatch on the concatenation: GACC_GRADS_MEAN: acc += weight *
/// grad; GACC_GRADS_SUM: acc += grad; both: total += weight, one micro-batch counted;
/// the same weight rules. Each entry in its own dtype; NULL data: no gradient for that
/// tensor. Atomic: every entry is validated before anything is added, so a rejected
/// call (a wrong numel, an unknown dtype, a misaligned pointer, n_grads wrong)
/// changes nothing, and the message names the tensor index. With
/// drop_nonfinite_microbatches the whole micro-batch is dropped when any tensor holds
/// inf/NaN. One parallel pass (CPU) or one launch (CUDA) whatever the tensor count.
#[no_mangle]
pub unsafe extern "C" fn gacc_microbatch_tensors(
    e: *mut gacc_engine,
    grads: *const gacc_grad,
    n_grads: usize,
    weight: f64,
) -> gacc_status {
    guard("gacc_microbatch_tensors", || {
        // SAFETY: the caller provides n_grads entries and each non-NULL data points
        // to numel elements of its dtype.
        let inputs = unsafe { read_grads(grads, n_grads) }?;
        registry::with_engine(e, |eng| unsafe { eng.microbatch_tensors(&inputs, weight) })
    })
}

/// The fp32 accumulator of one tensor (numel floats; device memory on a CUDA
/// engine), stable until gacc_destroy. It holds exactly what the window's
/// micro-batches have added (MEAN: sum of weight * grad; SUM: sum of grad) and is all
/// zeros when a window opens: after gacc_create, gacc_step (applied or skipped),
/// gacc_zero, and a gacc_load of a checkpoint saved between windows. A host may add
/// its micro-batch into it (CUDA: on the stream given to gacc_set_stream, or ordered
/// with it), then call gacc_microbatch_inplace.
#[no_mangle]
pub unsafe extern "C" fn gacc_accumulator_ptr(e: *mut gacc_engine, tensor: usize, out: *mut *mut f32) -> gacc_status {
    guard("gacc_accumulator_ptr", || {
        require(out, "out")?;
        let ptr = registry::with_engine(e, |eng| eng.accumulator_ptr(tensor))?;
        // SAFETY: non-null; the caller provides a writable pointer slot.
        unsafe { out.write(ptr) };
        Ok(())
    })
}

/// Books one micro-batch that the host added into the accumulators itself
/// (gacc_accumulator_ptr): total += weight, one micro-batch counted; no data moves.
/// Same weight rules as gacc_microbatch. Non-finite values the host wrote are caught
/// at gacc_step (the window is skipped). GACC_ERR_INVALID_STATE with
/// compensated_accumulation or drop_nonfinite_microbatches (the engine cannot see the
/// gradient), naming the option.
#[no_mangle]
pub unsafe extern "C" fn gacc_microbatch_inplace(e: *mut gacc_engine, weight: f64) -> gacc_status {
    guard("gacc_microbatch_inplace", || registry::with_engine(e, |eng| eng.microbatch_inplace(weight)))
}

//! The parameters and what scales them: the fp32 master weights and the working copy,
//! the learning rate, the loss scale, and the stream the engine's work runs on.
#![allow(clippy::missing_safety_doc)]

use std::os::raw::c_void;

use super::boundary::{guard, require, require_aligned, write_out};
use super::types::*;
use super::{conv, registry};
use crate::status::gacc_status;

/// Copies the fp32 master weights (all tensors, concatenated) to host memory.
#[no_mangle]
pub unsafe extern "C" fn gacc_params_read(e: *const gacc_engine, host_out: *mut f32, numel: usize) -> gacc_status {
    guard("gacc_params_read", || {
        require(host_out, "host_out")?;
        require_aligned(host_out, 4, "host_out")?;
        registry::with_engine(e, |eng| {
            // SAFETY: non-null, aligned; the caller provides numel floats (the engine
            // refuses a numel that is not its own).
            eng.read_params(unsafe { std::slice::from_raw_parts_mut(host_out, numel) })
        })
    })
}

/// Replaces the fp32 master weights from host memory and rewrites the working copy.
/// Optimizer state and the open window are kept.
#[no_mangle]
pub unsafe extern "C" fn gacc_params_write(e: *mut gacc_engine, host_in: *const f32, numel: usize) -> gacc_status {
    guard("gacc_params_write", || {
        require(host_in, "host_in")?;
        require_aligned(host_in, 4, "host_in")?;
        registry::with_engine(e, |eng| {
            // SAFETY: non-null, aligned; the caller provides numel floats (the engine
            // refuses a numel that is not its own).
            eng.write_params(unsafe { std::slice::from_raw_parts(host_in, numel) })
        })
    })
}

/// The engine's own buffer for one tensor: the fp32 master (dtype F32), or the
/// FP16/BF16 working copy when dtype matches the precision. Device memory on a CUDA
/// engine. Valid until gacc_destroy; the working copy is rewritten by every applied
/// step and by gacc_params_write. Writing the master directly does not refresh the
/// working copy (use gacc_params_write for that).
#[no_mangle]
pub unsafe extern "C" fn gacc_params_ptr(
    e: *mut gacc_engine,
    tensor: usize,
    dtype: u32,
    out: *mut *mut c_void,
) -> gacc_status {
    guard("gacc_params_ptr", || unsafe {
        write_out(out, "out", || {
            let dtype = conv::dtype_from_c(dtype, "dtype")?;
            registry::with_engine(e, |eng| eng.params_ptr(tensor, dtype))
        })
    })
}

/// The current loss scale S (1 unless precision is FP16): multiply the loss by it
/// before backward. Waits for the device on a CUDA engine.
#[no_mangle]
pub unsafe extern "C" fn gacc_loss_scale(e: *const gacc_engine, out: *mut f32) -> gacc_status {
    guard("gacc_loss_scale", || unsafe { write_out(out, "out", || registry::with_engine(e, |eng| eng.loss_scale())) })
}

/// Sets the learning rate used from the next step on (finite, >= 0). On a CUDA engine
/// the value is also written into device memory by a kernel queued on the engine's
/// stream (no host sync), where a step (also a replayed CUDA graph) reads it.
#[no_mangle]
pub unsafe extern "C" fn gacc_set_lr(e: *mut gacc_engine, lr: f32) -> gacc_status {
    guard("gacc_set_lr", || registry::with_engine(e, |eng| eng.set_lr(lr)))
}

/// The learning rate in use.
#[no_mangle]
pub unsafe extern "C" fn gacc_get_lr(e: *const gacc_engine, out: *mut f32) -> gacc_status {
    guard("gacc_get_lr", || unsafe { write_out(out, "out", || registry::with_engine(e, |eng| Ok(eng.lr()))) })
}

/// CUDA engines: run gacc's work on the caller's stream (a `CUstream`, passed as
/// `void *`), so that it is ordered with the caller's own kernels; NULL returns to the
/// engine's own stream. The engine's own stream is a blocking one: it is ordered with
/// the legacy default stream (stream 0, where PyTorch's default stream and cudaMemcpy
/// work), so such a caller needs no gacc_set_stream. CU_STREAM_LEGACY ((void *)0x1)
/// and CU_STREAM_PER_THREAD ((void *)0x2) name the default streams. A CPU engine
/// accepts only NULL (GACC_ERR_INVALID_STATE otherwise).
/// A window captured on this stream into a CUDA graph may be replayed (see
/// gacc_step); a replay may not change the stream, the gradient addresses, the
/// number of micro-batches or their weights. gacc_destroy waits for the engine's
/// work without using this stream, so the caller may destroy it first.
#[no_mangle]
pub unsafe extern "C" fn gacc_set_stream(e: *mut gacc_engine, stream: *mut c_void) -> gacc_status {
    guard("gacc_set_stream", || registry::with_engine(e, |eng| eng.set_stream(stream)))
}

/// Address of the current loss scale S (one float), valid until gacc_destroy: device
/// memory on a CUDA engine, so a loss kernel can multiply by it without waiting for
/// the device; host memory on a CPU engine. gacc_step updates it in place.
#[no_mangle]
pub unsafe extern "C" fn gacc_loss_scale_ptr(e: *mut gacc_engine, out: *mut *const f32) -> gacc_status {
    guard("gacc_loss_scale_ptr", || unsafe {
        write_out(out, "out", || registry::with_engine(e, |eng| eng.loss_scale_ptr()))
    })
}

//! Checkpoints: saving an engine's whole state, loading it back, and creating an
//! engine from a checkpoint alone.
#![allow(clippy::missing_safety_doc)]

use std::ffi::CStr;
use std::os::raw::c_char;

use super::boundary::{guard, require, write_out};
use super::registry;
use super::types::*;
use crate::status::{gacc_status, Error};

/// Reads a NUL-terminated path argument.
unsafe fn path_arg<'a>(path: *const c_char) -> crate::Result<&'a std::path::Path> {
    require(path, "path")?;
    // SAFETY: non-null; the caller provides a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    if bytes.is_empty() {
        return Err(Error::invalid_argument("path is empty"));
    }
    Ok(std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes)))
}

/// Saves the engine's whole state to `path` (a safetensors file): fp32 master
/// weights, optimizer state, loss scale and growth tracker, applied-step count,
/// learning rate, configuration, and the open window, so training can resume in the
/// middle of a window. The file is written to a temporary name, fsynced and renamed
/// over `path`: after a crash `path` holds the previous checkpoint or the new one,
/// never a mix. Waits for the device. GACC_ERR_IO when the file cannot be written.
#[no_mangle]
pub unsafe extern "C" fn gacc_save(e: *mut gacc_engine, path: *const c_char) -> gacc_status {
    guard("gacc_save", || {
        let path = unsafe { path_arg(path) }?;
        registry::with_engine(e, |eng| crate::checkpoint::save(eng, path))
    })
}

/// Loads a checkpoint written by gacc_save into an engine with the same tensor sizes,
/// weight-decay flags, optimizer, precision, gradient reduction and loss_scale_policy (other
/// hyper-parameters stay the engine's; the learning rate is restored). Everything is
/// validated first (format version, sizes, a CRC-32 of every tensor and of the
/// metadata): any mismatch is GACC_ERR_CORRUPT naming what failed, an unreadable file
/// GACC_ERR_IO, and in both cases the engine is left exactly as it was.
#[no_mangle]
pub unsafe extern "C" fn gacc_load(e: *mut gacc_engine, path: *const c_char) -> gacc_status {
    guard("gacc_load", || {
        let path = unsafe { path_arg(path) }?;
        registry::with_engine(e, |eng| crate::checkpoint::load(eng, path))
    })
}

/// Creates an engine from a checkpoint alone: the saved configuration and layout on
/// `device` (GACC_DEVICE_AUTO, GACC_DEVICE_CPU or a CUDA ordinal), then the saved
/// state. `*out` is written only on success.
#[no_mangle]
pub unsafe extern "C" fn gacc_create_from_checkpoint(
    path: *const c_char,
    device: i32,
    out: *mut *mut gacc_engine,
) -> gacc_status {
    guard("gacc_create_from_checkpoint", || unsafe {
        write_out(out, "out", || {
            let path = path_arg(path)?;
            let device = crate::engine::config::DeviceRequest::from_raw(device)?;
            registry::insert(crate::checkpoint::create_from(path, device)?)
        })
    })
}

//! Versions, errors, the configuration, creating and destroying an engine, and what
//! an engine is (its size, its tensors, its device).
#![allow(clippy::missing_safety_doc)]

use std::ffi::CStr;
use std::os::raw::c_char;

use super::boundary::{guard, guard_void, require, require_aligned, write_out};
use super::types::*;
use super::{conv, registry, sized};
use crate::engine::config::Config;
use crate::engine::layout::Layout;
use crate::engine::Engine;
use crate::status::{gacc_status, Error};

/// A status received from C, kept as a plain integer so that an unknown value is
/// never undefined behaviour. The header shows it as `gacc_status`.
pub type gacc_status_arg = i32;

/// Static name of a status, e.g. "GACC_ERR_INVALID_ARGUMENT"; "GACC_UNKNOWN_STATUS"
/// for a value that names none. Never NULL; never freed.
#[no_mangle]
pub extern "C" fn gacc_status_name(s: gacc_status_arg) -> *const c_char {
    match gacc_status::from_raw(i64::from(s)) {
        Some(status) => status.name_cstr().as_ptr() as *const c_char,
        None => c"GACC_UNKNOWN_STATUS".as_ptr(),
    }
}

/// Human message of this thread's last failed call; "" if none. Valid until the next
/// gacc call on this thread. Never NULL; never freed by the caller.
#[no_mangle]
pub extern "C" fn gacc_last_error() -> *const c_char {
    super::boundary::last_error_ptr()
}

/// The library version, "MAJOR.MINOR.PATCH" (static string).
#[no_mangle]
pub extern "C" fn gacc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The library version as MAJOR * 10000 + MINOR * 100 + PATCH; compare it with
/// GACC_VERSION_NUMBER to detect a header that does not match the library.
#[no_mangle]
pub extern "C" fn gacc_version_number() -> u32 {
    GACC_VERSION_NUMBER
}

/// The ABI generation of the library; equal to GACC_ABI_VERSION when the header
/// and the library are compatible.
#[no_mangle]
pub extern "C" fn gacc_abi_version() -> u32 {
    GACC_ABI_VERSION
}

/// Fills `cfg` with the defaults: device AUTO; AdamW lr 1e-3, betas 0.9/0.999, eps
/// 1e-8, weight_decay 0.01; momentum 0, nesterov 0; precision FP32; no clipping;
/// init_scale 65536, growth_factor 2, backoff_factor 0.5, growth_interval 2000;
/// grad_reduction MEAN (PyTorch's AdamW and torch.amp.GradScaler defaults); the
/// numerics options off: hysteresis 1, consecutive_hysteresis 0, no loss-scale floor
/// or cap, drop_nonfinite_microbatches 0, compensated_accumulation 0,
/// stochastic_rounding 0, seed 0, loss_scale_policy GRADSCALER (docs/numerics.md);
/// struct_size = sizeof(gacc_config).
///
/// In C and C++ the header turns `gacc_config_init(cfg)` into
/// `gacc_config_init_sized(cfg, sizeof *(cfg))` (a macro below), so that a program
/// keeps the struct size it was compiled with; this function is the one bindings and
/// function pointers reach, and writes this library's whole struct.
/// NULL: no effect (the failure is recorded for gacc_last_error).
#[no_mangle]
pub unsafe extern "C" fn gacc_config_init(cfg: *mut gacc_config) {
    guard_void("gacc_config_init", || {
        require(cfg, "cfg")?;
        // SAFETY: non-null; the caller provides a writable gacc_config.
        unsafe { cfg.write(conv::default_config()) };
        Ok(())
    })
}

/// Fills the first `size` bytes of `cfg` with the defaults of gacc_config_init and
/// sets struct_size = size: a program built against an older, shorter gacc_config
/// passes its own sizeof and nothing past it is written. `size` must lie between the
/// first ABI-2 layout (the struct up to `seed`) and sizeof(gacc_config) of this
/// library. Errors: GACC_ERR_NULL_POINTER, GACC_ERR_INVALID_ARGUMENT (size out of
/// range: nothing written).
#[no_mangle]
pub unsafe extern "C" fn gacc_config_init_sized(cfg: *mut gacc_config, size: usize) -> gacc_status {
    guard("gacc_config_init_sized", || {
        require(cfg, "cfg")?;
        let n = sized::check_size(size, "size")?;
        let mut defaults = conv::default_config();
        defaults.struct_size = n as u32;
        // SAFETY: non-null; the caller provides `size` writable bytes (checked to be
        // at most this library's struct, so the copy stays within both).
        unsafe { std::ptr::copy_nonoverlapping(&defaults as *const gacc_config as *const u8, cfg as *mut u8, n) };
        Ok(())
    })
}

/// Reads the caller's tensor descriptors into (name, numel, decay) and initial values.
/// Everything is validated, including that the engine fits the machine, before the
/// initial values are copied (docs/c-api.md: gacc_create validates before allocating).
unsafe fn read_tensors(
    config: &Config,
    tensors: *const gacc_tensor_desc,
    n_tensors: usize,
) -> crate::Result<(Layout, Vec<f32>)> {
    if n_tensors == 0 {
        return Err(Error::invalid_argument("n_tensors must be >= 1"));
    }
    require(tensors, "tensors")?;
    require_aligned(tensors, std::mem::align_of::<gacc_tensor_desc>(), "tensors")?;
    // SAFETY: the caller provides n_tensors descriptors.
    let descs = unsafe { std::slice::from_raw_parts(tensors, n_tensors) };
    let mut specs = Vec::with_capacity(n_tensors);
    for (i, d) in descs.iter().enumerate() {
        if d.no_weight_decay > 1 {
            return Err(Error::invalid_argument(format!(
                "tensors[{i}].no_weight_decay must be 0 or 1 (got {})",
                d.no_weight_decay
            )));
        }
        if !d.init.is_null() {
            require_aligned(d.init, 4, &format!("tensors[{i}].init"))?;
        }
        let name = if d.name.is_null() {
            None
        } else {
            // SAFETY: the caller provides a NUL-terminated string.
            Some(unsafe { CStr::from_ptr(d.name) }.to_string_lossy().into_owned())
        };
        specs.push((name, d.numel, d.no_weight_decay == 0));
    }
    let layout = Layout::new(specs)?;
    Engine::check_fits(config, &layout)?;
    let mut params = crate::alloc::try_zeroed::<f32>(layout.numel, "initial parameters")?;
    for (d, t) in descs.iter().zip(&layout.tensors) {
        if !d.init.is_null() {
            // SAFETY: the caller provides numel readable floats; alignment checked.
            let src = unsafe { std::slice::from_raw_parts(d.init, d.numel) };
            params[t.offset..t.offset + t.numel].copy_from_slice(src);
        }
    }
    Ok((layout, params))
}

/// Builds an engine from a configuration and `n_tensors` tensor descriptors.
/// Everything is validated before anything is allocated; any violation is
/// GACC_ERR_INVALID_ARGUMENT with a message naming the field. `*out` is written only
/// on success. Release the engine with gacc_destroy.
#[no_mangle]
pub unsafe extern "C" fn gacc_create(
    cfg: *const gacc_config,
    tensors: *const gacc_tensor_desc,
    n_tensors: usize,
    out: *mut *mut gacc_engine,
) -> gacc_status {
    guard("gacc_create", || {
        require(cfg, "cfg")?;
        unsafe {
            write_out(out, "out", || {
                require_aligned(cfg, std::mem::align_of::<gacc_config>(), "cfg")?;
                // SAFETY: non-null and aligned; the caller provides struct_size bytes.
                let raw = sized::read_config(cfg)?;
                let config = Config::validate(&conv::config_from_c(&raw))?;
                let (layout, params) = read_tensors(&config, tensors, n_tensors)?;
                registry::insert(Engine::new(config, layout, &params)?)
            })
        }
    })
}

/// Releases an engine and all its memory. NULL, or an already destroyed handle: no
/// effect, no crash. If another thread is inside a call on this engine, the memory is
/// released when that call returns; later calls see GACC_ERR_INVALID_HANDLE.
/// CUDA engines: waits for the engine's queued work (cuCtxSynchronize on gacc's
/// context, not on the stream given to gacc_set_stream, which may already be
/// destroyed), then destroys an NCCL communicator before the stream and context.
#[no_mangle]
pub extern "C" fn gacc_destroy(e: *mut gacc_engine) {
    guard_void("gacc_destroy", || {
        drop(registry::remove(e));
        Ok(())
    })
}

/// Total number of parameters (the sum of the tensors' numel).
#[no_mangle]
pub unsafe extern "C" fn gacc_numel(e: *const gacc_engine, out: *mut usize) -> gacc_status {
    guard("gacc_numel", || unsafe { write_out(out, "out", || registry::with_engine(e, |eng| Ok(eng.numel()))) })
}

/// Number of tensors the engine was created with.
#[no_mangle]
pub unsafe extern "C" fn gacc_n_tensors(e: *const gacc_engine, out: *mut usize) -> gacc_status {
    guard("gacc_n_tensors", || unsafe {
        write_out(out, "out", || registry::with_engine(e, |eng| Ok(eng.layout().tensors.len())))
    })
}

/// Offset (in elements, within the concatenated gradient) and numel of one tensor.
#[no_mangle]
pub unsafe extern "C" fn gacc_tensor_span(
    e: *const gacc_engine,
    tensor: usize,
    offset_out: *mut usize,
    numel_out: *mut usize,
) -> gacc_status {
    guard("gacc_tensor_span", || {
        require(offset_out, "offset_out")?;
        require(numel_out, "numel_out")?;
        let (offset, numel) = registry::with_engine(e, |eng| {
            let tensors = &eng.layout().tensors;
            let t = tensors.get(tensor).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "tensor index {tensor} is out of range (the engine has {})",
                    tensors.len()
                ))
            })?;
            Ok((t.offset, t.numel))
        })?;
        // SAFETY: both non-null.
        unsafe {
            offset_out.write(offset);
            numel_out.write(numel);
        }
        Ok(())
    })
}

/// Where the engine runs: GACC_DEVICE_CPU (-1) or a CUDA ordinal. Useful after
/// creating with GACC_DEVICE_AUTO.
#[no_mangle]
pub unsafe extern "C" fn gacc_device(e: *const gacc_engine, out: *mut i32) -> gacc_status {
    guard("gacc_device", || unsafe {
        write_out(out, "out", || registry::with_engine(e, |eng| Ok(conv::device_to_c(eng.device()))))
    })
}

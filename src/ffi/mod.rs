//! The only `extern "C"` code. Every function has the same shape: `guard` (catches
//! panics, records the error), NULL checks, a handle lookup, then one call into the
//! engine. Outputs are written only on success. No arithmetic happens here.
//!
//! Safety: every `unsafe extern "C"` function here has the same contract, the one
//! include/gacc.h states: pointer arguments are NULL or point to what the header
//! says (buffers of the stated length, NUL-terminated strings, writable outputs).
#![allow(clippy::missing_safety_doc)]

pub mod boundary;
pub mod registry;
pub mod sized;
pub mod tensors;
pub mod types;

use std::ffi::CStr;
use std::os::raw::{c_char, c_void};

use boundary::{guard, guard_void, require, require_aligned};
use types::*;

use crate::backend::GradInput;
use crate::engine::config::{default_raw_config, Config, Dtype};
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
    boundary::last_error_ptr()
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
        unsafe { cfg.write(default_raw_config()) };
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
        let mut defaults = default_raw_config();
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
        require(out, "out")?;
        require_aligned(cfg, std::mem::align_of::<gacc_config>(), "cfg")?;
        // SAFETY: non-null and aligned; the caller provides struct_size bytes.
        let raw = unsafe { sized::read_config(cfg) }?;
        let config = Config::validate(&raw)?;
        let (layout, params) = unsafe { read_tensors(&config, tensors, n_tensors) }?;
        let engine = Engine::new(config, layout, &params)?;
        let handle = registry::insert(engine)?;
        // SAFETY: non-null; the caller provides a writable pointer slot.
        unsafe { out.write(handle) };
        Ok(())
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
    guard("gacc_numel", || {
        require(out, "out")?;
        let n = registry::with_engine(e, |eng| Ok(eng.numel()))?;
        // SAFETY: non-null.
        unsafe { out.write(n) };
        Ok(())
    })
}

/// Number of tensors the engine was created with.
#[no_mangle]
pub unsafe extern "C" fn gacc_n_tensors(e: *const gacc_engine, out: *mut usize) -> gacc_status {
    guard("gacc_n_tensors", || {
        require(out, "out")?;
        let n = registry::with_engine(e, |eng| Ok(eng.layout().tensors.len()))?;
        // SAFETY: non-null.
        unsafe { out.write(n) };
        Ok(())
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
    guard("gacc_device", || {
        require(out, "out")?;
        let d = registry::with_engine(e, |eng| Ok(eng.device()))?;
        // SAFETY: non-null.
        unsafe { out.write(d) };
        Ok(())
    })
}

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
        let dtype = Dtype::from_raw(dtype, "dtype")?;
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
            unsafe { info.write(report) };
        }
        Ok(())
    })
}

/// Drops the open window (acc and total) without stepping.
#[no_mangle]
pub unsafe extern "C" fn gacc_zero(e: *mut gacc_engine) -> gacc_status {
    guard("gacc_zero", || registry::with_engine(e, |eng| eng.zero()))
}

/// Copies the fp32 master weights (all tensors, concatenated) to host memory.
#[no_mangle]
pub unsafe extern "C" fn gacc_params_read(e: *const gacc_engine, host_out: *mut f32, numel: usize) -> gacc_status {
    guard("gacc_params_read", || {
        require(host_out, "host_out")?;
        require_aligned(host_out, 4, "host_out")?;
        registry::with_engine(e, |eng| {
            if numel != eng.numel() {
                return Err(Error::invalid_argument(format!(
                    "numel is {numel} but the engine holds {} parameters",
                    eng.numel()
                )));
            }
            // SAFETY: the caller provides numel writable floats.
            let out = unsafe { std::slice::from_raw_parts_mut(host_out, numel) };
            eng.read_params(out)
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
            if numel != eng.numel() {
                return Err(Error::invalid_argument(format!(
                    "numel is {numel} but the engine holds {} parameters",
                    eng.numel()
                )));
            }
            // SAFETY: the caller provides numel readable floats.
            let src = unsafe { std::slice::from_raw_parts(host_in, numel) };
            eng.write_params(src)
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
    guard("gacc_params_ptr", || {
        require(out, "out")?;
        let dtype = Dtype::from_raw(dtype, "dtype")?;
        let ptr = registry::with_engine(e, |eng| eng.params_ptr(tensor, dtype))?;
        // SAFETY: non-null.
        unsafe { out.write(ptr) };
        Ok(())
    })
}

/// The current loss scale S (1 unless precision is FP16): multiply the loss by it
/// before backward. Waits for the device on a CUDA engine.
#[no_mangle]
pub unsafe extern "C" fn gacc_loss_scale(e: *const gacc_engine, out: *mut f32) -> gacc_status {
    guard("gacc_loss_scale", || {
        require(out, "out")?;
        let s = registry::with_engine(e, |eng| eng.loss_scale())?;
        // SAFETY: non-null.
        unsafe { out.write(s) };
        Ok(())
    })
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
    guard("gacc_get_lr", || {
        require(out, "out")?;
        let lr = registry::with_engine(e, |eng| Ok(eng.lr()))?;
        // SAFETY: non-null.
        unsafe { out.write(lr) };
        Ok(())
    })
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
    guard("gacc_set_stream", || {
        registry::with_engine(e, |eng| {
            if stream.is_null() && eng.device() == GACC_DEVICE_CPU {
                return Ok(());
            }
            eng.set_stream(stream)
        })
    })
}

/// Address of the current loss scale S (one float), valid until gacc_destroy: device
/// memory on a CUDA engine, so a loss kernel can multiply by it without waiting for
/// the device; host memory on a CPU engine. gacc_step updates it in place.
#[no_mangle]
pub unsafe extern "C" fn gacc_loss_scale_ptr(e: *mut gacc_engine, out: *mut *const f32) -> gacc_status {
    guard("gacc_loss_scale_ptr", || {
        require(out, "out")?;
        let p = registry::with_engine(e, |eng| eng.loss_scale_ptr())?;
        // SAFETY: non-null.
        unsafe { out.write(p) };
        Ok(())
    })
}

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
    guard("gacc_create_from_checkpoint", || {
        require(out, "out")?;
        let path = unsafe { path_arg(path) }?;
        let device = crate::engine::config::DeviceRequest::from_raw(device)?;
        let engine = crate::checkpoint::create_from(path, device)?;
        let handle = registry::insert(engine)?;
        // SAFETY: non-null.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Makes the engine one rank of a data-parallel group whose transport is the
/// caller's own in-place sum all-reduce `allreduce` (Gloo, Horovod, a game server's
/// channel…). From then on gacc_step sums the window (total weight and micro-batch
/// count as two GACC_DTYPE_F64 values, then the fp32 accumulator) across ranks before
/// unscaling, so every rank takes the identical step; every rank must call gacc_step
/// for every window. Called once, right after gacc_create (the window must be empty):
/// it also sends rank 0's parameters to every rank through one all-reduce in which the
/// other ranks contribute zeros. The callback runs on the thread that calls gacc_step
/// (or this function) and must be usable from it. A nonzero return from the callback is
/// GACC_ERR_COMMUNICATION and leaves this rank's window as it was. gacc_step_info then
/// reports the global window (micro-batches and weight summed over ranks).
#[no_mangle]
pub unsafe extern "C" fn gacc_set_allreduce(
    e: *mut gacc_engine,
    allreduce: crate::distributed::callback::gacc_allreduce_fn,
    user_data: *mut c_void,
    rank: i32,
    world_size: i32,
) -> gacc_status {
    guard("gacc_set_allreduce", || {
        let Some(function) = allreduce else {
            return Err(Error::new(gacc_status::GACC_ERR_NULL_POINTER, "allreduce is NULL"));
        };
        if world_size < 1 || rank < 0 || rank >= world_size {
            return Err(Error::invalid_argument(format!(
                "rank {rank} and world_size {world_size}: need 0 <= rank < world_size"
            )));
        }
        let comm =
            crate::distributed::callback::CallbackCollective::new(function, user_data, rank as u32, world_size as u32);
        registry::with_engine(e, |eng| eng.set_collective(Box::new(comm)))
    })
}

/// Bytes this rank has sent through data-parallel collectives, and how many
/// collectives ran (including the initial parameter broadcast). Zero without a
/// transport.
#[no_mangle]
pub unsafe extern "C" fn gacc_comm_stats(e: *const gacc_engine, collectives: *mut u64, bytes: *mut u64) -> gacc_status {
    guard("gacc_comm_stats", || {
        require(collectives, "collectives")?;
        require(bytes, "bytes")?;
        let s = registry::with_engine(e, |eng| Ok(eng.comm_stats()))?;
        // SAFETY: both non-null.
        unsafe {
            collectives.write(s.collectives);
            bytes.write(s.bytes);
        }
        Ok(())
    })
}

/// Makes the engine one rank of a data-parallel group over MPI (CPU engines; needs a
/// library built with the `mpi` cargo feature, otherwise GACC_ERR_INVALID_STATE).
/// `comm` is the address of the caller's `MPI_Comm` (NULL: MPI_COMM_WORLD); gacc
/// duplicates it, with MPI_ERRORS_RETURN so a failed collective is
/// GACC_ERR_COMMUNICATION rather than an abort. MPI must be initialised, and stay so
/// until the engine is destroyed. Same semantics as gacc_set_allreduce otherwise.
#[no_mangle]
pub unsafe extern "C" fn gacc_set_mpi(e: *mut gacc_engine, comm: *const c_void) -> gacc_status {
    guard("gacc_set_mpi", || {
        // Check the handle before touching MPI.
        registry::get(e)?;
        mpi_collective(comm).and_then(|c| registry::with_engine(e, |eng| eng.set_collective(c)))
    })
}

/// Makes a new NCCL unique id (ncclGetUniqueId) for one data-parallel group: call it
/// on one rank (rank 0), send the 128 bytes to every rank by your own means, and
/// pass them to gacc_set_nccl on every rank. NCCL is loaded at run time
/// (`GACC_NCCL_LIB`, else libnccl.so.2): GACC_ERR_DEVICE_UNAVAILABLE with the reason
/// when it cannot be loaded; GACC_ERR_COMMUNICATION when NCCL fails.
#[no_mangle]
pub unsafe extern "C" fn gacc_nccl_unique_id(out: *mut gacc_nccl_id) -> gacc_status {
    guard("gacc_nccl_unique_id", || {
        require(out, "out")?;
        let id = crate::distributed::nccl::unique_id()?;
        let mut bytes = [0u8; 128];
        for (b, c) in bytes.iter_mut().zip(id.internal.iter()) {
            *b = *c as u8;
        }
        // SAFETY: out is non-null.
        unsafe { out.write(gacc_nccl_id { internal: bytes }) };
        Ok(())
    })
}

/// Makes a CUDA engine rank `rank` of a `world_size`-rank data-parallel group over
/// NCCL (ncclCommInitRank with `id` from gacc_nccl_unique_id; blocks until every
/// rank has called it). Call it right after gacc_create, with an empty window; each
/// rank's engine should be on its own GPU. Like the other transports it sends rank
/// 0's parameters to every rank once. Then each gacc_step sums the window totals
/// and the fp32 accumulator across ranks with ncclAllReduce on the engine's stream
/// (the one gacc_set_stream names), before unscaling; the kernels read the global
/// total from device memory, so gacc_step without info neither waits for the device
/// nor copies anything to the host. A window whose global total weight is 0 is
/// skipped on the device (applied = 0, loss scale unchanged) instead of
/// GACC_ERR_INVALID_STATE. An error NCCL reports when the work is queued is
/// GACC_ERR_COMMUNICATION with NCCL's message, and the rank's window is left as it
/// was; an error NCCL detects later (asynchronously) is reported by the next
/// gacc_step as GACC_ERR_COMMUNICATION and aborts the communicator; the window that
/// was being reduced then is lost (call gacc_zero) and the engine needs a new group.
/// CPU engines: GACC_ERR_INVALID_STATE (use gacc_set_mpi or gacc_set_allreduce);
/// NCCL not loadable: GACC_ERR_DEVICE_UNAVAILABLE.
#[no_mangle]
pub unsafe extern "C" fn gacc_set_nccl(
    e: *mut gacc_engine,
    id: *const gacc_nccl_id,
    rank: i32,
    world_size: i32,
) -> gacc_status {
    guard("gacc_set_nccl", || {
        require(id, "id")?;
        if world_size < 1 || rank < 0 || rank >= world_size {
            return Err(Error::invalid_argument(format!(
                "rank {rank} and world_size {world_size}: need 0 <= rank < world_size"
            )));
        }
        // SAFETY: id is non-null and points to a gacc_nccl_id.
        let bytes = unsafe { (*id).internal };
        let mut nccl_id = crate::distributed::nccl::NcclUniqueId { internal: [0; 128] };
        for (c, b) in nccl_id.internal.iter_mut().zip(bytes.iter()) {
            *c = *b as std::os::raw::c_char;
        }
        registry::with_engine(e, |eng| {
            let device = eng.prepare_device_collective()?;
            let comm = crate::distributed::nccl::NcclComm::init(&nccl_id, rank as u32, world_size as u32)?;
            drop(device);
            eng.set_device_collective(Box::new(comm))
        })
    })
}

#[cfg(feature = "mpi")]
fn mpi_collective(comm: *const c_void) -> crate::Result<Box<dyn crate::distributed::Collective>> {
    Ok(Box::new(crate::distributed::mpi::MpiCollective::open(comm)?))
}

#[cfg(not(feature = "mpi"))]
fn mpi_collective(_comm: *const c_void) -> crate::Result<Box<dyn crate::distributed::Collective>> {
    Err(Error::invalid_state("this build of gacc has no MPI support (build with --features mpi)"))
}

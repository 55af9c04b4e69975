//! The real device runtime: the CUDA driver API through cudarc (dynamic loading).
//!
//! cudarc's loader panics when libcuda is absent, so [`probe`] checks for the
//! library first (`is_culib_present`) and every entry into cudarc here runs under
//! `catch_unwind` as well: a machine without a driver gets
//! GACC_ERR_DEVICE_UNAVAILABLE with the reason, never a panic. CPU engines never
//! reach this module; GACC_DEVICE_AUTO reaches only [`probe`].
//!
//! The engine uses the device's primary context and a stream of its own, or the
//! caller's stream after gacc_set_stream. Its own stream is a blocking one (flags
//! 0): it orders with the legacy default stream both ways, so a caller working on
//! stream 0 (PyTorch's default stream, cudaMemcpy, cuMemcpyHtoD) needs no
//! gacc_set_stream. Every method pushes the primary context on the calling
//! thread's context stack and pops it before returning (on every path), so the
//! caller's current context is never replaced and a thread without one can call
//! gacc. Kernels come from the embedded sources through NVRTC (the NVRTC of the
//! driver's CUDA major) as a cubin for the device's exact architecture, or as PTX
//! for the newest architecture NVRTC knows when the device is newer, JIT-compiled
//! by cuModuleLoadData (cached: see cache.rs). The grids come from the occupancy API.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::AssertUnwindSafe;

use cudarc::driver::sys;

use super::cache;
use super::kernels::KERNEL_NAMES;
use super::nvrtc;
use super::runtime::{with_kernel_params, Arg, DevPtr, Runtime};
use crate::backend::DeviceScope;
use crate::status::{Error, Result};

/// The driver's name and description of a result code.
fn describe_result(r: sys::CUresult) -> String {
    let mut name: *const c_char = std::ptr::null();
    let mut text: *const c_char = std::ptr::null();
    // SAFETY: cuGetErrorName/String only write a pointer to a static string.
    unsafe {
        sys::cuGetErrorName(r, &mut name);
        sys::cuGetErrorString(r, &mut text);
        let s = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        format!("{} ({})", s(name), s(text))
    }
}

fn check(r: sys::CUresult, what: &str) -> Result<()> {
    match r {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => Err(Error::out_of_memory(format!("{what}: {}", describe_result(r)))),
        _ => Err(Error::device(format!("{what}: {}", describe_result(r)))),
    }
}

/// Runs `f`, turning a panic inside cudarc (a missing symbol in an old driver) into
/// an error.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::device_unavailable(format!("{what}: the CUDA driver library is unusable: {msg}")))
    })
}

/// The driver's CUDA version as "13.0", if a driver is loaded.
pub fn driver_version() -> Option<String> {
    // SAFETY: only called once the library is known to be present.
    if !unsafe { sys::is_culib_present() } {
        return None;
    }
    no_panic("cuDriverGetVersion", || {
        let mut v: c_int = 0;
        // SAFETY: writes one int.
        check(unsafe { sys::cuDriverGetVersion(&mut v) }, "cuDriverGetVersion")?;
        Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
    })
    .ok()
}

/// Whether CUDA device `ordinal` can be used: the driver library loads, cuInit
/// succeeds and the ordinal exists. The error is GACC_ERR_DEVICE_UNAVAILABLE with
/// the driver's reason.
pub fn probe(ordinal: u32) -> Result<()> {
    // SAFETY: is_culib_present only tries to dlopen the candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::device_unavailable(format!(
            "CUDA device {ordinal} requested, but the CUDA driver library (libcuda.so) is not installed"
        )));
    }
    no_panic("probe", || {
        // SAFETY: cuInit has no preconditions.
        let r = unsafe { sys::cuInit(0) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(Error::device_unavailable(format!(
                "CUDA device {ordinal} requested, but cuInit failed: {}",
                describe_result(r)
            )));
        }
        let mut count: c_int = 0;
        // SAFETY: writes one int.
        let r = unsafe { sys::cuDeviceGetCount(&mut count) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(Error::device_unavailable(format!("cuDeviceGetCount failed: {}", describe_result(r))));
        }
        if i64::from(ordinal) >= i64::from(count) {
            return Err(Error::device_unavailable(format!(
                "CUDA device {ordinal} requested, but the driver sees {count} device(s)"
            )));
        }
        Ok(())
    })
}

/// One engine's view of a CUDA device.
pub struct CudaRuntime {
    ordinal: u32,
    device: sys::CUdevice,
    ctx: sys::CUcontext,
    own_stream: sys::CUstream,
    stream: sys::CUstream,
    module: sys::CUmodule,
    functions: HashMap<&'static str, sys::CUfunction>,
    name: String,
    arch: u32,
    sm_count: u32,
}

// SAFETY: driver handles may be used from any thread once the context is made
// current there (every method does); the engine serialises calls.
unsafe impl Send for CudaRuntime {}

impl CudaRuntime {
    /// Opens device `ordinal` (after [`probe`]) and loads the kernels.
    pub fn new(ordinal: u32) -> Result<CudaRuntime> {
        probe(ordinal)?;
        no_panic("CUDA engine creation", || Self::open(ordinal))
    }

    fn open(ordinal: u32) -> Result<CudaRuntime> {
        let mut device: sys::CUdevice = 0;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: out-pointers to locals; the device handle comes from the driver.
        unsafe {
            check(sys::cuDeviceGet(&mut device, ordinal as c_int), "cuDeviceGet")?;
            check(sys::cuDevicePrimaryCtxRetain(&mut ctx, device), "cuDevicePrimaryCtxRetain")?;
        }
        let mut rt = CudaRuntime {
            ordinal,
            device,
            ctx,
            own_stream: std::ptr::null_mut(),
            stream: std::ptr::null_mut(),
            module: std::ptr::null_mut(),
            functions: HashMap::new(),
            name: String::new(),
            arch: 0,
            sm_count: 1,
        };
        let _cx = rt.enter()?;
        let attr = |a: sys::CUdevice_attribute| -> Result<i32> {
            let mut v: c_int = 0;
            // SAFETY: writes one int.
            check(unsafe { sys::cuDeviceGetAttribute(&mut v, a, device) }, "cuDeviceGetAttribute")?;
            Ok(v)
        };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        rt.arch = (major * 10 + minor) as u32;
        rt.sm_count = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
        let mut name = [0 as c_char; 256];
        // SAFETY: the buffer holds 256 bytes.
        check(unsafe { sys::cuDeviceGetName(name.as_mut_ptr(), 256, device) }, "cuDeviceGetName")?;
        // SAFETY: the driver NUL-terminates.
        rt.name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
        // Blocking (not CU_STREAM_NON_BLOCKING): ordered both ways with the legacy
        // default stream, where a caller without gacc_set_stream queues its work.
        // SAFETY: out-pointer to a field.
        check(
            unsafe { sys::cuStreamCreate(&mut rt.own_stream, sys::CUstream_flags::CU_STREAM_DEFAULT as u32) },
            "cuStreamCreate",
        )?;
        rt.stream = rt.own_stream;
        rt.load_kernels()?;
        Ok(rt)
    }

    fn load_kernels(&mut self) -> Result<()> {
        let versions = || {
            format!(
                "NVRTC {}, driver CUDA {}, device {} (sm_{})",
                nvrtc::version().map(|(a, b)| format!("{a}.{b}")).unwrap_or_else(|e| e.message),
                driver_version().unwrap_or_else(|| "?".into()),
                self.name,
                self.arch
            )
        };
        let (cubin, origin) = cache::kernels_cubin(self.arch, false)
            .map_err(|e| Error::device(format!("compiling gacc's kernels: {} [{}]", e.message, versions())))?;
        let mut module: sys::CUmodule = std::ptr::null_mut();
        // SAFETY: cubin is a complete ELF image that outlives the call.
        let mut r = unsafe { sys::cuModuleLoadData(&mut module, cubin.as_ptr() as *const c_void) };
        if r != sys::CUresult::CUDA_SUCCESS && origin != cache::Origin::Compiled {
            // A stale or foreign cache entry: compile afresh and overwrite it.
            let (fresh, _) = cache::kernels_cubin(self.arch, true)
                .map_err(|e| Error::device(format!("compiling gacc's kernels: {} [{}]", e.message, versions())))?;
            // SAFETY: as above.
            r = unsafe { sys::cuModuleLoadData(&mut module, fresh.as_ptr() as *const c_void) };
        }
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(Error::device(format!(
                "cuModuleLoadData refused gacc's kernels: {} [{}]",
                describe_result(r),
                versions()
            )));
        }
        self.module = module;
        for name in KERNEL_NAMES {
            let c = CString::new(name).map_err(|_| Error::internal("kernel name"))?;
            let mut f: sys::CUfunction = std::ptr::null_mut();
            // SAFETY: module is loaded; c is NUL-terminated.
            check(unsafe { sys::cuModuleGetFunction(&mut f, module, c.as_ptr()) }, name)?;
            self.functions.insert(name, f);
        }
        Ok(())
    }

    /// Pushes the engine's context on this thread's stack until the scope drops.
    fn enter(&self) -> Result<DeviceScope> {
        // SAFETY: ctx is the retained primary context.
        check(unsafe { sys::cuCtxPushCurrent_v2(self.ctx) }, "cuCtxPushCurrent")?;
        Ok(DeviceScope::new(|| {
            let mut popped: sys::CUcontext = std::ptr::null_mut();
            // SAFETY: pops the context pushed above (scopes nest on one thread).
            unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
        }))
    }

    /// GACC_ERR_INVALID_STATE when the stream is being captured: `what` would wait for
    /// the device or copy host memory, which a CUDA graph cannot hold.
    fn refuse_in_capture(&mut self, what: &str) -> Result<()> {
        if Runtime::capturing(self)? {
            return Err(Error::invalid_state(format!(
                "{what} cannot run while the stream is being captured into a CUDA graph (it copies host memory \
                 or waits for the device); only device-gradient micro-batches and gacc_step without info can \
                 be captured"
            )));
        }
        Ok(())
    }

    /// The device's compute capability as major*10 + minor.
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// The stream work is queued on.
    pub fn stream(&self) -> *mut c_void {
        self.stream as *mut c_void
    }
}

impl Drop for CudaRuntime {
    fn drop(&mut self) {
        let _ = no_panic("CUDA engine teardown", || {
            {
                let _cx = self.enter();
                // SAFETY: handles created in open(); nothing uses them afterwards.
                unsafe {
                    // The whole context, not `self.stream`: a caller's stream given to
                    // gacc_set_stream may be destroyed before gacc_destroy.
                    sys::cuCtxSynchronize();
                    if !self.module.is_null() {
                        sys::cuModuleUnload(self.module);
                    }
                    if !self.own_stream.is_null() {
                        sys::cuStreamDestroy_v2(self.own_stream);
                    }
                }
            }
            // After the pop: the last release destroys the primary context.
            // SAFETY: retained in open().
            unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) };
            Ok(())
        });
    }
}

impl Runtime for CudaRuntime {
    fn describe(&self) -> String {
        format!("cuda:{} ({}, sm_{}, {} SMs)", self.ordinal, self.name, self.arch, self.sm_count)
    }
    fn multiprocessor_count(&self) -> u32 {
        self.sm_count
    }
    fn max_active_blocks_per_sm(&mut self, kernel: &str, block: u32) -> Result<u32> {
        let _cx = CudaRuntime::enter(self)?;
        let f = *self.functions.get(kernel).ok_or_else(|| Error::internal(format!("no kernel named {kernel}")))?;
        no_panic("cuOccupancyMaxActiveBlocksPerMultiprocessor", || {
            let mut blocks: c_int = 0;
            // SAFETY: f is a loaded kernel; writes one int.
            check(
                unsafe { sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut blocks, f, block as c_int, 0) },
                "cuOccupancyMaxActiveBlocksPerMultiprocessor",
            )?;
            Ok(blocks.max(1) as u32)
        })
    }
    fn memory_info(&mut self) -> Result<(u64, u64)> {
        let _cx = self.enter()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two integers.
        check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }, "cuMemGetInfo")?;
        Ok((free as u64, total as u64))
    }
    fn alloc(&mut self, bytes: usize) -> Result<DevPtr> {
        let _cx = self.enter()?;
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: writes one pointer.
        check(unsafe { sys::cuMemAlloc_v2(&mut p, bytes.max(1)) }, &format!("cuMemAlloc of {bytes} bytes"))?;
        Ok(p)
    }
    unsafe fn free(&mut self, ptr: DevPtr) {
        let _cx = self.enter();
        sys::cuMemFree_v2(ptr);
    }
    unsafe fn copy_h2d(&mut self, dst: DevPtr, src: *const u8, bytes: usize) -> Result<()> {
        let _cx = self.enter()?;
        self.refuse_in_capture("a copy from host memory")?;
        check(sys::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, bytes, self.stream), "cuMemcpyHtoDAsync")?;
        // Pageable sources are staged before the call returns; pinned ones are not:
        // wait so the caller may reuse `src` at once.
        check(sys::cuStreamSynchronize(self.stream), "cuStreamSynchronize")
    }
    unsafe fn copy_d2h(&mut self, dst: *mut u8, src: DevPtr, bytes: usize) -> Result<()> {
        let _cx = self.enter()?;
        self.refuse_in_capture("reading device memory back")?;
        check(sys::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, bytes, self.stream), "cuMemcpyDtoHAsync")?;
        check(sys::cuStreamSynchronize(self.stream), "cuStreamSynchronize")
    }
    unsafe fn copy_d2d(&mut self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        let _cx = self.enter()?;
        check(sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream), "cuMemcpyDtoDAsync")
    }
    unsafe fn memset(&mut self, dst: DevPtr, value: u8, bytes: usize) -> Result<()> {
        let _cx = self.enter()?;
        check(sys::cuMemsetD8Async(dst, value, bytes, self.stream), "cuMemsetD8Async")
    }
    unsafe fn launch(&mut self, name: &str, grid: u32, block: u32, shared_bytes: u32, args: &[Arg<'_>]) -> Result<()> {
        let _cx = self.enter()?;
        let f = *self.functions.get(name).ok_or_else(|| Error::internal(format!("no kernel named {name}")))?;
        let stream = self.stream;
        with_kernel_params(args, |params| {
            // SAFETY: f is a loaded kernel; params point to live argument values
            // matching its parameter list (the launchers build them).
            check(
                sys::cuLaunchKernel(
                    f,
                    grid,
                    1,
                    1,
                    block,
                    1,
                    1,
                    shared_bytes,
                    stream,
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                ),
                name,
            )
        })
    }
    fn is_device_pointer(&mut self, ptr: *const c_void) -> Result<bool> {
        let _cx = self.enter()?;
        let mut kind: u32 = 0;
        let mut owner: sys::CUcontext = std::ptr::null_mut();
        let mut ordinal: c_int = -2;
        let mut attrs = [
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_CONTEXT,
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
        ];
        let mut data = [
            &mut kind as *mut u32 as *mut c_void,
            &mut owner as *mut sys::CUcontext as *mut c_void,
            &mut ordinal as *mut c_int as *mut c_void,
        ];
        // SAFETY: three attributes, each written to a local of its type. Memory the
        // driver does not know (ordinary host memory) gets default values, no error.
        check(
            unsafe { sys::cuPointerGetAttributes(3, attrs.as_mut_ptr(), data.as_mut_ptr(), ptr as sys::CUdeviceptr) },
            "cuPointerGetAttributes",
        )?;
        if kind != sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 {
            return Ok(false);
        }
        // Device memory this engine's kernels cannot touch: launching on it would be
        // an illegal address (sticky, and in the caller's context too).
        if ordinal != self.ordinal as c_int {
            return Err(Error::invalid_argument(format!(
                "pointer {ptr:?} is memory of CUDA device {ordinal}, but this engine is on CUDA device {}: copy \
                 the gradient to device {} first",
                self.ordinal, self.ordinal
            )));
        }
        // No context: memory mapped for the whole device (virtual memory management).
        if !owner.is_null() && owner != self.ctx {
            return Err(Error::invalid_argument(format!(
                "pointer {ptr:?} is memory of another CUDA context on device {ordinal} (one from cuCtxCreate); \
                 this engine uses device {ordinal}'s primary context, whose kernels cannot touch it"
            )));
        }
        Ok(true)
    }
    fn synchronize(&mut self) -> Result<()> {
        let _cx = self.enter()?;
        self.refuse_in_capture("waiting for the device")?;
        // SAFETY: a live stream.
        check(unsafe { sys::cuStreamSynchronize(self.stream) }, "cuStreamSynchronize")
    }
    fn finish(&mut self) -> Result<()> {
        let _cx = CudaRuntime::enter(self)?;
        // SAFETY: the context is current; waits for all of its streams.
        check(unsafe { sys::cuCtxSynchronize() }, "cuCtxSynchronize")
    }
    fn stream_handle(&self) -> *mut c_void {
        self.stream as *mut c_void
    }
    fn enter(&mut self) -> Result<DeviceScope> {
        CudaRuntime::enter(self)
    }
    fn capturing(&mut self) -> Result<bool> {
        let _cx = CudaRuntime::enter(self)?;
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: writes one enum value.
        check(unsafe { sys::cuStreamIsCapturing(self.stream, &mut status) }, "cuStreamIsCapturing")?;
        Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }
    fn set_stream(&mut self, stream: *mut c_void) -> Result<()> {
        let _cx = self.enter()?;
        // NULL: the engine's own (blocking) stream; CU_STREAM_LEGACY (0x1) and
        // CU_STREAM_PER_THREAD (0x2) name the default streams, in the calling
        // thread's current context as the driver resolves them (the engine's).
        let next = if stream.is_null() { self.own_stream } else { stream as sys::CUstream };
        if next == self.stream {
            return Ok(());
        }
        // Order the new stream after everything queued on the old one.
        let mut event: sys::CUevent = std::ptr::null_mut();
        // SAFETY: event is created, recorded, waited on and destroyed here (the
        // driver keeps it alive until the wait is resolved).
        unsafe {
            check(sys::cuEventCreate(&mut event, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32), "cuEventCreate")?;
            let r = check(sys::cuEventRecord(event, self.stream), "cuEventRecord")
                .and_then(|_| check(sys::cuStreamWaitEvent(next, event, 0), "cuStreamWaitEvent"));
            sys::cuEventDestroy_v2(event);
            r?;
        }
        self.stream = next;
        Ok(())
    }
}

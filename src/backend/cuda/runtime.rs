//! The device runtime the CUDA backend's orchestration is written against.
//!
//! Two implementations: [`super::driver::CudaRuntime`] (the CUDA driver through
//! cudarc) and `shim::ShimRuntime` (the same kernels compiled for the host,
//! see kernels/shim/). Everything above this trait (buffer sizes, launch order, grid
//! and block sizes, argument lists) is shared, so the host-shim tests exercise the
//! backend's real orchestration.

use std::ffi::c_void;

use crate::backend::DeviceScope;
use crate::status::Result;

/// A device address.
pub type DevPtr = u64;

/// One kernel argument, by value (as the kernel declares it).
#[derive(Clone, Copy, Debug)]
pub enum Arg<'a> {
    Ptr(DevPtr),
    U64(u64),
    I32(i32),
    U32(u32),
    F32(f32),
    F64(f64),
    /// A #[repr(C)] struct passed by value.
    Bytes(&'a [u8]),
}

/// Turns `args` into cuLaunchKernel's `kernelParams` (one pointer per argument) and
/// hands them to `f`. Scalars are stored in 8-byte aligned slots that outlive `f`.
pub fn with_kernel_params<R>(args: &[Arg<'_>], f: impl FnOnce(&mut [*mut c_void]) -> R) -> R {
    let mut slots: Vec<u64> = vec![0; args.len()];
    for (slot, a) in slots.iter_mut().zip(args) {
        *slot = match *a {
            Arg::Ptr(p) | Arg::U64(p) => p,
            Arg::I32(v) => u64::from(v as u32),
            Arg::U32(v) => u64::from(v),
            Arg::F32(v) => u64::from(v.to_bits()),
            Arg::F64(v) => v.to_bits(),
            Arg::Bytes(_) => 0,
        };
    }
    // Little-endian: a 4-byte value sits in the first bytes of its slot.
    let base = slots.as_mut_ptr();
    let mut params: Vec<*mut c_void> = args
        .iter()
        .enumerate()
        .map(|(i, a)| match a {
            Arg::Bytes(b) => b.as_ptr() as *mut c_void,
            // SAFETY: i < slots.len().
            _ => (unsafe { base.add(i) }) as *mut c_void,
        })
        .collect();
    f(&mut params)
}

/// Memory, copies and launches on one device, in one stream order.
pub trait Runtime: Send {
    /// "cuda:0 (NVIDIA H100 ...)" or "shim".
    fn describe(&self) -> String;
    /// Multiprocessors: grid sizes are a multiple of this.
    fn multiprocessor_count(&self) -> u32;
    /// How many blocks of `block` threads of kernel `kernel` can be resident on one
    /// multiprocessor at once (cuOccupancyMaxActiveBlocksPerMultiprocessor); the
    /// element-wise grids are this times the multiprocessor count.
    fn max_active_blocks_per_sm(&mut self, kernel: &str, block: u32) -> Result<u32>;
    /// (free, total) device memory in bytes.
    fn memory_info(&mut self) -> Result<(u64, u64)>;
    /// Allocates `bytes` (contents undefined). Failure: GACC_ERR_OUT_OF_MEMORY.
    fn alloc(&mut self, bytes: usize) -> Result<DevPtr>;
    /// Frees an allocation (after the work queued on it is done).
    ///
    /// # Safety
    /// `ptr` came from `alloc` of this runtime and is not used again.
    unsafe fn free(&mut self, ptr: DevPtr);
    /// Host to device, stream-ordered; `src` may be reused when this returns.
    ///
    /// # Safety
    /// `src` has `bytes` readable bytes; `dst` is device memory of at least `bytes`.
    unsafe fn copy_h2d(&mut self, dst: DevPtr, src: *const u8, bytes: usize) -> Result<()>;
    /// Device to host; waits for the device.
    ///
    /// # Safety
    /// `dst` has `bytes` writable bytes; `src` is device memory of at least `bytes`.
    unsafe fn copy_d2h(&mut self, dst: *mut u8, src: DevPtr, bytes: usize) -> Result<()>;
    /// Device to device, stream-ordered.
    ///
    /// # Safety
    /// Both ranges are device memory of at least `bytes`.
    unsafe fn copy_d2d(&mut self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    /// Sets `bytes` bytes to `value`, stream-ordered.
    ///
    /// # Safety
    /// `dst` is device memory of at least `bytes`.
    unsafe fn memset(&mut self, dst: DevPtr, value: u8, bytes: usize) -> Result<()>;
    /// Launches kernel `name` on a 1-D grid, stream-ordered.
    ///
    /// # Safety
    /// `args` match the kernel's parameter list and every pointer in them is valid
    /// for what the kernel does with it.
    unsafe fn launch(&mut self, name: &str, grid: u32, block: u32, shared_bytes: u32, args: &[Arg<'_>]) -> Result<()>;
    /// Whether `ptr` is device memory this runtime's kernels can read directly.
    fn is_device_pointer(&mut self, ptr: *const c_void) -> Result<bool>;
    /// Waits until all queued work is done.
    fn synchronize(&mut self) -> Result<()>;
    /// Waits until all work this runtime queued is done, on whatever stream, without
    /// naming the caller's stream (teardown: gacc_destroy may come after the caller
    /// destroyed the stream it gave to gacc_set_stream).
    fn finish(&mut self) -> Result<()> {
        self.synchronize()
    }
    /// Queues work on the caller's stream from now on (NULL: the runtime's own;
    /// CUDA also takes CU_STREAM_LEGACY (0x1) and CU_STREAM_PER_THREAD (0x2)).
    fn set_stream(&mut self, stream: *mut c_void) -> Result<()>;
    /// The CUstream work is queued on, for libraries that queue on it (NCCL); NULL
    /// where there is none (the host shim).
    fn stream_handle(&self) -> *mut c_void {
        std::ptr::null_mut()
    }
    /// Makes this runtime's device current on the calling thread until the scope is
    /// dropped (around calls into a device library such as NCCL).
    fn enter(&mut self) -> Result<DeviceScope> {
        Ok(DeviceScope::none())
    }
    /// Whether the stream work is queued on is being captured into a CUDA graph.
    fn capturing(&mut self) -> Result<bool> {
        Ok(false)
    }
}

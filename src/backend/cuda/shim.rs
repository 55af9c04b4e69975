//! The host-shim runtime: gacc's kernels compiled for the host (kernels/shim/) and
//! driven through the same orchestration as on a GPU.
//!
//! "Device" memory is host memory from the global allocator, 256-byte aligned like
//! cuMemAlloc, and poisoned (every byte 0xFF: NaN as f32, f16 and bf16) when
//! allocated so that anything the backend forgets to initialise shows up. Copies are
//! memcpy; launches call `gacc_shim_launch` in the shim library (one OS thread per
//! CUDA thread, blocks one after another). There is one stream and work runs when
//! it is queued, so synchronize is a no-op. Used by the tests; see docs/cuda.md for
//! what it does not model.

use std::alloc::Layout as AllocLayout;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::runtime::{with_kernel_params, Arg, DevPtr, Runtime};
use crate::status::{Error, Result};

type LaunchFn = unsafe extern "C" fn(*const c_char, u32, u32, u32, *mut *mut c_void, u32, *mut c_char, usize) -> i32;
type SizeofFn = unsafe extern "C" fn(*const c_char) -> usize;

/// The loaded shim library, and the memory of its one simulated device.
pub struct ShimLibrary {
    _lib: libloading::Library,
    launch: LaunchFn,
    sizeof: SizeofFn,
    /// start -> bytes of every live "device" allocation of every ShimRuntime on
    /// this library (so a test's gradient buffer counts as device memory for an
    /// engine's runtime, as cuMemAlloc'd memory does in one CUDA context).
    device_memory: Mutex<BTreeMap<u64, usize>>,
}

impl ShimLibrary {
    /// Opens a shim library built from kernels/shim/shim_main.cpp.
    pub fn open(path: &Path) -> Result<Arc<ShimLibrary>> {
        // SAFETY: the shim library has no initialisers beyond the C++ runtime's.
        unsafe {
            let lib = libloading::Library::new(path)
                .map_err(|e| Error::device(format!("cannot load the kernel shim {}: {e}", path.display())))?;
            let launch: LaunchFn =
                *lib.get(b"gacc_shim_launch\0").map_err(|e| Error::device(format!("kernel shim: {e}")))?;
            let sizeof: SizeofFn =
                *lib.get(b"gacc_shim_sizeof\0").map_err(|e| Error::device(format!("kernel shim: {e}")))?;
            Ok(Arc::new(ShimLibrary { _lib: lib, launch, sizeof, device_memory: Mutex::new(BTreeMap::new()) }))
        }
    }

    /// sizeof of a struct shared with Rust, as the C++ side sees it.
    pub fn size_of(&self, name: &str) -> usize {
        let c = CString::new(name).unwrap_or_default();
        // SAFETY: a NUL-terminated name.
        unsafe { (self.sizeof)(c.as_ptr()) }
    }
}

/// A runtime whose device is the host.
pub struct ShimRuntime {
    lib: Arc<ShimLibrary>,
    sm_count: u32,
    memory_bytes: u64,
    /// start -> (bytes, layout)
    allocations: BTreeMap<u64, (usize, AllocLayout)>,
    used: u64,
    stats: ShimStats,
    /// The shim's occupancy answer: blocks per multiprocessor by kernel name;
    /// kernels not listed get [`SHIM_BLOCKS_PER_SM`].
    occupancy: BTreeMap<String, u32>,
}

/// What a [`ShimRuntime`] did so far (tests check counts against these).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShimStats {
    /// Every launch made, in order (name, grid, block).
    pub launches: Vec<(String, u32, u32)>,
    /// Device-to-host copies made.
    pub d2h_copies: usize,
    /// Host-to-device copies made.
    pub h2d_copies: usize,
    /// synchronize() calls made.
    pub syncs: usize,
}

/// The shim's occupancy answer for kernels not in [`ShimRuntime::occupancy`].
pub const SHIM_BLOCKS_PER_SM: u32 = 8;

// SAFETY: the allocations are owned by this value; the library handle is Sync.
unsafe impl Send for ShimRuntime {}

impl ShimRuntime {
    /// A shim "device" with `sm_count` multiprocessors and `memory_bytes` of memory.
    pub fn new(lib: Arc<ShimLibrary>, sm_count: u32, memory_bytes: u64) -> ShimRuntime {
        ShimRuntime {
            lib,
            sm_count,
            memory_bytes,
            allocations: BTreeMap::new(),
            used: 0,
            stats: ShimStats::default(),
            occupancy: BTreeMap::new(),
        }
    }

    /// What this runtime did so far: launches, copies, synchronisations.
    pub fn stats(&self) -> &ShimStats {
        &self.stats
    }

    /// Sets the occupancy answer (blocks per multiprocessor) for kernel `kernel`.
    pub fn set_occupancy(&mut self, kernel: &str, blocks_per_sm: u32) {
        self.occupancy.insert(kernel.to_string(), blocks_per_sm);
    }
}

impl Drop for ShimRuntime {
    fn drop(&mut self) {
        for start in self.allocations.keys().copied().collect::<Vec<_>>() {
            // SAFETY: allocated by alloc() of this runtime.
            unsafe { self.free(start) };
        }
    }
}

impl Runtime for ShimRuntime {
    fn describe(&self) -> String {
        format!("shim ({} simulated multiprocessors)", self.sm_count)
    }
    fn multiprocessor_count(&self) -> u32 {
        self.sm_count
    }
    fn max_active_blocks_per_sm(&mut self, kernel: &str, _block: u32) -> Result<u32> {
        Ok(self.occupancy.get(kernel).copied().unwrap_or(SHIM_BLOCKS_PER_SM))
    }
    fn memory_info(&mut self) -> Result<(u64, u64)> {
        Ok((self.memory_bytes.saturating_sub(self.used), self.memory_bytes))
    }
    fn alloc(&mut self, bytes: usize) -> Result<DevPtr> {
        if self.used + bytes as u64 > self.memory_bytes {
            return Err(Error::out_of_memory(format!("shim: cannot allocate {bytes} bytes")));
        }
        let layout =
            AllocLayout::from_size_align(bytes.max(1), 256).map_err(|e| Error::out_of_memory(e.to_string()))?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(Error::out_of_memory(format!("shim: cannot allocate {bytes} bytes")));
        }
        // SAFETY: p has layout.size() bytes. Poison: all-ones is NaN in f32/f16/bf16.
        unsafe { std::ptr::write_bytes(p, 0xFF, layout.size()) };
        self.allocations.insert(p as u64, (bytes, layout));
        self.lib.device_memory.lock().unwrap_or_else(|e| e.into_inner()).insert(p as u64, bytes.max(1));
        self.used += bytes as u64;
        Ok(p as u64)
    }
    unsafe fn free(&mut self, ptr: DevPtr) {
        if let Some((bytes, layout)) = self.allocations.remove(&ptr) {
            self.lib.device_memory.lock().unwrap_or_else(|e| e.into_inner()).remove(&ptr);
            self.used -= bytes as u64;
            std::alloc::dealloc(ptr as *mut u8, layout);
        }
    }
    unsafe fn copy_h2d(&mut self, dst: DevPtr, src: *const u8, bytes: usize) -> Result<()> {
        self.stats.h2d_copies += 1;
        std::ptr::copy_nonoverlapping(src, dst as *mut u8, bytes);
        Ok(())
    }
    unsafe fn copy_d2h(&mut self, dst: *mut u8, src: DevPtr, bytes: usize) -> Result<()> {
        self.stats.d2h_copies += 1;
        std::ptr::copy_nonoverlapping(src as *const u8, dst, bytes);
        Ok(())
    }
    unsafe fn copy_d2d(&mut self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        std::ptr::copy(src as *const u8, dst as *mut u8, bytes);
        Ok(())
    }
    unsafe fn memset(&mut self, dst: DevPtr, value: u8, bytes: usize) -> Result<()> {
        std::ptr::write_bytes(dst as *mut u8, value, bytes);
        Ok(())
    }
    unsafe fn launch(&mut self, name: &str, grid: u32, block: u32, shared_bytes: u32, args: &[Arg<'_>]) -> Result<()> {
        self.stats.launches.push((name.to_string(), grid, block));
        let cname = CString::new(name).map_err(|_| Error::internal("kernel name with NUL"))?;
        let mut err = vec![0u8; 512];
        let rc = with_kernel_params(args, |params| {
            (self.lib.launch)(
                cname.as_ptr(),
                grid,
                block,
                shared_bytes,
                params.as_mut_ptr(),
                params.len() as u32,
                err.as_mut_ptr() as *mut c_char,
                err.len(),
            )
        });
        if rc != 0 {
            let msg = CStr::from_bytes_until_nul(&err).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
            return Err(Error::device(format!("shim launch of {name} failed: {msg}")));
        }
        Ok(())
    }
    fn is_device_pointer(&mut self, ptr: *const c_void) -> Result<bool> {
        let p = ptr as u64;
        let memory = self.lib.device_memory.lock().unwrap_or_else(|e| e.into_inner());
        Ok(memory.range(..=p).next_back().is_some_and(|(&start, &bytes)| p < start + bytes as u64))
    }
    fn synchronize(&mut self) -> Result<()> {
        self.stats.syncs += 1;
        Ok(())
    }
    fn set_stream(&mut self, _stream: *mut c_void) -> Result<()> {
        // One in-order "stream": every launch has finished when launch() returns.
        Ok(())
    }
}

//! A stand-in for CUDA stream capture over the host shim (test double).
//!
//! While capturing, the stream work a backend queues (launches, memsets, device
//! copies) is recorded instead of run, each launch with a copy of its argument bytes
//! taken at the call, as cuStreamBeginCapture/cuGraphInstantiate freeze kernel
//! parameters; `replay` runs the recording again on the shim, as cuGraphLaunch does.
//! Calls that cannot be captured (a host copy, which waits; a synchronisation) fail
//! while capturing, as on a GPU. So a window that gives the CPU backend's result when
//! replayed with a different learning rate (or a different gradient in the same
//! buffer) each time shows that nothing that changes between windows is a frozen
//! kernel argument.
#![allow(dead_code)]

use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard};

use gacc::backend::cuda::runtime::{Arg, DevPtr, Runtime};
use gacc::backend::cuda::ShimRuntime;
use gacc::status::{Error, Result};

/// A kernel argument with its bytes copied.
#[derive(Clone, Debug)]
pub enum OwnedArg {
    Ptr(DevPtr),
    U64(u64),
    I32(i32),
    U32(u32),
    F32(f32),
    F64(f64),
    Bytes(Vec<u8>),
}

impl OwnedArg {
    fn of(a: &Arg<'_>) -> OwnedArg {
        match *a {
            Arg::Ptr(p) => OwnedArg::Ptr(p),
            Arg::U64(v) => OwnedArg::U64(v),
            Arg::I32(v) => OwnedArg::I32(v),
            Arg::U32(v) => OwnedArg::U32(v),
            Arg::F32(v) => OwnedArg::F32(v),
            Arg::F64(v) => OwnedArg::F64(v),
            Arg::Bytes(b) => OwnedArg::Bytes(b.to_vec()),
        }
    }
    fn as_arg(&self) -> Arg<'_> {
        match self {
            OwnedArg::Ptr(p) => Arg::Ptr(*p),
            OwnedArg::U64(v) => Arg::U64(*v),
            OwnedArg::I32(v) => Arg::I32(*v),
            OwnedArg::U32(v) => Arg::U32(*v),
            OwnedArg::F32(v) => Arg::F32(*v),
            OwnedArg::F64(v) => Arg::F64(*v),
            OwnedArg::Bytes(b) => Arg::Bytes(b),
        }
    }
}

/// One recorded stream operation.
#[derive(Clone, Debug)]
pub enum Op {
    Launch { name: String, grid: u32, block: u32, args: Vec<OwnedArg> },
    Memset { dst: DevPtr, value: u8, bytes: usize },
    CopyD2D { dst: DevPtr, src: DevPtr, bytes: usize },
}

/// The shim device and the graph being recorded or replayed.
pub struct Graph {
    pub inner: ShimRuntime,
    capturing: bool,
    pub ops: Vec<Op>,
    /// Calls of interest, in order: "set_stream <handle>", "synchronize <stream>",
    /// "finish", "runtime dropped" (teardown-order tests).
    pub log: Vec<String>,
    /// The stream work goes to (0: the runtime's own).
    pub stream: usize,
}

impl Graph {
    /// Starts recording (cuStreamBeginCapture); an earlier recording is dropped.
    pub fn begin_capture(&mut self) {
        self.capturing = true;
        self.ops.clear();
    }
    /// Stops recording (cuStreamEndCapture + cuGraphInstantiate).
    pub fn end_capture(&mut self) {
        self.capturing = false;
    }
    /// Runs the recording once (cuGraphLaunch).
    pub fn replay(&mut self) -> Result<()> {
        assert!(!self.capturing, "replay while capturing");
        for op in self.ops.clone() {
            // SAFETY: the recorded operations were valid when captured, on memory
            // that is still allocated (the backend frees nothing while alive).
            unsafe {
                match &op {
                    Op::Launch { name, grid, block, args } => {
                        let args: Vec<Arg<'_>> = args.iter().map(OwnedArg::as_arg).collect();
                        self.inner.launch(name, *grid, *block, 0, &args)?
                    }
                    Op::Memset { dst, value, bytes } => self.inner.memset(*dst, *value, *bytes)?,
                    Op::CopyD2D { dst, src, bytes } => self.inner.copy_d2d(*dst, *src, *bytes)?,
                }
            }
        }
        Ok(())
    }
    /// The f32 kernel arguments of the recording, by kernel (what a replay freezes).
    pub fn f32_args(&self) -> Vec<(String, f32)> {
        let mut out = Vec::new();
        for op in &self.ops {
            if let Op::Launch { name, args, .. } = op {
                for a in args {
                    if let OwnedArg::F32(v) = a {
                        out.push((name.clone(), *v));
                    }
                }
            }
        }
        out
    }
}

fn not_capturable(what: &str) -> Error {
    Error::device(format!("{what} during stream capture (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)"))
}

/// The runtime a backend under test owns; the test keeps the other handle.
pub struct CapturingRuntime(pub Arc<Mutex<Graph>>);

impl CapturingRuntime {
    pub fn new(inner: ShimRuntime) -> (CapturingRuntime, Arc<Mutex<Graph>>) {
        let g = Arc::new(Mutex::new(Graph { inner, capturing: false, ops: Vec::new(), log: Vec::new(), stream: 0 }));
        (CapturingRuntime(g.clone()), g)
    }
    fn g(&self) -> MutexGuard<'_, Graph> {
        self.0.lock().unwrap()
    }
}

impl Runtime for CapturingRuntime {
    fn describe(&self) -> String {
        format!("capture over {}", self.g().inner.describe())
    }
    fn multiprocessor_count(&self) -> u32 {
        self.g().inner.multiprocessor_count()
    }
    fn max_active_blocks_per_sm(&mut self, kernel: &str, block: u32) -> Result<u32> {
        self.g().inner.max_active_blocks_per_sm(kernel, block)
    }
    fn memory_info(&mut self) -> Result<(u64, u64)> {
        self.g().inner.memory_info()
    }
    fn alloc(&mut self, bytes: usize) -> Result<DevPtr> {
        self.g().inner.alloc(bytes)
    }
    unsafe fn free(&mut self, ptr: DevPtr) {
        self.g().inner.free(ptr)
    }
    unsafe fn copy_h2d(&mut self, dst: DevPtr, src: *const u8, bytes: usize) -> Result<()> {
        let mut g = self.g();
        if g.capturing {
            return Err(not_capturable("a host-to-device copy that waits"));
        }
        g.inner.copy_h2d(dst, src, bytes)
    }
    unsafe fn copy_d2h(&mut self, dst: *mut u8, src: DevPtr, bytes: usize) -> Result<()> {
        let mut g = self.g();
        if g.capturing {
            return Err(not_capturable("a device-to-host copy"));
        }
        g.inner.copy_d2h(dst, src, bytes)
    }
    unsafe fn copy_d2d(&mut self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        let mut g = self.g();
        if g.capturing {
            g.ops.push(Op::CopyD2D { dst, src, bytes });
            return Ok(());
        }
        g.inner.copy_d2d(dst, src, bytes)
    }
    unsafe fn memset(&mut self, dst: DevPtr, value: u8, bytes: usize) -> Result<()> {
        let mut g = self.g();
        if g.capturing {
            g.ops.push(Op::Memset { dst, value, bytes });
            return Ok(());
        }
        g.inner.memset(dst, value, bytes)
    }
    unsafe fn launch(&mut self, name: &str, grid: u32, block: u32, shared_bytes: u32, args: &[Arg<'_>]) -> Result<()> {
        let mut g = self.g();
        if g.capturing {
            assert_eq!(shared_bytes, 0);
            let args = args.iter().map(OwnedArg::of).collect();
            g.ops.push(Op::Launch { name: name.to_string(), grid, block, args });
            return Ok(());
        }
        g.inner.launch(name, grid, block, shared_bytes, args)
    }
    fn is_device_pointer(&mut self, ptr: *const c_void) -> Result<bool> {
        self.g().inner.is_device_pointer(ptr)
    }
    fn synchronize(&mut self) -> Result<()> {
        let mut g = self.g();
        if g.capturing {
            return Err(not_capturable("a synchronisation"));
        }
        let entry = format!("synchronize {:#x}", g.stream);
        g.log.push(entry);
        g.inner.synchronize()
    }
    fn finish(&mut self) -> Result<()> {
        let mut g = self.g();
        g.log.push("finish".to_string());
        g.inner.finish()
    }
    fn set_stream(&mut self, stream: *mut c_void) -> Result<()> {
        let mut g = self.g();
        g.stream = stream as usize;
        let entry = format!("set_stream {:#x}", stream as usize);
        g.log.push(entry);
        g.inner.set_stream(stream)
    }
}

impl Drop for CapturingRuntime {
    fn drop(&mut self) {
        self.g().log.push("runtime dropped".to_string());
    }
}

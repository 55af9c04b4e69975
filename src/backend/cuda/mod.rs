//! The CUDA backend: the whole window on the GPU.
//!
//! Modules:
//! - [`driver`]: probe and the real runtime (CUDA driver through cudarc, loaded at
//!   run time: the library builds without a toolkit and runs CPU engines without a
//!   driver).
//! - [`nvrtc`]: NVRTC found at run time (`GACC_NVRTC_LIB`), kernels compiled to a
//!   cubin for the device's architecture; [`cache`]: in-memory and on-disk cache.
//! - [`kernels`]: kernels/*.cu embedded in the library.
//! - [`runtime`]: the small device-runtime trait the orchestration is written
//!   against; `shim`: its host implementation (kernels compiled by g++), built only
//!   with the `test-support` feature (the tests' self dev-dependency), never into
//!   the shipped library.
//! - [`launch`]: one launcher per kernel; [`backend`]: the orchestration;
//!   [`buffers`]: the owning device buffers (one arena per backend);
//!   [`collective`]: the device collective group (NCCL); [`snapshot`]: the state
//!   to and from the host; [`state`]: host mirrors of the device structs;
//!   [`tensors`]: per-tensor micro-batches (the multi-tensor table and its launchers).

pub mod backend;
pub mod buffers;
pub mod cache;
pub mod collective;
pub mod driver;
pub mod kernels;
pub mod launch;
pub mod nvrtc;
pub mod runtime;
#[cfg(feature = "test-support")]
pub mod shim;
pub mod snapshot;
pub mod state;
pub mod tensors;

pub use backend::CudaBackend;
pub use driver::{probe, CudaRuntime};
pub use runtime::Runtime;
#[cfg(feature = "test-support")]
pub use shim::{ShimLibrary, ShimRuntime, ShimStats};

use crate::backend::{Backend, BackendInit};
use crate::status::Result;

/// Builds a CUDA engine's backend on device `ordinal` (probed first).
pub fn create(init: BackendInit<'_>, ordinal: u32) -> Result<Box<dyn Backend>> {
    let rt = CudaRuntime::new(ordinal)?;
    Ok(Box::new(CudaBackend::new(rt, init)?))
}

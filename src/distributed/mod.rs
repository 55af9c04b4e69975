//! Data parallelism: one all-reduce per window.
//!
//! Each rank accumulates its own micro-batches. In `gacc_step`, before anything is
//! unscaled, the ranks sum their window totals (weight, micro-batch count) and their
//! fp32 accumulators in one collective each; then every rank runs the same step on
//! the same global gradient, so found_inf, the clip coefficient and the update agree
//! bit for bit and parameters stay identical without being broadcast.
//!
//! Transports implement [`Collective`]: a C callback (crate::ffi::callback) (any transport: Gloo, Horovod,
//! a game server's channel) and, behind the `mpi` cargo feature, MPI. CUDA engines
//! also take a [`DeviceCollective`] (NCCL, loaded at run time): the all-reduces then
//! run on device memory, on the engine's stream, with no host synchronisation.

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod nccl;

use crate::status::Result;

/// An in-place sum all-reduce across the ranks of one data-parallel group.
pub trait Collective: Send {
    fn rank(&self) -> u32;
    fn world_size(&self) -> u32;
    /// Sums `buf` element-wise across ranks, in place. On error the contents of `buf`
    /// are unspecified (callers pass a scratch copy).
    fn allreduce_f32(&mut self, buf: &mut [f32]) -> Result<()>;
    /// As `allreduce_f32`, for f64 values (window totals).
    fn allreduce_f64(&mut self, buf: &mut [f64]) -> Result<()>;
    /// "callback", "mpi", … with rank and size, for messages.
    fn describe(&self) -> String;
}

/// The element type of a device all-reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Element {
    /// fp32 (accumulators, parameters).
    F32,
    /// fp64 (window totals).
    F64,
}

/// An in-place (or out-of-place) sum all-reduce on device memory, queued on a CUDA
/// stream: it returns once the work is queued, not done.
pub trait DeviceCollective: Send {
    fn rank(&self) -> u32;
    fn world_size(&self) -> u32;
    /// Queues recv = Σ_ranks send, `count` elements of type `element`, on
    /// `stream`. `send` may equal `recv`.
    ///
    /// # Safety
    /// `send` and `recv` are device allocations of at least `count` elements on the
    /// device the communicator was created for; `stream` is a live CUstream.
    unsafe fn allreduce(
        &mut self,
        send: u64,
        recv: u64,
        count: usize,
        element: Element,
        stream: *mut std::ffi::c_void,
    ) -> Result<()>;
    fn describe(&self) -> String;
}

/// Counters of what the collectives moved (bytes per rank, as sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommStats {
    pub collectives: u64,
    pub bytes: u64,
}

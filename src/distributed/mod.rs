//! Data parallelism: one all-reduce per window.
//!
//! Each rank accumulates its own micro-batches. In `gacc_step`, before anything is
//! unscaled, the ranks sum their window totals (weight, micro-batch count) and their
//! fp32 accumulators in one collective each; then every rank runs the same step on
//! the same global gradient, so found_inf, the clip coefficient and the update agree
//! bit for bit and parameters stay identical without being broadcast.
//!
//! Transports implement [`Collective`]: a C callback (any transport: Gloo, Horovod,
//! a game server's channel) and, behind the `mpi` cargo feature, MPI.

pub mod callback;
#[cfg(feature = "mpi")]
pub mod mpi;

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

/// Counters of what the collectives moved (bytes per rank, as sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommStats {
    pub collectives: u64,
    pub bytes: u64,
}

//! The only `extern "C"` code, one file per subject (as rustls-ffi lays out its
//! boundary): [`lifecycle`] (versions, errors, configuration, create/destroy and
//! what an engine is), [`window`] (micro-batches and the step), [`params`]
//! (weights, learning rate, loss scale, stream), [`checkpoint`], [`distributed`]
//! (data-parallel transports), [`tensors`] (per-tensor and in-place micro-batches).
//! Every function has the same shape: `guard` (catches panics, records the error),
//! NULL checks, a handle lookup, then one call into the engine; outputs are written
//! only on success ([`boundary::write_out`]). No arithmetic happens here. Every
//! conversion between the C types ([`types`]) and the engine's is in [`conv`].
//!
//! Safety: every `unsafe extern "C"` function here has the same contract, the one
//! include/gacc.h states: pointer arguments are NULL or point to what the header
//! says (buffers of the stated length, NUL-terminated strings, writable outputs).
//!
//! The order of the `mod` lines below is the order of the functions in the
//! generated header (cbindgen follows the source).

pub mod boundary;
pub mod callback;
pub mod conv;
pub mod registry;
pub mod sized;
pub mod types;

// One subject per file, in header order (rustfmt would sort one block of `mod`s).
pub mod lifecycle;
// Micro-batches and the step.
pub mod window;
// Weights, learning rate, loss scale, stream.
pub mod params;
// Save, load, create from a checkpoint.
pub mod checkpoint;
// Data-parallel transports.
pub mod distributed;
// Per-tensor and in-place micro-batches.
pub mod tensors;

// Tests, benches and bindings name the exports as `gacc::ffi::gacc_*`.
pub use checkpoint::*;
pub use distributed::*;
pub use lifecycle::*;
pub use params::*;
pub use window::*;

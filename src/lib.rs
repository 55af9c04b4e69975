//! # gacc — a gradient accumulation engine with a C ABI
//!
//! Training wants big batches; memory holds small ones. gacc runs the whole
//! accumulation window for a host program that does its own forward and backward:
//! fp32 master weights and an fp16/bf16 working copy, fp32 gradient accumulators,
//! optimizer state (SGD, AdamW) and the dynamic loss scaler, on the CPU or a CUDA
//! device. The C API is in `include/gacc.h` (generated from [`ffi`] by cbindgen).
//!
//! Module map (data flows one way: C caller → ffi → engine → backend):
//! - [`ffi`]: the only `extern "C"` code, one file per subject (lifecycle, window,
//!   params, checkpoint, distributed, tensors): panic boundary, NULL and handle
//!   checks, live-handle registry, thread-local last error, the C callback transport,
//!   and every conversion between the C types and the engine's (`ffi::conv`: the
//!   C struct `gacc_config` into [`engine::config::RawConfig`], results back). No
//!   module below ffi names a C type or a GACC_* constant.
//! - [`engine`]: the window as a state machine. Its leaf modules, which the
//!   backends and checkpoints use too and which use nothing but [`status`]:
//!   [`engine::config`] (the typed configuration, its validation with the
//!   field-named messages, the numeric codes), [`engine::layout`] (tensor layout)
//!   and [`engine::math`] (the scalar formulas of a step).
//! - [`backend`]: where the bytes live and move: [`backend::cpu`] (multithreaded,
//!   vectorised) and [`backend::cuda`] (kernels compiled by NVRTC at run time,
//!   the whole window on the device; see docs/cuda.md).
//! - [`checkpoint`]: save and load the whole state (safetensors, crash-safe).
//! - [`distributed`]: data parallelism, one all-reduce per window (the transports'
//!   traits; MPI, NCCL; the C callback transport is ffi::callback).
//! - [`alloc`]: fallible host allocation with a fault-injection hook.
//! - [`status`]: status codes and the error type.

#![allow(non_camel_case_types)]
// Exported functions check their pointers themselves and document the contract in
// the header; clippy's "should be unsafe" lint does not fit a C ABI boundary.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod alloc;
pub mod backend;
pub mod checkpoint;
pub mod distributed;
pub mod engine;
pub mod ffi;
pub mod status;

pub use status::{gacc_status, Error, Result};

//! One micro-batch given tensor by tensor on a CUDA engine: one launch for all
//! tensors (kernels/accumulate.cu, gacc_accumulate_tensors), driven by a device-side
//! table of (gradient pointer, dtype, numel, offset) in the manner of PyTorch's
//! multi_tensor_apply.
//!
//! Each entry's pointer is told apart (host or device memory) on its own; host
//! gradients are staged into the engine's staging buffer at the tensor's own byte
//! offset (4 * offset: every tensor fits, none overlap), as `gacc_microbatch` stages
//! the concatenation. The table is uploaded only when it changes: a host that hands
//! over the same buffers every micro-batch (the usual case: gradient buffers are
//! allocated once) pays no upload, no host synchronisation and no pointer queries
//! after the first call. This relies on unified addressing: an address the driver
//! called device memory stays device memory (or becomes unmapped) until it is
//! reused by the driver, and host allocations never land in the device range.

use super::buffers::{ptr_or_null, DevBuf, DeviceBuffers};
use super::launch::{vector_aligned, BLOCK};
use super::runtime::{Arg, DevPtr, Runtime};
use crate::backend::TensorGrad;
use crate::engine::config::Dtype;
use crate::status::{Error, Result};

/// Elements per chunk (GACC_TENSOR_CHUNK in kernels/accumulate.cu).
const TENSOR_CHUNK: u64 = 16384;
/// Resident blocks per multiprocessor aimed at (as the element-wise kernels).
const BLOCKS_PER_SM: u64 = 8;

/// Host mirror of `gacc_tensor_entry` (kernels/accumulate.cu; a test checks the size).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TensorEntry {
    pub grad: u64,
    pub offset: u64,
    pub numel: u64,
    pub first_chunk: u64,
    pub dtype: u32,
    pub vec: u32,
}

/// What the caller handed over last time, and the device table built from it.
#[derive(Default)]
pub struct TableCache {
    /// (pointer, dtype, numel, offset) of every listed tensor, as the caller gave them
    /// (None: no table built yet).
    key: Option<Vec<(usize, Dtype, usize, usize)>>,
    /// Which of them are host memory (staged).
    host: Vec<bool>,
    /// The device table (capacity `capacity` entries; None until first used), owned
    /// by the backend's [`DeviceBuffers`].
    table: Option<DevBuf>,
    capacity: usize,
    /// Entries in the table: the listed tensors, then the gaps.
    n_entries: u32,
    n_chunks: u64,
}

fn dtype_code(d: Dtype) -> u32 {
    match d {
        Dtype::F32 => 0,
        Dtype::F16 => 1,
        Dtype::BF16 => 2,
    }
}

/// Where the kernels read the micro-batch from: the device table and its chunk count.
pub struct Prepared {
    pub table: DevPtr,
    /// Table entries (listed tensors and gaps).
    pub n_tensors: u32,
    pub n_chunks: u64,
}

/// The ranges of [0, n) that no listed tensor covers, in ascending order (the
/// ranges lie inside the layout and are disjoint).
fn gaps(grads: &[TensorGrad], n: usize) -> Vec<(usize, usize)> {
    let mut listed: Vec<(usize, usize)> = grads.iter().map(|g| (g.offset, g.offset + g.grad.numel)).collect();
    listed.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for (lo, hi) in listed {
        if lo > at {
            out.push((at, lo));
        }
        at = at.max(hi);
    }
    if at < n {
        out.push((at, n));
    }
    out
}

/// Stages the host gradients and brings the device table up to date. When at least
/// one tensor is listed, the table also holds "gap" entries (gradient 0) over the
/// elements no listed tensor covers, which the kernel zeroes when the accumulator is
/// stale (lazy zeroing, kernels/accumulate.cu).
///
/// # Safety
/// Every `grads[i]` points to `numel` readable elements of its dtype, host memory or
/// device memory of this runtime's device; `acc` holds the layout's `n` elements,
/// `bufs` are the backend's allocations on `rt` and `staging()` returns a buffer of
/// 4 * n bytes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn prepare<R: Runtime + ?Sized>(
    rt: &mut R,
    bufs: &mut DeviceBuffers,
    cache: &mut TableCache,
    grads: &[TensorGrad],
    acc: DevPtr,
    n: usize,
    mut staging: impl FnMut(&mut R, &mut DeviceBuffers) -> Result<DevPtr>,
) -> Result<Prepared> {
    u32::try_from(grads.len()).map_err(|_| Error::invalid_argument("too many tensors"))?;
    let key: Vec<(usize, Dtype, usize, usize)> =
        grads.iter().map(|g| (g.grad.ptr as usize, g.grad.dtype, g.grad.numel, g.offset)).collect();
    let same = cache.key.as_ref() == Some(&key);
    if !same {
        let mut host = Vec::with_capacity(grads.len());
        for g in grads {
            host.push(!rt.is_device_pointer(g.grad.ptr)?);
        }
        cache.host = host;
    }
    // Host gradients: staged every call (their contents change), at 4 * offset.
    let mut stage_base = 0;
    if cache.host.iter().any(|&h| h) {
        stage_base = staging(rt, bufs)?;
        for (g, _) in grads.iter().zip(&cache.host).filter(|(_, &h)| h) {
            let bytes = g.grad.numel * g.grad.dtype.size();
            rt.copy_h2d(stage_base + 4 * g.offset as u64, g.grad.ptr as *const u8, bytes)?;
        }
    }
    if !same {
        let mut entries = Vec::with_capacity(grads.len());
        let mut first_chunk = 0u64;
        for (g, &is_host) in grads.iter().zip(&cache.host) {
            let ptr = if is_host { stage_base + 4 * g.offset as u64 } else { g.grad.ptr as DevPtr };
            let acc_aligned = (acc + 4 * g.offset as u64).is_multiple_of(16);
            entries.push(TensorEntry {
                grad: ptr,
                offset: g.offset as u64,
                numel: g.grad.numel as u64,
                first_chunk,
                dtype: dtype_code(g.grad.dtype),
                vec: u32::from(acc_aligned && vector_aligned(ptr, g.grad.dtype)),
            });
            first_chunk += (g.grad.numel as u64).div_ceil(TENSOR_CHUNK);
        }
        if !grads.is_empty() {
            for (lo, hi) in gaps(grads, n) {
                let numel = (hi - lo) as u64;
                entries.push(TensorEntry { grad: 0, offset: lo as u64, numel, first_chunk, dtype: 0, vec: 0 });
                first_chunk += numel.div_ceil(TENSOR_CHUNK);
            }
        }
        let n_entries = u32::try_from(entries.len()).map_err(|_| Error::invalid_argument("too many tensors"))?;
        if !entries.is_empty() {
            if cache.capacity < entries.len() {
                let table = bufs.alloc(rt, entries.len() * std::mem::size_of::<TensorEntry>())?;
                if let Some(old) = cache.table.replace(table) {
                    bufs.free(rt, old);
                }
                cache.capacity = entries.len();
            }
            // Stream-ordered after every kernel that read the previous table.
            rt.copy_h2d(
                ptr_or_null(cache.table),
                entries.as_ptr() as *const u8,
                std::mem::size_of_val(entries.as_slice()),
            )?;
        }
        cache.n_chunks = first_chunk;
        cache.n_entries = n_entries;
        cache.key = Some(key);
    }
    Ok(Prepared { table: ptr_or_null(cache.table), n_tensors: cache.n_entries, n_chunks: cache.n_chunks })
}

/// Grid of a multi-tensor pass: one block per chunk, capped.
pub fn grid(n_chunks: u64, sm_count: u32) -> u32 {
    n_chunks.clamp(1, u64::from(sm_count.max(1)) * BLOCKS_PER_SM) as u32
}

/// Drop mode's check pass over every tensor of the table.
///
/// # Safety
/// `p` describes a table on this device whose gradients are readable; `state` is a
/// gacc_state.
pub unsafe fn check_finite<R: Runtime + ?Sized>(rt: &mut R, p: &Prepared, state: DevPtr, seq: u32) -> Result<()> {
    if p.n_chunks == 0 {
        return Ok(());
    }
    let grid = grid(p.n_chunks, rt.multiprocessor_count());
    rt.launch(
        "gacc_check_finite_tensors",
        grid,
        BLOCK,
        0,
        &[Arg::Ptr(p.table), Arg::U32(p.n_tensors), Arg::U64(p.n_chunks), Arg::Ptr(state), Arg::U32(seq)],
    )
}

/// acc += mul * grad for every tensor of the table, booking the micro-batch in the
/// device state `state` (`seq` != 0: drop mode) as gacc_accumulate_* do.
///
/// # Safety
/// As [`check_finite`]; `acc` (and `comp` when not 0) hold the layout's f32.
#[allow(clippy::too_many_arguments)]
pub unsafe fn accumulate<R: Runtime + ?Sized>(
    rt: &mut R,
    p: &Prepared,
    acc: DevPtr,
    comp: DevPtr,
    mul: f32,
    state: DevPtr,
    seq: u32,
    weight: f64,
) -> Result<()> {
    // Also with no chunk (every tensor NULL): the launch books the micro-batch's weight
    // in the device's window total.
    let grid = grid(p.n_chunks, rt.multiprocessor_count());
    rt.launch(
        "gacc_accumulate_tensors",
        grid,
        BLOCK,
        0,
        &[
            Arg::Ptr(acc),
            Arg::Ptr(comp),
            Arg::Ptr(p.table),
            Arg::U32(p.n_tensors),
            Arg::U64(p.n_chunks),
            Arg::F32(mul),
            Arg::Ptr(state),
            Arg::U32(seq),
            Arg::F64(weight),
        ],
    )
}

//! One launcher per kernel: preconditions checked, the argument list in the
//! kernel's order; and the grids ([`Grids`]).
//!
//! Grids: each element-wise kernel gets a ceil-div of its work, capped at the blocks
//! that can be resident at once: the occupancy API's answer for that kernel
//! (cuOccupancyMaxActiveBlocksPerMultiprocessor, asked once per engine through
//! [`Runtime::max_active_blocks_per_sm`]) times the multiprocessor count. Every
//! element-wise kernel uses grid-stride loops, so the grid size changes only speed;
//! the norm pass's grid is fixed per engine (its partial sums are added in index
//! order, so a fixed grid gives bit-identical norms run to run).

use super::runtime::{Arg, DevPtr, Runtime};
use super::state::{bytes_of, Hyper};
use crate::engine::config::Dtype;
use crate::status::{Error, Result};

/// Threads per block (GACC_BLOCK in kernels/common.cuh).
pub(crate) const BLOCK: u32 = 256;
/// Resident blocks per multiprocessor assumed when the occupancy query fails (the
/// grid size only changes speed, so that is no reason to refuse an engine).
pub const FALLBACK_BLOCKS_PER_SM: u32 = 8;
/// Blocks per multiprocessor of the norm pass (one double each to reduce).
const NORM_BLOCKS_PER_SM: u64 = 4;

pub fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// Grid of an element-wise pass over `n` elements (4 per thread and iteration) of a
/// kernel of which `blocks_per_sm` blocks fit on one multiprocessor.
pub fn elementwise_grid(n: usize, sm_count: u32, blocks_per_sm: u32) -> u32 {
    let blocks = ceil_div(ceil_div(n as u64, 4), u64::from(BLOCK));
    blocks.clamp(1, u64::from(sm_count.max(1)) * u64::from(blocks_per_sm.max(1))) as u32
}

/// The grid of every kernel an engine launches over its `n` parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grids {
    /// gacc_accumulate_{f32, f16, bf16}.
    pub accumulate: [u32; 3],
    pub check_finite: u32,
    /// The engine's gacc_update_* kernel.
    pub update: u32,
    pub write_working: u32,
    pub dp_fold: u32,
    pub materialize: u32,
    /// gacc_norm_partials (fixed from the multiprocessor count alone), and the flat
    /// accumulate kernels when they produce its partials.
    pub norm: u32,
}

impl Grids {
    /// Asks the runtime how many blocks of each kernel fit on a multiprocessor.
    pub fn new<R: Runtime + ?Sized>(rt: &mut R, n: usize, kind: UpdateKind) -> Grids {
        let sm = rt.multiprocessor_count();
        let mut grid = |kernel: &str| {
            let per_sm = rt.max_active_blocks_per_sm(kernel, BLOCK).unwrap_or(FALLBACK_BLOCKS_PER_SM);
            elementwise_grid(n, sm, per_sm)
        };
        Grids {
            accumulate: [grid("gacc_accumulate_f32"), grid("gacc_accumulate_f16"), grid("gacc_accumulate_bf16")],
            check_finite: grid("gacc_check_finite"),
            update: grid(kind.kernel()),
            write_working: grid("gacc_write_working"),
            dp_fold: grid("gacc_dp_fold"),
            materialize: grid("gacc_materialize_zero"),
            norm: norm_grid(n, sm),
        }
    }

    /// The accumulate kernel's grid for gradients of `dtype`.
    pub fn accumulate(&self, dtype: Dtype) -> u32 {
        match dtype {
            Dtype::F32 => self.accumulate[0],
            Dtype::F16 => self.accumulate[1],
            Dtype::BF16 => self.accumulate[2],
        }
    }
}

/// Grid (and number of partial sums) of the norm pass.
pub fn norm_grid(n: usize, sm_count: u32) -> u32 {
    let blocks = ceil_div(ceil_div(n as u64, 4), u64::from(BLOCK));
    blocks.clamp(1, u64::from(sm_count.max(1)) * NORM_BLOCKS_PER_SM) as u32
}

fn require(cond: bool, what: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::internal(format!("kernel launch precondition failed: {what}")))
    }
}

/// Whether a gradient at `ptr` may take the vector path (16 bytes of f32, or four
/// f16/bf16 in 8 bytes).
pub fn vector_aligned(ptr: DevPtr, dtype: Dtype) -> bool {
    let need = match dtype {
        Dtype::F32 => 16,
        Dtype::F16 | Dtype::BF16 => 8,
    };
    ptr.is_multiple_of(need)
}

/// What the accumulate kernel does besides acc += mul * grad.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccumulateOptions {
    /// Kahan compensation buffer (0: plain accumulation).
    pub comp: DevPtr,
    /// The gacc_state whose window_total the kernel adds `weight` to (and, in drop
    /// mode, whose bad_seq gacc_check_finite set).
    pub state: DevPtr,
    /// Drop mode: this micro-batch's number within its window (never 0); 0: no gate.
    pub seq: u32,
    /// The micro-batch's weight, booked on the device (drop mode: when kept).
    pub weight: f64,
    /// The norm pass's partials (one double per block), written by this launch
    /// (which must then run on the norm grid); 0: none. Never with `comp`.
    pub partials: DevPtr,
}

/// acc += mul * grad (accumulate.cu), and the weight booked on the device.
///
/// # Safety
/// `acc` (and `opts.comp`) hold `n` f32 and `grad` `n` elements of `dtype`, all
/// device memory; `opts.state` is a gacc_state.
#[allow(clippy::too_many_arguments)]
pub unsafe fn accumulate<R: Runtime + ?Sized>(
    rt: &mut R,
    acc: DevPtr,
    grad: DevPtr,
    dtype: Dtype,
    n: usize,
    mul: f32,
    grid: u32,
    opts: &AccumulateOptions,
) -> Result<()> {
    require(
        n > 0 && acc.is_multiple_of(16) && grad != 0 && opts.comp.is_multiple_of(16) && opts.state != 0,
        "accumulate: n > 0, acc/comp 16-byte aligned, state set",
    )?;
    require(
        opts.partials == 0 || (opts.comp == 0 && opts.partials.is_multiple_of(8)),
        "accumulate: partials without comp",
    )?;
    let name = match dtype {
        Dtype::F32 => "gacc_accumulate_f32",
        Dtype::F16 => "gacc_accumulate_f16",
        Dtype::BF16 => "gacc_accumulate_bf16",
    };
    let vec = i32::from(vector_aligned(grad, dtype));
    rt.launch(
        name,
        grid,
        BLOCK,
        0,
        &[
            Arg::Ptr(acc),
            Arg::Ptr(opts.comp),
            Arg::Ptr(grad),
            Arg::U64(n as u64),
            Arg::F32(mul),
            Arg::I32(vec),
            Arg::Ptr(opts.state),
            Arg::U32(opts.seq),
            Arg::F64(opts.weight),
            Arg::Ptr(opts.partials),
        ],
    )
}

/// acc = 0 if the device state says it is stale, then the flag cleared
/// (accumulate.cu); `make_eager` also switches the steps to eager zeroing.
///
/// # Safety
/// `acc` holds `n` f32 and `state` is a gacc_state, device memory.
pub unsafe fn materialize_zero<R: Runtime + ?Sized>(
    rt: &mut R,
    acc: DevPtr,
    n: usize,
    state: DevPtr,
    make_eager: bool,
    grid: u32,
) -> Result<()> {
    require(n > 0 && acc.is_multiple_of(16) && state != 0, "materialize_zero: n > 0, acc aligned, state set")?;
    rt.launch(
        "gacc_materialize_zero",
        grid,
        BLOCK,
        0,
        &[Arg::Ptr(acc), Arg::U64(n as u64), Arg::Ptr(state), Arg::U32(u32::from(make_eager))],
    )
}

/// Drop mode's check pass (accumulate.cu): state->bad_seq = seq when the gradient
/// holds inf/NaN.
///
/// # Safety
/// `grad` holds `n` elements of `dtype` and `state` is a gacc_state, device memory.
pub unsafe fn check_finite<R: Runtime + ?Sized>(
    rt: &mut R,
    grad: DevPtr,
    dtype: Dtype,
    n: usize,
    state: DevPtr,
    seq: u32,
    grid: u32,
) -> Result<()> {
    require(n > 0 && grad != 0 && state != 0, "check_finite: n > 0, pointers set")?;
    let code = match dtype {
        Dtype::F32 => 0,
        Dtype::F16 => 1,
        Dtype::BF16 => 2,
    };
    rt.launch(
        "gacc_check_finite",
        grid,
        BLOCK,
        0,
        &[Arg::Ptr(grad), Arg::I32(code), Arg::U64(n as u64), Arg::Ptr(state), Arg::U32(seq)],
    )
}

/// Per-block partial sums of squares (norm.cu); writes `grid` doubles. The window
/// total comes from the device state.
///
/// # Safety
/// `acc` (and `comp` when not 0) hold `n` f32, `state` a gacc_state, `partials` at
/// least `grid` doubles.
pub unsafe fn norm_partials<R: Runtime + ?Sized>(
    rt: &mut R,
    acc: DevPtr,
    comp: DevPtr,
    n: usize,
    state: DevPtr,
    partials: DevPtr,
    grid: u32,
) -> Result<()> {
    require(
        n > 0 && acc.is_multiple_of(16) && comp.is_multiple_of(16) && state != 0,
        "norm: n > 0, acc aligned, state set",
    )?;
    rt.launch(
        "gacc_norm_partials",
        grid,
        BLOCK,
        0,
        &[Arg::Ptr(acc), Arg::Ptr(comp), Arg::U64(n as u64), Arg::Ptr(state), Arg::Ptr(partials)],
    )
}

/// The step's decision kernel (scaler.cu): one thread. The window total and the
/// learning rate come from the device state.
///
/// # Safety
/// `state` is a gacc_state and `partials` holds `n_partials` doubles.
pub unsafe fn finalize<R: Runtime + ?Sized>(
    rt: &mut R,
    state: DevPtr,
    partials: DevPtr,
    n_partials: u32,
    hyper: &Hyper,
) -> Result<()> {
    require(n_partials > 0 && state != 0, "finalize: partials > 0, state set")?;
    rt.launch(
        "gacc_finalize",
        1,
        1,
        0,
        &[Arg::Ptr(state), Arg::Ptr(partials), Arg::U32(n_partials), Arg::Bytes(bytes_of(hyper))],
    )
}

/// state->lr = lr (scaler.cu), queued on the stream in use.
///
/// # Safety
/// `state` is a gacc_state, device memory.
pub unsafe fn store_lr<R: Runtime + ?Sized>(rt: &mut R, state: DevPtr, lr: f32) -> Result<()> {
    require(state != 0, "store_lr: state set")?;
    rt.launch("gacc_store_lr", 1, 1, 0, &[Arg::Ptr(state), Arg::F32(lr)])
}

/// Data parallelism (dp.cu): totals[0..4] = { state->window_total, microbatches,
/// state->window_total, state->window_dropped }; the micro-batch count travels as a
/// kernel argument (no copy, no sync).
///
/// # Safety
/// `totals` holds 4 doubles and `state` is a gacc_state, device memory.
pub unsafe fn dp_pack_totals<R: Runtime + ?Sized>(
    rt: &mut R,
    totals: DevPtr,
    state: DevPtr,
    microbatches: u32,
) -> Result<()> {
    require(totals.is_multiple_of(8) && totals != 0 && state != 0, "dp_pack_totals: pointers set")?;
    rt.launch("gacc_dp_pack_totals", 1, 1, 0, &[Arg::Ptr(totals), Arg::Ptr(state), Arg::F64(f64::from(microbatches))])
}

/// Data parallelism (dp.cu): state->window_total (and, in drop mode, window_dropped)
/// from the summed totals.
///
/// # Safety
/// As [`dp_pack_totals`].
pub unsafe fn dp_unpack_totals<R: Runtime + ?Sized>(
    rt: &mut R,
    totals: DevPtr,
    state: DevPtr,
    drop_mode: bool,
) -> Result<()> {
    require(totals.is_multiple_of(8) && totals != 0 && state != 0, "dp_unpack_totals: pointers set")?;
    rt.launch("gacc_dp_unpack_totals", 1, 1, 0, &[Arg::Ptr(totals), Arg::Ptr(state), Arg::U32(u32::from(drop_mode))])
}

/// dst = acc - comp (dp.cu), the compensated accumulator a collective sums.
///
/// # Safety
/// `dst`, `acc` and `comp` hold `n` f32, device memory.
pub unsafe fn dp_fold<R: Runtime + ?Sized>(
    rt: &mut R,
    dst: DevPtr,
    acc: DevPtr,
    comp: DevPtr,
    n: usize,
    grid: u32,
) -> Result<()> {
    require(n > 0 && dst != 0 && acc != 0 && comp != 0, "dp_fold: n > 0, pointers set")?;
    rt.launch("gacc_dp_fold", grid, BLOCK, 0, &[Arg::Ptr(dst), Arg::Ptr(acc), Arg::Ptr(comp), Arg::U64(n as u64)])
}

/// Which fused update kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    AdamW,
    SgdMomentum,
    Sgd,
}

impl UpdateKind {
    /// The kernel's name.
    pub fn kernel(self) -> &'static str {
        match self {
            UpdateKind::AdamW => "gacc_update_adamw",
            UpdateKind::SgdMomentum => "gacc_update_sgd_momentum",
            UpdateKind::Sgd => "gacc_update_sgd",
        }
    }
}

/// The buffers of the fused update pass.
#[derive(Clone, Copy, Debug)]
pub struct UpdateBuffers {
    pub acc: DevPtr,
    /// Kahan compensation (0: none).
    pub comp: DevPtr,
    pub master: DevPtr,
    pub state1: DevPtr,
    pub state2: DevPtr,
    /// 0 when there is no working copy.
    pub working: DevPtr,
    /// GACC_DTYPE of the working copy, 0 (none) otherwise.
    pub working_dtype: i32,
    pub state: DevPtr,
    pub run_ends: DevPtr,
    pub n_runs: u32,
    pub first_decay: u32,
    /// Stochastic rounding of the working copy (0 or 1) and its seed.
    pub sr: u32,
    pub seed: u64,
}

/// The fused update pass (update.cu).
///
/// # Safety
/// Every buffer holds `n` elements (run_ends `n_runs`), all device memory.
pub unsafe fn update<R: Runtime + ?Sized>(
    rt: &mut R,
    kind: UpdateKind,
    b: &UpdateBuffers,
    n: usize,
    grid: u32,
) -> Result<()> {
    let aligned =
        [b.acc, b.comp, b.master, b.state1, b.state2].iter().all(|p| p % 16 == 0) && b.working.is_multiple_of(8);
    require(n > 0 && b.n_runs > 0 && aligned, "update: n > 0, runs > 0, buffers aligned")?;
    require((b.working == 0) == (b.working_dtype == 0), "update: working copy and its dtype agree")?;
    let n = n as u64;
    let tail = [
        Arg::Ptr(b.working),
        Arg::I32(b.working_dtype),
        Arg::U64(n),
        Arg::Ptr(b.state),
        Arg::Ptr(b.run_ends),
        Arg::U32(b.n_runs),
        Arg::U32(b.first_decay),
        Arg::U32(b.sr),
        Arg::U64(b.seed),
    ];
    let mut args = vec![Arg::Ptr(b.acc), Arg::Ptr(b.comp), Arg::Ptr(b.master)];
    match kind {
        UpdateKind::AdamW => {
            require(b.state1 != 0 && b.state2 != 0, "update: AdamW state allocated")?;
            args.extend([Arg::Ptr(b.state1), Arg::Ptr(b.state2)]);
        }
        UpdateKind::SgdMomentum => {
            require(b.state1 != 0, "update: momentum buffer allocated")?;
            args.push(Arg::Ptr(b.state1));
        }
        UpdateKind::Sgd => {}
    }
    args.extend(tail);
    rt.launch(kind.kernel(), grid, BLOCK, 0, &args)
}

/// working = RNE(master), or stochastic rounding keyed by (seed, state->step)
/// (convert.cu).
///
/// # Safety
/// `master` holds `n` f32 and `working` `n` 16-bit values, `state` a gacc_state,
/// device memory.
#[allow(clippy::too_many_arguments)]
pub unsafe fn write_working<R: Runtime + ?Sized>(
    rt: &mut R,
    master: DevPtr,
    working: DevPtr,
    working_dtype: i32,
    n: usize,
    grid: u32,
    state: DevPtr,
    sr: u32,
    seed: u64,
) -> Result<()> {
    require(
        n > 0 && master.is_multiple_of(16) && working.is_multiple_of(8) && working_dtype != 0 && state != 0,
        "write_working: aligned, dtype, state",
    )?;
    rt.launch(
        "gacc_write_working",
        grid,
        BLOCK,
        0,
        &[
            Arg::Ptr(master),
            Arg::Ptr(working),
            Arg::I32(working_dtype),
            Arg::U64(n as u64),
            Arg::Ptr(state),
            Arg::U32(sr),
            Arg::U64(seed),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_are_capped_and_nonzero() {
        assert_eq!(elementwise_grid(1, 132, 8), 1);
        assert_eq!(elementwise_grid(1024, 132, 8), 1);
        assert_eq!(elementwise_grid(1025, 132, 8), 2);
        assert_eq!(elementwise_grid(1 << 30, 132, 8), 132 * 8);
        assert_eq!(elementwise_grid(1 << 30, 132, 5), 132 * 5);
        assert_eq!(elementwise_grid(1 << 30, 132, 0), 132, "at least one block per multiprocessor");
        assert_eq!(norm_grid(1 << 30, 132), 132 * 4);
        assert!(vector_aligned(32, Dtype::F32) && !vector_aligned(8, Dtype::F32));
        assert!(vector_aligned(8, Dtype::F16) && !vector_aligned(2, Dtype::BF16));
    }
}

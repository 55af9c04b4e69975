//! One micro-batch given tensor by tensor (`gacc_microbatch_tensors`) in one parallel
//! pass, whatever the tensor count.
//!
//! The pass runs over the layout's own work items (parallel.rs), exactly the items
//! the flat pass uses: an item walks the pieces of the tensors it covers, adding a
//! listed tensor's gradient with the same per-slice loops as `gacc_microbatch`
//! (slices.rs), so every element gets the same arithmetic (bit-identical results),
//! and a model of 512 small tensors costs as many pool tasks as one tensor of the
//! same size, never one round trip per tensor. Because the items are the flat
//! pass's, the pass can also compute the step's norm partials on the side, and in
//! a window whose accumulator is logically zero it writes the listed tensors and
//! zeros the others in the same pass.

use super::accumulate::Norms;
use super::parallel::{any_item, for_each_indexed, SharedMut, WorkItem};
use super::slices::{self, add_squares, Grad, Mode, LANES};
use crate::backend::TensorGrad;

/// The listed tensors of one micro-batch, in layout order.
pub struct PerTensor<'a> {
    grads: &'a [TensorGrad],
    /// ends[k]: where grads[k] ends in the flat buffers.
    ends: Vec<usize>,
}

// SAFETY: the pass only reads through the gradient pointers (the caller's contract
// for the pass makes them valid for its duration); threads share it read-only.
unsafe impl Sync for PerTensor<'_> {}

impl<'a> PerTensor<'a> {
    /// `grads` must be in layout order (the engine lists them by tensor index).
    pub fn new(grads: &'a [TensorGrad]) -> PerTensor<'a> {
        let ends = grads.iter().map(|g| g.offset + g.grad.numel).collect();
        PerTensor { grads, ends }
    }

    /// The index of the first listed tensor that ends after `at` (where a walk from
    /// `at` starts).
    fn cursor(&self, at: usize) -> usize {
        self.ends.partition_point(|&end| end <= at)
    }

    /// Calls `f(lo, hi, grad)` for consecutive pieces covering [lo0, hi0) of the flat
    /// buffers: `grad` is the listed gradient's elements for [lo, hi), None where no
    /// listed tensor lies (a tensor without a gradient in this micro-batch). `k` is
    /// [`PerTensor::cursor`] of lo0; the return value is the cursor of hi0, so
    /// consecutive ranges are walked without searching again.
    ///
    /// # Safety
    /// Every listed pointer must point to `numel` readable, aligned elements.
    unsafe fn walk(
        &self,
        mut k: usize,
        lo0: usize,
        hi0: usize,
        mut f: impl FnMut(usize, usize, Option<Grad<'_>>),
    ) -> usize {
        let mut at = lo0;
        while at < hi0 {
            match self.grads.get(k) {
                Some(t) if t.offset <= at => {
                    let hi = self.ends[k].min(hi0);
                    let g = Grad::from_raw(t.grad.ptr, t.grad.dtype, t.grad.numel);
                    f(at, hi, Some(g.range(at - t.offset, hi - t.offset)));
                    if hi == self.ends[k] {
                        k += 1;
                    }
                    at = hi;
                }
                next => {
                    let hi = next.map_or(hi0, |t| t.offset.min(hi0));
                    f(at, hi, None);
                    at = hi;
                }
            }
        }
        k
    }

    /// Whether any listed tensor holds inf or NaN (drop mode's check pass).
    ///
    /// # Safety
    /// Every listed pointer must point to `numel` readable, aligned elements.
    pub unsafe fn any_nonfinite(&self, items: &[WorkItem], total: usize) -> bool {
        let check = |item: &WorkItem| {
            let mut bad = false;
            // SAFETY: the caller's contract.
            unsafe {
                self.walk(self.cursor(item.start), item.start, item.end, |_, _, g| {
                    if let Some(g) = g {
                        bad |= slices::nonfinite(g);
                    }
                })
            };
            bad
        };
        any_item(items, total, check)
    }

    /// acc[offset + i] += mul * grad[i] for every listed tensor (= 0 + mul * grad[i]
    /// with Mode::Write, which also zeros the unlisted tensors); Kahan-compensated
    /// into `comp` when it is not empty (never with Mode::Write: a compensated
    /// accumulator is zeroed eagerly). With `norms`, the per-item sums of squares of
    /// the whole accumulator, as the flat pass computes them.
    ///
    /// # Safety
    /// Every listed pointer must point to `numel` readable, aligned elements; every
    /// tensor range lies inside acc (and comp, when not empty) and the ranges are
    /// disjoint; `items` are the layout's work items over acc.
    pub unsafe fn accumulate(
        &self,
        items: &[WorkItem],
        acc: &mut [f32],
        comp: &mut [f32],
        mul: f32,
        mode: Mode,
        norms: Option<Norms>,
    ) {
        let base = SharedMut(acc.as_mut_ptr());
        let cbase = SharedMut(comp.as_mut_ptr());
        let kahan = !comp.is_empty();
        let factor = norms.as_ref().map(|n| n.factor);
        let out = norms.map(|n| SharedMut(n.partials.as_mut_ptr()));
        for_each_indexed(items, acc.len(), |k, item| {
            let apply = |a: usize, b: usize, g: Option<Grad<'_>>| {
                let range = WorkItem { start: a, end: b, decay: false };
                // SAFETY: the caller's contract; work items are disjoint and so are
                // the pieces inside one.
                let dst = unsafe { base.slice(&range) };
                match g {
                    Some(g) if kahan => slices::kahan(dst, unsafe { cbase.slice(&range) }, g, mul),
                    Some(g) => slices::accumulate(dst, g, mul, mode),
                    None if mode == Mode::Write => dst.fill(0.0),
                    None => {}
                }
            };
            let mut cursor = self.cursor(item.start);
            let Some(factor) = factor else {
                // SAFETY: the caller's contract.
                unsafe { self.walk(cursor, item.start, item.end, apply) };
                return;
            };
            // With the norm partials: window by window, squaring what each window
            // wrote while it is in L1 (lanes do not depend on the window size).
            let mut lanes = [0f64; LANES];
            let mut lo = item.start;
            while lo < item.end {
                let hi = (lo + WINDOW).min(item.end);
                // SAFETY: as above.
                unsafe {
                    cursor = self.walk(cursor, lo, hi, apply);
                    add_squares(&mut lanes, base.slice(&WorkItem { start: lo, end: hi, decay: false }), factor);
                }
                lo = hi;
            }
            if let Some(out) = &out {
                // SAFETY: partial k belongs to item k alone.
                unsafe { out.write(k, lanes.iter().sum()) };
            }
        });
    }
}

/// Elements per window of the per-tensor pass with norm partials: a multiple of
/// LANES; 16 KiB of acc and up to as much gradient stay in a 48 KiB L1.
const WINDOW: usize = 4096;

#[cfg(test)]
mod tests {
    use super::super::parallel::{work_items, CHUNK};
    use super::*;
    use crate::backend::GradInput;
    use crate::engine::config::Dtype;
    use crate::engine::layout::DecayRun;

    fn grad(data: &[f32], offset: usize, index: usize) -> TensorGrad {
        let grad = GradInput { ptr: data.as_ptr().cast(), dtype: Dtype::F32, numel: data.len() };
        TensorGrad { grad, offset, index }
    }

    #[test]
    fn pieces_cover_every_element_once() {
        // Sizes around CHUNK and WINDOW so that items start inside, at and across
        // tensors, with a gap of 3 unlisted elements before each listed tensor.
        let sizes = [1, CHUNK - 1, 2, CHUNK, 3 * CHUNK + 5, 7, WINDOW + 1];
        let bufs: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![1.0; n]).collect();
        let mut offset = 0;
        let mut grads = Vec::new();
        for (i, b) in bufs.iter().enumerate() {
            grads.push(grad(b, offset + 3, i));
            offset += b.len() + 3;
        }
        let n = offset + 2;
        let items = work_items(&[
            DecayRun { start: 0, end: 5000, decay: true },
            DecayRun { start: 5000, end: n, decay: false },
        ]);
        let mut want = vec![0f32; n];
        for g in &grads {
            want[g.offset..g.offset + g.grad.numel].fill(1.0);
        }
        for mode in [Mode::Add, Mode::Write] {
            let mut acc = vec![if mode == Mode::Add { 0.0 } else { f32::NAN }; n];
            unsafe { PerTensor::new(&grads).accumulate(&items, &mut acc, &mut [], 1.0, mode, None) };
            assert!(acc.iter().zip(&want).all(|(a, w)| a.to_bits() == w.to_bits()), "{mode:?}");
        }
    }
}

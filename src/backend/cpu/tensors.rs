//! One micro-batch given tensor by tensor (`gacc_microbatch_tensors`) in one parallel
//! pass, whatever the tensor count.
//!
//! The listed tensors are laid end to end in a virtual concatenation and that is cut
//! into equal work items of CHUNK elements, so a model of 512 small tensors costs as
//! many pool tasks as one tensor of the same size, never one round trip per tensor. An
//! item walks the segments (tensor pieces) it covers and runs the same per-slice
//! bodies as the flat pass (accumulate.rs), so every element gets exactly the
//! arithmetic `gacc_microbatch` gives it: bit-identical results.

use rayon::prelude::*;

use super::parallel::{for_each_item, SharedMut, WorkItem, CHUNK, PARALLEL_THRESHOLD};
use super::slices::{self, Grad, Mode};
use crate::backend::TensorGrad;

/// The listed tensors as one virtual concatenation.
pub struct Plan<'a> {
    grads: &'a [TensorGrad],
    /// starts[k]: where grads[k] begins in the virtual concatenation; one more entry
    /// at the end holds the total.
    starts: Vec<usize>,
}

// SAFETY: the plan only reads through the gradient pointers (the caller's contract
// for the pass makes them valid for its duration); threads share it read-only.
unsafe impl Sync for Plan<'_> {}

impl<'a> Plan<'a> {
    pub fn new(grads: &'a [TensorGrad]) -> Plan<'a> {
        let mut starts = Vec::with_capacity(grads.len() + 1);
        let mut v = 0usize;
        for g in grads {
            starts.push(v);
            v += g.grad.numel;
        }
        starts.push(v);
        Plan { grads, starts }
    }

    /// Elements in all listed tensors.
    pub fn total(&self) -> usize {
        self.starts[self.grads.len()]
    }

    /// The work items: [v, v + CHUNK) over the virtual concatenation.
    fn items(&self) -> Vec<(usize, usize)> {
        let total = self.total();
        (0..total.div_ceil(CHUNK)).map(|i| (i * CHUNK, ((i + 1) * CHUNK).min(total))).collect()
    }

    /// Calls `f(tensor k, lo, hi)` for every piece [lo, hi) of tensor k (in its own
    /// element numbering) that the virtual range [v0, v1) covers.
    fn segments(&self, v0: usize, v1: usize, mut f: impl FnMut(&TensorGrad, usize, usize)) {
        // The last tensor starting at or before v0 (empty tensors are never listed).
        let mut k = self.starts.partition_point(|&s| s <= v0) - 1;
        let mut v = v0;
        while v < v1 {
            let (start, end) = (self.starts[k], self.starts[k + 1]);
            let hi = end.min(v1);
            f(&self.grads[k], v - start, hi - start);
            v = hi;
            k += 1;
        }
    }

    /// Runs `body` on every item, in parallel when the pass is large.
    fn for_each(&self, body: impl Fn(usize, usize) + Sync + Send) {
        let items = self.items();
        if self.total() >= PARALLEL_THRESHOLD {
            items.par_iter().for_each(|&(a, b)| body(a, b));
        } else {
            items.iter().for_each(|&(a, b)| body(a, b));
        }
    }

    /// Whether any listed tensor holds inf or NaN (drop mode's check pass).
    ///
    /// # Safety
    /// Every listed pointer must point to `numel` readable, aligned elements.
    pub unsafe fn any_nonfinite(&self) -> bool {
        let items = self.items();
        let check = |&(a, b): &(usize, usize)| {
            let mut bad = false;
            self.segments(a, b, |t, lo, hi| {
                // SAFETY: the caller's contract; lo..hi lies inside the tensor.
                bad |= unsafe { segment_nonfinite(t, lo, hi) };
            });
            bad
        };
        if self.total() >= PARALLEL_THRESHOLD {
            items.par_iter().map(check).reduce(|| false, |x, y| x | y)
        } else {
            items.iter().map(check).fold(false, |x, y| x | y)
        }
    }

    /// acc[offset + i] += mul * grad[i] for every listed tensor (= 0 + mul * grad[i]
    /// with Mode::Write); Kahan-compensated into `comp` when it is not empty (never
    /// with Mode::Write: a compensated accumulator is zeroed eagerly).
    ///
    /// # Safety
    /// Every listed pointer must point to `numel` readable, aligned elements; every
    /// tensor range lies inside acc (and comp, when not empty) and the ranges are
    /// disjoint.
    pub unsafe fn accumulate(&self, acc: &mut [f32], comp: &mut [f32], mul: f32, mode: Mode) {
        let base = SharedMut(acc.as_mut_ptr());
        let cbase = SharedMut(comp.as_mut_ptr());
        let kahan = !comp.is_empty();
        self.for_each(|a, b| {
            self.segments(a, b, |t, lo, hi| {
                let range = WorkItem { start: t.offset + lo, end: t.offset + hi, decay: false };
                // SAFETY: tensor ranges are disjoint and inside acc/comp, and work
                // items are disjoint pieces of them; the gradient is the caller's.
                unsafe {
                    let acc = base.slice(&range);
                    let g = segment(t, lo, hi);
                    if kahan {
                        slices::kahan(acc, cbase.slice(&range), g, mul);
                    } else {
                        slices::accumulate(acc, g, mul, mode);
                    }
                }
            });
        });
    }

    /// acc = 0 outside the listed tensors (the window was logically zero and those
    /// tensors get no gradient from this micro-batch). Listed tensors are in layout
    /// order (the engine lists them by index).
    pub fn zero_unlisted(&self, acc: &mut [f32]) {
        let mut gaps = Vec::new();
        let mut at = 0;
        for t in self.grads {
            push_chunks(&mut gaps, at, t.offset);
            at = t.offset + t.grad.numel;
        }
        push_chunks(&mut gaps, at, acc.len());
        let base = SharedMut(acc.as_mut_ptr());
        let zeroed = gaps.iter().map(|g| g.end - g.start).sum();
        for_each_item(&gaps, zeroed, |gap| {
            // SAFETY: the gaps are disjoint and inside acc.
            unsafe { base.slice(gap) }.fill(0.0);
        });
    }
}

/// Appends [start, end) cut into work items of at most CHUNK elements.
fn push_chunks(items: &mut Vec<WorkItem>, mut start: usize, end: usize) {
    while start < end {
        let stop = (start + CHUNK).min(end);
        items.push(WorkItem { start, end: stop, decay: false });
        start = stop;
    }
}

/// Elements [lo, hi) of a tensor's gradient.
unsafe fn segment<'g>(t: &TensorGrad, lo: usize, hi: usize) -> Grad<'g> {
    Grad::from_raw(t.grad.ptr, t.grad.dtype, t.grad.numel).range(lo, hi)
}

unsafe fn segment_nonfinite(t: &TensorGrad, lo: usize, hi: usize) -> bool {
    slices::nonfinite(segment(t, lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::GradInput;
    use crate::engine::config::Dtype;

    fn grad(data: &[f32], offset: usize, index: usize) -> TensorGrad {
        let grad = GradInput { ptr: data.as_ptr().cast(), dtype: Dtype::F32, numel: data.len() };
        TensorGrad { grad, offset, index }
    }

    #[test]
    fn items_cover_every_listed_element_once() {
        // Sizes around CHUNK so that items start inside, at and across tensors.
        let sizes = [1, CHUNK - 1, 2, CHUNK, 3 * CHUNK + 5, 7];
        let bufs: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![1.0; n]).collect();
        let mut offset = 0;
        let mut grads = Vec::new();
        for (i, b) in bufs.iter().enumerate() {
            grads.push(grad(b, offset + 3, i)); // a gap of 3 unlisted elements each
            offset += b.len() + 3;
        }
        let mut acc = vec![0f32; offset];
        unsafe { Plan::new(&grads).accumulate(&mut acc, &mut [], 1.0, Mode::Add) };
        let mut want = vec![0f32; offset];
        for g in &grads {
            want[g.offset..g.offset + g.grad.numel].fill(1.0);
        }
        assert_eq!(acc, want);
    }
}

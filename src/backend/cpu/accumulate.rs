//! acc += mul * grad over the whole flat buffer: one parallel pass, fp32
//! accumulation whatever the incoming dtype.
//!
//! Bytes per element: grad (4 or 2) read, acc (4) read and written; on the first
//! micro-batch of a window acc is only written (Mode::Write: 8 or 6 B; with streaming
//! stores on large buffers, streaming.rs, so that the write does not read the line first).
//! The pass can also compute the step's norm partials on the side (see [`Norms`]):
//! the values it has just written are squared while they are still in L1, which
//! costs no memory traffic, so a step right after it needs no norm pass.

use super::isa::isa;
use super::parallel::{any_item, for_each_indexed, SharedMut, WorkItem};
use super::slices::{self, add_squares, Grad, Mode, LANES};
use super::streaming;

/// Where a pass writes the norm partials: for work item k, the sum of squares of
/// f64(acc * factor) over the item's new values, computed exactly as the step's norm
/// pass does (step.rs `chunk_sum_sq`: same lanes, same order), so the two agree bit
/// for bit.
pub struct Norms<'a> {
    pub factor: f32,
    /// One entry per work item.
    pub partials: &'a mut [f64],
}

/// Elements of a sub-block of the fused pass: a multiple of LANES, small enough that
/// what was just written is still in L1 when it is squared.
pub(super) const SUB: usize = 1024;

/// acc = acc + mul * g (or 0 + mul * g, Mode::Write), with the norm partials when
/// `norms` is given.
pub fn accumulate(items: &[WorkItem], acc: &mut [f32], grad: Grad<'_>, mul: f32, mode: Mode, norms: Option<Norms>) {
    let base = SharedMut(acc.as_mut_ptr());
    let total = acc.len();
    match norms {
        None => for_each_indexed(items, total, |_, item| {
            // SAFETY: items are disjoint and inside acc (same length as grad).
            let a = unsafe { base.slice(item) };
            slices::accumulate(a, grad.range(item.start, item.end), mul, mode);
        }),
        Some(Norms { factor, partials }) => {
            let out = SharedMut(partials.as_mut_ptr());
            // Writing a buffer far larger than the caches: streaming stores (no
            // write-allocate read of acc), squares from the registers.
            let stream = mode == Mode::Write && total >= streaming::MIN_ELEMENTS;
            for_each_indexed(items, total, |k, item| {
                // SAFETY: as above; partial k belongs to item k alone.
                let a = unsafe { base.slice(item) };
                let g = grad.range(item.start, item.end);
                let mut lanes = [0f64; LANES];
                let fused = if stream {
                    streaming::write_and_square(isa(), a, g, mul, factor, &mut lanes)
                } else {
                    streaming::accumulate_and_square(isa(), a, g, mul, mode, factor, &mut lanes)
                };
                let sum = if fused { lanes.iter().sum() } else { accumulate_and_square(a, g, mul, mode, factor) };
                unsafe { out.write(k, sum) };
            });
        }
    }
}

/// One item of the fused pass where the vector unit has no one-loop version
/// (streaming.rs): accumulate a sub-block, square what it wrote.
fn accumulate_and_square(a: &mut [f32], g: Grad<'_>, mul: f32, mode: Mode, factor: f32) -> f64 {
    let mut lanes = [0f64; LANES];
    let mut lo = 0;
    while lo < a.len() {
        let hi = (lo + SUB).min(a.len());
        let part = &mut a[lo..hi];
        slices::accumulate(part, g.range(lo, hi), mul, mode);
        add_squares(&mut lanes, part, factor);
        lo = hi;
    }
    lanes.iter().sum()
}

/// acc += mul * grad with Kahan's compensation (slices::kahan_add): comp holds the
/// part of the running sum that acc lost to rounding (with the opposite sign); the
/// window's sum is acc - comp. Bytes per element: grad read, acc and comp read and
/// written (+8 B over the plain pass).
pub fn accumulate_kahan(items: &[WorkItem], acc: &mut [f32], comp: &mut [f32], grad: Grad<'_>, mul: f32) {
    let base = SharedMut(acc.as_mut_ptr());
    let cbase = SharedMut(comp.as_mut_ptr());
    for_each_indexed(items, acc.len(), |_, item| {
        // SAFETY: items are disjoint and inside acc and comp (same length as grad).
        let (a, c) = unsafe { (base.slice(item), cbase.slice(item)) };
        slices::kahan(a, c, grad.range(item.start, item.end), mul);
    });
}

/// Whether a gradient holds inf or NaN (drop mode's check pass). Reads the gradient
/// once (2-4 B per element).
pub fn any_nonfinite(items: &[WorkItem], grad: Grad<'_>) -> bool {
    any_item(items, grad.len(), |item| slices::nonfinite(grad.range(item.start, item.end)))
}

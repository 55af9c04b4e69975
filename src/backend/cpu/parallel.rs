//! Splitting flat buffers into fixed chunks for the CPU pool (pool.rs).
//!
//! Chunk boundaries depend only on the layout, never on the number of threads, so
//! every reduction (the gradient norm) adds the same partial sums in the same order
//! whatever the machine: results are bit-identical from 1 thread to N.

use std::mem::MaybeUninit;

use super::pool;

/// Elements per work item: 128 KiB of f32, big enough to amortise scheduling, small
/// enough to balance two to many cores.
pub(crate) const CHUNK: usize = 32 * 1024;

/// Below this many elements a pass runs on the calling thread: waking the pool costs
/// more than it saves.
pub(crate) const PARALLEL_THRESHOLD: usize = 256 * 1024;

/// One contiguous range of the flat buffers processed by one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkItem {
    pub start: usize,
    pub end: usize,
    pub decay: bool,
}

/// Splits each decay run into chunks of at most CHUNK elements.
pub fn work_items(runs: &[crate::engine::layout::DecayRun]) -> Vec<WorkItem> {
    let mut items = Vec::new();
    for run in runs {
        let mut start = run.start;
        while start < run.end {
            let end = (start + CHUNK).min(run.end);
            items.push(WorkItem { start, end, decay: run.decay });
            start = end;
        }
    }
    items
}

/// Runs `f` on every item, in parallel when the buffers are large.
pub fn for_each_item<F>(items: &[WorkItem], total: usize, f: F)
where
    F: Fn(&WorkItem) + Sync + Send,
{
    for_each_indexed(items, total, |_, item| f(item));
}

/// Runs `f(k, item k)` on every item, in parallel when the buffers are large.
pub fn for_each_indexed<F>(items: &[WorkItem], total: usize, f: F)
where
    F: Fn(usize, &WorkItem) + Sync + Send,
{
    if total >= PARALLEL_THRESHOLD {
        pool::run(items.len(), &|k| f(k, &items[k]));
    } else {
        items.iter().enumerate().for_each(|(k, item)| f(k, item));
    }
}

/// Maps every item to a value, in item order (parallel when large).
pub fn map_items<T, F>(items: &[WorkItem], total: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(&WorkItem) -> T + Sync + Send,
{
    if total < PARALLEL_THRESHOLD {
        return items.iter().map(f).collect();
    }
    let mut out: Vec<MaybeUninit<T>> = Vec::with_capacity(items.len());
    out.resize_with(items.len(), MaybeUninit::uninit);
    let slots = SharedMut(out.as_mut_ptr());
    // SAFETY: item k writes slot k only, once; run() returns only when every item ran
    // (or panics, and then `out` is dropped as MaybeUninit without reading a slot).
    pool::run(items.len(), &|k| unsafe { slots.write(k, MaybeUninit::new(f(&items[k]))) });
    out.into_iter()
        .map(|slot| {
            // SAFETY: every slot was written above.
            unsafe { slot.assume_init() }
        })
        .collect()
}

/// Whether `f` holds for any item (every item is evaluated; parallel when large).
pub fn any_item<F>(items: &[WorkItem], total: usize, f: F) -> bool
where
    F: Fn(&WorkItem) -> bool + Sync + Send,
{
    map_items(items, total, f).into_iter().any(|b| b)
}

/// A raw base pointer that tasks turn into disjoint sub-slices.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);

// SAFETY: every user derives slices from disjoint WorkItem ranges only, so no two
// threads ever touch the same element.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// # Safety
    /// `item` must lie inside the buffer, and no other live slice may overlap it.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)] // disjointness is the caller's contract (see Safety)
    pub unsafe fn slice(&self, item: &WorkItem) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(item.start), item.end - item.start)
    }

    /// # Safety
    /// `k` must lie inside the buffer, and no other thread may touch element k.
    #[inline(always)]
    pub unsafe fn write(&self, k: usize, value: T) {
        *self.0.add(k) = value;
    }
}

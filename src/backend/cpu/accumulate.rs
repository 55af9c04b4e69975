//! acc += mul * grad: one pass, fp32 accumulation whatever the incoming dtype.
//!
//! Bytes per element: grad (4 or 2) read, acc (4) read and written.

use half::f16;

use super::convert::{bf16_bits_to_f32, f16_to_f32_block, CONVERT_BLOCK};
use super::parallel::{for_each_item, SharedMut, WorkItem};

fn run<G: Sync>(items: &[WorkItem], acc: &mut [f32], grad: &[G], body: impl Fn(&mut [f32], &[G]) + Sync + Send) {
    let base = SharedMut(acc.as_mut_ptr());
    let total = acc.len();
    for_each_item(items, total, |item| {
        // SAFETY: items are disjoint and inside acc (same length as grad).
        let a = unsafe { base.slice(item) };
        body(a, &grad[item.start..item.end]);
    });
}

pub fn accumulate_f32(items: &[WorkItem], acc: &mut [f32], grad: &[f32], mul: f32) {
    run(items, acc, grad, |a, g| {
        for (a, &g) in a.iter_mut().zip(g) {
            *a += mul * g;
        }
    });
}

pub fn accumulate_bf16(items: &[WorkItem], acc: &mut [f32], grad: &[u16], mul: f32) {
    run(items, acc, grad, |a, g| {
        for (a, &g) in a.iter_mut().zip(g) {
            *a += mul * bf16_bits_to_f32(g);
        }
    });
}

pub fn accumulate_f16(items: &[WorkItem], acc: &mut [f32], grad: &[f16], mul: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::convert::has_f16c() {
            // SAFETY: the CPU supports AVX and F16C.
            run(items, acc, grad, |a, g| unsafe { super::convert::f16c::accumulate(a, g, mul) });
            return;
        }
    }
    run(items, acc, grad, |a, g| {
        let mut block = [0f32; CONVERT_BLOCK];
        for (a, g) in a.chunks_mut(CONVERT_BLOCK).zip(g.chunks(CONVERT_BLOCK)) {
            f16_to_f32_block(g, &mut block);
            for (a, &g) in a.iter_mut().zip(&block[..g.len()]) {
                *a += mul * g;
            }
        }
    });
}

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

/// acc += mul * grad with Kahan's compensation (kernels/accumulate.cu mirrors it):
///   y = mul * g - c;  t = acc + y;  c = (t - acc) - y;  acc = t
/// comp holds c, the part of the running sum that acc lost to rounding (with the
/// opposite sign); the window's sum is acc - comp. Bytes per element: grad read,
/// acc and comp read and written (+8 B over the plain pass).
fn kahan<G: Copy + Sync>(
    items: &[WorkItem],
    acc: &mut [f32],
    comp: &mut [f32],
    grad: &[G],
    mul: f32,
    conv: impl Fn(G) -> f32 + Sync + Send,
) {
    let base = SharedMut(acc.as_mut_ptr());
    let cbase = SharedMut(comp.as_mut_ptr());
    for_each_item(items, acc.len(), |item| {
        // SAFETY: items are disjoint and inside acc and comp (same length as grad).
        let (a, c) = unsafe { (base.slice(item), cbase.slice(item)) };
        for ((a, c), &g) in a.iter_mut().zip(c.iter_mut()).zip(&grad[item.start..item.end]) {
            kahan_add(a, c, mul * conv(g));
        }
    });
}

/// One step of Kahan summation: acc += v, compensated.
#[inline(always)]
pub fn kahan_add(acc: &mut f32, comp: &mut f32, v: f32) {
    let y = v - *comp;
    let t = *acc + y;
    *comp = (t - *acc) - y;
    *acc = t;
}

pub fn accumulate_f32_kahan(items: &[WorkItem], acc: &mut [f32], comp: &mut [f32], grad: &[f32], mul: f32) {
    kahan(items, acc, comp, grad, mul, |g| g);
}

pub fn accumulate_bf16_kahan(items: &[WorkItem], acc: &mut [f32], comp: &mut [f32], grad: &[u16], mul: f32) {
    kahan(items, acc, comp, grad, mul, bf16_bits_to_f32);
}

pub fn accumulate_f16_kahan(items: &[WorkItem], acc: &mut [f32], comp: &mut [f32], grad: &[f16], mul: f32) {
    kahan(items, acc, comp, grad, mul, f16::to_f32);
}

/// Whether a gradient holds inf or NaN (drop mode's check pass): all-ones exponent,
/// tested on the bits. Reads the gradient once (2-4 B per element).
pub fn any_nonfinite_f32(items: &[WorkItem], grad: &[f32]) -> bool {
    any(items, grad, |g: &f32| g.to_bits() & 0x7F80_0000 == 0x7F80_0000)
}
pub fn any_nonfinite_f16(items: &[WorkItem], grad: &[f16]) -> bool {
    any(items, grad, |g: &f16| g.to_bits() & 0x7C00 == 0x7C00)
}
pub fn any_nonfinite_bf16(items: &[WorkItem], grad: &[u16]) -> bool {
    any(items, grad, |g: &u16| g & 0x7F80 == 0x7F80)
}

fn any<G: Sync>(items: &[WorkItem], grad: &[G], bad: impl Fn(&G) -> bool + Sync + Send) -> bool {
    super::parallel::map_items(items, grad.len(), |item| {
        // No early exit inside a chunk: a branch-free fold vectorises.
        grad[item.start..item.end].iter().fold(false, |acc, g| acc | bad(g))
    })
    .into_iter()
    .any(|b| b)
}

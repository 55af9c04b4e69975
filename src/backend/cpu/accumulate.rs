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
    run(items, acc, grad, |a, g| add_f32(a, g, mul));
}

pub fn accumulate_bf16(items: &[WorkItem], acc: &mut [f32], grad: &[u16], mul: f32) {
    run(items, acc, grad, |a, g| add_bf16(a, g, mul));
}

pub fn accumulate_f16(items: &[WorkItem], acc: &mut [f32], grad: &[f16], mul: f32) {
    let fast = f16c_available();
    run(items, acc, grad, |a, g| add_f16(a, g, mul, fast));
}

// The per-slice bodies: the flat pass and the per-tensor pass (tensors.rs) both run
// exactly these, so their results agree bit for bit whatever the chunking.

/// a[i] += mul * g[i].
#[inline]
pub fn add_f32(a: &mut [f32], g: &[f32], mul: f32) {
    for (a, &g) in a.iter_mut().zip(g) {
        *a += mul * g;
    }
}

/// a[i] += mul * f32(g[i]) for bf16 bits.
#[inline]
pub fn add_bf16(a: &mut [f32], g: &[u16], mul: f32) {
    for (a, &g) in a.iter_mut().zip(g) {
        *a += mul * bf16_bits_to_f32(g);
    }
}

/// Whether the F16C kernel may run on this CPU (checked once per pass).
#[inline]
pub fn f16c_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::convert::has_f16c()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// a[i] += mul * f32(g[i]) for f16; `fast` from [`f16c_available`].
#[inline]
pub fn add_f16(a: &mut [f32], g: &[f16], mul: f32, fast: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if fast {
            // SAFETY: the caller checked that the CPU supports AVX and F16C.
            unsafe { super::convert::f16c::accumulate(a, g, mul) };
            return;
        }
    }
    let _ = fast;
    let mut block = [0f32; CONVERT_BLOCK];
    for (a, g) in a.chunks_mut(CONVERT_BLOCK).zip(g.chunks(CONVERT_BLOCK)) {
        f16_to_f32_block(g, &mut block);
        for (a, &g) in a.iter_mut().zip(&block[..g.len()]) {
            *a += mul * g;
        }
    }
}

/// Kahan-compensated a[i] += mul * conv(g[i]) (see [`kahan_add`]).
#[inline]
pub fn add_kahan<G: Copy>(a: &mut [f32], c: &mut [f32], g: &[G], mul: f32, conv: impl Fn(G) -> f32) {
    for ((a, c), &g) in a.iter_mut().zip(c.iter_mut()).zip(g) {
        kahan_add(a, c, mul * conv(g));
    }
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
        add_kahan(a, c, &grad[item.start..item.end], mul, &conv);
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
    any(items, grad, nonfinite_f32)
}
pub fn any_nonfinite_f16(items: &[WorkItem], grad: &[f16]) -> bool {
    any(items, grad, nonfinite_f16)
}
pub fn any_nonfinite_bf16(items: &[WorkItem], grad: &[u16]) -> bool {
    any(items, grad, nonfinite_bf16)
}

/// Per-slice checks (no early exit inside a slice: a branch-free fold vectorises).
pub fn nonfinite_f32(g: &[f32]) -> bool {
    g.iter().fold(false, |acc, g| acc | (g.to_bits() & 0x7F80_0000 == 0x7F80_0000))
}
pub fn nonfinite_f16(g: &[f16]) -> bool {
    g.iter().fold(false, |acc, g| acc | (g.to_bits() & 0x7C00 == 0x7C00))
}
pub fn nonfinite_bf16(g: &[u16]) -> bool {
    g.iter().fold(false, |acc, g| acc | (g & 0x7F80 == 0x7F80))
}

fn any<G: Sync>(items: &[WorkItem], grad: &[G], bad: impl Fn(&[G]) -> bool + Sync + Send) -> bool {
    super::parallel::map_items(items, grad.len(), |item| bad(&grad[item.start..item.end])).into_iter().any(|b| b)
}

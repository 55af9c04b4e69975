//! The per-slice loops every CPU pass is built from, one copy per vector unit.
//!
//! Each loop is written once, as an `#[inline(always)]` body, and compiled three
//! times: for the baseline target, and under `#[target_feature]` for AVX2 and for
//! AVX-512 (see isa.rs for why the copies agree bit for bit). f16 gradients go
//! through F16C conversion intrinsics, 8 or 16 at a time. The flat pass
//! (accumulate.rs), the per-tensor pass (tensors.rs) and the step (step.rs) all call
//! these, so an element gets the same arithmetic whichever call brought it.

use half::f16;

use super::convert::{bf16_bits_to_f32, f16_to_f32_block, CONVERT_BLOCK};
use super::isa::{isa, Isa};
use crate::engine::config::Dtype;

/// How an accumulation combines a gradient with the accumulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// acc = acc + mul * g.
    Add,
    /// acc = 0 + mul * g: the window is empty (the accumulator is logically zero), so
    /// acc is written without being read. The `0 +` keeps the result bit-identical
    /// to adding into a zeroed buffer (0 + (-0) is +0).
    Write,
}

/// A gradient slice in its own dtype (bf16 and f16 as their bits).
#[derive(Clone, Copy, Debug)]
pub enum Grad<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [u16]),
}

impl<'a> Grad<'a> {
    /// `numel` elements of `dtype` at `ptr`.
    ///
    /// # Safety
    /// `ptr` must point to `numel` readable elements of `dtype`, aligned for it, that
    /// stay valid and unmodified for `'a`.
    pub unsafe fn from_raw(ptr: *const std::os::raw::c_void, dtype: Dtype, numel: usize) -> Grad<'a> {
        match dtype {
            Dtype::F32 => Grad::F32(std::slice::from_raw_parts(ptr.cast(), numel)),
            Dtype::F16 => Grad::F16(std::slice::from_raw_parts(ptr.cast(), numel)),
            Dtype::BF16 => Grad::Bf16(std::slice::from_raw_parts(ptr.cast(), numel)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Grad::F32(g) => g.len(),
            Grad::F16(g) => g.len(),
            Grad::Bf16(g) => g.len(),
        }
    }

    /// Elements [lo, hi).
    pub fn range(&self, lo: usize, hi: usize) -> Grad<'a> {
        match *self {
            Grad::F32(g) => Grad::F32(&g[lo..hi]),
            Grad::F16(g) => Grad::F16(&g[lo..hi]),
            Grad::Bf16(g) => Grad::Bf16(&g[lo..hi]),
        }
    }
}

/// acc[i] = acc[i] + mul * g[i] (Mode::Add) or 0 + mul * g[i] (Mode::Write), the
/// gradient converted to f32 exactly, on the vector unit [`isa`] picks.
#[inline]
pub fn accumulate(acc: &mut [f32], g: Grad<'_>, mul: f32, mode: Mode) {
    accumulate_on(isa(), acc, g, mul, mode)
}

/// [`accumulate`] on a given vector unit (tests compare them).
pub fn accumulate_on(unit: Isa, acc: &mut [f32], g: Grad<'_>, mul: f32, mode: Mode) {
    let write = mode == Mode::Write;
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `unit` is never wider than the CPU supports (isa.rs).
        unsafe {
            match (unit, g, write) {
                (Isa::Avx512, Grad::F32(g), false) => return x86::f32_512::<false>(acc, g, mul),
                (Isa::Avx512, Grad::F32(g), true) => return x86::f32_512::<true>(acc, g, mul),
                (Isa::Avx512, Grad::Bf16(g), false) => return x86::bf16_512::<false>(acc, g, mul),
                (Isa::Avx512, Grad::Bf16(g), true) => return x86::bf16_512::<true>(acc, g, mul),
                (Isa::Avx512, Grad::F16(g), false) => return x86::f16_512::<false>(acc, g, mul),
                (Isa::Avx512, Grad::F16(g), true) => return x86::f16_512::<true>(acc, g, mul),
                (Isa::Avx2, Grad::F32(g), false) => return x86::f32_256::<false>(acc, g, mul),
                (Isa::Avx2, Grad::F32(g), true) => return x86::f32_256::<true>(acc, g, mul),
                (Isa::Avx2, Grad::Bf16(g), false) => return x86::bf16_256::<false>(acc, g, mul),
                (Isa::Avx2, Grad::Bf16(g), true) => return x86::bf16_256::<true>(acc, g, mul),
                (Isa::Avx2, Grad::F16(g), false) => return x86::f16_256::<false>(acc, g, mul),
                (Isa::Avx2, Grad::F16(g), true) => return x86::f16_256::<true>(acc, g, mul),
                (Isa::Portable, ..) => {}
            }
        }
    }
    let _ = unit;
    match (g, write) {
        (Grad::F32(g), false) => add_body::<false, f32>(acc, g, mul, |g| g),
        (Grad::F32(g), true) => add_body::<true, f32>(acc, g, mul, |g| g),
        (Grad::Bf16(g), false) => add_body::<false, u16>(acc, g, mul, bf16_bits_to_f32),
        (Grad::Bf16(g), true) => add_body::<true, u16>(acc, g, mul, bf16_bits_to_f32),
        (Grad::F16(g), write) => f16_portable(acc, g, mul, write),
    }
}

/// The accumulation loop (WRITE: acc is not read).
#[inline(always)]
fn add_body<const WRITE: bool, T: Copy>(acc: &mut [f32], g: &[T], mul: f32, conv: impl Fn(T) -> f32) {
    if WRITE {
        for (a, &g) in acc.iter_mut().zip(g) {
            *a = 0.0 + mul * conv(g);
        }
    } else {
        for (a, &g) in acc.iter_mut().zip(g) {
            *a += mul * conv(g);
        }
    }
}

/// f16 without F16C: convert a block at a time, then the f32 loop.
fn f16_portable(acc: &mut [f32], g: &[f16], mul: f32, write: bool) {
    let mut block = [0f32; CONVERT_BLOCK];
    for (a, g) in acc.chunks_mut(CONVERT_BLOCK).zip(g.chunks(CONVERT_BLOCK)) {
        f16_to_f32_block(g, &mut block);
        if write {
            add_body::<true, f32>(a, &block[..g.len()], mul, |g| g);
        } else {
            add_body::<false, f32>(a, &block[..g.len()], mul, |g| g);
        }
    }
}

/// Kahan-compensated acc += mul * g (see accumulate.rs), on the vector unit [`isa`]
/// picks (f16 gradients are converted a block at a time first).
pub fn kahan(acc: &mut [f32], comp: &mut [f32], g: Grad<'_>, mul: f32) {
    kahan_on(isa(), acc, comp, g, mul)
}

/// [`kahan`] on a given vector unit.
pub fn kahan_on(unit: Isa, acc: &mut [f32], comp: &mut [f32], g: Grad<'_>, mul: f32) {
    if let Grad::F16(g) = g {
        let mut block = [0f32; CONVERT_BLOCK];
        for ((a, c), g) in
            acc.chunks_mut(CONVERT_BLOCK).zip(comp.chunks_mut(CONVERT_BLOCK)).zip(g.chunks(CONVERT_BLOCK))
        {
            f16_to_f32_block(g, &mut block);
            kahan_on(unit, a, c, Grad::F32(&block[..g.len()]), mul);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `unit` is never wider than the CPU supports.
        unsafe {
            match unit {
                Isa::Avx512 => return x86::kahan_512(acc, comp, g, mul),
                Isa::Avx2 => return x86::kahan_256(acc, comp, g, mul),
                Isa::Portable => {}
            }
        }
    }
    let _ = unit;
    kahan_dispatch(acc, comp, g, mul)
}

#[inline(always)]
fn kahan_dispatch(acc: &mut [f32], comp: &mut [f32], g: Grad<'_>, mul: f32) {
    match g {
        Grad::F32(g) => kahan_body(acc, comp, g, mul, |g| g),
        Grad::F16(g) => kahan_body(acc, comp, g, mul, f16::to_f32),
        Grad::Bf16(g) => kahan_body(acc, comp, g, mul, bf16_bits_to_f32),
    }
}

#[inline(always)]
fn kahan_body<T: Copy>(acc: &mut [f32], comp: &mut [f32], g: &[T], mul: f32, conv: impl Fn(T) -> f32) {
    for ((a, c), &g) in acc.iter_mut().zip(comp.iter_mut()).zip(g) {
        kahan_add(a, c, mul * conv(g));
    }
}

/// One step of Kahan summation: acc += v, compensated (kernels/accumulate.cu mirrors
/// it):  y = v - c;  t = acc + y;  c = (t - acc) - y;  acc = t.
#[inline(always)]
pub fn kahan_add(acc: &mut f32, comp: &mut f32, v: f32) {
    let y = v - *comp;
    let t = *acc + y;
    *comp = (t - *acc) - y;
    *acc = t;
}

/// Whether a gradient slice holds inf or NaN: all-ones exponent, tested on the bits,
/// with no early exit (a branch-free fold vectorises).
#[inline]
pub fn nonfinite(g: Grad<'_>) -> bool {
    nonfinite_on(isa(), g)
}

/// [`nonfinite`] on a given vector unit.
pub fn nonfinite_on(unit: Isa, g: Grad<'_>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `unit` is never wider than the CPU supports.
        unsafe {
            match unit {
                Isa::Avx512 => return x86::nonfinite_512(g),
                Isa::Avx2 => return x86::nonfinite_256(g),
                Isa::Portable => {}
            }
        }
    }
    let _ = unit;
    nonfinite_body(g)
}

#[inline(always)]
fn nonfinite_body(g: Grad<'_>) -> bool {
    match g {
        Grad::F32(g) => g.iter().fold(false, |acc, g| acc | (g.to_bits() & 0x7F80_0000 == 0x7F80_0000)),
        Grad::F16(g) => g.iter().fold(false, |acc, g| acc | (g.to_bits() & 0x7C00 == 0x7C00)),
        Grad::Bf16(g) => g.iter().fold(false, |acc, g| acc | (g & 0x7F80 == 0x7F80)),
    }
}

/// Independent f64 accumulators of a sum of squares, so that the sum vectorises
/// while its order stays fixed: element i of a chunk always goes to lane i % LANES.
pub(super) const LANES: usize = 16;

/// lanes[i % LANES] += f64(a[i] * factor)^2 for every element, in order. A chunk's
/// sum of squares is this over the chunk (in one call or in pieces whose lengths are
/// multiples of LANES), then `lanes.iter().sum()`: the same value however it is cut.
#[inline]
pub fn add_squares(lanes: &mut [f64; LANES], a: &[f32], factor: f32) {
    add_squares_on(isa(), lanes, a, factor)
}

/// [`add_squares`] on a given vector unit.
pub fn add_squares_on(unit: Isa, lanes: &mut [f64; LANES], a: &[f32], factor: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `unit` is never wider than the CPU supports.
        unsafe {
            match unit {
                Isa::Avx512 => return x86::squares_512(lanes, a, factor),
                Isa::Avx2 => return x86::squares_256(lanes, a, factor),
                Isa::Portable => {}
            }
        }
    }
    let _ = unit;
    squares_body(lanes, a, factor)
}

#[inline(always)]
fn squares_body(lanes: &mut [f64; LANES], a: &[f32], factor: f32) {
    let mut blocks = a.chunks_exact(LANES);
    for block in &mut blocks {
        for (lane, &a) in lanes.iter_mut().zip(block) {
            let g = f64::from(a * factor);
            *lane += g * g;
        }
    }
    for (lane, &a) in lanes.iter_mut().zip(blocks.remainder()) {
        let g = f64::from(a * factor);
        *lane += g * g;
    }
}

/// The AVX2 and AVX-512 copies.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f32_256<const W: bool>(acc: &mut [f32], g: &[f32], mul: f32) {
        add_body::<W, f32>(acc, g, mul, |g| g)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn f32_512<const W: bool>(acc: &mut [f32], g: &[f32], mul: f32) {
        add_body::<W, f32>(acc, g, mul, |g| g)
    }
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn bf16_256<const W: bool>(acc: &mut [f32], g: &[u16], mul: f32) {
        add_body::<W, u16>(acc, g, mul, bf16_bits_to_f32)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn bf16_512<const W: bool>(acc: &mut [f32], g: &[u16], mul: f32) {
        add_body::<W, u16>(acc, g, mul, bf16_bits_to_f32)
    }

    /// The scalar tail of the f16 loops (same arithmetic as the vector part).
    #[inline(always)]
    fn f16_tail<const W: bool>(acc: &mut [f32], g: &[f16], mul: f32) {
        for (a, g) in acc.iter_mut().zip(g) {
            let base = if W { 0.0 } else { *a };
            *a = base + mul * g.to_f32();
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f16_256<const W: bool>(acc: &mut [f32], g: &[f16], mul: f32) {
        let n = acc.len().min(g.len());
        let m = _mm256_set1_ps(mul);
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(g.as_ptr().add(i) as *const __m128i));
            let pa = acc.as_mut_ptr().add(i);
            let base = if W { _mm256_setzero_ps() } else { _mm256_loadu_ps(pa) };
            _mm256_storeu_ps(pa, _mm256_add_ps(base, _mm256_mul_ps(m, x)));
            i += 8;
        }
        f16_tail::<W>(&mut acc[i..n], &g[i..n], mul);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn f16_512<const W: bool>(acc: &mut [f32], g: &[f16], mul: f32) {
        let n = acc.len().min(g.len());
        let m = _mm512_set1_ps(mul);
        let mut i = 0;
        while i + 16 <= n {
            let x = _mm512_cvtph_ps(_mm256_loadu_si256(g.as_ptr().add(i) as *const __m256i));
            let pa = acc.as_mut_ptr().add(i);
            let base = if W { _mm512_setzero_ps() } else { _mm512_loadu_ps(pa) };
            _mm512_storeu_ps(pa, _mm512_add_ps(base, _mm512_mul_ps(m, x)));
            i += 16;
        }
        f16_tail::<W>(&mut acc[i..n], &g[i..n], mul);
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn kahan_256(acc: &mut [f32], comp: &mut [f32], g: Grad<'_>, mul: f32) {
        kahan_dispatch(acc, comp, g, mul)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn kahan_512(acc: &mut [f32], comp: &mut [f32], g: Grad<'_>, mul: f32) {
        kahan_dispatch(acc, comp, g, mul)
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn nonfinite_256(g: Grad<'_>) -> bool {
        nonfinite_body(g)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn nonfinite_512(g: Grad<'_>) -> bool {
        nonfinite_body(g)
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn squares_256(lanes: &mut [f64; LANES], a: &[f32], factor: f32) {
        squares_body(lanes, a, factor)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn squares_512(lanes: &mut [f64; LANES], a: &[f32], factor: f32) {
        squares_body(lanes, a, factor)
    }
}

#[cfg(test)]
mod tests {
    use super::super::isa::available;
    use super::*;

    fn xorshift(state: &mut u32) -> u32 {
        *state ^= *state << 13;
        *state ^= *state >> 17;
        *state ^= *state << 5;
        *state
    }

    fn same(x: f32, y: f32) -> bool {
        (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
    }

    /// Every vector unit gives, element by element, exactly `base + mul * f32(g)`
    /// (base = acc or +0), for every kind of value: normals, subnormals, zeros of
    /// both signs, inf and NaN, at lengths around every vector width.
    #[test]
    fn every_unit_rounds_like_the_scalar_formula() {
        let mut state = 0x9E37_79B9u32;
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 4099] {
            let bits: Vec<u32> = (0..n).map(|_| xorshift(&mut state)).collect();
            let mut f32s: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            if n > 3 {
                f32s[0] = -0.0;
                f32s[1] = 0.0;
                f32s[2] = f32::INFINITY;
            }
            let f16s: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b as u16)).collect();
            let bf16s: Vec<u16> = bits.iter().map(|&b| (b >> 16) as u16).collect();
            let acc0: Vec<f32> = (0..n).map(|_| (xorshift(&mut state) % 2001) as f32 * 0.37 - 300.0).collect();
            let grads = [Grad::F32(&f32s), Grad::F16(&f16s), Grad::Bf16(&bf16s)];
            let value = |g: &Grad<'_>, i: usize| match g {
                Grad::F32(g) => g[i],
                Grad::F16(g) => g[i].to_f32(),
                Grad::Bf16(g) => bf16_bits_to_f32(g[i]),
            };
            for g in grads {
                for mul in [1.0f32, 0.3, -7.5] {
                    for mode in [Mode::Add, Mode::Write] {
                        for &unit in &available() {
                            let mut acc = acc0.clone();
                            accumulate_on(unit, &mut acc, g, mul, mode);
                            for i in 0..n {
                                let base = if mode == Mode::Add { acc0[i] } else { 0.0 };
                                let want = base + mul * value(&g, i);
                                assert!(same(acc[i], want), "{unit:?} {mode:?} n {n} i {i}: {} vs {want}", acc[i]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The compensated loop agrees across units with the scalar Kahan step.
    #[test]
    fn every_unit_compensates_like_the_scalar_kahan_step() {
        let mut state = 0x1357_9BDFu32;
        for n in [1usize, 16, 33, 1500] {
            let g32: Vec<f32> = (0..n).map(|_| (xorshift(&mut state) % 20001) as f32 * 1e-4 - 1.0).collect();
            let g16: Vec<f16> = g32.iter().map(|&x| f16::from_f32(x)).collect();
            let acc0: Vec<f32> = (0..n).map(|_| (xorshift(&mut state) % 2001) as f32 * 37.0).collect();
            let comp0: Vec<f32> = (0..n).map(|_| (xorshift(&mut state) % 101) as f32 * 1e-6).collect();
            for g in [Grad::F32(&g32), Grad::F16(&g16)] {
                let (mut want_a, mut want_c) = (acc0.clone(), comp0.clone());
                for i in 0..n {
                    let v = match g {
                        Grad::F32(g) => g[i],
                        Grad::F16(g) => g[i].to_f32(),
                        Grad::Bf16(g) => bf16_bits_to_f32(g[i]),
                    };
                    kahan_add(&mut want_a[i], &mut want_c[i], 0.3 * v);
                }
                for &unit in &available() {
                    let (mut a, mut c) = (acc0.clone(), comp0.clone());
                    kahan_on(unit, &mut a, &mut c, g, 0.3);
                    assert!(a.iter().zip(&want_a).all(|(x, y)| x.to_bits() == y.to_bits()), "{unit:?} n {n}");
                    assert!(c.iter().zip(&want_c).all(|(x, y)| x.to_bits() == y.to_bits()), "{unit:?} n {n}");
                }
            }
        }
    }

    /// Write mode gives +0 where adding into a zeroed buffer gives +0 (a -0 product).
    #[test]
    fn write_mode_keeps_the_sign_of_zero_of_an_add_into_zeros() {
        let g = [-0.0f32, 0.0, 1.0];
        for &unit in &available() {
            let mut w = [f32::NAN; 3];
            accumulate_on(unit, &mut w, Grad::F32(&g), 1.0, Mode::Write);
            let mut z = [0.0f32; 3];
            accumulate_on(unit, &mut z, Grad::F32(&g), 1.0, Mode::Add);
            assert_eq!(w.map(f32::to_bits), z.map(f32::to_bits), "{unit:?}");
            assert_eq!(w[0].to_bits(), 0.0f32.to_bits());
        }
    }

    #[test]
    fn every_unit_finds_the_same_nonfinite_values() {
        for &unit in &available() {
            for n in [1usize, 15, 16, 17, 100] {
                for pos in [0, n / 2, n - 1] {
                    let mut f = vec![1.0f32; n];
                    let mut h = vec![f16::ONE; n];
                    let mut b = vec![0x3F80u16; n];
                    assert!(!nonfinite_on(unit, Grad::F32(&f)) && !nonfinite_on(unit, Grad::F16(&h)));
                    assert!(!nonfinite_on(unit, Grad::Bf16(&b)));
                    f[pos] = f32::NAN;
                    h[pos] = f16::INFINITY;
                    b[pos] = 0xFF80; // -inf
                    assert!(nonfinite_on(unit, Grad::F32(&f)), "{unit:?} n {n} pos {pos}");
                    assert!(nonfinite_on(unit, Grad::F16(&h)), "{unit:?} n {n} pos {pos}");
                    assert!(nonfinite_on(unit, Grad::Bf16(&b)), "{unit:?} n {n} pos {pos}");
                }
            }
        }
    }

    /// The lane sums agree bit for bit across units and however the slice is cut
    /// into pieces of multiples of LANES.
    #[test]
    fn squares_agree_across_units_and_cuts() {
        let mut state = 0x2545_F491u32;
        let a: Vec<f32> = (0..5003).map(|_| (xorshift(&mut state) % 100_001) as f32 * 1e-3 - 50.0).collect();
        let mut want = [0f64; LANES];
        for (i, &x) in a.iter().enumerate() {
            let g = f64::from(x * 0.37);
            want[i % LANES] += g * g;
        }
        for &unit in &available() {
            for cut in [LANES, 1024, 5003] {
                let mut lanes = [0f64; LANES];
                for piece in a.chunks(cut) {
                    add_squares_on(unit, &mut lanes, piece, 0.37);
                }
                assert_eq!(lanes.map(f64::to_bits), want.map(f64::to_bits), "{unit:?} cut {cut}");
            }
        }
    }
}

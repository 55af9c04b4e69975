//! The accumulation loops that also take the step's sum of squares from the
//! registers they store, in one loop per slice: acc = acc + mul * g or 0 + mul * g,
//! with plain stores, and for the first micro-batch of a window over a buffer much
//! larger than the caches with streaming (non-temporal) stores. One loop instead of
//! accumulating a sub-block and squaring it back from L1 halved the time of a
//! 1M-parameter pass in the cache (bench/cpu.rs, 2026-12-02: 0.120 -> 0.061 ms,
//! the speed of a plain in-place add).
//!
//! A plain store to a line that is not in the cache first reads the line from memory
//! (write-allocate), so a pass that only writes acc still moves 12 bytes per f32
//! element, not 8. Streaming stores write whole lines without reading them. They also
//! bypass the cache, so the squares cannot be read back from L1 as the other passes
//! do (accumulate.rs): they come from the same registers that are stored.
//!
//! Bit-identity with the plain path: the values are `0.0 + mul * g` in f32 as in
//! slices.rs, and lane L of the sum of squares still adds f64(acc * factor)^2 of the
//! elements i = L (mod LANES) of the item in element order: the vector accumulators
//! start from the lanes the scalar head left and are written back before the scalar
//! tail, each register lane standing for the lane its elements map to (the head that
//! aligns the stores shifts that mapping; it is undone when written back). f64 squares
//! and sums use separate multiply and add instructions, never a fused multiply-add.

use super::isa::Isa;
use super::slices::{Grad, Mode, LANES};

/// Buffers of at least this many elements take the streaming path: 4 Mi f32 is 16 MiB
/// of accumulator, with its gradient about the size of this machine's L3. Below it,
/// the accumulator stays in the cache between micro-batches and plain stores win.
pub(super) const MIN_ELEMENTS: usize = 4 << 20;

/// acc[i] = 0 + mul * g[i], lanes[i % LANES] += f64(acc[i] * factor)^2 in order, with
/// streaming stores. Returns false (nothing done) where the vector unit has none.
pub fn write_and_square(
    unit: Isa,
    acc: &mut [f32],
    g: Grad<'_>,
    mul: f32,
    factor: f32,
    lanes: &mut [f64; LANES],
) -> bool {
    fused(unit, acc, g, mul, Mode::Write, true, factor, lanes)
}

/// acc[i] = acc[i] + mul * g[i] (Mode::Add) or 0 + mul * g[i] (Mode::Write), and
/// lanes[i % LANES] += f64(acc[i] * factor)^2 in order, in one loop with the squares
/// taken from the registers just stored (plain stores). Returns false (nothing done)
/// where the vector unit has no such loop.
pub fn accumulate_and_square(
    unit: Isa,
    acc: &mut [f32],
    g: Grad<'_>,
    mul: f32,
    mode: Mode,
    factor: f32,
    lanes: &mut [f64; LANES],
) -> bool {
    fused(unit, acc, g, mul, mode, false, factor, lanes)
}

#[allow(clippy::too_many_arguments)] // the two entry points above name them
fn fused(
    unit: Isa,
    acc: &mut [f32],
    g: Grad<'_>,
    mul: f32,
    mode: Mode,
    stream: bool,
    factor: f32,
    lanes: &mut [f64; LANES],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let write = mode == Mode::Write;
        // SAFETY: `unit` is never wider than the CPU supports (isa.rs).
        unsafe {
            match (unit, write, stream) {
                (Isa::Avx512, true, true) => x86::fused_512::<true, true>(acc, g, mul, factor, lanes),
                (Isa::Avx512, true, false) => x86::fused_512::<true, false>(acc, g, mul, factor, lanes),
                (Isa::Avx512, false, true) => x86::fused_512::<false, true>(acc, g, mul, factor, lanes),
                (Isa::Avx512, false, false) => x86::fused_512::<false, false>(acc, g, mul, factor, lanes),
                (Isa::Avx2, true, true) => x86::fused_256::<true, true>(acc, g, mul, factor, lanes),
                (Isa::Avx2, true, false) => x86::fused_256::<true, false>(acc, g, mul, factor, lanes),
                (Isa::Avx2, false, true) => x86::fused_256::<false, true>(acc, g, mul, factor, lanes),
                (Isa::Avx2, false, false) => x86::fused_256::<false, false>(acc, g, mul, factor, lanes),
                (Isa::Portable, ..) => return false,
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (unit, acc, g, mul, mode, stream, factor, lanes);
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::convert::bf16_bits_to_f32;
    use super::*;
    use std::arch::x86_64::*;

    /// One element of the scalar head or tail: exactly slices.rs's write and square.
    #[inline(always)]
    fn scalar<const W: bool>(acc: &mut [f32], g: Grad<'_>, mul: f32, factor: f32, lanes: &mut [f64; LANES], i: usize) {
        let x = match g {
            Grad::F32(g) => g[i],
            Grad::F16(g) => g[i].to_f32(),
            Grad::Bf16(g) => bf16_bits_to_f32(g[i]),
        };
        let base = if W { 0.0 } else { acc[i] };
        let a = base + mul * x;
        acc[i] = a;
        let s = f64::from(a * factor);
        lanes[i % LANES] += s * s;
    }

    /// Elements before `acc[head]` is `align`-byte aligned.
    fn head_len(acc: &[f32], align: usize) -> usize {
        let addr = acc.as_ptr() as usize;
        ((align - addr % align) % align / 4).min(acc.len())
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    unsafe fn load16(g: Grad<'_>, i: usize) -> __m512 {
        match g {
            Grad::F32(g) => _mm512_loadu_ps(g.as_ptr().add(i)),
            Grad::F16(g) => _mm512_cvtph_ps(_mm256_loadu_si256(g.as_ptr().add(i) as *const __m256i)),
            Grad::Bf16(g) => {
                let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(g.as_ptr().add(i) as *const __m256i));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn fused_512<const W: bool, const NT: bool>(
        acc: &mut [f32],
        g: Grad<'_>,
        mul: f32,
        factor: f32,
        lanes: &mut [f64; LANES],
    ) {
        let n = acc.len().min(g.len());
        let head = head_len(acc, 64).min(n);
        for i in 0..head {
            scalar::<W>(acc, g, mul, factor, lanes, i);
        }
        let body = (n - head) / 16 * 16;
        // Register lane j holds the lane of the elements head + j (mod LANES).
        let mut reg = [0f64; LANES];
        for (j, r) in reg.iter_mut().enumerate() {
            *r = lanes[(head + j) % LANES];
        }
        let mut lo = _mm512_loadu_pd(reg.as_ptr());
        let mut hi = _mm512_loadu_pd(reg.as_ptr().add(8));
        let (m, f, zero) = (_mm512_set1_ps(mul), _mm512_set1_ps(factor), _mm512_setzero_ps());
        let mut i = head;
        while i < head + body {
            let dst = acc.as_mut_ptr().add(i);
            let base = if W { zero } else { _mm512_load_ps(dst) };
            let v = _mm512_add_ps(base, _mm512_mul_ps(m, load16(g, i)));
            if NT {
                _mm512_stream_ps(dst, v);
            } else {
                _mm512_store_ps(dst, v);
            }
            let s = _mm512_mul_ps(v, f);
            let s_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(s));
            let s_hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s))));
            lo = _mm512_add_pd(lo, _mm512_mul_pd(s_lo, s_lo));
            hi = _mm512_add_pd(hi, _mm512_mul_pd(s_hi, s_hi));
            i += 16;
        }
        _mm512_storeu_pd(reg.as_mut_ptr(), lo);
        _mm512_storeu_pd(reg.as_mut_ptr().add(8), hi);
        for (j, r) in reg.iter().enumerate() {
            lanes[(head + j) % LANES] = *r;
        }
        if NT {
            // The streamed lines are weakly ordered: fence before another thread reads them.
            _mm_sfence();
        }
        for i in head + body..n {
            scalar::<W>(acc, g, mul, factor, lanes, i);
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(g: Grad<'_>, i: usize) -> __m256 {
        match g {
            Grad::F32(g) => _mm256_loadu_ps(g.as_ptr().add(i)),
            Grad::F16(g) => _mm256_cvtph_ps(_mm_loadu_si128(g.as_ptr().add(i) as *const __m128i)),
            Grad::Bf16(g) => {
                let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(g.as_ptr().add(i) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
            }
        }
    }

    /// 8 values: store (streaming), and add their squares into the two f64x4
    /// accumulators that stand for their lanes.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn step8<const NT: bool>(dst: *mut f32, v: __m256, f: __m256, a: &mut __m256d, b: &mut __m256d) {
        if NT {
            _mm256_stream_ps(dst, v);
        } else {
            _mm256_store_ps(dst, v);
        }
        let s = _mm256_mul_ps(v, f);
        let s_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(s));
        let s_hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(s));
        *a = _mm256_add_pd(*a, _mm256_mul_pd(s_lo, s_lo));
        *b = _mm256_add_pd(*b, _mm256_mul_pd(s_hi, s_hi));
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn fused_256<const W: bool, const NT: bool>(
        acc: &mut [f32],
        g: Grad<'_>,
        mul: f32,
        factor: f32,
        lanes: &mut [f64; LANES],
    ) {
        let n = acc.len().min(g.len());
        let head = head_len(acc, 32).min(n);
        for i in 0..head {
            scalar::<W>(acc, g, mul, factor, lanes, i);
        }
        // 16 elements (two vectors) per iteration, so register lane j always stands
        // for the lane of the elements head + j (mod LANES).
        let body = (n - head) / 16 * 16;
        let mut reg = [0f64; LANES];
        for (j, r) in reg.iter_mut().enumerate() {
            *r = lanes[(head + j) % LANES];
        }
        let mut r0 = _mm256_loadu_pd(reg.as_ptr());
        let mut r1 = _mm256_loadu_pd(reg.as_ptr().add(4));
        let mut r2 = _mm256_loadu_pd(reg.as_ptr().add(8));
        let mut r3 = _mm256_loadu_pd(reg.as_ptr().add(12));
        let (m, f, zero) = (_mm256_set1_ps(mul), _mm256_set1_ps(factor), _mm256_setzero_ps());
        let mut i = head;
        while i < head + body {
            let dst = acc.as_mut_ptr().add(i);
            let (b0, b1) = if W { (zero, zero) } else { (_mm256_load_ps(dst), _mm256_load_ps(dst.add(8))) };
            let v0 = _mm256_add_ps(b0, _mm256_mul_ps(m, load8(g, i)));
            let v1 = _mm256_add_ps(b1, _mm256_mul_ps(m, load8(g, i + 8)));
            step8::<NT>(dst, v0, f, &mut r0, &mut r1);
            step8::<NT>(dst.add(8), v1, f, &mut r2, &mut r3);
            i += 16;
        }
        _mm256_storeu_pd(reg.as_mut_ptr(), r0);
        _mm256_storeu_pd(reg.as_mut_ptr().add(4), r1);
        _mm256_storeu_pd(reg.as_mut_ptr().add(8), r2);
        _mm256_storeu_pd(reg.as_mut_ptr().add(12), r3);
        for (j, r) in reg.iter().enumerate() {
            lanes[(head + j) % LANES] = *r;
        }
        if NT {
            _mm_sfence();
        }
        for i in head + body..n {
            scalar::<W>(acc, g, mul, factor, lanes, i);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::isa::available;
    use super::super::slices::{accumulate_on, add_squares_on};
    use super::*;
    use half::f16;

    /// The fused loops (streaming write, and plain-store write and add) give the
    /// plain loops' values and the plain pass's lane sums bit for bit, for every
    /// dtype, at every misalignment of the slice start and lengths around the vector
    /// widths.
    #[test]
    fn fused_loops_match_the_plain_loops_and_squares() {
        let mut state = 0x0BAD_5EEDu32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let total = 3000;
        let mut g32: Vec<f32> = (0..total).map(|_| (next() % 40001) as f32 * 1e-4 - 2.0).collect();
        // Signed zeros, a subnormal, inf and NaN in the vector body of most cases.
        for (i, x) in [(20, -0.0), (21, 0.0), (45, 1e-40), (1500, f32::INFINITY), (2100, f32::NAN)] {
            g32[i] = x;
        }
        let start: Vec<f32> = (0..total).map(|_| (next() % 30001) as f32 * 1e-4 - 1.5).collect();
        let g16: Vec<f16> = g32.iter().map(|&x| f16::from_f32(x)).collect();
        let gb16: Vec<u16> = g32.iter().map(|&x| (x.to_bits() >> 16) as u16).collect();
        let mut buf = vec![0f32; total + 32];
        let cases = [(Mode::Write, true), (Mode::Write, false), (Mode::Add, false)];
        for &unit in available().iter().filter(|&&u| u != Isa::Portable) {
            for (mode, stream) in cases {
                for shift in 0..16 {
                    for n in [0usize, 1, 7, 15, 16, 17, 33, 100, 1024, 2999 - shift] {
                        for g in [Grad::F32(&g32[..n]), Grad::F16(&g16[..n]), Grad::Bf16(&gb16[..n])] {
                            let mut want = start[..n].to_vec();
                            accumulate_on(Isa::Portable, &mut want, g, 0.7, mode);
                            let mut want_lanes = [0.5f64; LANES];
                            add_squares_on(Isa::Portable, &mut want_lanes, &want, 1.3);
                            let acc = &mut buf[shift..shift + n];
                            acc.copy_from_slice(&start[..n]);
                            let mut lanes = [0.5f64; LANES];
                            let done = if stream {
                                write_and_square(unit, acc, g, 0.7, 1.3, &mut lanes)
                            } else {
                                accumulate_and_square(unit, acc, g, 0.7, mode, 1.3, &mut lanes)
                            };
                            assert!(done);
                            let what = format!("{unit:?} {mode:?} stream {stream} shift {shift} n {n}");
                            assert!(acc.iter().zip(&want).all(|(a, w)| a.to_bits() == w.to_bits()), "{what}: values");
                            assert_eq!(lanes.map(f64::to_bits), want_lanes.map(f64::to_bits), "{what}");
                        }
                    }
                }
            }
        }
    }
}

//! fp16/bf16 <-> fp32 conversions in bulk, written so the compiler vectorises them
//! (half's slice conversions use F16C where the CPU has it).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Elements converted per stack buffer when a half gradient is folded in.
pub(crate) const CONVERT_BLOCK: usize = 1024;

/// bf16 -> f32 is exact: the bf16 bits are the top half of the f32.
#[inline(always)]
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f32 -> bf16 with round-to-nearest-even; NaN stays NaN (quieted).
/// Branch-free so that loops over it vectorise.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x0040;
    if x.is_nan() {
        nan as u16
    } else {
        rounded as u16
    }
}

/// Writes `src` into a bf16 slice of the same length.
pub fn f32_to_bf16_slice(src: &[f32], dst: &mut [bf16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_bits(f32_to_bf16_bits(s));
    }
}

/// Writes `src` into an f16 slice of the same length (round to nearest even).
pub fn f32_to_f16_slice(src: &[f32], dst: &mut [f16]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_f16c() {
            // SAFETY: the CPU supports AVX and F16C.
            unsafe { f16c::f32_to_f16(src, dst) };
            return;
        }
    }
    dst.convert_from_f32_slice(src);
}

/// Writes `src` into a bf16 slice of the same length with streaming (non-temporal)
/// stores, bit for bit as [`f32_to_bf16_slice`]: for a working copy much larger than
/// the caches, where a plain store would first read every line it writes. Returns
/// false (nothing written) where the CPU has no such loop.
pub fn f32_to_bf16_stream(src: &[f32], dst: &mut [bf16]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if super::isa::isa() == super::isa::Isa::Avx512 {
            // SAFETY: the CPU supports AVX-512F/BW and F16C (isa.rs).
            unsafe { stream512::lines::<bf16, true>(src, dst, f32_to_bf16_slice) };
            return true;
        }
    }
    let _ = (src, dst);
    false
}

/// [`f32_to_f16_slice`] with streaming stores (see [`f32_to_bf16_stream`]).
pub fn f32_to_f16_stream(src: &[f32], dst: &mut [f16]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if super::isa::isa() == super::isa::Isa::Avx512 {
            // SAFETY: as above.
            unsafe { stream512::lines::<f16, false>(src, dst, f32_to_f16_slice) };
            return true;
        }
    }
    let _ = (src, dst);
    false
}

/// The streaming conversions: 32 halves (one 64-byte line) per store, the line
/// aligned by a scalar head; the scalar head and tail use the plain conversions.
#[cfg(target_arch = "x86_64")]
mod stream512 {
    use std::arch::x86_64::*;

    /// Elements before `dst` is 64-byte aligned.
    fn head_len<T>(dst: &[T]) -> usize {
        let addr = dst.as_ptr() as usize;
        ((64 - addr % 64) % 64 / std::mem::size_of::<T>()).min(dst.len())
    }

    /// 16 f32 -> 16 bf16 bits, as f32_to_bf16_bits: RNE on the bits, NaN quieted.
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    unsafe fn bf16x16(x: __m512) -> __m256i {
        let bits = _mm512_castps_si512(x);
        let high = _mm512_srli_epi32::<16>(bits);
        let lsb = _mm512_and_si512(high, _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb)));
        let nan = _mm512_or_si512(high, _mm512_set1_epi32(0x0040));
        let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, nan))
    }

    /// dst = the halves of src (bf16 when BF16, else f16, round to nearest even), the
    /// aligned middle with streaming stores, head and tail with `plain`.
    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    pub unsafe fn lines<T, const BF16: bool>(src: &[f32], dst: &mut [T], plain: fn(&[f32], &mut [T])) {
        let n = src.len().min(dst.len());
        let head = head_len(dst).min(n);
        plain(&src[..head], &mut dst[..head]);
        let end = head + (n - head) / 32 * 32;
        let half16 = |x: __m512| if BF16 { bf16x16(x) } else { _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x) };
        let mut i = head;
        while i < end {
            let lo = half16(_mm512_loadu_ps(src.as_ptr().add(i)));
            let hi = half16(_mm512_loadu_ps(src.as_ptr().add(i + 16)));
            let line = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            _mm512_stream_si512(dst.as_mut_ptr().add(i) as *mut _, line);
            i += 32;
        }
        // Streamed lines are weakly ordered: fence before another thread reads them.
        _mm_sfence();
        plain(&src[end..n], &mut dst[end..n]);
    }
}

/// True when the CPU converts f16 <-> f32 in hardware (8 at a time).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_f16c() -> bool {
    std::is_x86_feature_detected!("avx") && std::is_x86_feature_detected!("f16c")
}

/// Whole-loop F16C kernels. The half crate uses the same instructions, but through
/// one out-of-line call per 8 elements; inlined here the loops run 2-3x faster
/// in cache. Conversions are exact (f16 -> f32) or round to nearest even (f32 ->
/// f16), exactly as the portable paths.
#[cfg(target_arch = "x86_64")]
pub(crate) mod f16c {
    use half::f16;
    use std::arch::x86_64::*;

    /// dst = RNE(src) for equal-length slices.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
            i += 8;
        }
        for j in i..n {
            dst[j] = f16::from_f32(src[j]);
        }
    }
}

/// Converts an f16 slice (<= CONVERT_BLOCK long) into `dst`'s prefix.
pub fn f16_to_f32_block(src: &[f16], dst: &mut [f32; CONVERT_BLOCK]) {
    src.convert_to_f32_slice(&mut dst[..src.len()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half_crate() {
        let mut state = 0x1234_5678u32;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let x = f32::from_bits(state);
            let ours = f32_to_bf16_bits(x);
            let theirs = bf16::from_f32(x).to_bits();
            if x.is_nan() {
                assert!(bf16::from_bits(ours).is_nan());
            } else {
                assert_eq!(ours, theirs, "{x:e}");
            }
        }
        assert_eq!(bf16_bits_to_f32(bf16::from_f32(1.5).to_bits()), 1.5);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    /// The streaming conversions write what the plain ones write, bit for bit (NaN
    /// payloads included), at every misalignment of the destination and lengths
    /// around a line, on random bit patterns (every class of f32) and ties.
    #[test]
    fn streaming_conversions_match_the_plain_ones_bit_for_bit() {
        let mut state = 0x2545_F491u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut src: Vec<f32> = (0..5000).map(|_| f32::from_bits(next())).collect();
        for (i, x) in [(3, 1.0 + f32::EPSILON * 0.5), (40, -0.0), (41, f32::INFINITY), (42, f32::MIN_POSITIVE / 4.0)] {
            src[i] = x;
        }
        // Ties to even in both directions (bf16 keeps the top 16 bits).
        src[50] = f32::from_bits(0x3F80_8000);
        src[51] = f32::from_bits(0x3F81_8000);
        let mut b_plain = vec![bf16::ZERO; 5100];
        let mut b_stream = vec![bf16::ZERO; 5100];
        let mut h_plain = vec![f16::ZERO; 5100];
        let mut h_stream = vec![f16::ZERO; 5100];
        for shift in 0..33 {
            for n in [0usize, 1, 31, 32, 33, 64, 95, 1000, 5000 - shift] {
                let s = &src[..n];
                f32_to_bf16_slice(s, &mut b_plain[shift..shift + n]);
                if !f32_to_bf16_stream(s, &mut b_stream[shift..shift + n]) {
                    return; // no AVX-512 here: nothing to compare
                }
                f32_to_f16_slice(s, &mut h_plain[shift..shift + n]);
                assert!(f32_to_f16_stream(s, &mut h_stream[shift..shift + n]));
                for i in shift..shift + n {
                    assert_eq!(b_stream[i].to_bits(), b_plain[i].to_bits(), "bf16 shift {shift} n {n} i {i}");
                    assert_eq!(h_stream[i].to_bits(), h_plain[i].to_bits(), "f16 shift {shift} n {n} i {i}");
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod f16c_tests {
    use super::*;

    fn xorshift(state: &mut u32) -> u32 {
        *state ^= *state << 13;
        *state ^= *state >> 17;
        *state ^= *state << 5;
        *state
    }

    #[test]
    fn f16c_kernels_match_the_portable_paths_bit_for_bit() {
        if !has_f16c() {
            return;
        }
        let mut state = 0x9E37_79B9u32;
        for n in [1usize, 7, 8, 9, 31, 1000, 4099] {
            let src: Vec<f32> = (0..n).map(|_| f32::from_bits(xorshift(&mut state))).collect();
            let mut fast = vec![f16::ZERO; n];
            unsafe { f16c::f32_to_f16(&src, &mut fast) };
            for i in 0..n {
                let want = f16::from_f32(src[i]);
                if want.is_nan() {
                    assert!(fast[i].is_nan());
                } else {
                    assert_eq!(fast[i].to_bits(), want.to_bits(), "{:e}", src[i]);
                }
            }
        }
    }
}

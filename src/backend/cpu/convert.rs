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

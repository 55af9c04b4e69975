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
    dst.convert_from_f32_slice(src);
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

/*
 * half.h: fp32 <-> fp16 / bf16 conversions written independently of gacc, bit by bit,
 * to check gacc's working copies (IEEE round to nearest, ties to even).
 */
#ifndef GACC_TESTS_HALF_H
#define GACC_TESTS_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Rounds the integer m >> shift to nearest, ties to even (shift >= 1). */
static inline uint32_t rne_shift(uint32_t m, unsigned shift) {
    if (shift >= 32) return 0;
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return q;
}

/* fp32 -> IEEE binary16, round to nearest even; overflow gives inf; NaN stays NaN. */
static inline uint16_t f32_to_f16_rne(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t exp = (u >> 23) & 0xFFu;
    uint32_t man = u & 0x7FFFFFu;
    if (exp == 0xFFu) return (uint16_t)(sign | 0x7C00u | (man ? 0x200u | (man >> 13) : 0u));
    int e = (int)exp - 127; /* unbiased */
    if (exp == 0) return sign; /* fp32 subnormals are far below fp16's smallest value */
    uint32_t m = man | 0x800000u; /* 24-bit significand, value m * 2^(e-23) */
    if (e >= -14) {
        /* normal fp16: keep 11 bits; rounding may carry into the exponent (fine) */
        uint32_t r = rne_shift(m, 13);   /* 11 or 12 bits */
        uint32_t bits = ((uint32_t)(e + 15) << 10) + (r - 0x400u);
        if (bits >= 0x7C00u) return (uint16_t)(sign | 0x7C00u);
        return (uint16_t)(sign | bits);
    }
    /* subnormal fp16: value = q * 2^-24 with q = m * 2^(e-23+24) */
    int shift = -1 - e; /* 13 + (-14 - e) */
    uint32_t q = rne_shift(m, (unsigned)shift);
    return (uint16_t)(sign | q); /* q == 0x400 rounds up into the smallest normal: correct */
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        float v = (float)man * (1.0f / 16777216.0f); /* man * 2^-24, exact */
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

/* fp32 -> bfloat16, round to nearest even; NaN stays NaN. */
static inline uint16_t f32_to_bf16_rne(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x7FFFFFu)) return (uint16_t)((u >> 16) | 0x40u);
    uint32_t q = u >> 16, rem = u & 0xFFFFu;
    if (rem > 0x8000u || (rem == 0x8000u && (q & 1u))) q++;
    return (uint16_t)q;
}

static inline float bf16_to_f32(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

#endif /* GACC_TESTS_HALF_H */

// convert.cu: working copy = RNE(master), for gacc_params_write and checkpoint
// import (a step rewrites the working copy inside its fused update pass instead);
// stochastic rounding (sr = 1) keyed by gacc_sr_key(seed, state->step).
//
// Math: f16 via __float2half_rn, bf16 via __float2bfloat16_rn (round to nearest even),
// as the CPU backend's conversions. Memory traffic per parameter: read 4 B, write 2 B.
// Device allocations only: the float4 / 8-byte path is always aligned.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_write_working(const float* __restrict__ master, unsigned short* __restrict__ working, int working_dtype,
                   gacc_u64 n, const gacc_state* state, unsigned sr, gacc_u64 seed) {
    const gacc_u64 key = sr ? gacc_sr_key(seed, state->step) : 0ull;
    const gacc_u64 tid = gacc_thread_index();
    const gacc_u64 stride = gacc_thread_count();
    const gacc_u64 n4 = n / 4;
    const float4* p4 = reinterpret_cast<const float4*>(master);
    uint2* w4 = reinterpret_cast<uint2*>(working);
    const bool f16 = working_dtype == GACC_WORKING_F16;
    for (gacc_u64 i = tid; i < n4; i += stride) {
        const float4 p = p4[i];
        uint2 w;
        const gacc_u64 e = i * 4;
        if (sr) {
            w.x = (unsigned)gacc_to_working_sr(p.x, working_dtype, 1u, key, e + 0) |
                  ((unsigned)gacc_to_working_sr(p.y, working_dtype, 1u, key, e + 1) << 16);
            w.y = (unsigned)gacc_to_working_sr(p.z, working_dtype, 1u, key, e + 2) |
                  ((unsigned)gacc_to_working_sr(p.w, working_dtype, 1u, key, e + 3) << 16);
        } else if (f16) {
            w.x = (unsigned)gacc_f32_to_f16(p.x) | ((unsigned)gacc_f32_to_f16(p.y) << 16);
            w.y = (unsigned)gacc_f32_to_f16(p.z) | ((unsigned)gacc_f32_to_f16(p.w) << 16);
        } else {
            w.x = (unsigned)gacc_f32_to_bf16(p.x) | ((unsigned)gacc_f32_to_bf16(p.y) << 16);
            w.y = (unsigned)gacc_f32_to_bf16(p.z) | ((unsigned)gacc_f32_to_bf16(p.w) << 16);
        }
        w4[i] = w;
    }
    for (gacc_u64 i = n4 * 4 + tid; i < n; i += stride) {
        working[i] = gacc_to_working_sr(master[i], working_dtype, sr, key, i);
    }
}

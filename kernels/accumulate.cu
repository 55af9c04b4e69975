// accumulate.cu: acc += mul * grad, converting the gradient to fp32 on the fly.
//
// Math: acc[i] = acc[i] + mul * (float)grad[i], two roundings (no FMA: the library
// compiles with --fmad=false), exactly as the CPU backend's `*a += mul * g`.
// mul is the micro-batch weight (GACC_GRADS_MEAN) or 1 (GACC_GRADS_SUM).
//
// Memory traffic per parameter: read grad (4 B f32, 2 B f16/bf16), read and write
// acc (8 B): 12 B (f32) or 10 B (f16/bf16). One pass, one launch per micro-batch.
//
// Vectorised path (vec = 1): 16-byte float4 loads/stores of acc, and 16-byte (f32)
// or 8-byte (f16/bf16, four halves) loads of grad, chosen by the launcher only when
// the gradient pointer is aligned for them (acc always is: it is a device allocation).
// The last n % 4 elements (or all of them when vec = 0) take the scalar path.
// Grid-stride loops: any grid size is correct; the launcher sizes it from the
// multiprocessor count.
#include "common.cuh"

template <typename Load>
GACC_INLINE void gacc_accumulate_body(float* __restrict__ acc, gacc_u64 n, float mul, int vec, Load load,
                                      const void* grad) {
    const gacc_u64 tid = gacc_thread_index();
    const gacc_u64 stride = gacc_thread_count();
    gacc_u64 scalar_start = 0;
    if (vec) {
        const gacc_u64 n4 = n / 4;
        float4* acc4 = reinterpret_cast<float4*>(acc);
        for (gacc_u64 i = tid; i < n4; i += stride) {
            float g[4];
            load.vec4(grad, i, g);
            float4 a = acc4[i];
            a.x = a.x + mul * g[0];
            a.y = a.y + mul * g[1];
            a.z = a.z + mul * g[2];
            a.w = a.w + mul * g[3];
            acc4[i] = a;
        }
        scalar_start = n4 * 4;
    }
    for (gacc_u64 i = scalar_start + tid; i < n; i += stride) {
        acc[i] = acc[i] + mul * load.one(grad, i);
    }
}

struct gacc_load_f32 {
    GACC_INLINE float one(const void* p, gacc_u64 i) const { return static_cast<const float*>(p)[i]; }
    GACC_INLINE void vec4(const void* p, gacc_u64 i, float* g) const {
        float4 v = static_cast<const float4*>(p)[i];
        g[0] = v.x; g[1] = v.y; g[2] = v.z; g[3] = v.w;
    }
};

struct gacc_load_f16 {
    GACC_INLINE float one(const void* p, gacc_u64 i) const {
        return gacc_f16_to_f32(static_cast<const unsigned short*>(p)[i]);
    }
    GACC_INLINE void vec4(const void* p, gacc_u64 i, float* g) const {
        uint2 v = static_cast<const uint2*>(p)[i];
        g[0] = gacc_f16_to_f32((unsigned short)(v.x & 0xFFFFu));
        g[1] = gacc_f16_to_f32((unsigned short)(v.x >> 16));
        g[2] = gacc_f16_to_f32((unsigned short)(v.y & 0xFFFFu));
        g[3] = gacc_f16_to_f32((unsigned short)(v.y >> 16));
    }
};

struct gacc_load_bf16 {
    GACC_INLINE float one(const void* p, gacc_u64 i) const {
        return gacc_bf16_to_f32(static_cast<const unsigned short*>(p)[i]);
    }
    GACC_INLINE void vec4(const void* p, gacc_u64 i, float* g) const {
        uint2 v = static_cast<const uint2*>(p)[i];
        g[0] = gacc_bf16_to_f32((unsigned short)(v.x & 0xFFFFu));
        g[1] = gacc_bf16_to_f32((unsigned short)(v.x >> 16));
        g[2] = gacc_bf16_to_f32((unsigned short)(v.y & 0xFFFFu));
        g[3] = gacc_bf16_to_f32((unsigned short)(v.y >> 16));
    }
};

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_accumulate_f32(float* __restrict__ acc, const float* __restrict__ grad, gacc_u64 n, float mul, int vec) {
    gacc_accumulate_body(acc, n, mul, vec, gacc_load_f32(), grad);
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_accumulate_f16(float* __restrict__ acc, const unsigned short* __restrict__ grad, gacc_u64 n, float mul,
                    int vec) {
    gacc_accumulate_body(acc, n, mul, vec, gacc_load_f16(), grad);
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_accumulate_bf16(float* __restrict__ acc, const unsigned short* __restrict__ grad, gacc_u64 n, float mul,
                     int vec) {
    gacc_accumulate_body(acc, n, mul, vec, gacc_load_bf16(), grad);
}

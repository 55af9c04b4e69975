// accumulate.cu: acc += mul * grad, converting the gradient to fp32 on the fly.
//
// Math: acc[i] = acc[i] + mul * (float)grad[i], two roundings (no FMA: the library
// compiles with --fmad=false), exactly as the CPU backend's `*a += mul * g`.
// mul is the micro-batch weight (GACC_GRADS_MEAN) or 1 (GACC_GRADS_SUM).
// Compensated (comp != NULL, compensated_accumulation): Kahan's update, as
// backend/cpu/accumulate.rs kahan_add:  y = mul*g - c; t = acc + y; c = (t - acc) - y;
// acc = t.
//
// Memory traffic per parameter: read grad (4 B f32, 2 B f16/bf16), read and write
// acc (8 B): 12 B (f32) or 10 B (f16/bf16); +8 B (comp read and written) when
// compensated. One pass, one launch per micro-batch.
//
// The window's total weight is summed on the device: thread 0 of block 0 adds
// `weight` to state->window_total (in f64, in call order: the same sum as the CPU
// backend's), so a step reads it from device memory and a replayed CUDA graph needs
// no host value. No other thread of this kernel touches window_total.
// Drop mode (seq != 0, drop_nonfinite_microbatches): gacc_check_finite ran just
// before on the same stream and stored `seq` into state->bad_seq if the gradient
// holds inf/NaN. Every thread reads that flag; thread 0 of block 0 books the
// micro-batch (window_total += weight, or window_dropped += 1), and a flagged
// gradient is not added. `seq` is the micro-batch's number within its window (1, 2,
// ...: the same in every replay of a captured window) and bad_seq is reset to 0 when
// a window ends, so a flag never outlives its window. No host sync: the host never
// learns which happened until it asks.
//
// Vectorised path (vec = 1): 16-byte float4 loads/stores of acc, and 16-byte (f32)
// or 8-byte (f16/bf16, four halves) loads of grad, chosen by the launcher only when
// the gradient pointer is aligned for them (acc always is: it is a device allocation).
// The last n % 4 elements (or all of them when vec = 0) take the scalar path.
// Grid-stride loops: any grid size is correct; the launcher sizes it from the
// multiprocessor count.
#include "common.cuh"

// One Kahan step (backend/cpu/accumulate.rs kahan_add).
GACC_INLINE void gacc_kahan_add(float& acc, float& comp, float v) {
    const float y = v - comp;
    const float t = acc + y;
    comp = (t - acc) - y;
    acc = t;
}

// Books the micro-batch on the device (thread 0 only) and says whether it was
// dropped (drop mode, seq != 0: flagged by gacc_check_finite).
GACC_INLINE bool gacc_book(gacc_state* state, unsigned seq, double weight) {
    const bool bad = seq != 0u && state->bad_seq == seq;
    if (gacc_thread_index() == 0) {
        if (bad) {
            state->window_dropped = state->window_dropped + 1u;
        } else {
            state->window_total = state->window_total + weight;
        }
    }
    return bad;
}

template <typename Load>
GACC_INLINE void gacc_accumulate_body(float* __restrict__ acc, float* __restrict__ comp, gacc_u64 n, float mul,
                                      int vec, Load load, const void* grad, gacc_state* state, unsigned seq,
                                      double weight) {
    if (gacc_book(state, seq, weight)) {
        return;
    }
    const gacc_u64 tid = gacc_thread_index();
    const gacc_u64 stride = gacc_thread_count();
    gacc_u64 scalar_start = 0;
    if (vec) {
        const gacc_u64 n4 = n / 4;
        float4* acc4 = reinterpret_cast<float4*>(acc);
        float4* comp4 = reinterpret_cast<float4*>(comp);
        for (gacc_u64 i = tid; i < n4; i += stride) {
            float g[4];
            load.vec4(grad, i, g);
            float4 a = acc4[i];
            if (comp) {
                float4 c = comp4[i];
                gacc_kahan_add(a.x, c.x, mul * g[0]);
                gacc_kahan_add(a.y, c.y, mul * g[1]);
                gacc_kahan_add(a.z, c.z, mul * g[2]);
                gacc_kahan_add(a.w, c.w, mul * g[3]);
                comp4[i] = c;
            } else {
                a.x = a.x + mul * g[0];
                a.y = a.y + mul * g[1];
                a.z = a.z + mul * g[2];
                a.w = a.w + mul * g[3];
            }
            acc4[i] = a;
        }
        scalar_start = n4 * 4;
    }
    for (gacc_u64 i = scalar_start + tid; i < n; i += stride) {
        if (comp) {
            float a = acc[i], c = comp[i];
            gacc_kahan_add(a, c, mul * load.one(grad, i));
            acc[i] = a;
            comp[i] = c;
        } else {
            acc[i] = acc[i] + mul * load.one(grad, i);
        }
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
gacc_accumulate_f32(float* __restrict__ acc, float* __restrict__ comp, const float* __restrict__ grad, gacc_u64 n,
                    float mul, int vec, gacc_state* state, unsigned seq, double weight) {
    gacc_accumulate_body(acc, comp, n, mul, vec, gacc_load_f32(), grad, state, seq, weight);
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_accumulate_f16(float* __restrict__ acc, float* __restrict__ comp, const unsigned short* __restrict__ grad,
                    gacc_u64 n, float mul, int vec, gacc_state* state, unsigned seq, double weight) {
    gacc_accumulate_body(acc, comp, n, mul, vec, gacc_load_f16(), grad, state, seq, weight);
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_accumulate_bf16(float* __restrict__ acc, float* __restrict__ comp, const unsigned short* __restrict__ grad,
                     gacc_u64 n, float mul, int vec, gacc_state* state, unsigned seq, double weight) {
    gacc_accumulate_body(acc, comp, n, mul, vec, gacc_load_bf16(), grad, state, seq, weight);
}

// Drop mode's check pass: stores `seq` into state->bad_seq when any element of the
// gradient is inf or NaN (all-ones exponent, tested on the bits). Every thread that
// finds one stores the same value, with atomicExch (concurrent plain stores would be
// a data race under the CUDA memory model, even of one value); no reduction. The flag
// is compared with `seq` (the micro-batch's number in its window) and reset when the
// window ends. Traffic: the gradient read once.
extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_check_finite(const void* __restrict__ grad, int dtype, gacc_u64 n, gacc_state* state, unsigned seq) {
    const gacc_u64 tid = gacc_thread_index();
    const gacc_u64 stride = gacc_thread_count();
    bool bad = false;
    if (dtype == 0) {
        const unsigned* g = static_cast<const unsigned*>(grad);
        for (gacc_u64 i = tid; i < n; i += stride) bad |= (g[i] & 0x7F800000u) == 0x7F800000u;
    } else {
        const unsigned short* g = static_cast<const unsigned short*>(grad);
        const unsigned short mask = dtype == 1 ? (unsigned short)0x7C00u : (unsigned short)0x7F80u;
        for (gacc_u64 i = tid; i < n; i += stride) bad |= (g[i] & mask) == mask;
    }
    if (bad) {
        atomicExch(&state->bad_seq, seq);
    }
}

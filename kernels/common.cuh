// common.cuh: what every gacc kernel shares.
//
// - The device state struct (one per engine, in device memory): loss scale, growth
//   tracker, applied-step count, the last step's norm/coef/skip decision and the
//   per-step optimizer scalars. The host reads it back only when asked (gacc_step with
//   an info pointer, gacc_loss_scale), so a step needs no device-to-host transfer.
// - fp16/bf16 <-> fp32 conversions (round to nearest even) and the 1-D grid-stride
//   index helpers.
// - The norm's per-element term and block tree (shared by gacc_norm_partials and the
//   accumulate kernels that produce its partials, so both give the same bits) and
//   the last-block-done helper (the accumulation's booking and acc_stale flag).
// - The arithmetic of src/engine/math.rs, mirrored operation for operation. Kernels
//   are compiled with --fmad=false --prec-div=true --prec-sqrt=true --ftz=false, so
//   each +, *, /, sqrt below rounds exactly once, as on the CPU.
//
// Compiled three ways: by NVRTC (__CUDACC_RTC__), by nvcc (__CUDACC__), or for the
// host by g++ through kernels/shim/cuda_shim.h (one OS thread per CUDA thread).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define GACC_INLINE __device__ __forceinline__
#else
#include "shim/cuda_shim.h"
#define GACC_INLINE inline
#endif

typedef unsigned long long gacc_u64;

// Threads per block of every element-wise kernel (the launchers use the same value).
#define GACC_BLOCK 256

// Working-copy dtypes (same numbers as GACC_DTYPE_*).
#define GACC_WORKING_NONE 0
#define GACC_WORKING_F16 1
#define GACC_WORKING_BF16 2

// The device state. Field order and sizes are mirrored by DeviceState in
// src/backend/cuda/state.rs (a test checks the size); 8-byte fields first.
struct gacc_state {
    gacc_u64 step;            // applied updates so far
    double sumsq;             // last step: sum of squares of g, in f64
    double window_total;      // the open window's total weight, summed on the device by the
                              // accumulate kernels (drop mode: dropped micro-batches left out)
    double last_total;        // the last closed window's total (for the step info)
    float loss_scale;         // S for the next window (read by callers' loss kernels)
    unsigned growth_tracker;  // clean steps in a row since the last growth/backoff
    unsigned applied;         // last step: 1 applied, 0 skipped
    float grad_norm;          // last step: ||g||_2 (non-finite when skipped)
    float clip_coef;          // last step: clip coefficient (1: not clipped)
    float factor;             // last step: 1 / (total * S), rounded once to f32
    // Per-step optimizer scalars, written by gacc_finalize for gacc_update_*.
    float decay_mult;         // AdamW: 1 - lr*wd
    float one_minus_beta1;    // AdamW
    float beta2;              // AdamW
    float one_minus_beta2;    // AdamW
    float neg_step_size;      // AdamW: -lr / (1 - beta1^t)
    float bc2_sqrt;           // AdamW: sqrt(1 - beta2^t)
    float eps;                // AdamW
    float neg_lr;             // SGD
    float weight_decay;       // SGD
    float momentum;           // SGD
    unsigned nesterov;        // SGD
    unsigned first;           // SGD: 1 on the first applied update
    unsigned hysteresis_left; // overflows still tolerated before the scale backs off
    unsigned window_dropped;  // drop mode: micro-batches of the open window left out
    unsigned last_dropped;    // drop mode: the same, for the last closed window
    unsigned bad_seq;         // drop mode: number (1, 2, ... within the window) of the last
                              // micro-batch found non-finite (gacc_check_finite's flag word);
                              // 0 at the start of every window (gacc_finalize, gacc_zero)
    float lr;                 // learning rate of the next step (gacc_store_lr, on the stream)
    unsigned acc_stale;       // nonzero: acc is logically zero whatever it holds (set by
                              // gacc_finalize and gacc_zero in lazy mode; the next full-buffer
                              // accumulation writes instead of adding and clears it)
    unsigned eager_zero;      // nonzero: steps write acc = 0 as before issue 14 (compensated
                              // accumulation, or once the host took gacc_accumulator_ptr)
    unsigned blocks_done;     // last-block-done counter of the kernels that book or clear
                              // acc_stale (0 between launches)
};

// --- conversions -----------------------------------------------------------------

GACC_INLINE float gacc_f16_to_f32(unsigned short bits) { return __half2float(__ushort_as_half(bits)); }
GACC_INLINE float gacc_bf16_to_f32(unsigned short bits) { return __bfloat162float(__ushort_as_bfloat16(bits)); }
GACC_INLINE unsigned short gacc_f32_to_f16(float x) { return __half_as_ushort(__float2half_rn(x)); }
GACC_INLINE unsigned short gacc_f32_to_bf16(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

// --- math.rs, mirrored ----------------------------------------------------------

// math::unscale_factor: (float)(1.0 / (total * (double)S)).
GACC_INLINE float gacc_unscale_factor(double total_weight, float scale) {
    return (float)(1.0 / (total_weight * (double)scale));
}

// math::lerp (torch.lerp's CPU formula).
GACC_INLINE float gacc_lerp(float start, float end, float weight) {
    return fabsf(weight) < 0.5f ? start + weight * (end - start) : end - (end - start) * (1.0f - weight);
}

// --- stochastic rounding (math.rs: mix64, sr_key, sr_bits, f32_to_*_sr) ------------

// splitmix64's output function.
GACC_INLINE gacc_u64 gacc_mix64(gacc_u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
#define GACC_SR_GOLDEN 0x9E3779B97F4A7C15ull
// Key of one rewrite of the working copy: seed and applied-step count.
GACC_INLINE gacc_u64 gacc_sr_key(gacc_u64 seed, gacc_u64 step) { return gacc_mix64(seed ^ gacc_mix64(step + GACC_SR_GOLDEN)); }
// 64 random bits for element `index`.
GACC_INLINE gacc_u64 gacc_sr_bits(gacc_u64 key, gacc_u64 index) {
    return gacc_mix64(key + (index + 1ull) * GACC_SR_GOLDEN);
}
// bf16: add 16 random low bits to the magnitude's pattern, cut them; inf/NaN: RNE.
GACC_INLINE unsigned short gacc_f32_to_bf16_sr(float x, gacc_u64 r) {
    if (!isfinite(x)) return gacc_f32_to_bf16(x);
    return (unsigned short)((__float_as_uint(x) + (unsigned)(r & 0xFFFFull)) >> 16);
}
// f16: normal range: 13 random low bits added to |x|'s pattern, cut, then (exact or
// inf) RNE; subnormal range: floor(|x| 2^24) + (24 random bits < frac * 2^24).
GACC_INLINE unsigned short gacc_f32_to_f16_sr(float x, gacc_u64 r) {
    if (!isfinite(x)) return gacc_f32_to_f16(x);
    const unsigned short sign = (unsigned short)((__float_as_uint(x) >> 16) & 0x8000u);
    const float a = fabsf(x);
    unsigned short mag;
    if (a >= 6.103515625e-5f) {
        const unsigned t = (__float_as_uint(a) + (unsigned)(r & 0x1FFFull)) & ~0x1FFFu;
        mag = gacc_f32_to_f16(__uint_as_float(t));
    } else {
        const float s = a * 16777216.0f;
        const float fl = floorf(s);
        const unsigned frac = (unsigned)((s - fl) * 16777216.0f);
        mag = (unsigned short)((unsigned)fl + (((unsigned)(r & 0xFFFFFFull)) < frac ? 1u : 0u));
    }
    return (unsigned short)(sign | mag);
}
// The working copy element `index` of value p: RNE, or stochastic under `key`.
GACC_INLINE unsigned short gacc_to_working_sr(float p, int working, unsigned sr, gacc_u64 key, gacc_u64 index) {
    if (sr) {
        const gacc_u64 r = gacc_sr_bits(key, index);
        return working == GACC_WORKING_F16 ? gacc_f32_to_f16_sr(p, r) : gacc_f32_to_bf16_sr(p, r);
    }
    return working == GACC_WORKING_F16 ? gacc_f32_to_f16(p) : gacc_f32_to_bf16(p);
}

// --- indexing ------------------------------------------------------------------

GACC_INLINE gacc_u64 gacc_thread_index() {
    return (gacc_u64)blockIdx.x * (gacc_u64)blockDim.x + (gacc_u64)threadIdx.x;
}
GACC_INLINE gacc_u64 gacc_thread_count() { return (gacc_u64)gridDim.x * (gacc_u64)blockDim.x; }

// --- reductions and grid-wide completion -----------------------------------------

// The block's sum of its GACC_BLOCK per-thread values, by a fixed shared-memory tree
// (the same order on every run and grid). Every thread of the block must call it;
// the result is valid in thread 0. `shared` holds GACC_BLOCK doubles.
GACC_INLINE double gacc_block_sum(double sum, double* shared) {
    shared[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned width = GACC_BLOCK / 2; width > 0; width /= 2) {
        if (threadIdx.x < width) {
            shared[threadIdx.x] = shared[threadIdx.x] + shared[threadIdx.x + width];
        }
        __syncthreads();
    }
    return shared[0];
}

// One norm-pass term: (double)(a * factor) squared, added to sum (norm.cu's formula,
// shared with the accumulate kernels that produce the partials themselves).
GACC_INLINE double gacc_add_square(double sum, float a, float factor) {
    const double g = (double)(a * factor);
    return sum + g * g;
}

// The last-block-done pattern: every thread of every block calls this once, after
// its last read of what the caller will then change (acc_stale, bad_seq,
// window_total). It returns true in thread 0 of exactly one block, the last to get
// there, once every other block has passed the call (its reads are done): that
// thread may then write those fields. Thread 0 of each block publishes its block's
// writes (__threadfence) and takes a ticket from `counter`; the last resets it to 0
// for the next launch.
GACC_INLINE bool gacc_block_is_last(unsigned* counter) {
    __syncthreads();
    if (threadIdx.x != 0) {
        return false;
    }
    __threadfence();
    const unsigned ticket = atomicAdd(counter, 1u);
    if (ticket != gridDim.x - 1u) {
        return false;
    }
    atomicExch(counter, 0u);
    return true;
}

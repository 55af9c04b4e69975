// common.cuh: what every gacc kernel shares.
//
// - The device state struct (one per engine, in device memory): loss scale, growth
//   tracker, applied-step count, the last step's norm/coef/skip decision and the
//   per-step optimizer scalars. The host reads it back only when asked (gacc_step with
//   an info pointer, gacc_loss_scale), so a step needs no device-to-host transfer.
// - fp16/bf16 <-> fp32 conversions (round to nearest even) and the 1-D grid-stride
//   index helpers.
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

// --- indexing ------------------------------------------------------------------

GACC_INLINE gacc_u64 gacc_thread_index() {
    return (gacc_u64)blockIdx.x * (gacc_u64)blockDim.x + (gacc_u64)threadIdx.x;
}
GACC_INLINE gacc_u64 gacc_thread_count() { return (gacc_u64)gridDim.x * (gacc_u64)blockDim.x; }

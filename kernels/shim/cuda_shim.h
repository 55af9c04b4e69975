// cuda_shim.h: just enough of CUDA to run gacc's kernels on the host (layer 2 of
// the verification in docs/cuda.md). Included by kernels/common.cuh when neither
// nvcc nor NVRTC compiles the file.
//
// Model: a launch runs its blocks one after another; a block runs as blockDim.x OS
// threads (one per CUDA thread). threadIdx/blockIdx/blockDim/gridDim are
// thread-locals, __syncthreads() is a std::barrier shared by the block's threads,
// and __shared__ variables are function statics (one block at a time, and one
// launch at a time under a process-wide lock, so a static is exactly one block's
// shared memory). fp16/bf16 are bit containers with round-to-nearest-even
// conversions. gacc's kernels use no warp shuffles; their atomics (atomicExch,
// atomicAdd) are std::atomic_ref operations, so that concurrent threads are as
// well-defined here as on a GPU and ThreadSanitizer (make tsan-shim) can check the
// shim's threads for races. What this does not model: the CUDA memory model beyond
// that, warp scheduling, performance.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>

struct dim3 {
    unsigned x, y, z;
};

namespace gacc_shim {
extern thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
extern thread_local std::barrier<>* block_barrier;
}  // namespace gacc_shim

#define threadIdx (gacc_shim::thread_idx)
#define blockIdx (gacc_shim::block_idx)
#define blockDim (gacc_shim::block_dim)
#define gridDim (gacc_shim::grid_dim)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static

inline void __syncthreads() { gacc_shim::block_barrier->arrive_and_wait(); }

// CUDA's atomicExch on a 32-bit word: returns the old value.
#ifndef GACC_SHIM_PLAIN_ATOMICS
inline unsigned atomicExch(unsigned* address, unsigned value) {
    return std::atomic_ref<unsigned>(*address).exchange(value);
}
#else
// Only for make tsan-shim's self-test: plain loads and stores, the race the kernels
// had before they used atomicExch; ThreadSanitizer must report it.
inline unsigned atomicExch(unsigned* address, unsigned value) {
    const unsigned old = *address;
    *address = value;
    return old;
}
#endif

// CUDA's atomicAdd on a 32-bit word (the last-block-done counter): returns the old
// value, a sequentially consistent read-modify-write. __threadfence orders a block's
// writes before its ticket on a GPU; here blocks run one after another (each joined
// before the next starts) and the ticket itself is seq_cst, so it has nothing left to
// do (a real fence would also be refused by -fsanitize=thread).
inline unsigned atomicAdd(unsigned* address, unsigned value) {
    return std::atomic_ref<unsigned>(*address).fetch_add(value);
}
inline void __threadfence() {}

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

using std::isfinite;
using std::pow;
using std::sqrt;
inline float sqrtf(float x) { return std::sqrt(x); }
inline float fabsf(float x) { return std::fabs(x); }
inline float floorf(float x) { return std::floor(x); }
inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// --- fp16 / bf16 as bit containers ----------------------------------------------
struct __half {
    unsigned short bits;
};
struct __nv_bfloat16 {
    unsigned short bits;
};

inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return __nv_bfloat16{b}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

// GCC's _Float16 conversions are IEEE round-to-nearest-even (subnormals, overflow to
// inf included). NaN becomes the canonical 0x7FFF, as __float2half_rn does.
inline float __half2float(__half h) {
    _Float16 f;
    std::memcpy(&f, &h.bits, 2);
    return (float)f;
}
inline __half __float2half_rn(float x) {
    if (std::isnan(x)) return __half{0x7FFF};
    _Float16 f = (_Float16)x;
    __half h;
    std::memcpy(&h.bits, &f, 2);
    return h;
}
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    if (std::isnan(x)) return __nv_bfloat16{0x7FFF};
    uint32_t u;
    std::memcpy(&u, &x, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return __nv_bfloat16{(unsigned short)(u >> 16)};
}

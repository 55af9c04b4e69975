// norm.cu: per-block partial sums of squares of the unscaled gradient.
//
// Math: g[i] = acc[i] * factor with factor = (float)(1.0 / (total * (double)S))
// (S read from the device state, so no host round trip); each thread adds
// (double)g * (double)g in f64 over a grid-stride range, the block then reduces its
// GACC_BLOCK values with a fixed shared-memory tree and writes one double to
// partials[blockIdx.x]. gacc_finalize (scaler.cu) adds the partials in index order.
// No float atomics: for a given grid size the result is bit-identical run to run.
// A non-finite g makes the sum non-finite: that is the found_inf test, no extra pass.
// Compensated accumulation (comp != NULL): g[i] = (acc[i] - comp[i]) * factor (+4 B).
// total is state->window_total, summed on the device by the accumulate kernels (or
// the global one a device collective left there), never a kernel argument: a
// replayed CUDA graph reads the replay's own total. Drop mode: when every
// micro-batch was dropped it is 0, factor is inf and g = 0 * inf is NaN: the step is
// skipped, as on the CPU.
//
// Memory traffic per parameter: read acc (4 B). Plus 8 B per block.
// acc is a device allocation, so the float4 path is always aligned; the scalar tail
// takes the last n % 4 elements.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_norm_partials(const float* __restrict__ acc, const float* __restrict__ comp, gacc_u64 n, const gacc_state* state,
                   double* __restrict__ partials) {
    __shared__ double shared_sum[GACC_BLOCK];
    const double total = state->window_total;
    const float factor = gacc_unscale_factor(total, state->loss_scale);
    const float4* comp4 = reinterpret_cast<const float4*>(comp);
    const gacc_u64 tid = gacc_thread_index();
    const gacc_u64 stride = gacc_thread_count();
    const gacc_u64 n4 = n / 4;
    const float4* acc4 = reinterpret_cast<const float4*>(acc);
    double sum = 0.0;
    for (gacc_u64 i = tid; i < n4; i += stride) {
        float4 a = acc4[i];
        if (comp) {
            const float4 c = comp4[i];
            a.x = a.x - c.x;
            a.y = a.y - c.y;
            a.z = a.z - c.z;
            a.w = a.w - c.w;
        }
        const double g0 = (double)(a.x * factor), g1 = (double)(a.y * factor);
        const double g2 = (double)(a.z * factor), g3 = (double)(a.w * factor);
        sum = sum + g0 * g0;
        sum = sum + g1 * g1;
        sum = sum + g2 * g2;
        sum = sum + g3 * g3;
    }
    for (gacc_u64 i = n4 * 4 + tid; i < n; i += stride) {
        const float a = comp ? acc[i] - comp[i] : acc[i];
        const double g = (double)(a * factor);
        sum = sum + g * g;
    }
    shared_sum[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned width = GACC_BLOCK / 2; width > 0; width /= 2) {
        if (threadIdx.x < width) {
            shared_sum[threadIdx.x] = shared_sum[threadIdx.x] + shared_sum[threadIdx.x + width];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = shared_sum[0];
    }
}

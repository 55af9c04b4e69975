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
// The per-element term (gacc_add_square) and the block tree (gacc_block_sum) live in
// common.cuh: the accumulate kernels produce the very same partials when they can
// (accumulate.cu), and a step after them skips this pass.
//
// A stale accumulator (state->acc_stale: logically zero since the last step or
// gacc_zero, e.g. every micro-batch of the window dropped) is read as zeros.
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
    // A stale accumulator is logically zero (never with comp: compensated engines zero eagerly).
    const bool stale = state->acc_stale != 0u;
    const float4* comp4 = reinterpret_cast<const float4*>(comp);
    const gacc_u64 tid = gacc_thread_index();
    const gacc_u64 stride = gacc_thread_count();
    const gacc_u64 n4 = n / 4;
    const float4* acc4 = reinterpret_cast<const float4*>(acc);
    double sum = 0.0;
    for (gacc_u64 i = tid; i < n4; i += stride) {
        float4 a = stale ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : acc4[i];
        if (comp) {
            const float4 c = comp4[i];
            a.x = a.x - c.x;
            a.y = a.y - c.y;
            a.z = a.z - c.z;
            a.w = a.w - c.w;
        }
        sum = gacc_add_square(sum, a.x, factor);
        sum = gacc_add_square(sum, a.y, factor);
        sum = gacc_add_square(sum, a.z, factor);
        sum = gacc_add_square(sum, a.w, factor);
    }
    for (gacc_u64 i = n4 * 4 + tid; i < n; i += stride) {
        const float a = stale ? 0.0f : acc[i];
        sum = gacc_add_square(sum, comp ? a - comp[i] : a, factor);
    }
    const double block_sum = gacc_block_sum(sum, shared_sum);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = block_sum;
    }
}

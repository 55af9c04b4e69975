// dp.cu: the device side of a data-parallel step over a device collective (NCCL).
//
// The host never reads the window totals: gacc_dp_pack_totals writes this rank's
// totals into a small device buffer (the total weight from the device state; the
// micro-batch count K arrives as a kernel argument, which the launch copies: no
// host-to-device copy and no sync; a captured window has a fixed K), the collective
// sums the buffer across ranks on the stream, and
// gacc_dp_unpack_totals moves the global total into state->window_total, where
// gacc_norm_partials and gacc_finalize read it (the window total is always the device's).
// totals = { total weight, micro-batches, drop-mode device total, drop-mode dropped }
// (drop mode: both totals are the kept micro-batches' total).
// gacc_dp_fold writes acc - comp (compensated accumulation) into the scratch
// buffer that is reduced, so the rank's own accumulator stays intact until the
// collective was accepted. Memory traffic of the fold: read 8 B, write 4 B.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(32)
gacc_dp_pack_totals(double* totals, const gacc_state* state, double microbatches) {
    if (threadIdx.x != 0 || blockIdx.x != 0) {
        return;
    }
    totals[0] = state->window_total;
    totals[1] = microbatches;
    totals[2] = state->window_total;
    totals[3] = (double)state->window_dropped;
}

extern "C" __global__ void __launch_bounds__(32)
gacc_dp_unpack_totals(const double* totals, gacc_state* state, unsigned drop_mode) {
    if (threadIdx.x != 0 || blockIdx.x != 0) {
        return;
    }
    if (drop_mode) {
        const double dropped = totals[3];
        state->window_total = totals[2];
        state->window_dropped = dropped > 4294967295.0 ? 4294967295u : (unsigned)dropped;
    } else {
        state->window_total = totals[0];
        state->window_dropped = 0u;
    }
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_dp_fold(float* __restrict__ dst, const float* __restrict__ acc, const float* __restrict__ comp, gacc_u64 n) {
    const gacc_u64 stride = gacc_thread_count();
    for (gacc_u64 i = gacc_thread_index(); i < n; i += stride) {
        dst[i] = acc[i] - comp[i];
    }
}

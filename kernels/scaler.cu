// scaler.cu: the one-thread decision kernel of a step (gacc_finalize).
//
// Runs between the norm pass and the update pass, entirely on the device:
// 1. sumsq = partials[0] + partials[1] + ... in index order (fixed order: the
//    reduction is deterministic); found_inf = !isfinite(sumsq);
//    norm = (float)sqrt(sumsq).
// 2. factor = (float)(1.0 / (total * (double)S)) with the S this window was scaled by
//    (the same value the norm pass used).
// 3. Skipped step (found_inf): applied = 0, clip_coef = 1, the step count stays, and
//    with FP16 loss scaling S *= backoff, tracker = 0 (torch's _amp_update_scale_).
// 4. Applied step: clip_coef = min(1, max_norm / (norm + 1e-6)) when clipping, else 1;
//    t = step + 1; the optimizer's scalars for update t (AdamW bias corrections in
//    f64 from t, exactly as math::AdamScalars::new; SGD first = (t == 1)); then the
//    scale grows after growth_interval clean steps (when the grown value is finite).
// 5. The window's total is the device's (state->window_total, summed by the
//    accumulate kernels) and the learning rate is state->lr (gacc_store_lr): neither
//    is a kernel argument, so a replayed CUDA graph uses the replay's values. The
//    window's total and dropped count move to last_total/last_dropped (the step
//    info), the open-window ones and drop mode's flag word (bad_seq) are reset, and
//    the accumulator is marked stale (acc_stale = 1) unless state->eager_zero.
//    Drop mode: a window with every micro-batch dropped (total 0) is skipped; a
//    dropped micro-batch counts as an overflow for the loss scale even when the step
//    is applied.
// 6. Device collective (NCCL): the total is the global one that
//    gacc_dp_unpack_totals (dp.cu) left in state->window_total. A global total of 0
//    with nothing dropped skips the step and leaves the loss scale.
// The scaler rule (math::ScalerState::update), two policies: overflow: if
// hysteresis_left <= 1 { S = max(S * backoff (GRADSCALER) or S / growth (DEEPSPEED),
// min_scale) } else { hysteresis_left -= 1 }; tracker = 0. Clean: if consecutive
// { hysteresis_left = hysteresis }; GRADSCALER: tracker += 1, grow at growth_interval
// and tracker = 0; DEEPSPEED: grow when tracker == growth_interval and tracker = 1,
// else tracker += 1 (tracker = DeepSpeed's stable_interval, reduced). On growth:
// grown = S * growth, taken if finite (capped at max_scale when max_scale > 0); if
// !consecutive { hysteresis_left = hysteresis }.
// Everything lands in the gacc_state struct that gacc_update_* reads, and that the
// host reads back only when asked. Memory traffic: 8 B per norm block + the state.
#include "common.cuh"

// Hyper-parameters that do not change during training (lr lives in the state).
struct gacc_hyper {
    float max_norm;        // <= 0: no clipping
    float beta1, beta2, eps, weight_decay, momentum;
    unsigned optimizer;    // 0 SGD, 1 AdamW
    unsigned nesterov;
    unsigned scales_loss;  // 1: FP16 dynamic loss scaling
    float growth_factor, backoff_factor;
    unsigned growth_interval;
    unsigned hysteresis;              // >= 1
    unsigned consecutive_hysteresis;  // 0 or 1
    float min_scale;                  // 0: no floor
    float max_scale;                  // 0: no cap
    unsigned loss_scale_policy;       // 0 GRADSCALER, 1 DEEPSPEED
};

GACC_INLINE void gacc_scaler_update(gacc_state* st, const gacc_hyper& h, bool found_inf) {
    const bool deepspeed = h.loss_scale_policy == 1u;
    if (found_inf) {
        if (st->hysteresis_left <= 1u) {
            // DeepSpeed divides by its one scale_factor (growth_factor = 1 / backoff).
            const float backed_off = deepspeed ? st->loss_scale / h.growth_factor : st->loss_scale * h.backoff_factor;
            st->loss_scale = backed_off < h.min_scale ? h.min_scale : backed_off;
        } else {
            st->hysteresis_left = st->hysteresis_left - 1u;
        }
        st->growth_tracker = 0;
        return;
    }
    if (h.consecutive_hysteresis) {
        st->hysteresis_left = h.hysteresis;
    }
    bool grows;
    if (deepspeed) {
        // tracker = DeepSpeed's stable_interval, reduced to 0 or 1..growth_interval.
        grows = st->growth_tracker == h.growth_interval;
        st->growth_tracker = grows ? 1u : st->growth_tracker + 1u;
    } else {
        const unsigned successful = st->growth_tracker + 1u;
        grows = successful == h.growth_interval;
        st->growth_tracker = grows ? 0u : successful;
    }
    if (grows) {
        const float grown = st->loss_scale * h.growth_factor;
        if (isfinite(grown)) {
            st->loss_scale = (h.max_scale > 0.0f && grown > h.max_scale) ? h.max_scale : grown;
        }
        if (!h.consecutive_hysteresis) {
            st->hysteresis_left = h.hysteresis;
        }
    }
}

extern "C" __global__ void __launch_bounds__(32)
gacc_finalize(gacc_state* state, const double* __restrict__ partials, unsigned n_partials, gacc_hyper h) {
    if (threadIdx.x != 0 || blockIdx.x != 0) {
        return;
    }
    gacc_state st = *state;
    double sumsq = 0.0;
    for (unsigned i = 0; i < n_partials; ++i) {
        sumsq = sumsq + partials[i];
    }
    const float lr = st.lr;
    const double total = st.window_total;
    const unsigned dropped = st.window_dropped;
    st.window_total = 0.0;
    st.window_dropped = 0;
    st.bad_seq = 0;
    st.last_total = total;
    st.last_dropped = dropped;
    // Applied or skipped, the window is closed: acc becomes logically zero (lazy
    // zeroing; gacc_update_* reads it after this and does not write it). Eager mode
    // (compensated, or after gacc_accumulator_ptr): the update pass zeroes it.
    if (st.eager_zero == 0u) {
        st.acc_stale = 1u;
    }
    // An empty window (device total 0 with nothing dropped: every rank's weights
    // were 0) is skipped without touching the loss scale.
    const bool empty = !(total > 0.0);
    const bool found_inf = !isfinite(sumsq) || empty;
    const float norm = (float)sqrt(sumsq);
    st.sumsq = sumsq;
    st.factor = gacc_unscale_factor(total, st.loss_scale);
    st.grad_norm = norm;
    if (found_inf) {
        st.applied = 0;
        st.clip_coef = 1.0f;
    } else {
        float coef = 1.0f;
        if (h.max_norm > 0.0f) {
            const float c = h.max_norm / (norm + 1e-6f);
            coef = c < 1.0f ? c : 1.0f;
        }
        st.clip_coef = coef;
        st.applied = 1;
        const gacc_u64 t = st.step + 1;
        if (h.optimizer == 1) {
            const double dlr = (double)lr, b1 = (double)h.beta1, b2 = (double)h.beta2;
            const double tt = (double)t;
            const double bias_correction1 = 1.0 - pow(b1, tt);
            const double bias_correction2 = 1.0 - pow(b2, tt);
            st.decay_mult = (float)(1.0 - dlr * (double)h.weight_decay);
            st.one_minus_beta1 = (float)(1.0 - b1);
            st.beta2 = h.beta2;
            st.one_minus_beta2 = (float)(1.0 - b2);
            st.neg_step_size = (float)(-(dlr / bias_correction1));
            st.bc2_sqrt = (float)sqrt(bias_correction2);
            st.eps = h.eps;
        } else {
            st.neg_lr = -lr;
            st.weight_decay = h.weight_decay;
            st.momentum = h.momentum;
            st.nesterov = h.nesterov;
            st.first = t == 1 ? 1u : 0u;
        }
        st.step = t;
    }
    if (h.scales_loss && !(empty && dropped == 0u)) {
        gacc_scaler_update(&st, h, found_inf || dropped > 0u);
    }
    *state = st;
}

// gacc_set_lr on a CUDA engine: state->lr = lr, queued on the engine's stream, so it
// is ordered with the steps around it (no host sync, no host memory to keep alive).
// Captured in a graph, it sets this value at every replay.
extern "C" __global__ void __launch_bounds__(32) gacc_store_lr(gacc_state* state, float lr) {
    if (threadIdx.x != 0 || blockIdx.x != 0) {
        return;
    }
    state->lr = lr;
}

// update.cu: the fused update pass of a step (one launch for all tensors).
//
// Per element, with the scalars gacc_finalize left in the device state:
//   g = (acc * factor) * coef                       unscale, then clip
//   AdamW: p *= 1 - lr*wd (decaying tensors); m = lerp(m, g, 1 - b1);
//          v = v*b2 + (1 - b2)*g*g; p += (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
//   SGD:   d = g + wd*p (decaying tensors); buf = first ? d : buf*momentum + d;
//          d = nesterov ? d + momentum*buf : buf; p += -lr * d
//   working copy = RNE(p) (f16 or bf16), or stochastic rounding (sr = 1) keyed by
//   gacc_sr_key(seed, step) and the element index; acc = 0 only with
//   state->eager_zero (compensated accumulation, or after gacc_accumulator_ptr):
//   otherwise gacc_finalize has marked acc stale (logically zero, issue 14) and the
//   next window's first micro-batch writes it, so this pass does not.
// Compensated accumulation (comp != NULL, always eager): the gradient is the
// compensated sum, a = acc - comp (rounded once to f32), and comp = 0 with acc (+4 B
// read, +4 B written per parameter).
// Exactly src/engine/math.rs, operation for operation (no FMA contraction).
// Skipped step (state->applied == 0): only acc = 0 is written (eager mode; nothing
// at all in lazy mode); p, m, v, the working copy and the step count are untouched.
//
// Weight decay is per tensor; the layout's decay runs (maximal ranges sharing the
// flag, alternating) arrive as an array of run ends plus the first run's flag, and
// each thread binary-searches only when its index leaves the run it was in: the
// launch count does not grow with the number of tensors.
//
// Memory traffic per parameter (applied step): read acc, p (+ m, v) and write p
// (+ m, v), working copy (+ acc in eager mode):
//   AdamW:        16 B read + 12 B written (+2 B working copy) = 28-30 B (eager: 32-34 B)
//   SGD momentum: 12 B read +  8 B written (+2 B)              = 20-22 B (eager: 24-26 B)
//   SGD:           8 B read +  4 B written (+2 B)              = 12-14 B (eager: 16-18 B)
// Skipped step: nothing (eager: 4 B written). All buffers are device allocations: the float4 path
// (and 8-byte stores of four f16/bf16) is always aligned; the scalar tail takes the
// last n % 4 elements.
#include "common.cuh"

// Where the decay flag changes.
struct gacc_runs {
    const gacc_u64* ends;  // ends[r] = one past the last element of run r (ascending)
    unsigned n;            // number of runs (>= 1)
    unsigned first_decay;  // decay flag of run 0; runs alternate
    unsigned r;
    gacc_u64 start, end;

    GACC_INLINE void seek(gacc_u64 i) {
        unsigned lo = 0, hi = n - 1;
        while (lo < hi) {
            const unsigned mid = (lo + hi) / 2;
            if (ends[mid] > i) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        r = lo;
        start = lo == 0 ? 0 : ends[lo - 1];
        end = ends[lo];
    }
    GACC_INLINE bool decay(gacc_u64 i) {
        if (i < start || i >= end) {
            seek(i);
        }
        return ((first_decay ^ (r & 1u)) & 1u) != 0;
    }
};

struct gacc_op_adamw {
    static const int states = 2;
    GACC_INLINE static void apply(float& p, float& m, float& v, float g, bool decay, const gacc_state& s) {
        float pp = decay ? p * s.decay_mult : p;
        const float mm = gacc_lerp(m, g, s.one_minus_beta1);
        float vv = v * s.beta2;
        vv = vv + s.one_minus_beta2 * g * g;
        const float denom = sqrtf(vv) / s.bc2_sqrt + s.eps;
        pp = pp + s.neg_step_size * mm / denom;
        p = pp;
        m = mm;
        v = vv;
    }
};

struct gacc_op_sgd_momentum {
    static const int states = 1;
    GACC_INLINE static void apply(float& p, float& buf, float&, float g, bool decay, const gacc_state& s) {
        const float d = decay ? g + s.weight_decay * p : g;
        const float b = s.first ? d : buf * s.momentum + d;
        const float step = s.nesterov ? d + s.momentum * b : b;
        p = p + s.neg_lr * step;
        buf = b;
    }
};

struct gacc_op_sgd {
    static const int states = 0;
    GACC_INLINE static void apply(float& p, float&, float&, float g, bool decay, const gacc_state& s) {
        const float d = decay ? g + s.weight_decay * p : g;
        p = p + s.neg_lr * d;
    }
};

template <class Op>
GACC_INLINE void gacc_update_body(float* __restrict__ acc, float* __restrict__ comp, float* __restrict__ master,
                                  float* __restrict__ s1, float* __restrict__ s2, unsigned short* __restrict__ working,
                                  int working_dtype, gacc_u64 n, const gacc_state* state, const gacc_u64* run_ends,
                                  unsigned n_runs, unsigned first_decay, unsigned sr, gacc_u64 seed) {
    const gacc_u64 tid = gacc_thread_index();
    const gacc_u64 stride = gacc_thread_count();
    const gacc_u64 n4 = n / 4;
    float4* acc4 = reinterpret_cast<float4*>(acc);
    float4* comp4 = reinterpret_cast<float4*>(comp);
    const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // Lazy zeroing: gacc_finalize marked acc stale (logically zero), nothing to write.
    const bool zero_acc = state->eager_zero != 0u;
    if (state->applied == 0) {
        // Skipped step: the window is dropped, nothing else changes.
        if (!zero_acc) return;
        for (gacc_u64 i = tid; i < n4; i += stride) {
            acc4[i] = zero4;
            if (comp) comp4[i] = zero4;
        }
        for (gacc_u64 i = n4 * 4 + tid; i < n; i += stride) {
            acc[i] = 0.0f;
            if (comp) comp[i] = 0.0f;
        }
        return;
    }
    const gacc_state s = *state;
    const float factor = s.factor, coef = s.clip_coef;
    const gacc_u64 key = sr ? gacc_sr_key(seed, s.step) : 0ull;
    gacc_runs runs = {run_ends, n_runs, first_decay, 0u, 0ull, 0ull};
    runs.seek(0);
    float4* p4 = reinterpret_cast<float4*>(master);
    float4* m4 = reinterpret_cast<float4*>(s1);
    float4* v4 = reinterpret_cast<float4*>(s2);
    uint2* w4 = reinterpret_cast<uint2*>(working);
    for (gacc_u64 i = tid; i < n4; i += stride) {
        float4 a = acc4[i];
        if (comp) {
            const float4 c = comp4[i];
            a.x = a.x - c.x;
            a.y = a.y - c.y;
            a.z = a.z - c.z;
            a.w = a.w - c.w;
            comp4[i] = zero4;
        }
        float4 p = p4[i];
        float4 m = zero4, v = zero4;
        if (Op::states >= 1) m = m4[i];
        if (Op::states >= 2) v = v4[i];
        const gacc_u64 e = i * 4;
        Op::apply(p.x, m.x, v.x, (a.x * factor) * coef, runs.decay(e + 0), s);
        Op::apply(p.y, m.y, v.y, (a.y * factor) * coef, runs.decay(e + 1), s);
        Op::apply(p.z, m.z, v.z, (a.z * factor) * coef, runs.decay(e + 2), s);
        Op::apply(p.w, m.w, v.w, (a.w * factor) * coef, runs.decay(e + 3), s);
        p4[i] = p;
        if (Op::states >= 1) m4[i] = m;
        if (Op::states >= 2) v4[i] = v;
        if (working_dtype != GACC_WORKING_NONE) {
            uint2 w;
            w.x = (unsigned)gacc_to_working_sr(p.x, working_dtype, sr, key, e + 0) |
                  ((unsigned)gacc_to_working_sr(p.y, working_dtype, sr, key, e + 1) << 16);
            w.y = (unsigned)gacc_to_working_sr(p.z, working_dtype, sr, key, e + 2) |
                  ((unsigned)gacc_to_working_sr(p.w, working_dtype, sr, key, e + 3) << 16);
            w4[i] = w;
        }
        if (zero_acc) acc4[i] = zero4;
    }
    for (gacc_u64 i = n4 * 4 + tid; i < n; i += stride) {
        float p = master[i];
        float m = 0.0f, v = 0.0f;
        if (Op::states >= 1) m = s1[i];
        if (Op::states >= 2) v = s2[i];
        float a = acc[i];
        if (comp) {
            a = a - comp[i];
            comp[i] = 0.0f;
        }
        Op::apply(p, m, v, (a * factor) * coef, runs.decay(i), s);
        master[i] = p;
        if (Op::states >= 1) s1[i] = m;
        if (Op::states >= 2) s2[i] = v;
        if (working_dtype != GACC_WORKING_NONE) working[i] = gacc_to_working_sr(p, working_dtype, sr, key, i);
        if (zero_acc) acc[i] = 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_update_adamw(float* acc, float* comp, float* master, float* exp_avg, float* exp_avg_sq, unsigned short* working,
                  int working_dtype, gacc_u64 n, const gacc_state* state, const gacc_u64* run_ends, unsigned n_runs,
                  unsigned first_decay, unsigned sr, gacc_u64 seed) {
    gacc_update_body<gacc_op_adamw>(acc, comp, master, exp_avg, exp_avg_sq, working, working_dtype, n, state,
                                    run_ends, n_runs, first_decay, sr, seed);
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_update_sgd_momentum(float* acc, float* comp, float* master, float* momentum_buffer, unsigned short* working,
                         int working_dtype, gacc_u64 n, const gacc_state* state, const gacc_u64* run_ends,
                         unsigned n_runs, unsigned first_decay, unsigned sr, gacc_u64 seed) {
    gacc_update_body<gacc_op_sgd_momentum>(acc, comp, master, momentum_buffer, (float*)0, working, working_dtype, n,
                                           state, run_ends, n_runs, first_decay, sr, seed);
}

extern "C" __global__ void __launch_bounds__(GACC_BLOCK)
gacc_update_sgd(float* acc, float* comp, float* master, unsigned short* working, int working_dtype, gacc_u64 n,
                const gacc_state* state, const gacc_u64* run_ends, unsigned n_runs, unsigned first_decay, unsigned sr,
                gacc_u64 seed) {
    gacc_update_body<gacc_op_sgd>(acc, comp, master, (float*)0, (float*)0, working, working_dtype, n, state, run_ends,
                                  n_runs, first_decay, sr, seed);
}

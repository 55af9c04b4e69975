/*
 * Concept: an overflowed window under FP16 precision is skipped without a trace.
 *
 * Two AdamW engines with FP16 precision (dynamic loss scaling, init_scale 65536) train
 * the C MLP in lockstep: A and its twin B. A then meets three bad windows, each one of
 * the ways a real fp16 backward overflows:
 *   1. a NaN in one element of an f32 gradient (0 * inf in a backward);
 *   2. an fp16 gradient with an element that overflowed to +inf when it was rounded to
 *      fp16 (|g * S| > 65504);
 *   3. finite f32 gradients whose weighted sum overflows fp32 in the accumulator.
 * Each must: report applied = 0, a non-finite grad_norm, the same step count; leave the
 * fp32 master and the fp16 working copy bit-identical (memcmp); and halve the scale
 * exactly (65536 -> 32768 -> 16384 -> 8192, backoff_factor 0.5).
 * Then A and B take the same clean window, each with the gradient scaled by its own S
 * (powers of two: the scaled gradients differ by an exact power of two, and so do the
 * accumulators, and g = acc / (64 * S) is bit-identical): A's weights must equal B's bit
 * for bit. With AdamW this also proves the skipped windows did not touch the moments or
 * the bias-correction step count (t), and did not apply weight decay.
 */
#include "check.h"
#include "half.h"
#include "mlp.h"

#define BATCH 64

static mlp_sample data[20 * BATCH];

static gacc_engine *make_engine(void) {
    gacc_config cfg;
    gacc_tensor_desc t[MLP_NTENSORS];
    float init[MLP_NPARAM];
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = GACC_OPTIMIZER_ADAMW;
    cfg.lr = 0.01f;
    cfg.precision = GACC_PRECISION_FP16;
    mlp_init(init, 99);
    mlp_tensors(t, init);
    return CREATE(&cfg, t, MLP_NTENSORS);
}

static float scale_of(gacc_engine *e) {
    float s = NAN;
    CHECK_OK(gacc_loss_scale(e, &s));
    return s;
}

/* One clean window: two micro-batches of 32, each gradient of the loss scaled by S. */
static void clean_window(gacc_engine *e, const mlp_sample *batch, gacc_step_info *info) {
    float p[MLP_NPARAM], g[MLP_NPARAM];
    float S = scale_of(e);
    CHECK_OK(gacc_params_read(e, p, MLP_NPARAM));
    for (int j = 0; j < 2; j++) {
        mlp_loss_grad(p, batch + 32 * j, 32, 0, S, g);
        CHECK_OK(gacc_microbatch(e, g, GACC_DTYPE_F32, MLP_NPARAM, 32.0));
    }
    CHECK_OK(gacc_step(e, info));
    CHECK(info->applied == 1);
}

/* Snapshot of everything a skipped step must leave alone. */
typedef struct snapshot {
    float master[MLP_NPARAM];
    uint16_t working[MLP_NPARAM];
} snapshot;

static void take(gacc_engine *e, snapshot *s) {
    void *w = NULL;
    CHECK_OK(gacc_params_read(e, s->master, MLP_NPARAM));
    CHECK_OK(gacc_params_ptr(e, 0, GACC_DTYPE_F16, &w));
    if (w) memcpy(s->working, w, sizeof s->working);
}

int main(void) {
    mlp_make_data(data, 20 * BATCH, 17);
    gacc_engine *a = make_engine(), *b = make_engine();
    if (!a || !b) return check_finish("test_fp16_overflow_skip");
    gacc_step_info ia, ib;

    CHECK(scale_of(a) == 65536.0f);
    for (int w = 0; w < 2; w++) {
        clean_window(a, data + w * BATCH, &ia);
        clean_window(b, data + w * BATCH, &ib);
    }
    CHECK(ia.step == 2 && ib.step == 2);

    /* the three bad windows */
    const float want_scale[3] = {32768.0f, 16384.0f, 8192.0f};
    for (int kind = 0; kind < 3; kind++) {
        snapshot before, after;
        take(a, &before);
        float p[MLP_NPARAM], g[MLP_NPARAM];
        uint16_t g16[MLP_NPARAM];
        float S = scale_of(a);
        CHECK_OK(gacc_params_read(a, p, MLP_NPARAM));
        mlp_loss_grad(p, data + 2 * BATCH, 32, 0, S, g);
        CHECK_OK(gacc_microbatch(a, g, GACC_DTYPE_F32, MLP_NPARAM, 32.0)); /* a clean one first */
        mlp_loss_grad(p, data + 2 * BATCH + 32, 32, 0, S, g);
        if (kind == 0) {
            g[MLP_OFF_W1 + 5] = NAN;
            CHECK_OK(gacc_microbatch(a, g, GACC_DTYPE_F32, MLP_NPARAM, 32.0));
        } else if (kind == 1) {
            g[MLP_OFF_W2 + 3] = 70000.0f; /* rounds to +inf in fp16 */
            for (int i = 0; i < MLP_NPARAM; i++) g16[i] = f32_to_f16_rne(g[i]);
            CHECK(g16[MLP_OFF_W2 + 3] == 0x7C00u);
            CHECK_OK(gacc_microbatch(a, g16, GACC_DTYPE_F16, MLP_NPARAM, 32.0));
        } else {
            for (int i = 0; i < MLP_NPARAM; i++) g[i] = 3.0e38f; /* finite, but 32 * 3e38 is not */
            CHECK_OK(gacc_microbatch(a, g, GACC_DTYPE_F32, MLP_NPARAM, 32.0));
        }
        CHECK_OK(gacc_step(a, &ia));
        take(a, &after);
        printf("bad window %d: applied %u, grad_norm %g, step %llu, scale %g -> %g\n", kind, ia.applied,
               (double)ia.grad_norm, (unsigned long long)ia.step, (double)S, (double)ia.loss_scale);
        CHECK_MSG(ia.applied == 0, "bad window %d was applied", kind);
        CHECK(!isfinite(ia.grad_norm));
        CHECK_MSG(ia.step == 2, "the step count advanced to %llu", (unsigned long long)ia.step);
        CHECK(ia.microbatches == 2 && ia.total_weight == 64.0);
        CHECK_MSG(ia.loss_scale == want_scale[kind], "scale %g, want %g", (double)ia.loss_scale,
                  (double)want_scale[kind]);
        CHECK(scale_of(a) == want_scale[kind]);
        CHECK_MSG(memcmp(before.master, after.master, sizeof before.master) == 0,
                  "the fp32 master changed on a skipped step");
        CHECK_MSG(memcmp(before.working, after.working, sizeof before.working) == 0,
                  "the fp16 working copy changed on a skipped step");
    }
    /* The skipped windows left nothing behind in the accumulator either: */
    CHECK_STATUS(gacc_step(a, NULL), GACC_ERR_INVALID_STATE);

    /* A (scale 8192) and B (scale 65536) take the same clean windows: bit-identical. */
    for (int w = 3; w < 8; w++) {
        clean_window(a, data + w * BATCH, &ia);
        clean_window(b, data + w * BATCH, &ib);
        snapshot sa, sb;
        take(a, &sa);
        take(b, &sb);
        CHECK_MSG(memcmp(sa.master, sb.master, sizeof sa.master) == 0,
                  "window %d: A differs from its twin (max diff %g)", w, max_abs_diff(sa.master, sb.master, MLP_NPARAM));
        CHECK(memcmp(sa.working, sb.working, sizeof sa.working) == 0);
        CHECK(ia.step == ib.step && ia.step == (uint64_t)(w));
    }
    CHECK(scale_of(a) == 8192.0f && scale_of(b) == 65536.0f);

    /* The check can fail: a twin that took one more clean step differs. */
    clean_window(b, data + 9 * BATCH, &ib);
    {
        snapshot sa, sb;
        take(a, &sa);
        take(b, &sb);
        CHECK(memcmp(sa.master, sb.master, sizeof sa.master) != 0);
    }
    gacc_destroy(a);
    gacc_destroy(b);
    return check_finish("test_fp16_overflow_skip");
}

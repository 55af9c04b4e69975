/*
 * Concept: BF16 precision keeps the loss scale at 1 but still skips non-finite windows.
 *
 * Two AdamW engines with BF16 precision, A and a twin B, take the same clean windows;
 * A also gets a window with an inf (and one with a NaN, as a bf16 gradient): it must be
 * skipped (applied 0, step count unchanged), leave the fp32 master and the bf16 working
 * copy bit-identical, and leave the scale at exactly 1. The next clean windows then give
 * A and B bit-identical weights (the optimizer state was not touched).
 */
#include "check.h"
#include "half.h"

#define N 37

static gacc_engine *make(void) {
    gacc_config cfg;
    float init[N];
    uint64_t s = 5;
    for (int i = 0; i < N; i++) init[i] = rng_uniform(&s, -1.0f, 1.0f);
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.precision = GACC_PRECISION_BF16;
    cfg.lr = 0.01f;
    gacc_tensor_desc t[2] = {{"w", 30, init, 0}, {"b", 7, init + 30, 1}};
    return CREATE(&cfg, t, 2);
}

static void clean(gacc_engine *e, int w) {
    float g[N];
    uint64_t s = 1000 + (uint64_t)w;
    gacc_step_info info;
    for (int i = 0; i < N; i++) g[i] = rng_uniform(&s, -1.0f, 1.0f);
    CHECK_OK(gacc_microbatch(e, g, GACC_DTYPE_F32, N, 3.0));
    CHECK_OK(gacc_step(e, &info));
    CHECK(info.applied == 1 && info.loss_scale == 1.0f);
}

int main(void) {
    gacc_engine *a = make(), *b = make();
    if (!a || !b) return check_finish("test_bf16_skip");
    float s = 0.0f;
    CHECK_OK(gacc_loss_scale(a, &s));
    CHECK(s == 1.0f);
    clean(a, 0);
    clean(b, 0);
    for (int kind = 0; kind < 2; kind++) {
        float before[N], after[N];
        uint16_t wb[N], wa[N];
        void *wp = NULL;
        CHECK_OK(gacc_params_read(a, before, N));
        CHECK_OK(gacc_params_ptr(a, 0, GACC_DTYPE_BF16, &wp));
        if (wp) memcpy(wb, wp, sizeof wb);
        gacc_step_info info;
        if (kind == 0) {
            float g[N] = {0};
            g[3] = INFINITY;
            CHECK_OK(gacc_microbatch(a, g, GACC_DTYPE_F32, N, 1.0));
        } else {
            uint16_t g[N] = {0};
            g[31] = 0x7FC0u; /* bf16 NaN */
            CHECK_OK(gacc_microbatch(a, g, GACC_DTYPE_BF16, N, 1.0));
        }
        CHECK_OK(gacc_step(a, &info));
        CHECK_OK(gacc_params_read(a, after, N));
        if (wp) memcpy(wa, wp, sizeof wa);
        CHECK(info.applied == 0 && info.step == 1 && info.loss_scale == 1.0f);
        CHECK_OK(gacc_loss_scale(a, &s));
        CHECK(s == 1.0f);
        CHECK(memcmp(before, after, sizeof before) == 0);
        CHECK(memcmp(wb, wa, sizeof wb) == 0);
    }
    for (int w = 1; w < 5; w++) {
        float pa[N], pb[N];
        clean(a, w);
        clean(b, w);
        CHECK_OK(gacc_params_read(a, pa, N));
        CHECK_OK(gacc_params_read(b, pb, N));
        CHECK_MSG(memcmp(pa, pb, sizeof pa) == 0, "window %d: A differs from its twin by %g", w,
                  max_abs_diff(pa, pb, N));
    }
    gacc_destroy(a);
    gacc_destroy(b);
    return check_finish("test_bf16_skip");
}

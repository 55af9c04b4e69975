/*
 * Concept: the numerics options through the C API (docs/numerics.md).
 *
 * 1. drop_nonfinite_microbatches: engine A drops a poisoned micro-batch, its twin B is
 *    fed only the clean ones: bit-identical parameters, A reports the drop and the total
 *    without it; a window of poisoned micro-batches only is skipped, not an error.
 * 2. hysteresis 2 with a floor: the first overflow is tolerated, the second backs off,
 *    the floor holds.
 * 3. stochastic_rounding: two engines with one seed write bit-identical bf16 working
 *    copies, another seed a different one; every value is one of the two neighbours.
 * 4. Validation names the field (stochastic_rounding with FP32, max below init).
 */
#include "check.h"

#define N 64

static gacc_engine *make(const gacc_config *cfg, const float *init) {
    gacc_tensor_desc t[1] = {{"w", N, init, 0}};
    return CREATE(cfg, t, 1);
}

static void grad(float *g, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < N; i++) g[i] = rng_uniform(&s, -1.0f, 1.0f);
}

static void drop_mode(void) {
    gacc_config cfg;
    float init[N], g[N], pa[N], pb[N];
    gacc_step_info ia, ib;
    grad(init, 1);
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.lr = 0.01f;
    cfg.drop_nonfinite_microbatches = 1;
    gacc_engine *a = make(&cfg, init);
    cfg.drop_nonfinite_microbatches = 0;
    gacc_engine *b = make(&cfg, init);
    if (!a || !b) return;
    for (int w = 0; w < 3; w++) {
        grad(g, 10 + (uint64_t)w);
        CHECK_OK(gacc_microbatch(a, g, GACC_DTYPE_F32, N, 2.0));
        CHECK_OK(gacc_microbatch(b, g, GACC_DTYPE_F32, N, 2.0));
        g[w] = NAN;
        CHECK_OK(gacc_microbatch(a, g, GACC_DTYPE_F32, N, 5.0)); /* dropped */
        grad(g, 20 + (uint64_t)w);
        CHECK_OK(gacc_microbatch(a, g, GACC_DTYPE_F32, N, 1.0));
        CHECK_OK(gacc_microbatch(b, g, GACC_DTYPE_F32, N, 1.0));
        CHECK_OK(gacc_step(a, &ia));
        CHECK_OK(gacc_step(b, &ib));
        CHECK(ia.applied == 1 && ia.microbatches == 3 && ia.dropped_microbatches == 1);
        CHECK(ia.total_weight == 3.0 && ib.total_weight == 3.0 && ib.dropped_microbatches == 0);
    }
    CHECK_OK(gacc_params_read(a, pa, N));
    CHECK_OK(gacc_params_read(b, pb, N));
    CHECK_MSG(memcmp(pa, pb, sizeof pa) == 0, "a dropped micro-batch must leave no trace");
    /* Every micro-batch poisoned: skipped on the device, not an error. */
    g[0] = INFINITY;
    CHECK_OK(gacc_microbatch(a, g, GACC_DTYPE_F32, N, 1.0));
    CHECK_OK(gacc_step(a, &ia));
    CHECK(ia.applied == 0 && ia.dropped_microbatches == 1 && ia.total_weight == 0.0 && ia.step == 3);
    gacc_destroy(a);
    gacc_destroy(b);
}

static void hysteresis(void) {
    gacc_config cfg;
    float init[N], g[N], s = 0.0f;
    gacc_step_info info;
    grad(init, 2);
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.precision = GACC_PRECISION_FP16;
    cfg.init_scale = 4.0f;
    cfg.hysteresis = 2;
    cfg.min_loss_scale = 2.0f;
    gacc_engine *e = make(&cfg, init);
    if (!e) return;
    grad(g, 3);
    g[5] = INFINITY;
    const float expect[4] = {4.0f, 2.0f, 2.0f, 2.0f};
    for (int k = 0; k < 4; k++) {
        CHECK_OK(gacc_microbatch(e, g, GACC_DTYPE_F32, N, 1.0));
        CHECK_OK(gacc_step(e, &info));
        CHECK(info.applied == 0);
        CHECK_OK(gacc_loss_scale(e, &s));
        CHECK_MSG(s == expect[k], "overflow %d: scale %g, expected %g", k, (double)s, (double)expect[k]);
    }
    gacc_destroy(e);
}

static void stochastic_rounding(void) {
    gacc_config cfg;
    float init[N], g[N], master[N];
    uint16_t w[3][N];
    grad(init, 4);
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.precision = GACC_PRECISION_BF16;
    cfg.stochastic_rounding = 1;
    for (int k = 0; k < 3; k++) {
        cfg.seed = k == 2 ? 99u : 7u;
        gacc_engine *e = make(&cfg, init);
        if (!e) return;
        for (int step = 0; step < 2; step++) {
            grad(g, 30 + (uint64_t)step);
            CHECK_OK(gacc_microbatch(e, g, GACC_DTYPE_F32, N, 1.0));
            CHECK_OK(gacc_step(e, NULL));
        }
        void *p = NULL;
        CHECK_OK(gacc_params_ptr(e, 0, GACC_DTYPE_BF16, &p));
        if (p) memcpy(w[k], p, sizeof w[k]);
        CHECK_OK(gacc_params_read(e, master, N));
        for (int i = 0; i < N; i++) {
            uint32_t bits;
            memcpy(&bits, &master[i], 4);
            uint16_t down = (uint16_t)(bits >> 16);
            CHECK_MSG(w[k][i] == down || w[k][i] == (uint16_t)(down + 1), "element %d: %#x for %#x", i,
                      (unsigned)w[k][i], (unsigned)bits);
        }
        gacc_destroy(e);
    }
    CHECK_MSG(memcmp(w[0], w[1], sizeof w[0]) == 0, "same seed, same steps: same bits");
    CHECK_MSG(memcmp(w[0], w[2], sizeof w[0]) != 0, "another seed: other bits");
}

static void validation(void) {
    gacc_config cfg;
    float init[N];
    gacc_engine *e = NULL;
    gacc_tensor_desc t[1] = {{"w", N, init, 0}};
    grad(init, 5);
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.stochastic_rounding = 1;
    CHECK_STATUS(gacc_create(&cfg, t, 1, &e), GACC_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_NAMES("stochastic_rounding");
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.max_loss_scale = 2.0f;
    CHECK_STATUS(gacc_create(&cfg, t, 1, &e), GACC_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_NAMES("max_loss_scale");
    CHECK(e == NULL);
}

int main(void) {
    drop_mode();
    hysteresis();
    stochastic_rounding();
    validation();
    return check_finish("test_numerics_options");
}

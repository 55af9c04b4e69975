/*
 * Concept: the engine's queries and setters beyond the window, checked against what
 * the caller knows: gacc_numel / gacc_n_tensors / gacc_tensor_span (creation order, no
 * padding), initial values (NULL init = zeros), gacc_params_read / gacc_params_write
 * (round trip, optimizer state kept), gacc_params_ptr(F32) is the master itself,
 * gacc_get_lr / gacc_set_lr (the next step uses the new rate, exactly: SGD lr * g),
 * gacc_loss_scale and gacc_loss_scale_ptr on a CPU engine (host memory, 1 for FP32),
 * gacc_zero (drops the window), gacc_config_init defaults (docs/c-api.md).
 */
#include "check.h"

int main(void) {
    gacc_config cfg;
    memset(&cfg, 0xAB, sizeof cfg);
    gacc_config_init(&cfg);
    CHECK(cfg.device == GACC_DEVICE_AUTO && cfg.optimizer == GACC_OPTIMIZER_ADAMW);
    CHECK(cfg.lr == 1e-3f && cfg.beta1 == 0.9f && cfg.beta2 == 0.999f && cfg.eps == 1e-8f);
    CHECK(cfg.weight_decay == 0.01f && cfg.momentum == 0.0f && cfg.nesterov == 0);
    CHECK(cfg.precision == GACC_PRECISION_FP32 && cfg.max_grad_norm <= 0.0f);
    CHECK(cfg.init_scale == 65536.0f && cfg.growth_factor == 2.0f && cfg.backoff_factor == 0.5f);
    CHECK(cfg.growth_interval == 2000 && cfg.grad_reduction == GACC_GRADS_MEAN);

    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = GACC_OPTIMIZER_SGD;
    cfg.lr = 0.5f;
    cfg.weight_decay = 0.0f;
    cfg.momentum = 0.0f;
    const float a[3] = {1.0f, 2.0f, 3.0f}, c[2] = {-1.0f, -2.0f};
    gacc_tensor_desc t[3] = {{"a", 3, a, 0}, {NULL, 4, NULL, 1}, {"c", 2, c, 0}};
    gacc_engine *e = CREATE(&cfg, t, 3);
    if (!e) return check_finish("test_introspection");

    size_t n = 0, nt = 0, off = 0, cnt = 0;
    CHECK_OK(gacc_numel(e, &n));
    CHECK(n == 9);
    CHECK_OK(gacc_n_tensors(e, &nt));
    CHECK(nt == 3);
    const size_t want_off[3] = {0, 3, 7}, want_n[3] = {3, 4, 2};
    for (size_t i = 0; i < 3; i++) {
        CHECK_OK(gacc_tensor_span(e, i, &off, &cnt));
        CHECK_MSG(off == want_off[i] && cnt == want_n[i], "tensor %zu: offset %zu numel %zu", i, off, cnt);
    }
    float p[9];
    const float want_p[9] = {1, 2, 3, 0, 0, 0, 0, -1, -2};
    CHECK_OK(gacc_params_read(e, p, 9));
    CHECK(memcmp(p, want_p, sizeof p) == 0);

    void *m0 = NULL, *m2 = NULL;
    CHECK_OK(gacc_params_ptr(e, 0, GACC_DTYPE_F32, &m0));
    CHECK_OK(gacc_params_ptr(e, 2, GACC_DTYPE_F32, &m2));
    CHECK(m0 && m2 && (float *)m2 == (float *)m0 + 7);
    if (m0) CHECK(memcmp(m0, want_p, sizeof want_p) == 0);

    float s = 0.0f;
    const float *sp = NULL;
    CHECK_OK(gacc_loss_scale(e, &s));
    CHECK_OK(gacc_loss_scale_ptr(e, &sp));
    CHECK(s == 1.0f && sp && *sp == 1.0f);

    float lr = 0.0f;
    CHECK_OK(gacc_get_lr(e, &lr));
    CHECK(lr == 0.5f);
    CHECK_OK(gacc_set_lr(e, 0.25f));
    CHECK_OK(gacc_get_lr(e, &lr));
    CHECK(lr == 0.25f);

    /* a dropped window leaves no trace */
    const float junk[9] = {100, 100, 100, 100, 100, 100, 100, 100, 100};
    CHECK_OK(gacc_microbatch(e, junk, GACC_DTYPE_F32, 9, 3.0));
    CHECK_OK(gacc_zero(e));

    /* p' = p - 0.25 * g, exact in binary */
    const float g[9] = {4, 8, -4, 1, 2, 3, 4, 0.5f, -0.5f};
    gacc_step_info info;
    CHECK_OK(gacc_microbatch(e, g, GACC_DTYPE_F32, 9, 2.0));
    CHECK_OK(gacc_step(e, &info));
    CHECK(info.microbatches == 1 && info.total_weight == 2.0 && info.step == 1);
    CHECK_OK(gacc_params_read(e, p, 9));
    for (int i = 0; i < 9; i++) CHECK_MSG(p[i] == want_p[i] - 0.25f * g[i], "element %d: %g", i, (double)p[i]);
    if (m0) CHECK(memcmp(m0, p, sizeof p) == 0); /* the pointer is the live master */

    /* write, read back */
    const float w[9] = {9, 8, 7, 6, 5, 4, 3, 2, 1};
    CHECK_OK(gacc_params_write(e, w, 9));
    CHECK_OK(gacc_params_read(e, p, 9));
    CHECK(memcmp(p, w, sizeof p) == 0);
    CHECK_OK(gacc_set_stream(e, NULL)); /* NULL: the engine's own (no) stream */
    gacc_destroy(e);
    return check_finish("test_introspection");
}

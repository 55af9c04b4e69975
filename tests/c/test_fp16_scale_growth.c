/*
 * Concept: the dynamic loss scale grows after growth_interval clean steps in a row, and
 * not before; an overflow resets the count (torch.amp.GradScaler's rule).
 *
 * An FP16 engine with init_scale 1024, growth_interval 3, growth_factor 2, backoff 0.5
 * goes through a script of clean (C) and overflowed (X) windows. The expected scale is
 * tracked by an independent model of the rule, and the engine's scale is read three
 * ways after every step: gacc_step_info.loss_scale, gacc_loss_scale and the float
 * behind gacc_loss_scale_ptr. A second engine checks other factors (growth 4, backoff
 * 0.25, interval 1).
 */
#include "check.h"

static void run_script(float init, float growth, float backoff, uint32_t interval, const char *script) {
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = GACC_OPTIMIZER_SGD;
    cfg.lr = 1e-3f;
    cfg.weight_decay = 0.0f;
    cfg.precision = GACC_PRECISION_FP16;
    cfg.init_scale = init;
    cfg.growth_factor = growth;
    cfg.backoff_factor = backoff;
    cfg.growth_interval = interval;
    gacc_tensor_desc t = {"w", 4, NULL, 0};
    gacc_engine *e = CREATE(&cfg, &t, 1);
    if (!e) return;
    const float *sp = NULL;
    CHECK_OK(gacc_loss_scale_ptr(e, &sp));
    if (!sp) {
        gacc_destroy(e);
        return;
    }
    float expect = init;
    uint32_t tracker = 0;
    uint64_t steps = 0;
    CHECK(*sp == init);
    for (const char *c = script; *c; c++) {
        float g[4] = {1.0f, -2.0f, 0.5f, 0.25f};
        if (*c == 'X') g[2] = INFINITY;
        /* the model of the rule */
        if (*c == 'X') {
            expect *= backoff;
            tracker = 0;
        } else {
            steps++;
            if (++tracker == interval) {
                expect *= growth;
                tracker = 0;
            }
        }
        gacc_step_info info;
        float s = 0.0f;
        CHECK_OK(gacc_microbatch(e, g, GACC_DTYPE_F32, 4, 8.0));
        CHECK_OK(gacc_step(e, &info));
        CHECK_OK(gacc_loss_scale(e, &s));
        long at = (long)(c - script);
        CHECK_MSG(info.applied == (*c == 'C'), "step %ld (%c): applied %u", at, *c, info.applied);
        CHECK_MSG(info.loss_scale == expect && s == expect && *sp == expect,
                  "after step %ld (%c) of \"%s\": scale %g / %g / %g, want %g", at, *c, script,
                  (double)info.loss_scale, (double)s, (double)*sp, (double)expect);
        CHECK(info.step == steps);
    }
    printf("script %-14s init %g growth %g backoff %g interval %u: final scale %g\n", script, (double)init,
           (double)growth, (double)backoff, interval, (double)expect);
    gacc_destroy(e);
}

int main(void) {
    /* 2 clean: still 1024 (not before); 3rd: 2048; X: 1024 and the count restarts;
       2 clean after X: still 1024; the 3rd: 2048; then X X: 512; 3 clean: 1024. */
    run_script(1024.0f, 2.0f, 0.5f, 3, "CCCXCCCCXXCCC");
    run_script(1024.0f, 2.0f, 0.5f, 3, "CCXCCXCCXCCC");
    run_script(256.0f, 4.0f, 0.25f, 1, "CCXCX");
    /* The model is not vacuous: the scale after exactly two clean steps is the initial one. */
    run_script(65536.0f, 2.0f, 0.5f, 3, "CC");
    return check_finish("test_fp16_scale_growth");
}

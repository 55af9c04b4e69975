/*
 * Concept: unequal micro-batches must be weighted by their sample counts.
 *
 * Each 64-sample window of the C MLP is split into micro-batches of 5, 17, 26 and 16
 * samples, each gradient of a mean-reduced loss. With weight = sample count, gacc forms
 * sum_k n_k * mean_k / 64 = the full-batch mean gradient, so 50 windows end at the same
 * weights as one batch of 64 (same fp32-summation-order tolerance as
 * test_equal_microbatches: 1e-5 relative for SGD; for AdamW 1e-5 of steps * lr absolute).
 * A plain 1/K average of the four means (weight 1 each: the Hugging Face accumulation
 * bug) over-weights the 5-sample micro-batch 3.2x and must end far away.
 */
#include "check.h"
#include "mlp.h"

#define WINDOWS 50
#define BATCH 64

static mlp_sample data[WINDOWS * BATCH];

static void train(uint32_t optimizer, float lr, int k, const size_t *sizes, const double *weights,
                  float *final) {
    gacc_config cfg;
    gacc_tensor_desc t[MLP_NTENSORS];
    float init[MLP_NPARAM];
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = optimizer;
    cfg.lr = lr;
    cfg.momentum = optimizer == GACC_OPTIMIZER_SGD ? 0.9f : 0.0f;
    mlp_init(init, 3);
    mlp_tensors(t, init);
    gacc_engine *e = CREATE(&cfg, t, MLP_NTENSORS);
    if (!e) return;
    for (int w = 0; w < WINDOWS; w++) {
        gacc_step_info info;
        CHECK_OK(mlp_window(e, data + w * BATCH, sizes, k, weights, 0, &info));
        CHECK(info.applied == 1 && info.microbatches == (uint32_t)k);
    }
    CHECK_OK(gacc_params_read(e, final, MLP_NPARAM));
    gacc_destroy(e);
}

int main(void) {
    const size_t full_size[1] = {BATCH};
    const size_t sizes[4] = {5, 17, 26, 16};
    const double ones[4] = {1, 1, 1, 1};
    mlp_make_data(data, WINDOWS * BATCH, 11);
    for (int opt = 0; opt < 2; opt++) {
        uint32_t optimizer = opt ? GACC_OPTIMIZER_ADAMW : GACC_OPTIMIZER_SGD;
        float lr = opt ? 0.01f : 0.05f;
        double tol = opt ? 1e-5 * WINDOWS * lr : 1e-5;
        float full[MLP_NPARAM], counted[MLP_NPARAM], averaged[MLP_NPARAM];
        train(optimizer, lr, 1, full_size, NULL, full);
        train(optimizer, lr, 4, sizes, NULL, counted);   /* weights = sample counts */
        train(optimizer, lr, 4, sizes, ones, averaged);  /* plain 1/K average */
        double d_ok = opt ? max_abs_diff(counted, full, MLP_NPARAM) : rel_diff(counted, full, MLP_NPARAM);
        double d_avg = opt ? max_abs_diff(averaged, full, MLP_NPARAM) : rel_diff(averaged, full, MLP_NPARAM);
        printf("%-5s sizes 5/17/26/16: weighted by count: %s diff %.3g (tol %.3g); plain 1/K average: %.3g\n",
               opt ? "AdamW" : "SGD", opt ? "abs" : "rel", d_ok, tol, d_avg);
        CHECK_MSG(d_ok <= tol, "count-weighted micro-batches differ from the full batch by %g", d_ok);
        CHECK_MSG(d_avg > 100.0 * tol, "the 1/K average is not detected: %g", d_avg);
    }
    return check_finish("test_unequal_microbatches");
}

/*
 * Concept: GACC_GRADS_SUM — gradients of sum-reduced losses.
 *
 * The caller's loss is the *sum* over each micro-batch's samples (no division), and it
 * hands the gradient over with weight = the micro-batch's sample count. gacc adds the
 * gradients as they are and divides by the window's total count once, so the step is
 * the full-batch *mean* gradient step. Checked on the C MLP for 50 windows with
 * micro-batches of 5, 17, 26 and 16 samples against one mean-reduced batch of 64 in
 * MEAN mode (tolerance as in test_equal_microbatches). Mistakes that must show:
 * - mean-reduced gradients handed over in SUM mode (each micro-batch then counts the
 *   same whatever its size): caught for SGD and AdamW;
 * - weight 1 per micro-batch in SUM mode (divides by 4 instead of 64, a 16x too large
 *   step): caught for SGD; AdamW is nearly invariant to a uniform gradient scale, so
 *   for it this mistake is (correctly) almost invisible and is not asserted.
 */
#include "check.h"
#include "mlp.h"

#define WINDOWS 50
#define BATCH 64

static mlp_sample data[WINDOWS * BATCH];

static void train(uint32_t optimizer, uint32_t reduction, int sum_grads, int k, const size_t *sizes,
                  const double *weights, float *final) {
    gacc_config cfg;
    gacc_tensor_desc t[MLP_NTENSORS];
    float init[MLP_NPARAM];
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = optimizer;
    cfg.lr = optimizer == GACC_OPTIMIZER_SGD ? 0.02f : 0.01f;
    cfg.momentum = optimizer == GACC_OPTIMIZER_SGD ? 0.9f : 0.0f;
    cfg.grad_reduction = reduction;
    mlp_init(init, 5);
    mlp_tensors(t, init);
    gacc_engine *e = CREATE(&cfg, t, MLP_NTENSORS);
    if (!e) return;
    for (int w = 0; w < WINDOWS; w++) {
        gacc_step_info info;
        CHECK_OK(mlp_window(e, data + w * BATCH, sizes, k, weights, sum_grads, &info));
        if (weights == NULL) CHECK(info.applied == 1 && info.total_weight == BATCH);
    }
    CHECK_OK(gacc_params_read(e, final, MLP_NPARAM));
    gacc_destroy(e);
}

int main(void) {
    const size_t full_size[1] = {BATCH};
    const size_t sizes[4] = {5, 17, 26, 16};
    const double ones[4] = {1, 1, 1, 1};
    mlp_make_data(data, WINDOWS * BATCH, 13);
    for (int opt = 0; opt < 2; opt++) {
        uint32_t optimizer = opt ? GACC_OPTIMIZER_ADAMW : GACC_OPTIMIZER_SGD;
        double tol = opt ? 1e-5 * WINDOWS * 0.01 : 1e-5;
        float mean_full[MLP_NPARAM], sum_mb[MLP_NPARAM], means_in_sum[MLP_NPARAM], weight1[MLP_NPARAM];
        train(optimizer, GACC_GRADS_MEAN, 0, 1, full_size, NULL, mean_full);
        train(optimizer, GACC_GRADS_SUM, 1, 4, sizes, NULL, sum_mb);
        train(optimizer, GACC_GRADS_SUM, 0, 4, sizes, NULL, means_in_sum);
        train(optimizer, GACC_GRADS_SUM, 1, 4, sizes, ones, weight1);
#define DIFF(a) (opt ? max_abs_diff((a), mean_full, MLP_NPARAM) : rel_diff((a), mean_full, MLP_NPARAM))
        double d_ok = DIFF(sum_mb), d_means = DIFF(means_in_sum), d_w1 = DIFF(weight1);
        printf("%-5s SUM mode, weight = count vs MEAN full batch: %s diff %.3g (tol %.3g); "
               "mean gradients in SUM mode: %.3g; weight 1 each: %.3g\n",
               opt ? "AdamW" : "SGD", opt ? "abs" : "rel", d_ok, tol, d_means, d_w1);
        CHECK_MSG(d_ok <= tol, "SUM-mode micro-batches differ from the mean full batch by %g", d_ok);
        CHECK_MSG(d_means > 100.0 * tol, "mean gradients in SUM mode are not detected: %g", d_means);
        if (!opt) CHECK_MSG(d_w1 > 100.0 * tol, "SUM mode with weight 1 is not detected: %g", d_w1);
    }

    /* One window by hand: SGD lr 1 from zero weights moves to exactly -(g1 + g2) / (3 + 5). */
    {
        gacc_config cfg;
        gacc_config_init(&cfg);
        cfg.device = GACC_DEVICE_CPU;
        cfg.optimizer = GACC_OPTIMIZER_SGD;
        cfg.lr = 1.0f;
        cfg.weight_decay = 0.0f;
        cfg.grad_reduction = GACC_GRADS_SUM;
        gacc_tensor_desc t = {"w", 2, NULL, 0};
        gacc_engine *e = CREATE(&cfg, &t, 1);
        if (e) {
            const float g1[2] = {3.0f, -6.0f}; /* sum over 3 samples */
            const float g2[2] = {5.0f, 2.0f};  /* sum over 5 samples */
            float p[2];
            CHECK_OK(gacc_microbatch(e, g1, GACC_DTYPE_F32, 2, 3.0));
            CHECK_OK(gacc_microbatch(e, g2, GACC_DTYPE_F32, 2, 5.0));
            CHECK_OK(gacc_step(e, NULL));
            CHECK_OK(gacc_params_read(e, p, 2));
            CHECK_MSG(p[0] == -1.0f && p[1] == 0.5f, "got %g %g, want -1 0.5", p[0], p[1]);
            gacc_destroy(e);
        }
    }
    return check_finish("test_sum_mode");
}

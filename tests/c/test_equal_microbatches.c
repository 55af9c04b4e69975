/*
 * Concept: K equal micro-batches == one full batch.
 *
 * A real model written in C (tests/c/mlp.h: 8 -> 16 tanh -> 1, squared error) is trained
 * for 50 windows of 64 samples twice from the same initial weights: once with the whole
 * window as one batch (K = 1, weight 64), once as K = 4 micro-batches of 16 samples
 * (weight 16 each). Both must end with the same weights, for SGD with momentum, SGD
 * with Nesterov momentum (both with L2 weight decay) and AdamW (decoupled weight decay
 * on W1/W2, none on the biases).
 *
 * Tolerances. The two runs differ only in fp32 summation order: the full batch sums 64
 * per-sample gradients in one fp32 running sum and gacc multiplies it by 64, the
 * accumulated run sums 4 x 16 and gacc adds 16 * g_k in its fp32 accumulator. Each
 * window's gradient therefore differs by a few ulps (relative ~1e-7 of the sum of the
 * absolute per-sample terms), and the runs drift apart by roughly steps * lr * that.
 * - SGD (momentum 0.9, lr 0.05, 50 steps): the update is linear in g, so the final
 *   weights differ by ~1e-7 relative; we allow 1e-5 relative (to the largest |weight|),
 *   two orders of magnitude of headroom, and still ~4 orders below the mistakes below.
 * - AdamW: the update is m / (sqrt(v) + eps), which normalises every element to O(1)
 *   whatever its size. An element whose gradient is nearly cancelled across samples
 *   (sum of terms much larger than the result) has a large *relative* rounding error,
 *   and AdamW turns it into an O(lr * relative error) move instead of an O(lr * |g| *
 *   error) one. So AdamW's bound is absolute in units of the total distance the weights
 *   could travel (steps * lr = 0.5): 1e-5 * steps * lr = 5e-6 absolute, i.e. 1e-5 of the
 *   maximum possible travel.
 * The observed differences are printed; both tolerances are far below the effect of a
 * genuine mistake, which the test demonstrates: counting one micro-batch twice (weight
 * 32 instead of 16), and, for SGD, handing sum-reduced gradients in MEAN mode (16x too
 * large; AdamW is nearly invariant to a uniform gradient scale, so that mistake is not
 * visible to it, which is why the weight mistake is used for all three).
 */
#include "check.h"
#include "mlp.h"

#define WINDOWS 50
#define BATCH 64
#define K 4

typedef struct run_spec {
    const char *name;
    uint32_t optimizer;
    float lr, momentum, weight_decay;
    uint32_t nesterov;
} run_spec;

static mlp_sample data[WINDOWS * BATCH];

static void configure(gacc_config *cfg, const run_spec *r) {
    gacc_config_init(cfg);
    cfg->device = GACC_DEVICE_CPU;
    cfg->optimizer = r->optimizer;
    cfg->lr = r->lr;
    cfg->momentum = r->momentum;
    cfg->nesterov = r->nesterov;
    cfg->weight_decay = r->weight_decay;
}

/* Trains one engine; mistake 0: correct, 1: first micro-batch counted twice,
   2: sum-reduced gradients in MEAN mode. Returns the final loss on the last window. */
static float train(const run_spec *r, int k, int mistake, float *final) {
    gacc_config cfg;
    gacc_tensor_desc t[MLP_NTENSORS];
    float init[MLP_NPARAM];
    configure(&cfg, r);
    mlp_init(init, 42);
    mlp_tensors(t, init);
    gacc_engine *e = CREATE(&cfg, t, MLP_NTENSORS);
    if (!e) return NAN;
    size_t sizes[K];
    double weights[K];
    for (int j = 0; j < k; j++) {
        sizes[j] = BATCH / (size_t)k;
        weights[j] = (double)sizes[j];
    }
    if (mistake == 1) weights[0] *= 2.0;
    for (int w = 0; w < WINDOWS; w++) {
        gacc_step_info info;
        CHECK_OK(mlp_window(e, data + w * BATCH, sizes, k, weights, mistake == 2, &info));
        if (mistake == 2) continue; /* 16x too large a gradient may diverge: that is the point */
        CHECK(info.applied == 1 && info.step == (uint64_t)(w + 1) && info.microbatches == (uint32_t)k);
        CHECK(info.total_weight == (mistake == 1 ? BATCH + BATCH / k : BATCH));
    }
    CHECK_OK(gacc_params_read(e, final, MLP_NPARAM));
    gacc_destroy(e);
    return mlp_loss(final, data + (WINDOWS - 1) * BATCH, BATCH);
}

int main(void) {
    const run_spec runs[] = {
        {"SGD momentum 0.9", GACC_OPTIMIZER_SGD, 0.05f, 0.9f, 1e-3f, 0},
        {"SGD nesterov 0.9", GACC_OPTIMIZER_SGD, 0.05f, 0.9f, 1e-3f, 1},
        {"AdamW", GACC_OPTIMIZER_ADAMW, 0.01f, 0.0f, 0.01f, 0},
    };
    mlp_make_data(data, WINDOWS * BATCH, 7);
    float init[MLP_NPARAM];
    mlp_init(init, 42);
    float loss0 = mlp_loss(init, data + (WINDOWS - 1) * BATCH, BATCH);

    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        const run_spec *spec = &runs[r];
        int adam = spec->optimizer == GACC_OPTIMIZER_ADAMW;
        double tol = adam ? 1e-5 * WINDOWS * spec->lr : 1e-5;
        float full[MLP_NPARAM], acc[MLP_NPARAM], dbl[MLP_NPARAM], sum[MLP_NPARAM];
        float loss_full = train(spec, 1, 0, full);
        float loss_acc = train(spec, K, 0, acc);
        train(spec, K, 1, dbl);
        /* the measure: relative to max |w| for SGD, absolute for AdamW (see the top) */
        double d_ok = adam ? max_abs_diff(acc, full, MLP_NPARAM) : rel_diff(acc, full, MLP_NPARAM);
        double d_dbl = adam ? max_abs_diff(dbl, full, MLP_NPARAM) : rel_diff(dbl, full, MLP_NPARAM);
        printf("%-17s loss %.4f -> %.4f (K=1) / %.4f (K=4); %s diff K=4 vs K=1: %.3g (tol %.3g); "
               "one micro-batch counted twice: %.3g\n",
               spec->name, loss0, loss_full, loss_acc, adam ? "abs" : "rel", d_ok, tol, d_dbl);
        CHECK_MSG(loss_full < 0.5f * loss0, "%s did not train: %g -> %g", spec->name, loss0, loss_full);
        CHECK_MSG(d_ok <= tol, "%s: K=4 differs from K=1 by %g > %g", spec->name, d_ok, tol);
        CHECK_MSG(d_dbl > 100.0 * tol, "%s: the double-counted micro-batch is not detected (%g)", spec->name,
                  d_dbl);
        if (!adam) {
            train(spec, K, 2, sum);
            double d_sum = rel_diff(sum, full, MLP_NPARAM);
            printf("%-17s sum-reduced gradients in MEAN mode: rel diff %.3g\n", spec->name, d_sum);
            CHECK_MSG(d_sum > 100.0 * tol, "%s: the 16x normalisation error is not detected (%g)",
                      spec->name, d_sum);
        }
    }
    return check_finish("test_equal_microbatches");
}

/*
 * demo.c: gacc's main job, end to end, through the C ABI.
 *
 * A small network written in C (tests/c/mlp.h: 8 inputs -> 16 tanh -> 1, squared
 * error) learns a synthetic regression task with gradient accumulation: every window
 * of 64 samples is fed as K = 4 micro-batches of 16. The training is mixed precision
 * the way a real fp16 model runs it: the forward pass uses the weights rounded to fp16
 * (gacc keeps the fp32 master), the loss is multiplied by gacc's loss scale S before
 * backward, and the gradients are handed over in fp16. gacc accumulates in fp32,
 * unscales, skips windows whose gradient overflowed (halving S), applies AdamW and
 * grows S again after `growth_interval` clean windows. One micro-batch overflow is
 * injected on purpose (window 26) so a skipped step is visible. The gradients are
 * host memory, which gacc accepts on a CPU and on a CUDA engine alike.
 *
 * Then the same model is trained twice from the same initial weights with fp32
 * gradients, once as one batch of 64 per window (K = 1) and once as 8 micro-batches of
 * 8 (K = 8): the weights must come out the same up to fp32 summation order.
 *
 * Build and run: make demo. Exit status 0 on success.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gacc.h"
#include "half.h"
#include "mlp.h"

#define BATCH 64
#define WINDOWS 60
#define INJECT_AT 25

static mlp_sample train_data[WINDOWS * BATCH];
static mlp_sample test_data[512];

#define TRY(call)                                                                              \
    do {                                                                                       \
        gacc_status s_ = (call);                                                               \
        if (s_ != GACC_OK) {                                                                   \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call,           \
                    gacc_status_name(s_), gacc_last_error());                                  \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static gacc_engine *create(uint32_t precision, uint32_t growth_interval, const float *init) {
    gacc_config cfg;
    gacc_tensor_desc tensors[MLP_NTENSORS];
    gacc_config_init(&cfg); /* AdamW, betas 0.9/0.999, weight decay 0.01, device AUTO */
    cfg.lr = 0.01f;
    cfg.precision = precision;
    cfg.growth_interval = growth_interval;
    cfg.max_grad_norm = 1.0f;
    mlp_tensors(tensors, init); /* W1, b1, W2, b2; no weight decay on the biases */
    gacc_engine *e = NULL;
    TRY(gacc_create(&cfg, tensors, MLP_NTENSORS, &e));
    return e;
}

/* Part 1: mixed-precision training with loss scaling, K = 4 micro-batches of 16. */
static float train_fp16(const float *init) {
    gacc_engine *e = create(GACC_PRECISION_FP16, 10, init);
    int32_t device = 0;
    TRY(gacc_device(e, &device));
    if (device < 0)
        printf("device: cpu\n");
    else
        printf("device: cuda:%d\n", (int)device);
    printf("part 1: AdamW, FP16 precision with dynamic loss scaling (growth every 10 clean windows),\n"
           "        clipping at 1.0, %d windows of %d samples as 4 micro-batches of 16\n\n",
           WINDOWS, BATCH);
    printf("window   loss     grad_norm   clip    loss_scale  step  result\n");

    float master[MLP_NPARAM], w16[MLP_NPARAM], g[MLP_NPARAM];
    uint16_t g16[MLP_NPARAM];
    for (int w = 0; w < WINDOWS; w++) {
        float S = 0.0f;
        TRY(gacc_loss_scale(e, &S));
        /* the forward pass runs on the fp16 weights */
        TRY(gacc_params_read(e, master, MLP_NPARAM));
        for (int i = 0; i < MLP_NPARAM; i++) w16[i] = f16_to_f32(f32_to_f16_rne(master[i]));
        double loss = 0.0;
        for (int k = 0; k < 4; k++) {
            const mlp_sample *mb = train_data + w * BATCH + 16 * k;
            loss += mlp_loss_grad(w16, mb, 16, 0, S, g) / 4.0; /* gradient of S * loss */
            for (int i = 0; i < MLP_NPARAM; i++) g16[i] = f32_to_f16_rne(g[i]);
            if (w == INJECT_AT && k == 2) g16[MLP_OFF_W1 + 3] = 0x7C00u; /* +inf: injected */
            TRY(gacc_microbatch(e, g16, GACC_DTYPE_F16, MLP_NPARAM, 16.0));
        }
        gacc_step_info info;
        TRY(gacc_step(e, &info));
        printf("%5d   %.5f  %10.5f  %6.4f  %10.0f  %4llu  %s\n", w + 1, loss, (double)info.grad_norm,
               (double)info.clip_coef, (double)info.loss_scale, (unsigned long long)info.step,
               info.applied ? "applied"
                            : (w == INJECT_AT ? "SKIPPED (injected overflow: one fp16 gradient set to +inf)"
                                              : "SKIPPED (fp16 gradient overflowed)"));
    }
    TRY(gacc_params_read(e, master, MLP_NPARAM));
    gacc_destroy(e);
    return mlp_loss(master, test_data, 512);
}

/* Part 2: one run, fp32 gradients, K micro-batches of 64 / K samples per window. */
static void train_fp32(const float *init, int k, float *final) {
    gacc_engine *e = create(GACC_PRECISION_FP32, 2000, init);
    size_t sizes[8];
    for (int j = 0; j < k; j++) sizes[j] = BATCH / (size_t)k;
    for (int w = 0; w < WINDOWS; w++) TRY(mlp_window(e, train_data + w * BATCH, sizes, k, NULL, 0, NULL));
    TRY(gacc_params_read(e, final, MLP_NPARAM));
    gacc_destroy(e);
}

int main(void) {
    printf("gacc %s demo: a C MLP (8 -> 16 tanh -> 1) trained through the C ABI\n", gacc_version());
    if (gacc_version_number() != GACC_VERSION_NUMBER) {
        fprintf(stderr, "header %s does not match library %s\n", GACC_VERSION, gacc_version());
        return 1;
    }
    mlp_make_data(train_data, WINDOWS * BATCH, 2024);
    mlp_make_data(test_data, 512, 4242);
    float init[MLP_NPARAM];
    mlp_init(init, 1);
    float loss0 = mlp_loss(init, test_data, 512);
    float loss1 = train_fp16(init);
    printf("\nheld-out loss: %.5f before, %.5f after training\n", loss0, loss1);
    int ok = loss1 < 0.5f * loss0;

    float k1[MLP_NPARAM], k8[MLP_NPARAM];
    train_fp32(init, 1, k1);
    train_fp32(init, 8, k8);
    double diff = 0.0;
    for (int i = 0; i < MLP_NPARAM; i++) {
        double d = fabs((double)k1[i] - (double)k8[i]);
        if (!(d <= diff)) diff = d;
    }
    /* The runs differ only in the fp32 order the per-sample gradients are summed in;
       AdamW turns that into at most ~1e-5 of the distance the weights can travel
       (steps * lr = 0.6): see tests/c/test_equal_microbatches.c. */
    const double tol = 1e-5 * WINDOWS * 0.01;
    int same = diff <= tol;
    printf("\npart 2: the same training from the same initial weights, fp32 gradients, %d windows:\n"
           "        K=1 (1 x 64 samples) vs K=8 (8 x 8 samples): max |w_K1 - w_K8| = %.3g (tolerance %.1g)\n"
           "        same weights: %s\n",
           WINDOWS, diff, tol, same ? "yes" : "no");
    if (!ok) printf("FAILED: the held-out loss did not halve\n");
    return ok && same ? 0 : 1;
}

/*
 * mlp.h: a small multilayer perceptron written in C, forward and backward, for the
 * tests and the demo: 8 inputs -> 16 tanh hidden units -> 1 output, squared error.
 *
 * Parameters (161 floats), in gacc's concatenated order, one gacc tensor each:
 *   W1[16][8]  (weight decay)     b1[16]  (no_weight_decay)
 *   W2[16]     (weight decay)     b2[1]   (no_weight_decay)
 *
 * Loss of a batch of n samples: L = 1/2 * sum_i (yhat_i - y_i)^2, divided by n for a
 * mean-reduced loss. The gradient is accumulated in fp32, sample after sample, as a
 * framework's backward would; a micro-batch gradient therefore differs from the
 * corresponding share of the full-batch gradient only in fp32 summation order.
 *
 * The task: regression onto a fixed random "teacher" (a different tanh network plus a
 * product term), inputs uniform in [-1, 1]^8, fixed seeds.
 */
#ifndef GACC_TESTS_MLP_H
#define GACC_TESTS_MLP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gacc.h"

#define MLP_IN 8
#define MLP_HID 16
#define MLP_OFF_W1 0
#define MLP_OFF_B1 (MLP_OFF_W1 + MLP_HID * MLP_IN)
#define MLP_OFF_W2 (MLP_OFF_B1 + MLP_HID)
#define MLP_OFF_B2 (MLP_OFF_W2 + MLP_HID)
#define MLP_NPARAM (MLP_OFF_B2 + 1)
#define MLP_NTENSORS 4

typedef struct mlp_sample {
    float x[MLP_IN];
    float y;
} mlp_sample;

static inline uint64_t mlp_rng_(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline float mlp_uniform_(uint64_t *s, float lo, float hi) {
    return lo + (hi - lo) * ((float)(mlp_rng_(s) >> 40) * (1.0f / 16777216.0f));
}

/* Initial parameters: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), like torch.nn.Linear. */
static inline void mlp_init(float *p, uint64_t seed) {
    uint64_t s = seed;
    float a1 = 1.0f / sqrtf((float)MLP_IN), a2 = 1.0f / sqrtf((float)MLP_HID);
    for (int i = 0; i < MLP_HID * MLP_IN; i++) p[MLP_OFF_W1 + i] = mlp_uniform_(&s, -a1, a1);
    for (int i = 0; i < MLP_HID; i++) p[MLP_OFF_B1 + i] = mlp_uniform_(&s, -a1, a1);
    for (int i = 0; i < MLP_HID; i++) p[MLP_OFF_W2 + i] = mlp_uniform_(&s, -a2, a2);
    p[MLP_OFF_B2] = mlp_uniform_(&s, -a2, a2);
}

/* The four tensor descriptors; biases are excluded from weight decay. */
static inline void mlp_tensors(gacc_tensor_desc d[MLP_NTENSORS], const float *init) {
    static const char *names[MLP_NTENSORS] = {"W1", "b1", "W2", "b2"};
    static const size_t offs[MLP_NTENSORS] = {MLP_OFF_W1, MLP_OFF_B1, MLP_OFF_W2, MLP_OFF_B2};
    static const size_t sizes[MLP_NTENSORS] = {MLP_HID * MLP_IN, MLP_HID, MLP_HID, 1};
    for (int t = 0; t < MLP_NTENSORS; t++) {
        d[t].name = names[t];
        d[t].numel = sizes[t];
        d[t].init = init ? init + offs[t] : NULL;
        d[t].no_weight_decay = (t == 1 || t == 3) ? 1u : 0u;
    }
}

/* n samples of the teacher task. */
static inline void mlp_make_data(mlp_sample *out, size_t n, uint64_t seed) {
    uint64_t teacher = 0x7EAC4E5ULL, s = seed;
    float a[4][MLP_IN];
    for (int h = 0; h < 4; h++)
        for (int i = 0; i < MLP_IN; i++) a[h][i] = mlp_uniform_(&teacher, -1.0f, 1.0f);
    for (size_t k = 0; k < n; k++) {
        float y = 0.0f;
        for (int i = 0; i < MLP_IN; i++) out[k].x[i] = mlp_uniform_(&s, -1.0f, 1.0f);
        for (int h = 0; h < 4; h++) {
            float z = 0.0f;
            for (int i = 0; i < MLP_IN; i++) z += a[h][i] * out[k].x[i];
            y += (h % 2 ? -0.6f : 0.8f) * tanhf(z);
        }
        out[k].y = y + 0.5f * out[k].x[0] * out[k].x[1] + 0.05f * mlp_uniform_(&s, -1.0f, 1.0f);
    }
}

/* Forward for one sample; fills the hidden activations. */
static inline float mlp_forward(const float *p, const float *x, float *hid) {
    float out = p[MLP_OFF_B2];
    for (int h = 0; h < MLP_HID; h++) {
        float z = p[MLP_OFF_B1 + h];
        for (int i = 0; i < MLP_IN; i++) z += p[MLP_OFF_W1 + h * MLP_IN + i] * x[i];
        hid[h] = tanhf(z);
        out += p[MLP_OFF_W2 + h] * hid[h];
    }
    return out;
}

/*
 * Loss and gradient of a batch of n samples at parameters p, written to grad
 * (MLP_NPARAM floats). sum_reduction 0: mean-reduced loss (divide by n); 1: summed.
 * The gradient is multiplied by loss_scale (the loss was scaled before backward), the
 * returned loss is not.
 */
static inline float mlp_loss_grad(const float *p, const mlp_sample *s, size_t n, int sum_reduction,
                                  float loss_scale, float *grad) {
    float hid[MLP_HID];
    double loss = 0.0;
    float inv = sum_reduction ? 1.0f : 1.0f / (float)n;
    memset(grad, 0, sizeof(float) * MLP_NPARAM);
    for (size_t k = 0; k < n; k++) {
        float yhat = mlp_forward(p, s[k].x, hid);
        float err = yhat - s[k].y;
        loss += 0.5 * (double)err * (double)err;
        float dy = err * inv * loss_scale; /* dL/dyhat of the (scaled) loss */
        grad[MLP_OFF_B2] += dy;
        for (int h = 0; h < MLP_HID; h++) {
            grad[MLP_OFF_W2 + h] += dy * hid[h];
            float dz = dy * p[MLP_OFF_W2 + h] * (1.0f - hid[h] * hid[h]);
            grad[MLP_OFF_B1 + h] += dz;
            for (int i = 0; i < MLP_IN; i++) grad[MLP_OFF_W1 + h * MLP_IN + i] += dz * s[k].x[i];
        }
    }
    return (float)(sum_reduction ? loss : loss / (double)n);
}

/* Mean loss over n samples (evaluation). */
static inline float mlp_loss(const float *p, const mlp_sample *s, size_t n) {
    float hid[MLP_HID];
    double loss = 0.0;
    for (size_t k = 0; k < n; k++) {
        float err = mlp_forward(p, s[k].x, hid) - s[k].y;
        loss += 0.5 * (double)err * (double)err;
    }
    return (float)(loss / (double)n);
}

/*
 * One accumulation window through gacc: reads the engine's fp32 master weights,
 * splits `samples` into k micro-batches of sizes[0..k), computes each gradient in C and
 * hands it over with weights[j] (weights NULL: the sample counts). Returns the status
 * of the first call that failed, or of gacc_step.
 */
static inline gacc_status mlp_window(gacc_engine *e, const mlp_sample *samples, const size_t *sizes,
                                     int k, const double *weights, int sum_reduction,
                                     gacc_step_info *info) {
    float p[MLP_NPARAM], g[MLP_NPARAM];
    gacc_status s = gacc_params_read(e, p, MLP_NPARAM);
    if (s != GACC_OK) return s;
    size_t at = 0;
    for (int j = 0; j < k; j++) {
        mlp_loss_grad(p, samples + at, sizes[j], sum_reduction, 1.0f, g);
        s = gacc_microbatch(e, g, GACC_DTYPE_F32, MLP_NPARAM, weights ? weights[j] : (double)sizes[j]);
        if (s != GACC_OK) return s;
        at += sizes[j];
    }
    return gacc_step(e, info);
}

#endif /* GACC_TESTS_MLP_H */

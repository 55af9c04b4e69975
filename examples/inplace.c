/*
 * inplace.c: a backward pass that writes each weight gradient straight into gacc's
 * fp32 accumulator (gacc_accumulator_ptr), the way Megatron-LM fuses gradient
 * accumulation into the weight-gradient GEMM (beta = 1), then books the micro-batch
 * with gacc_microbatch_inplace. No gradient buffer, no copy, no accumulation pass.
 *
 * The model: y = W2 tanh(W1 x + b1) + b2 (16 -> 32 -> 4), squared error against a
 * fixed random "teacher" network, summed over the samples (GACC_GRADS_SUM: every
 * micro-batch adds the gradient of its summed loss, weight = its sample count, and
 * gacc divides by the window's total at the step). Each window is 4 micro-batches of
 * 16 samples. The weight gradients are GEMMs C = beta * C + A^T B with beta = 1 and C
 * = the accumulator; the bias gradients are sums added in place.
 *
 * The same training is run a second time with the gradients in the host's own
 * buffers (beta = 0) handed over per tensor with gacc_microbatch_tensors; the two
 * must agree to fp32 rounding (the in-place GEMM adds sample by sample into the
 * accumulator, the other adds a finished gradient: different rounding, same sums),
 * and the loss must fall by 10x. Exit status 0 on success.
 *
 * On a CPU engine the accumulator is host memory, as here. On a CUDA engine it is
 * device memory on the engine's device; the host's writes must be ordered with gacc
 * on the stream given to gacc_set_stream, e.g. with cuBLAS (not built or run here):
 *
 *     gacc_set_stream(e, stream);
 *     cublasSetStream(handle, stream);
 *     float *dW1;  gacc_accumulator_ptr(e, 0, &dW1);
 *     const float one = 1.0f;
 *     // dW1 (32 x 16, row-major) += dH^T (32 x B) X (B x 16): column-major, dW1^T += X^T dH
 *     cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_T, 16, 32, B, &one, X, 16, dH, 32, &one, dW1, 16);
 *     gacc_microbatch_inplace(e, B);   // queued after the GEMM on the same stream
 *
 * Build and run: make example-inplace.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gacc.h"

#define IN 16
#define HID 32
#define OUT 4
#define MB 16       /* samples per micro-batch */
#define K 4         /* micro-batches per window */
#define WINDOWS 300
#define NT 4        /* tensors: W1, b1, W2, b2 */

#define TRY(call)                                                                              \
    do {                                                                                       \
        gacc_status s_ = (call);                                                               \
        if (s_ != GACC_OK) {                                                                   \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call,           \
                    gacc_status_name(s_), gacc_last_error());                                  \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static const size_t numel[NT] = {HID * IN, HID, OUT * HID, OUT};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float uniform(void) { /* in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

/* C (m x n, row-major) = beta * C + A^T B, A (k x m), B (k x n): the weight-gradient
 * GEMM of a linear layer, k = samples. beta = 1 accumulates into C. */
static void gemm_at_b(int m, int n, int k, const float *a, const float *b, float beta, float *c) {
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            float s = beta * c[i * n + j];
            for (int p = 0; p < k; p++) s += a[p * m + i] * b[p * n + j];
            c[i * n + j] = s;
        }
    }
}

/* Forward and backward of one micro-batch; the gradients of the summed squared error
 * are added (beta = 1) or written (beta = 0) into g[0..3]. Returns the summed loss. */
static float backward(const float *const *w, const float *x, const float *t, float beta, float *const *g) {
    float h[MB * HID], dh[MB * HID], dy[MB * OUT], loss = 0.0f;
    for (int s = 0; s < MB; s++) {
        for (int j = 0; j < HID; j++) {
            float z = w[1][j];
            for (int i = 0; i < IN; i++) z += w[0][j * IN + i] * x[s * IN + i];
            h[s * HID + j] = tanhf(z);
        }
        for (int o = 0; o < OUT; o++) {
            float y = w[3][o];
            for (int j = 0; j < HID; j++) y += w[2][o * HID + j] * h[s * HID + j];
            const float d = y - t[s * OUT + o];
            loss += d * d;
            dy[s * OUT + o] = 2.0f * d;
        }
        for (int j = 0; j < HID; j++) {
            float d = 0.0f;
            for (int o = 0; o < OUT; o++) d += w[2][o * HID + j] * dy[s * OUT + o];
            dh[s * HID + j] = d * (1.0f - h[s * HID + j] * h[s * HID + j]);
        }
    }
    gemm_at_b(HID, IN, MB, dh, x, beta, g[0]);  /* dW1 = dH^T X */
    gemm_at_b(OUT, HID, MB, dy, h, beta, g[2]); /* dW2 = dY^T H */
    for (int j = 0; j < HID; j++) {
        float s = beta * g[1][j];
        for (int p = 0; p < MB; p++) s += dh[p * HID + j];
        g[1][j] = s;
    }
    for (int o = 0; o < OUT; o++) {
        float s = beta * g[3][o];
        for (int p = 0; p < MB; p++) s += dy[p * OUT + o];
        g[3][o] = s;
    }
    return loss;
}

static float teacher[NT][HID * IN];
static float init[NT][HID * IN];

/* One micro-batch of synthetic data: x uniform, t = teacher(x). */
static void sample(float *x, float *t) {
    const float *tw[NT] = {teacher[0], teacher[1], teacher[2], teacher[3]};
    for (int i = 0; i < MB * IN; i++) x[i] = uniform();
    for (int s = 0; s < MB; s++) {
        float hh[HID];
        for (int j = 0; j < HID; j++) {
            float z = tw[1][j];
            for (int i = 0; i < IN; i++) z += tw[0][j * IN + i] * x[s * IN + i];
            hh[j] = tanhf(z);
        }
        for (int o = 0; o < OUT; o++) {
            float y = tw[3][o];
            for (int j = 0; j < HID; j++) y += tw[2][o * HID + j] * hh[j];
            t[s * OUT + o] = y;
        }
    }
}

/* Trains from `init`; in_place: the backward adds into the accumulators, otherwise
 * into the host's own buffers handed over with gacc_microbatch_tensors. Writes the
 * final weights to `out` and returns the first and last windows' mean loss. */
static void train(int in_place, float *out, float *first_loss, float *last_loss) {
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.lr = 0.01f;
    cfg.weight_decay = 0.0f;
    cfg.grad_reduction = GACC_GRADS_SUM;
    gacc_tensor_desc desc[NT];
    for (int t = 0; t < NT; t++) {
        desc[t].name = NULL;
        desc[t].numel = numel[t];
        desc[t].init = init[t];
        desc[t].no_weight_decay = t % 2; /* biases */
    }
    gacc_engine *e = NULL;
    TRY(gacc_create(&cfg, desc, NT, &e));
    float *w[NT], *acc[NT];
    static float own[NT][HID * IN]; /* the per-tensor run's gradient buffers */
    gacc_grad grads[NT];
    for (int t = 0; t < NT; t++) {
        TRY(gacc_params_ptr(e, (size_t)t, GACC_DTYPE_F32, (void **)&w[t]));
        TRY(gacc_accumulator_ptr(e, (size_t)t, &acc[t]));
        grads[t].data = own[t];
        grads[t].dtype = GACC_DTYPE_F32;
        grads[t].numel = numel[t];
    }
    rng_state = 12345; /* the same data in both runs */
    for (int win = 0; win < WINDOWS; win++) {
        float loss = 0.0f;
        for (int k = 0; k < K; k++) {
            float x[MB * IN], t[MB * OUT];
            sample(x, t);
            const float *cw[NT] = {w[0], w[1], w[2], w[3]};
            if (in_place) {
                loss += backward(cw, x, t, 1.0f, acc); /* beta = 1: into the accumulator */
                TRY(gacc_microbatch_inplace(e, MB));
            } else {
                float *g[NT] = {own[0], own[1], own[2], own[3]};
                loss += backward(cw, x, t, 0.0f, g); /* beta = 0: into its own buffers */
                TRY(gacc_microbatch_tensors(e, grads, NT, MB));
            }
        }
        gacc_step_info info;
        TRY(gacc_step(e, &info));
        if (info.applied != 1 || info.microbatches != K || info.total_weight != K * MB) {
            fprintf(stderr, "window %d: unexpected step info\n", win);
            exit(1);
        }
        if (win == 0) *first_loss = loss / (K * MB);
        *last_loss = loss / (K * MB);
    }
    size_t n = 0;
    TRY(gacc_numel(e, &n));
    TRY(gacc_params_read(e, out, n));
    gacc_destroy(e);
}

int main(void) {
    for (int t = 0; t < NT; t++) {
        for (size_t i = 0; i < numel[t]; i++) {
            teacher[t][i] = uniform() * (t == 0 ? 0.6f : 0.4f);
            init[t][i] = uniform() * 0.1f;
        }
    }
    enum { N = HID * IN + HID + OUT * HID + OUT };
    static float a[N], b[N];
    float f0, l0, f1, l1;
    train(1, a, &f0, &l0);
    train(0, b, &f1, &l1);
    float worst = 0.0f;
    for (int i = 0; i < N; i++) {
        const float d = fabsf(a[i] - b[i]) / (fabsf(b[i]) + 1e-3f);
        if (d > worst) worst = d;
    }
    printf("in place:   loss %.5f -> %.6f\n", f0, l0);
    printf("per tensor: loss %.5f -> %.6f\n", f1, l1);
    printf("largest relative difference of the weights: %.2e\n", worst);
    const int ok = l0 < f0 / 10.0f && l1 < f1 / 10.0f && worst < 1e-3f && f0 == f1;
    printf("%s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

/*
 * Concept: global-norm clipping is torch.nn.utils.clip_grad_norm_, applied once per
 * window to the unscaled, averaged gradient.
 *
 * For each window the expected step is computed independently here, in double:
 *   g = sum_k w_k * grad_k / (total * S)        (grad_k as handed over, scaled by S)
 *   norm = ||g||_2,  coef = min(1, max_grad_norm / (norm + 1e-6))
 *   p' = p - lr * coef * g                       (SGD, momentum 0, no weight decay)
 * and compared with gacc_step_info (grad_norm, clip_coef: 1e-5 relative) and with the
 * weights. Weight tolerance, per element: 2^-20 * (|p| + lr * coef * sum_k w_k |grad_k| /
 * (total * S)), i.e. ~8 fp32 ulps of the quantities gacc rounds (three fp32 products and
 * sums in the accumulator, the rounded 1/(total*S), the coefficient, lr * d and p + ...).
 * Runs in FP32 and in FP16 precision (S = 1024: the norm must be of the *unscaled*
 * gradient, clipping before unscaling would be caught), for a window that is clipped
 * and one that is not (coef exactly 1), with 3 micro-batches of weights 2, 3 and 5.
 * The test can fail: clipping each micro-batch separately (the known pitfall) gives
 * weights that differ from the once-per-window result by far more than the tolerance.
 */
#include "check.h"

#define N 50
#define K 3

static void window(uint32_t precision, float max_norm, uint64_t seed, int expect_clip) {
    const double w[K] = {2.0, 3.0, 5.0};
    const double total = 10.0;
    const float lr = 0.1f;
    gacc_config cfg;
    float init[N];
    uint64_t s = seed;
    for (int i = 0; i < N; i++) init[i] = rng_uniform(&s, -1.0f, 1.0f);
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = GACC_OPTIMIZER_SGD;
    cfg.lr = lr;
    cfg.weight_decay = 0.0f;
    cfg.max_grad_norm = max_norm;
    cfg.precision = precision;
    cfg.init_scale = 1024.0f;
    gacc_tensor_desc t[2] = {{"w", 40, init, 0}, {"b", 10, init + 40, 1}};
    gacc_engine *e = CREATE(&cfg, t, 2);
    if (!e) return;

    for (int win = 0; win < 3; win++) {
        float p0[N], p1[N], grads[K][N], S = 0.0f;
        double g[N] = {0}, gabs[N] = {0}, alt[N] = {0};
        CHECK_OK(gacc_params_read(e, p0, N));
        CHECK_OK(gacc_loss_scale(e, &S));
        for (int k = 0; k < K; k++) {
            for (int i = 0; i < N; i++) grads[k][i] = rng_uniform(&s, -1.0f, 1.0f) * S; /* exact: S = 2^n */
            CHECK_OK(gacc_microbatch(e, grads[k], GACC_DTYPE_F32, N, w[k]));
            double nk = 0.0;
            for (int i = 0; i < N; i++) {
                g[i] += w[k] * grads[k][i] / (total * S);
                gabs[i] += w[k] * fabs(grads[k][i]) / (total * S);
                nk += ((double)grads[k][i] / S) * ((double)grads[k][i] / S);
            }
            /* the pitfall: clip each micro-batch's own gradient, then average */
            double ck = max_norm > 0 ? fmin(1.0, max_norm / (sqrt(nk) + 1e-6)) : 1.0;
            for (int i = 0; i < N; i++) alt[i] += w[k] * ck * grads[k][i] / S / total;
        }
        double norm = 0.0;
        for (int i = 0; i < N; i++) norm += g[i] * g[i];
        norm = sqrt(norm);
        double coef = max_norm > 0 ? fmin(1.0, max_norm / (norm + 1e-6)) : 1.0;

        gacc_step_info info;
        CHECK_OK(gacc_step(e, &info));
        CHECK_OK(gacc_params_read(e, p1, N));
        CHECK(info.applied == 1);
        CHECK_MSG(fabs(info.grad_norm - norm) <= 1e-5 * norm, "grad_norm %.9g, want %.9g", (double)info.grad_norm,
                  norm);
        CHECK_MSG(fabs(info.clip_coef - coef) <= 1e-5 * coef, "clip_coef %.9g, want %.9g", (double)info.clip_coef,
                  coef);
        if (expect_clip)
            CHECK_MSG(coef < 0.5, "the window was meant to be clipped (coef %g)", coef);
        else
            CHECK_MSG(info.clip_coef == 1.0f, "unclipped window: clip_coef %.9g, want exactly 1",
                      (double)info.clip_coef);
        double worst = 0.0, alt_gap = 0.0, tol_max = 0.0;
        for (int i = 0; i < N; i++) {
            double want = (double)p0[i] - (double)lr * coef * g[i];
            double tol = 0x1p-20 * (fabs((double)p0[i]) + (double)lr * coef * gabs[i]);
            double err = fabs((double)p1[i] - want);
            CHECK_MSG(err <= tol, "window %d element %d: %.9g, want %.9g (tol %.3g)", win, i, (double)p1[i], want,
                      tol);
            if (err > worst) worst = err;
            if (tol > tol_max) tol_max = tol;
            double a = fabs((double)p1[i] - ((double)p0[i] - (double)lr * alt[i]));
            if (a > alt_gap) alt_gap = a;
        }
        printf("%s max_norm %-4g window %d: norm %.6f coef %.6f | max |p - ref| %.3g (tol <= %.3g) | "
               "per-micro-batch clipping would differ by %.3g\n",
               precision == GACC_PRECISION_FP16 ? "FP16" : "FP32", (double)max_norm, win, norm, coef, worst, tol_max,
               alt_gap);
        if (expect_clip)
            CHECK_MSG(alt_gap > 100.0 * tol_max, "per-micro-batch clipping is indistinguishable (%g)", alt_gap);
    }
    gacc_destroy(e);
}

int main(void) {
    window(GACC_PRECISION_FP32, 0.5f, 1, 1);
    window(GACC_PRECISION_FP32, 100.0f, 2, 0);
    window(GACC_PRECISION_FP32, 0.0f, 3, 0); /* clipping off */
    window(GACC_PRECISION_FP16, 0.5f, 4, 1);
    window(GACC_PRECISION_FP16, 100.0f, 5, 0);
    return check_finish("test_clipping");
}

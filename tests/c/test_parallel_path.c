/*
 * Concept: a model large enough for the CPU backend's multithreaded path (>= 256 Ki
 * elements, split into 32 Ki chunks that cross tensor and weight-decay boundaries)
 * computes exactly what a plain scalar loop computes.
 *
 * 300 001 parameters in three tensors (decay, no decay, decay; sizes chosen so no
 * boundary falls on a chunk edge), SGD with momentum 0.9, Nesterov and L2 weight decay,
 * 4 windows of 3 micro-batches (fp32, fp16 and bf16 gradients). The reference is written
 * here in C, element by element, with the operations in torch.optim.SGD's order (and the
 * rounding of gacc's documented formulas: g = (acc * (float)(1 / total)) ), in fp32
 * without contraction (ISO C mode: -ffp-contract=off). The weights must match BIT FOR
 * BIT, and the reported norm must match the double-precision norm to 1e-6.
 */
#include "check.h"
#include "half.h"

#define N0 100003
#define N1 77
#define N2 199921
#define N (N0 + N1 + N2)

static float p_ref[N], buf[N], acc[N], g32[N], p_eng[N];
static uint16_t g16[N], gb16[N];

int main(void) {
    uint64_t s = 99;
    static float init[N];
    for (size_t i = 0; i < N; i++) init[i] = rng_uniform(&s, -1.0f, 1.0f);
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = GACC_OPTIMIZER_SGD;
    cfg.lr = 0.05f;
    cfg.momentum = 0.9f;
    cfg.nesterov = 1;
    cfg.weight_decay = 0.01f;
    gacc_tensor_desc t[3] = {{"a", N0, init, 0}, {"b", N1, init + N0, 1}, {"c", N2, init + N0 + N1, 0}};
    gacc_engine *e = CREATE(&cfg, t, 3);
    if (!e) return check_finish("test_parallel_path");
    memcpy(p_ref, init, sizeof p_ref);
    const float lr = 0.05f, mom = 0.9f, wd = 0.01f;

    for (int w = 0; w < 4; w++) {
        const double wts[3] = {3.0, 7.0, 6.0};
        memset(acc, 0, sizeof acc);
        for (int k = 0; k < 3; k++) {
            float mul = (float)wts[k];
            for (size_t i = 0; i < N; i++) {
                float v = rng_uniform(&s, -2.0f, 2.0f);
                if (k == 0) {
                    g32[i] = v;
                    acc[i] += mul * v;
                } else if (k == 1) {
                    g16[i] = f32_to_f16_rne(v);
                    acc[i] += mul * f16_to_f32(g16[i]);
                } else {
                    gb16[i] = f32_to_bf16_rne(v);
                    acc[i] += mul * bf16_to_f32(gb16[i]);
                }
            }
        }
        CHECK_OK(gacc_microbatch(e, g32, GACC_DTYPE_F32, N, wts[0]));
        CHECK_OK(gacc_microbatch(e, g16, GACC_DTYPE_F16, N, wts[1]));
        CHECK_OK(gacc_microbatch(e, gb16, GACC_DTYPE_BF16, N, wts[2]));
        gacc_step_info info;
        CHECK_OK(gacc_step(e, &info));

        const float factor = (float)(1.0 / 16.0);
        double norm = 0.0;
        for (size_t i = 0; i < N; i++) {
            float g = acc[i] * factor;
            norm += (double)g * (double)g;
            int decay = !(i >= N0 && i < N0 + N1);
            float d = decay ? g + wd * p_ref[i] : g;
            buf[i] = w == 0 ? d : buf[i] * mom + d;
            d = d + mom * buf[i];
            p_ref[i] = p_ref[i] + (-lr) * d;
        }
        norm = sqrt(norm);
        CHECK_OK(gacc_params_read(e, p_eng, N));
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < N; i++)
            if (memcmp(&p_eng[i], &p_ref[i], sizeof(float)) != 0 && bad++ == 0) first = i;
        printf("window %d: %zu parameters, norm %.6f (engine %.6f), %zu elements differ from the C reference\n", w,
               (size_t)N, norm, (double)info.grad_norm, bad);
        CHECK_MSG(bad == 0, "window %d: %zu elements differ, first %zu: %.9g vs %.9g", w, bad, first,
                  (double)p_eng[first], (double)p_ref[first]);
        CHECK(fabs(info.grad_norm - norm) <= 1e-6 * norm);
        CHECK(info.applied == 1 && info.total_weight == 16.0 && info.microbatches == 3);
    }
    gacc_destroy(e);
    return check_finish("test_parallel_path");
}

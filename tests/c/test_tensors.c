/*
 * test_tensors.c: the v0.2 additions through the C header. gacc_microbatch_tensors
 * with an f32, an f16 and a NULL entry equals gacc_microbatch on the f32
 * concatenation bit for bit (accumulator and weights); a rejected entry is named by
 * its index and changes nothing; the in-place path (gacc_accumulator_ptr +
 * gacc_microbatch_inplace) equals gacc_microbatch bit for bit, leaves the accumulator
 * zero after the step, and is refused in drop mode.
 */
#include "check.h"
#include "half.h"

#define N0 37
#define N1 300
#define N2 5
#define N (N0 + N1 + N2)

static gacc_engine *make(uint32_t drop, const float *init) {
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.drop_nonfinite_microbatches = drop;
    gacc_tensor_desc t[3] = {{"a", N0, init, 0}, {"b", N1, init + N0, 0}, {"c", N2, init + N0 + N1, 1}};
    return CREATE(&cfg, t, 3);
}

static float *acc_of(gacc_engine *e, size_t t) {
    float *p = NULL;
    CHECK_OK(gacc_accumulator_ptr(e, t, &p));
    return p;
}

int main(void) {
    uint64_t rng = 7;
    static float init[N], g0[N0], flat[N], g2[N];
    static uint16_t g1[N1];
    for (int i = 0; i < N; i++) init[i] = rng_uniform(&rng, -1.0f, 1.0f);
    gacc_engine *a = make(0, init), *b = make(0, init);
    if (!a || !b) return check_finish("test_tensors");

    for (int mb = 0; mb < 3; mb++) {
        for (int i = 0; i < N0; i++) g0[i] = rng_uniform(&rng, -2.0f, 2.0f);
        for (int i = 0; i < N1; i++) g1[i] = f32_to_f16_rne(rng_uniform(&rng, -2.0f, 2.0f));
        gacc_grad grads[3] = {{g0, GACC_DTYPE_F32, N0}, {g1, GACC_DTYPE_F16, N1}, {NULL, 0, 0}};
        for (int i = 0; i < N0; i++) flat[i] = g0[i];
        for (int i = 0; i < N1; i++) flat[N0 + i] = f16_to_f32(g1[i]);
        for (int i = 0; i < N2; i++) flat[N0 + N1 + i] = 0.0f;
        CHECK_OK(gacc_microbatch_tensors(a, grads, 3, 1.0 + mb));
        CHECK_OK(gacc_microbatch(b, flat, GACC_DTYPE_F32, N, 1.0 + mb));
    }
    CHECK(memcmp(acc_of(a, 0), acc_of(b, 0), N * sizeof(float)) == 0);

    /* rejections: the index is named, nothing changes */
    static float before[N];
    memcpy(before, acc_of(a, 0), sizeof before);
    gacc_grad bad[3] = {{g0, GACC_DTYPE_F32, N0}, {g1, GACC_DTYPE_F16, N1 - 1}, {NULL, 0, 0}};
    CHECK_STATUS(gacc_microbatch_tensors(a, bad, 3, 1.0), GACC_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_NAMES("grads[1].numel");
    bad[1].numel = N1;
    bad[2].data = g2;
    bad[2].dtype = 9;
    CHECK_STATUS(gacc_microbatch_tensors(a, bad, 3, 1.0), GACC_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_NAMES("grads[2].dtype");
    CHECK_STATUS(gacc_microbatch_tensors(a, bad, 2, 1.0), GACC_ERR_INVALID_ARGUMENT);
    CHECK_ERROR_NAMES("n_grads");
    CHECK(memcmp(before, acc_of(a, 0), sizeof before) == 0);

    gacc_step_info ia, ib;
    CHECK_OK(gacc_step(a, &ia));
    CHECK_OK(gacc_step(b, &ib));
    CHECK(ia.microbatches == 3 && ia.total_weight == 6.0 && ia.grad_norm == ib.grad_norm);
    static float pa[N], pb[N];
    CHECK_OK(gacc_params_read(a, pa, N));
    CHECK_OK(gacc_params_read(b, pb, N));
    CHECK(memcmp(pa, pb, sizeof pa) == 0);

    /* in place: acc += w * g into each tensor's accumulator, against gacc_microbatch */
    for (int mb = 0; mb < 2; mb++) {
        const double w = 0.5 + mb;
        for (int i = 0; i < N; i++) g2[i] = rng_uniform(&rng, -1.0f, 1.0f);
        const size_t off[3] = {0, N0, N0 + N1}, len[3] = {N0, N1, N2};
        for (size_t t = 0; t < 3; t++) {
            float *acc = acc_of(a, t);
            for (size_t i = 0; i < len[t]; i++) acc[i] += (float)w * g2[off[t] + i];
        }
        CHECK_OK(gacc_microbatch_inplace(a, w));
        CHECK_OK(gacc_microbatch(b, g2, GACC_DTYPE_F32, N, w));
    }
    CHECK(memcmp(acc_of(a, 0), acc_of(b, 0), N * sizeof(float)) == 0);
    CHECK_OK(gacc_step(a, &ia));
    CHECK_OK(gacc_step(b, &ib));
    CHECK(ia.microbatches == 2 && ia.total_weight == 2.0);
    CHECK_OK(gacc_params_read(a, pa, N));
    CHECK_OK(gacc_params_read(b, pb, N));
    CHECK(memcmp(pa, pb, sizeof pa) == 0);
    int zero = 1;
    for (int i = 0; i < N; i++) zero &= acc_of(a, 0)[i] == 0.0f;
    CHECK_MSG(zero, "the accumulator is not zero after the step");
    gacc_destroy(a);
    gacc_destroy(b);

    /* drop mode: in place refused (naming the option), per tensor drops on a NaN */
    gacc_engine *d = make(1, init);
    if (!d) return check_finish("test_tensors");
    CHECK_STATUS(gacc_microbatch_inplace(d, 1.0), GACC_ERR_INVALID_STATE);
    CHECK_ERROR_NAMES("drop_nonfinite_microbatches");
    g2[N2 - 1] = NAN;
    gacc_grad last[3] = {{g0, GACC_DTYPE_F32, N0}, {NULL, 0, 0}, {g2, GACC_DTYPE_F32, N2}};
    CHECK_OK(gacc_microbatch_tensors(d, last, 3, 1.0));
    last[2].data = NULL;
    CHECK_OK(gacc_microbatch_tensors(d, last, 3, 2.0));
    CHECK_OK(gacc_step(d, &ia));
    CHECK(ia.dropped_microbatches == 1 && ia.microbatches == 2 && ia.total_weight == 2.0 && ia.applied == 1);
    gacc_destroy(d);
    return check_finish("test_tensors");
}

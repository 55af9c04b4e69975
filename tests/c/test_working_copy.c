/*
 * Concept: the FP16 / BF16 working copy (gacc_params_ptr with the precision's dtype) is
 * the round-to-nearest-even image of the fp32 master, at creation, after steps and after
 * gacc_params_write.
 *
 * The reference conversion is written here, bit by bit (tests/c/half.h), and first
 * checked on known values: ties to even, the largest finite fp16, overflow to inf,
 * subnormals, signed zero, NaN. The masters include values that exercise all of these.
 * Each tensor's pointer must sit at its span's offset in one contiguous buffer.
 */
#include "check.h"
#include "half.h"

#define N 64

static void converter_self_test(void) {
    CHECK(f32_to_f16_rne(1.0f) == 0x3C00u);
    CHECK(f32_to_f16_rne(-2.0f) == 0xC000u);
    CHECK(f32_to_f16_rne(65504.0f) == 0x7BFFu);
    CHECK(f32_to_f16_rne(65519.0f) == 0x7BFFu);  /* below the midpoint to 65536 */
    CHECK(f32_to_f16_rne(65520.0f) == 0x7C00u);  /* the midpoint, ties to even: inf */
    CHECK(f32_to_f16_rne(1.0f + 0x1p-11f) == 0x3C00u);        /* tie, to even (down) */
    CHECK(f32_to_f16_rne(1.0f + 3 * 0x1p-11f) == 0x3C02u);    /* tie, to even (up) */
    CHECK(f32_to_f16_rne(0x1p-24f) == 0x0001u);                /* smallest subnormal */
    CHECK(f32_to_f16_rne(0x1p-25f) == 0x0000u);                /* tie to even: 0 */
    CHECK(f32_to_f16_rne(0x1.8p-25f) == 0x0001u);
    CHECK(f32_to_f16_rne(0x1p-14f) == 0x0400u);                /* smallest normal */
    CHECK(f32_to_f16_rne(-0.0f) == 0x8000u);
    CHECK(f32_to_f16_rne(INFINITY) == 0x7C00u);
    CHECK((f32_to_f16_rne(NAN) & 0x7C00u) == 0x7C00u && (f32_to_f16_rne(NAN) & 0x3FFu) != 0);
    CHECK(f16_to_f32(0x3C00u) == 1.0f && f16_to_f32(0x0001u) == 0x1p-24f);
    CHECK(f32_to_bf16_rne(1.0f) == 0x3F80u);
    CHECK(f32_to_bf16_rne(1.0f + 0x1p-8f) == 0x3F80u);          /* tie, to even */
    CHECK(f32_to_bf16_rne(1.0f + 3 * 0x1p-8f) == 0x3F82u);
    CHECK(f32_to_bf16_rne(3.4e38f) == 0x7F80u);                 /* rounds up to inf */
    /* every fp16 value converts back to itself */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        uint16_t v = (uint16_t)h;
        if ((v & 0x7C00u) == 0x7C00u && (v & 0x3FFu)) continue; /* NaN payloads */
        if (f32_to_f16_rne(f16_to_f32(v)) != v) {
            CHECK_MSG(0, "fp16 0x%04x does not round-trip", (unsigned)v);
            break;
        }
    }
}

static void fill(float *p, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < N; i++) p[i] = rng_uniform(&s, -4.0f, 4.0f);
    p[0] = 65519.0f;
    p[1] = 65520.0f;        /* -> inf in fp16 */
    p[2] = -1e-6f;          /* fp16 subnormal */
    p[3] = 1e-9f;           /* underflows to 0 in fp16 */
    p[4] = -0.0f;
    p[5] = 1.0f + 0x1p-11f; /* ties */
    p[6] = 1.0f + 0x1p-8f;
    p[7] = 1e30f;           /* fine in bf16 */
}

/* Compares every tensor's working copy with the reference conversion of the master. */
static void compare(gacc_engine *e, uint32_t dtype, const char *when) {
    float master[N];
    size_t nt = 0;
    void *base = NULL;
    CHECK_OK(gacc_params_read(e, master, N));
    CHECK_OK(gacc_n_tensors(e, &nt));
    CHECK_OK(gacc_params_ptr(e, 0, dtype, &base));
    for (size_t t = 0; t < nt && base; t++) {
        size_t off = 0, n = 0;
        void *ptr = NULL, *mptr = NULL;
        CHECK_OK(gacc_tensor_span(e, t, &off, &n));
        CHECK_OK(gacc_params_ptr(e, t, dtype, &ptr));
        CHECK_OK(gacc_params_ptr(e, t, GACC_DTYPE_F32, &mptr));
        CHECK(ptr == (void *)((uint16_t *)base + off));
        if (!ptr || !mptr) continue;
        const uint16_t *w = (const uint16_t *)ptr;
        CHECK(memcmp(mptr, master + off, n * sizeof(float)) == 0);
        for (size_t i = 0; i < n; i++) {
            float m = master[off + i];
            uint16_t want = dtype == GACC_DTYPE_F16 ? f32_to_f16_rne(m) : f32_to_bf16_rne(m);
            CHECK_MSG(w[i] == want, "%s, %s tensor %zu element %zu: master %a -> 0x%04x, want 0x%04x",
                      dtype == GACC_DTYPE_F16 ? "fp16" : "bf16", when, t, i, (double)m, (unsigned)w[i],
                      (unsigned)want);
        }
    }
}

int main(void) {
    converter_self_test();
    for (int which = 0; which < 2; which++) {
        uint32_t precision = which ? GACC_PRECISION_BF16 : GACC_PRECISION_FP16;
        uint32_t dtype = which ? GACC_DTYPE_BF16 : GACC_DTYPE_F16;
        float init[N], g[N], fresh[N];
        fill(init, 21);
        gacc_config cfg;
        gacc_config_init(&cfg);
        cfg.device = GACC_DEVICE_CPU;
        cfg.precision = precision;
        cfg.lr = 0.01f;
        cfg.init_scale = 1.0f; /* FP16: gradients below are unscaled */
        gacc_tensor_desc t[3] = {{"a", 20, init, 0}, {"b", 4, init + 20, 1}, {"c", 40, init + 24, 0}};
        gacc_engine *e = CREATE(&cfg, t, 3);
        if (!e) continue;
        compare(e, dtype, "at creation");
        uint64_t s = 77;
        for (int step = 0; step < 5; step++) {
            for (int i = 0; i < N; i++) g[i] = rng_uniform(&s, -1.0f, 1.0f);
            CHECK_OK(gacc_microbatch(e, g, GACC_DTYPE_F32, N, 1.0));
            CHECK_OK(gacc_step(e, NULL));
            compare(e, dtype, "after a step");
        }
        fill(fresh, 22);
        CHECK_OK(gacc_params_write(e, fresh, N));
        compare(e, dtype, "after gacc_params_write");
        gacc_destroy(e);
    }
    return check_finish("test_working_copy");
}

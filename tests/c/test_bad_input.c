/*
 * Concept: every bad call is refused with its status and a message naming the function
 * and the argument or field, and changes nothing.
 *
 * Engine E and its twin T (AdamW, FP16 precision, the C MLP's 4 tensors) each receive
 * the same two good micro-batches. E then receives every kind of bad call in
 * docs/c-api.md: NULL engine / grad / out arguments, a destroyed handle (also after new
 * engines were created), garbage handle pointers, an unknown dtype, a wrong numel,
 * NaN / negative / infinite / too large weights, a misaligned gradient, bad tensor
 * indices and dtypes for gacc_params_ptr, bad learning rates, bad buffers for
 * gacc_params_read / gacc_params_write, a stream on a CPU engine. Each must return the
 * expected status, and gacc_last_error() must be non-empty and name the function and
 * the argument. Then E and T step: the step reports and the weights (fp32 master and
 * fp16 working copy) must be bit-identical, so no bad call touched the window.
 *
 * Also: every invalid field of gacc_create, each named in the message, with `*out`
 * untouched; n_tensors 0, numel 0, an engine too large for this machine; gacc_step on an
 * empty window (GACC_ERR_INVALID_STATE); gacc_destroy(NULL) and double destroy;
 * gacc_status_name for every code and for unknown values; gacc_config_init(NULL).
 */
#include <float.h>

#include "check.h"
#include "mlp.h"

static gacc_engine *make(gacc_config *cfg_out) {
    gacc_config cfg;
    gacc_tensor_desc t[MLP_NTENSORS];
    static float init[MLP_NPARAM];
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.precision = GACC_PRECISION_FP16;
    cfg.init_scale = 1.0f;
    cfg.lr = 0.01f;
    mlp_init(init, 1234);
    mlp_tensors(t, init);
    if (cfg_out) *cfg_out = cfg;
    return CREATE(&cfg, t, MLP_NTENSORS);
}

/* The call must fail with `want` and a message that names the function and `what`. */
#define BAD(call, want, function, what)                                                 \
    do {                                                                                \
        CHECK_STATUS(call, want);                                                       \
        CHECK_ERROR_NAMES(function);                                                    \
        CHECK_ERROR_NAMES(what);                                                        \
    } while (0)

static void status_names(void) {
    static const char *names[] = {
        "GACC_OK", "GACC_ERR_NULL_POINTER", "GACC_ERR_INVALID_ARGUMENT", "GACC_ERR_INVALID_HANDLE",
        "GACC_ERR_INVALID_STATE", "GACC_ERR_OUT_OF_MEMORY", "GACC_ERR_DEVICE_UNAVAILABLE", "GACC_ERR_DEVICE",
        "GACC_ERR_IO", "GACC_ERR_CORRUPT", "GACC_ERR_COMMUNICATION", "GACC_ERR_INTERNAL"};
    const gacc_status codes[] = {GACC_OK, GACC_ERR_NULL_POINTER, GACC_ERR_INVALID_ARGUMENT,
                                 GACC_ERR_INVALID_HANDLE, GACC_ERR_INVALID_STATE, GACC_ERR_OUT_OF_MEMORY,
                                 GACC_ERR_DEVICE_UNAVAILABLE, GACC_ERR_DEVICE, GACC_ERR_IO, GACC_ERR_CORRUPT,
                                 GACC_ERR_COMMUNICATION, GACC_ERR_INTERNAL};
    for (int i = 0; i < 12; i++) {
        CHECK((int)codes[i] == i); /* the numbers are ABI */
        const char *n = gacc_status_name(codes[i]);
        CHECK_MSG(n && strcmp(n, names[i]) == 0, "status %d is named \"%s\"", i, n ? n : "(NULL)");
    }
    const int unknown[] = {12, 13, -1, 1000, 0x7fffffff};
    for (int i = 0; i < 5; i++) {
        const char *n = gacc_status_name((gacc_status)unknown[i]);
        CHECK_MSG(n && strcmp(n, "GACC_UNKNOWN_STATUS") == 0, "status %d is named \"%s\"", unknown[i],
                  n ? n : "(NULL)");
    }
}

static void bad_configs(void) {
    gacc_tensor_desc t = {"w", 4, NULL, 0};
    gacc_engine *const sentinel = (gacc_engine *)(uintptr_t)0x5a5a5a5a;
#define BAD_CFG(field_expr, field_name)                                                 \
    do {                                                                                \
        gacc_config c;                                                                  \
        gacc_config_init(&c);                                                           \
        c.device = GACC_DEVICE_CPU;                                                     \
        field_expr;                                                                     \
        gacc_engine *out = sentinel;                                                    \
        BAD(gacc_create(&c, &t, 1, &out), GACC_ERR_INVALID_ARGUMENT, "gacc_create", field_name); \
        CHECK_MSG(out == sentinel, "gacc_create wrote *out on failure (%s)", #field_expr); \
    } while (0)
    BAD_CFG(c.device = -3, "device");
    BAD_CFG(c.device = INT32_MIN, "device");
    BAD_CFG(c.optimizer = 2, "optimizer");
    BAD_CFG(c.lr = NAN, "lr");
    BAD_CFG(c.lr = -1e-3f, "lr");
    BAD_CFG(c.lr = INFINITY, "lr");
    BAD_CFG(c.momentum = -0.5f, "momentum");
    BAD_CFG(c.momentum = NAN, "momentum");
    BAD_CFG(c.nesterov = 2, "nesterov");
    BAD_CFG((c.optimizer = GACC_OPTIMIZER_SGD, c.nesterov = 1, c.momentum = 0.0f), "nesterov");
    BAD_CFG(c.beta1 = 1.0f, "beta1");
    BAD_CFG(c.beta1 = -0.1f, "beta1");
    BAD_CFG(c.beta1 = NAN, "beta1");
    BAD_CFG(c.beta2 = 1.0f, "beta2");
    BAD_CFG(c.beta2 = NAN, "beta2");
    BAD_CFG(c.eps = 0.0f, "eps");
    BAD_CFG(c.eps = -1e-8f, "eps");
    BAD_CFG(c.eps = NAN, "eps");
    BAD_CFG(c.weight_decay = -0.01f, "weight_decay");
    BAD_CFG(c.weight_decay = INFINITY, "weight_decay");
    BAD_CFG(c.precision = 3, "precision");
    BAD_CFG(c.max_grad_norm = NAN, "max_grad_norm");
    BAD_CFG(c.max_grad_norm = INFINITY, "max_grad_norm");
    BAD_CFG(c.init_scale = 0.0f, "init_scale");
    BAD_CFG(c.init_scale = -2.0f, "init_scale");
    BAD_CFG(c.init_scale = INFINITY, "init_scale");
    BAD_CFG(c.init_scale = NAN, "init_scale");
    BAD_CFG(c.growth_factor = 1.0f, "growth_factor");
    BAD_CFG(c.growth_factor = 0.5f, "growth_factor");
    BAD_CFG(c.growth_factor = INFINITY, "growth_factor");
    BAD_CFG(c.growth_factor = NAN, "growth_factor");
    BAD_CFG(c.backoff_factor = 0.0f, "backoff_factor");
    BAD_CFG(c.backoff_factor = 1.0f, "backoff_factor");
    BAD_CFG(c.backoff_factor = NAN, "backoff_factor");
    BAD_CFG(c.growth_interval = 0, "growth_interval");
    BAD_CFG(c.grad_reduction = 2, "grad_reduction");
#undef BAD_CFG

    /* arguments of gacc_create other than the config */
    gacc_config c;
    gacc_config_init(&c);
    c.device = GACC_DEVICE_CPU;
    gacc_engine *out = sentinel;
    BAD(gacc_create(NULL, &t, 1, &out), GACC_ERR_NULL_POINTER, "gacc_create", "cfg");
    BAD(gacc_create(&c, &t, 1, NULL), GACC_ERR_NULL_POINTER, "gacc_create", "out");
    BAD(gacc_create(&c, NULL, 1, &out), GACC_ERR_NULL_POINTER, "gacc_create", "tensors");
    BAD(gacc_create(&c, &t, 0, &out), GACC_ERR_INVALID_ARGUMENT, "gacc_create", "n_tensors");
    gacc_tensor_desc two[2] = {{"a", 3, NULL, 0}, {"b", 0, NULL, 1}};
    BAD(gacc_create(&c, two, 2, &out), GACC_ERR_INVALID_ARGUMENT, "gacc_create", "tensors[1].numel");
    gacc_tensor_desc nwd = {"a", 3, NULL, 2};
    BAD(gacc_create(&c, &nwd, 1, &out), GACC_ERR_INVALID_ARGUMENT, "gacc_create", "no_weight_decay");
    /* too large for any machine: an overflowing total, and 2^40 floats (4 TiB) */
    gacc_tensor_desc huge[2] = {{"a", SIZE_MAX / 2 + 1, NULL, 0}, {"b", SIZE_MAX / 2 + 1, NULL, 0}};
    BAD(gacc_create(&c, huge, 2, &out), GACC_ERR_INVALID_ARGUMENT, "gacc_create", "numel");
    gacc_tensor_desc big = {"a", (size_t)1 << 40, NULL, 0};
    BAD(gacc_create(&c, &big, 1, &out), GACC_ERR_INVALID_ARGUMENT, "gacc_create", "numel");
    /* misaligned initial values */
    static float initbuf[8];
    gacc_tensor_desc mis = {"a", 4, (const float *)(const void *)((const char *)initbuf + 2), 0};
    BAD(gacc_create(&c, &mis, 1, &out), GACC_ERR_INVALID_ARGUMENT, "gacc_create", "init");
    CHECK(out == sentinel);
}

int main(void) {
    CHECK_MSG(strcmp(gacc_last_error(), "") == 0, "nothing failed yet, but last error is \"%s\"", gacc_last_error());
    status_names();
    (gacc_config_init)(NULL); /* the function itself: no crash */
    CHECK_ERROR_NAMES("gacc_config_init");
    gacc_config_init(NULL); /* the header's macro (gacc_config_init_sized): no crash either */
    CHECK_ERROR_NAMES("gacc_config_init_sized");
    CHECK_ERROR_NAMES("cfg");
    bad_configs();

    gacc_config cfg;
    gacc_engine *E = make(&cfg), *T = make(NULL);
    gacc_engine *empty = make(NULL);
    gacc_engine *dead = make(NULL);
    if (!E || !T || !empty || !dead) return check_finish("test_bad_input");
    gacc_destroy(dead);
    gacc_destroy(dead); /* double destroy: no effect */
    gacc_destroy(NULL);
    gacc_engine *later[3];
    for (int i = 0; i < 3; i++) later[i] = make(NULL); /* new engines never reuse the dead handle */

    static mlp_sample data[64];
    mlp_make_data(data, 64, 3);
    float p[MLP_NPARAM], g1[MLP_NPARAM], g2[MLP_NPARAM];
    CHECK_OK(gacc_params_read(E, p, MLP_NPARAM));
    mlp_loss_grad(p, data, 20, 0, 1.0f, g1);
    mlp_loss_grad(p, data + 20, 44, 0, 1.0f, g2);
    CHECK_OK(gacc_microbatch(E, g1, GACC_DTYPE_F32, MLP_NPARAM, 20.0));
    CHECK_OK(gacc_microbatch(E, g2, GACC_DTYPE_F32, MLP_NPARAM, 44.0));
    CHECK_OK(gacc_microbatch(T, g1, GACC_DTYPE_F32, MLP_NPARAM, 20.0));
    CHECK_OK(gacc_microbatch(T, g2, GACC_DTYPE_F32, MLP_NPARAM, 44.0));

    const size_t n = MLP_NPARAM;
    gacc_engine *garbage[3] = {(gacc_engine *)(uintptr_t)0x1000, (gacc_engine *)(void *)&cfg,
                               (gacc_engine *)(uintptr_t)~(uintptr_t)0xF};
    size_t sz = 0;
    float f = 0.0f;
    int32_t dev = 0;
    void *ptr = NULL;
    const float *cptr = NULL;
    gacc_step_info info;
    float big[MLP_NPARAM * 2 + 8];

    /* ---- gacc_microbatch ---- */
    BAD(gacc_microbatch(NULL, g1, GACC_DTYPE_F32, n, 1.0), GACC_ERR_NULL_POINTER, "gacc_microbatch", "engine");
    BAD(gacc_microbatch(E, NULL, GACC_DTYPE_F32, n, 1.0), GACC_ERR_NULL_POINTER, "gacc_microbatch", "grad");
    BAD(gacc_microbatch(dead, g1, GACC_DTYPE_F32, n, 1.0), GACC_ERR_INVALID_HANDLE, "gacc_microbatch",
        "not a live engine");
    for (int i = 0; i < 3; i++)
        BAD(gacc_microbatch(garbage[i], g1, GACC_DTYPE_F32, n, 1.0), GACC_ERR_INVALID_HANDLE, "gacc_microbatch",
            "not a live engine");
    BAD(gacc_microbatch(E, g1, 3, n, 1.0), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch", "dtype");
    BAD(gacc_microbatch(E, g1, 0xFFFFFFFFu, n, 1.0), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch", "dtype");
    BAD(gacc_microbatch(E, g1, GACC_DTYPE_F32, n - 1, 1.0), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch", "numel");
    BAD(gacc_microbatch(E, big, GACC_DTYPE_F32, n + 1, 1.0), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch", "numel");
    BAD(gacc_microbatch(E, g1, GACC_DTYPE_F32, 0, 1.0), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch", "numel");
    BAD(gacc_microbatch(E, g1, GACC_DTYPE_F32, n, NAN), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch", "weight");
    BAD(gacc_microbatch(E, g1, GACC_DTYPE_F32, n, -1.0), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch", "weight");
    BAD(gacc_microbatch(E, g1, GACC_DTYPE_F32, n, INFINITY), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch",
        "weight");
    BAD(gacc_microbatch(E, g1, GACC_DTYPE_F32, n, -INFINITY), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch",
        "weight");
    BAD(gacc_microbatch(E, g1, GACC_DTYPE_F32, n, DBL_MAX), GACC_ERR_INVALID_ARGUMENT, "gacc_microbatch",
        "weight");
    BAD(gacc_microbatch(E, (const char *)big + 1, GACC_DTYPE_F32, n, 1.0), GACC_ERR_INVALID_ARGUMENT,
        "gacc_microbatch", "aligned");
    BAD(gacc_microbatch(E, (const char *)big + 2, GACC_DTYPE_F32, n, 1.0), GACC_ERR_INVALID_ARGUMENT,
        "gacc_microbatch", "grad");
    BAD(gacc_microbatch(E, (const char *)big + 1, GACC_DTYPE_F16, n, 1.0), GACC_ERR_INVALID_ARGUMENT,
        "gacc_microbatch", "aligned");

    /* ---- gacc_step / gacc_zero ---- */
    BAD(gacc_step(NULL, &info), GACC_ERR_NULL_POINTER, "gacc_step", "engine");
    BAD(gacc_step(NULL, NULL), GACC_ERR_NULL_POINTER, "gacc_step", "engine");
    BAD(gacc_step(dead, NULL), GACC_ERR_INVALID_HANDLE, "gacc_step", "not a live engine");
    BAD(gacc_step(garbage[0], &info), GACC_ERR_INVALID_HANDLE, "gacc_step", "not a live engine");
    BAD(gacc_step(empty, &info), GACC_ERR_INVALID_STATE, "gacc_step", "nothing accumulated");
    BAD(gacc_step(empty, NULL), GACC_ERR_INVALID_STATE, "gacc_step", "gacc_microbatch");
    CHECK_OK(gacc_microbatch(empty, g1, GACC_DTYPE_F32, n, 0.0)); /* weight 0 adds nothing */
    BAD(gacc_step(empty, &info), GACC_ERR_INVALID_STATE, "gacc_step", "total weight");
    CHECK_OK(gacc_microbatch(empty, g1, GACC_DTYPE_F32, n, 5.0));
    CHECK_OK(gacc_zero(empty)); /* dropped */
    BAD(gacc_step(empty, &info), GACC_ERR_INVALID_STATE, "gacc_step", "nothing accumulated");
    BAD(gacc_zero(NULL), GACC_ERR_NULL_POINTER, "gacc_zero", "engine");
    BAD(gacc_zero(dead), GACC_ERR_INVALID_HANDLE, "gacc_zero", "not a live engine");

    /* ---- queries with NULL outputs or bad handles ---- */
    BAD(gacc_numel(E, NULL), GACC_ERR_NULL_POINTER, "gacc_numel", "out");
    BAD(gacc_numel(NULL, &sz), GACC_ERR_NULL_POINTER, "gacc_numel", "engine");
    BAD(gacc_numel(dead, &sz), GACC_ERR_INVALID_HANDLE, "gacc_numel", "not a live engine");
    BAD(gacc_n_tensors(E, NULL), GACC_ERR_NULL_POINTER, "gacc_n_tensors", "out");
    BAD(gacc_n_tensors(dead, &sz), GACC_ERR_INVALID_HANDLE, "gacc_n_tensors", "not a live engine");
    BAD(gacc_tensor_span(E, 0, NULL, &sz), GACC_ERR_NULL_POINTER, "gacc_tensor_span", "offset_out");
    BAD(gacc_tensor_span(E, 0, &sz, NULL), GACC_ERR_NULL_POINTER, "gacc_tensor_span", "numel_out");
    BAD(gacc_tensor_span(E, 4, &sz, &sz), GACC_ERR_INVALID_ARGUMENT, "gacc_tensor_span", "tensor");
    BAD(gacc_device(E, NULL), GACC_ERR_NULL_POINTER, "gacc_device", "out");
    BAD(gacc_device(garbage[1], &dev), GACC_ERR_INVALID_HANDLE, "gacc_device", "not a live engine");
    BAD(gacc_loss_scale(E, NULL), GACC_ERR_NULL_POINTER, "gacc_loss_scale", "out");
    BAD(gacc_loss_scale(dead, &f), GACC_ERR_INVALID_HANDLE, "gacc_loss_scale", "not a live engine");
    BAD(gacc_loss_scale_ptr(E, NULL), GACC_ERR_NULL_POINTER, "gacc_loss_scale_ptr", "out");
    BAD(gacc_loss_scale_ptr(dead, &cptr), GACC_ERR_INVALID_HANDLE, "gacc_loss_scale_ptr", "not a live engine");
    BAD(gacc_get_lr(E, NULL), GACC_ERR_NULL_POINTER, "gacc_get_lr", "out");
    BAD(gacc_get_lr(dead, &f), GACC_ERR_INVALID_HANDLE, "gacc_get_lr", "not a live engine");

    /* ---- gacc_params_ptr ---- */
    BAD(gacc_params_ptr(E, 4, GACC_DTYPE_F32, &ptr), GACC_ERR_INVALID_ARGUMENT, "gacc_params_ptr", "tensor");
    BAD(gacc_params_ptr(E, SIZE_MAX, GACC_DTYPE_F16, &ptr), GACC_ERR_INVALID_ARGUMENT, "gacc_params_ptr",
        "tensor");
    BAD(gacc_params_ptr(E, 0, 7, &ptr), GACC_ERR_INVALID_ARGUMENT, "gacc_params_ptr", "dtype");
    BAD(gacc_params_ptr(E, 0, GACC_DTYPE_BF16, &ptr), GACC_ERR_INVALID_ARGUMENT, "gacc_params_ptr", "bf16");
    BAD(gacc_params_ptr(E, 0, GACC_DTYPE_F32, NULL), GACC_ERR_NULL_POINTER, "gacc_params_ptr", "out");
    BAD(gacc_params_ptr(dead, 0, GACC_DTYPE_F32, &ptr), GACC_ERR_INVALID_HANDLE, "gacc_params_ptr",
        "not a live engine");
    CHECK(ptr == NULL); /* outputs are written only on success */

    /* ---- learning rate ---- */
    BAD(gacc_set_lr(E, NAN), GACC_ERR_INVALID_ARGUMENT, "gacc_set_lr", "lr");
    BAD(gacc_set_lr(E, -0.1f), GACC_ERR_INVALID_ARGUMENT, "gacc_set_lr", "lr");
    BAD(gacc_set_lr(E, INFINITY), GACC_ERR_INVALID_ARGUMENT, "gacc_set_lr", "lr");
    BAD(gacc_set_lr(NULL, 0.1f), GACC_ERR_NULL_POINTER, "gacc_set_lr", "engine");
    BAD(gacc_set_lr(dead, 0.1f), GACC_ERR_INVALID_HANDLE, "gacc_set_lr", "not a live engine");
    CHECK_OK(gacc_get_lr(E, &f));
    CHECK(f == cfg.lr);

    /* ---- parameter transfer ---- */
    BAD(gacc_params_read(E, NULL, n), GACC_ERR_NULL_POINTER, "gacc_params_read", "host_out");
    BAD(gacc_params_read(E, big, n + 1), GACC_ERR_INVALID_ARGUMENT, "gacc_params_read", "numel");
    BAD(gacc_params_read(E, (float *)(void *)((char *)big + 1), n), GACC_ERR_INVALID_ARGUMENT, "gacc_params_read",
        "aligned");
    BAD(gacc_params_read(dead, big, n), GACC_ERR_INVALID_HANDLE, "gacc_params_read", "not a live engine");
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) big[i] = 1e6f;
    BAD(gacc_params_write(E, NULL, n), GACC_ERR_NULL_POINTER, "gacc_params_write", "host_in");
    BAD(gacc_params_write(E, big, n - 1), GACC_ERR_INVALID_ARGUMENT, "gacc_params_write", "numel");
    BAD(gacc_params_write(E, (const float *)(const void *)((const char *)big + 2), n), GACC_ERR_INVALID_ARGUMENT,
        "gacc_params_write", "aligned");
    BAD(gacc_params_write(dead, big, n), GACC_ERR_INVALID_HANDLE, "gacc_params_write", "not a live engine");

    /* ---- streams: a CPU engine has none ---- */
    BAD(gacc_set_stream(E, (void *)big), GACC_ERR_INVALID_STATE, "gacc_set_stream", "CPU");
    BAD(gacc_set_stream(dead, NULL), GACC_ERR_INVALID_HANDLE, "gacc_set_stream", "not a live engine");
    CHECK_OK(gacc_set_stream(E, NULL));

    /* destroying garbage is harmless too */
    gacc_destroy(garbage[0]);
    gacc_destroy(garbage[1]);

    /* ---- the window survived: E and T step to bit-identical results ---- */
    gacc_step_info ie, it;
    CHECK_OK(gacc_step(E, &ie));
    CHECK_OK(gacc_step(T, &it));
    CHECK_MSG(ie.microbatches == 2 && ie.total_weight == 64.0, "E's window: %u micro-batches, total %g",
              ie.microbatches, ie.total_weight);
    CHECK(ie.applied == 1 && it.applied == 1 && ie.step == 1 && it.step == 1);
    CHECK(ie.microbatches == it.microbatches && ie.total_weight == it.total_weight);
    CHECK(ie.grad_norm == it.grad_norm && ie.loss_scale == it.loss_scale);
    float pe[MLP_NPARAM], pt[MLP_NPARAM];
    void *we = NULL, *wt = NULL;
    CHECK_OK(gacc_params_read(E, pe, n));
    CHECK_OK(gacc_params_read(T, pt, n));
    CHECK_MSG(memcmp(pe, pt, sizeof pe) == 0, "E differs from its twin after the bad calls (max %g)",
              max_abs_diff(pe, pt, n));
    CHECK_MSG(memcmp(pe, p, sizeof pe) != 0, "the step did not move the weights");
    CHECK_OK(gacc_params_ptr(E, 0, GACC_DTYPE_F16, &we));
    CHECK_OK(gacc_params_ptr(T, 0, GACC_DTYPE_F16, &wt));
    if (we && wt) CHECK(memcmp(we, wt, n * 2) == 0);

    /* the dead handle is still dead after all this, and the new engines still work */
    BAD(gacc_numel(dead, &sz), GACC_ERR_INVALID_HANDLE, "gacc_numel", "not a live engine");
    for (int i = 0; i < 3; i++) {
        CHECK(later[i] != dead);
        CHECK_OK(gacc_numel(later[i], &sz));
        CHECK(sz == n);
        gacc_destroy(later[i]);
    }
    gacc_destroy(E);
    gacc_destroy(T);
    gacc_destroy(empty);
    gacc_destroy(E); /* double destroy of a real engine */
    BAD(gacc_step(E, NULL), GACC_ERR_INVALID_HANDLE, "gacc_step", "not a live engine");
    return check_finish("test_bad_input");
}

/*
 * Concept: gacc_config can grow without breaking programs built against an older
 * header (GACC_ABI_VERSION 2, struct_size).
 *
 * `old_config` below is gacc_config as the first ABI-2 header declared it: struct_size
 * and every field up to `seed`, without the later `loss_scale_policy`. A program built
 * against that header calls gacc_config_init(&cfg), which its header turned into
 * gacc_config_init_sized(&cfg, sizeof cfg) (104 bytes), sets fields and calls
 * gacc_create. Against this library:
 * - gacc_config_init_sized writes exactly its 104 bytes (a canary after them stays),
 * - gacc_create reads only them (the struct sits at the end of a malloc block of its
 *   own size, so `make sanitize` and `make valgrind` catch a read past it) and takes
 *   loss_scale_policy at its default, GRADSCALER: with growth_interval 1 the scale
 *   doubles on the first clean step (DeepSpeed's rule would wait one more step);
 * - the same settings in this header's struct with GACC_LOSS_SCALE_DEEPSPEED do wait;
 * - struct_size 0 (a struct not filled by gacc_config_init), one below the old size, or
 *   larger than this library's struct is GACC_ERR_INVALID_ARGUMENT naming struct_size.
 */
#include "check.h"

#include <stdlib.h>

typedef struct old_config {
    uint32_t struct_size;
    int32_t device;
    uint32_t optimizer;
    float lr, momentum;
    uint32_t nesterov;
    float beta1, beta2, eps, weight_decay;
    uint32_t precision;
    float max_grad_norm, init_scale, growth_factor, backoff_factor;
    uint32_t growth_interval, grad_reduction, hysteresis, consecutive_hysteresis;
    float min_loss_scale, max_loss_scale;
    uint32_t drop_nonfinite_microbatches, compensated_accumulation, stochastic_rounding;
    uint64_t seed;
} old_config;

static float scale_after_one_clean_step(const gacc_config *cfg) {
    gacc_tensor_desc t = {"w", 4, NULL, 0};
    gacc_engine *e = CREATE(cfg, &t, 1);
    if (!e) return -1.0f;
    const float g[4] = {0.5f, -1.0f, 0.25f, 2.0f};
    gacc_step_info info;
    CHECK_OK(gacc_microbatch(e, g, GACC_DTYPE_F32, 4, 1.0));
    CHECK_OK(gacc_step(e, &info));
    CHECK(info.applied == 1u);
    gacc_destroy(e);
    return info.loss_scale;
}

int main(void) {
    CHECK(sizeof(old_config) == 104);
    CHECK(sizeof(gacc_config) > sizeof(old_config));

    /* init writes exactly the caller's size */
    unsigned char *buf = malloc(sizeof(old_config) + 16);
    if (!buf) return 1;
    memset(buf, 0xAB, sizeof(old_config) + 16);
    CHECK_OK(gacc_config_init_sized((gacc_config *)(void *)buf, sizeof(old_config)));
    for (size_t i = sizeof(old_config); i < sizeof(old_config) + 16; i++) CHECK_MSG(buf[i] == 0xAB, "byte %zu", i);
    free(buf);

    /* an old program's struct, alone in its malloc block */
    old_config *old = malloc(sizeof *old);
    if (!old) return 1;
    CHECK_OK(gacc_config_init_sized((gacc_config *)(void *)old, sizeof *old));
    CHECK(old->struct_size == sizeof *old && old->growth_interval == 2000u && old->init_scale == 65536.0f);
    old->device = GACC_DEVICE_CPU;
    old->optimizer = GACC_OPTIMIZER_SGD;
    old->precision = GACC_PRECISION_FP16;
    old->init_scale = 1024.0f;
    old->growth_interval = 1u;
    CHECK_MSG(scale_after_one_clean_step((const gacc_config *)(const void *)old) == 2048.0f,
              "the old struct gets GRADSCALER: the scale doubles on the first clean step");

    /* this header's struct: the new field is read */
    gacc_config cfg;
    gacc_config_init(&cfg);
    CHECK(cfg.struct_size == sizeof cfg && cfg.loss_scale_policy == GACC_LOSS_SCALE_GRADSCALER);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = GACC_OPTIMIZER_SGD;
    cfg.precision = GACC_PRECISION_FP16;
    cfg.init_scale = 1024.0f;
    cfg.growth_interval = 1u;
    cfg.loss_scale_policy = GACC_LOSS_SCALE_DEEPSPEED;
    CHECK_MSG(scale_after_one_clean_step(&cfg) == 1024.0f, "DEEPSPEED waits for a stable interval of 1");

    /* sizes out of range */
    gacc_engine *out = NULL;
    const uint32_t bad[] = {0u, (uint32_t)sizeof *old - 1u, (uint32_t)sizeof cfg + 8u};
    gacc_tensor_desc t = {"w", 4, NULL, 0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg.struct_size = bad[i];
        CHECK_STATUS(gacc_create(&cfg, &t, 1, &out), GACC_ERR_INVALID_ARGUMENT);
        CHECK_ERROR_NAMES("struct_size");
        CHECK(out == NULL);
    }
    CHECK_STATUS(gacc_config_init_sized(&cfg, 8), GACC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(gacc_config_init_sized(NULL, sizeof cfg), GACC_ERR_NULL_POINTER);
    free(old);
    return check_finish("test_config_abi");
}

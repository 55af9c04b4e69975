/* A C program that uses an *installed* gacc: built by scripts/package-test.sh through
 * pkg-config and through CMake's find_package(gacc), shared and static. */
#include <gacc.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "consumer: %s:%d: %s (last error: %s)\n",      \
                    __FILE__, __LINE__, #cond, gacc_last_error());         \
            return 1;                                                      \
        }                                                                  \
    } while (0)

int main(void) {
    CHECK(gacc_version_number() == GACC_VERSION_NUMBER);
    CHECK(gacc_abi_version() == GACC_ABI_VERSION);
    CHECK(strcmp(gacc_version(), GACC_VERSION) == 0);

    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = GACC_OPTIMIZER_SGD;
    cfg.lr = 0.5f;
    cfg.weight_decay = 0.0f;

    const float init[3] = {1.0f, 2.0f, 3.0f};
    gacc_tensor_desc t = {"w", 3, init, 0};
    gacc_engine *e = NULL;
    CHECK(gacc_create(&cfg, &t, 1, &e) == GACC_OK);

    /* Nothing accumulated: an error with a message, nothing changed. */
    CHECK(gacc_step(e, NULL) == GACC_ERR_INVALID_STATE);
    CHECK(strlen(gacc_last_error()) > 0);

    /* Two micro-batches of 1 and 3 samples: the weighted mean gradient is
       (1*g1 + 3*g2) / 4. */
    const float g1[3] = {1.0f, 0.0f, -1.0f};
    const float g2[3] = {1.0f, 4.0f, 3.0f};
    CHECK(gacc_microbatch(e, g1, GACC_DTYPE_F32, 3, 1.0) == GACC_OK);
    CHECK(gacc_microbatch(e, g2, GACC_DTYPE_F32, 3, 3.0) == GACC_OK);
    gacc_step_info info;
    CHECK(gacc_step(e, &info) == GACC_OK);
    CHECK(info.applied == 1 && info.microbatches == 2 && info.total_weight == 4.0);

    float p[3];
    CHECK(gacc_params_read(e, p, 3) == GACC_OK);
    const float expect[3] = {1.0f - 0.5f * 1.0f, 2.0f - 0.5f * 3.0f, 3.0f - 0.5f * 2.0f};
    for (int i = 0; i < 3; ++i) CHECK(fabsf(p[i] - expect[i]) < 1e-6f);

    gacc_destroy(e);
    size_t n = 0;
    CHECK(gacc_numel(e, &n) == GACC_ERR_INVALID_HANDLE);
    gacc_destroy(e); /* harmless */
    printf("consumer OK (gacc %s): params %.3f %.3f %.3f\n", gacc_version(), p[0], p[1], p[2]);
    return 0;
}

/*
 * Concept: device selection. GACC_DEVICE_CPU gives a CPU engine (gacc_device -1);
 * GACC_DEVICE_AUTO gives CUDA device 0 when a usable GPU is present and the CPU
 * otherwise; an explicit CUDA ordinal never falls back: on a machine without a usable
 * GPU (every machine this project is built and tested on) it is
 * GACC_ERR_DEVICE_UNAVAILABLE with a message, and `*out` is left alone.
 * Where device 0 does exist, the test checks the other branch (device 0 is used, AUTO
 * picks it) and says so; an ordinal far beyond any machine must fail either way.
 */
#include "check.h"

static gacc_status try_create(int32_t device, gacc_engine **out) {
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = device;
    gacc_tensor_desc t = {"w", 8, NULL, 0};
    return gacc_create(&cfg, &t, 1, out);
}

int main(void) {
    gacc_engine *const sentinel = (gacc_engine *)(uintptr_t)0x77770000;
    gacc_engine *e = NULL;
    int32_t dev = 99;

    CHECK_OK(try_create(GACC_DEVICE_CPU, &e));
    if (e) {
        CHECK_OK(gacc_device(e, &dev));
        CHECK(dev == GACC_DEVICE_CPU && dev == -1);
        gacc_destroy(e);
    }

    e = sentinel;
    gacc_status s0 = try_create(0, &e);
    int have_gpu = s0 == GACC_OK;
    if (have_gpu) {
        printf("CUDA device 0 is usable here: checking that it is used\n");
        CHECK_OK(gacc_device(e, &dev));
        CHECK(dev == 0);
        gacc_destroy(e);
    } else {
        printf("no usable CUDA device 0: %s: %s\n", gacc_status_name(s0), gacc_last_error());
        CHECK_STATUS(s0, GACC_ERR_DEVICE_UNAVAILABLE);
        CHECK_ERROR_NAMES("gacc_create");
        CHECK_ERROR_NAMES("CUDA");
        CHECK(e == sentinel);
    }

    e = sentinel;
    CHECK_STATUS(try_create(4096, &e), GACC_ERR_DEVICE_UNAVAILABLE);
    CHECK_ERROR_NAMES("gacc_create");
    CHECK_ERROR_NAMES("4096");
    CHECK(e == sentinel);

    e = NULL;
    CHECK_OK(try_create(GACC_DEVICE_AUTO, &e));
    if (e) {
        dev = 99;
        CHECK_OK(gacc_device(e, &dev));
        printf("GACC_DEVICE_AUTO -> %s\n", dev < 0 ? "cpu" : "cuda");
        CHECK_MSG(dev == (have_gpu ? 0 : GACC_DEVICE_CPU), "AUTO gave device %d", dev);
        /* a CPU engine works as usual */
        float g[8] = {1, 2, 3, 4, 5, 6, 7, 8}, p[8];
        gacc_step_info info;
        CHECK_OK(gacc_microbatch(e, g, GACC_DTYPE_F32, 8, 2.0));
        CHECK_OK(gacc_step(e, &info));
        CHECK_OK(gacc_params_read(e, p, 8));
        CHECK(info.applied == 1 && p[0] < 0.0f);
        gacc_destroy(e);
    }
    return check_finish("test_device");
}

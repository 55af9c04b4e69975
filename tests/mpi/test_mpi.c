/*
 * Data parallelism over MPI (run with mpirun -np 2 and -np 3).
 *
 * Every rank trains a logistic-regression model on its own micro-batches (K per
 * window, unequal sizes per rank) with gacc_set_mpi; every rank also trains a local
 * reference engine fed with ALL ranks' micro-batches (each rank can regenerate the
 * others' data from their seeds). Checked on every rank, for SGD+momentum and AdamW:
 * - the data-parallel parameters equal the reference within fp32 summation-order
 *   tolerance, and are bit-identical across ranks (MPI_Allreduce of the result);
 * - FP16: when only rank 1 overflows in one window, every rank skips that window.
 * Prints "N passed, N failed" on rank 0.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gacc.h"

#define DIM 24
#define NPARAM (DIM + 1)
#define K 3
#define WINDOWS 15

static int failures = 0, passes = 0;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            passes++;                                                      \
        } else {                                                           \
            failures++;                                                    \
            fprintf(stderr, "%s:%d: FAILED: ", __FILE__, __LINE__);        \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
        }                                                                  \
    } while (0)
#define OK(call) CHECK((call) == GACC_OK, "%s: %s", #call, gacc_last_error())

static unsigned long long rng_state;
static double uniform(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* Micro-batch (w, r, k): its sample count and the mean gradient of the logistic
 * loss at parameters p over its samples. */
static int batch_size(int w, int r, int k) { return 4 + (w + 3 * r + 5 * k) % 9; }

static void gradient(const float *p, int w, int r, int k, float *g) {
    int n = batch_size(w, r, k);
    rng_state = 0x9E3779B97F4A7C15ULL ^ ((unsigned long long)w << 32) ^ ((unsigned long long)r << 16) ^ (unsigned long long)k;
    memset(g, 0, NPARAM * sizeof(float));
    for (int s = 0; s < n; s++) {
        float x[DIM], z = p[DIM];
        for (int i = 0; i < DIM; i++) {
            x[i] = (float)(uniform() * 2 - 1);
            z += p[i] * x[i];
        }
        float y = uniform() < 0.5 ? 0.f : 1.f;
        float err = 1.f / (1.f + expf(-z)) - y;
        for (int i = 0; i < DIM; i++) g[i] += err * x[i] / (float)n;
        g[DIM] += err / (float)n;
    }
}

static gacc_engine *make(const gacc_config *cfg) {
    float init[NPARAM];
    for (int i = 0; i < NPARAM; i++) init[i] = 0.01f * (float)i;
    gacc_tensor_desc d[2] = {{"w", DIM, init, 0}, {"b", 1, init + DIM, 1}};
    gacc_engine *e = NULL;
    OK(gacc_create(cfg, d, 2, &e));
    return e;
}

static void run(int rank, int world, unsigned optimizer, unsigned precision, int poison_window) {
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = optimizer;
    cfg.precision = precision;
    cfg.momentum = 0.9f;
    cfg.lr = 0.1f;
    cfg.max_grad_norm = 1.0f;
    gacc_engine *dp = make(&cfg), *ref = make(&cfg);
    OK(gacc_set_mpi(dp, NULL));
    float p[NPARAM], pref[NPARAM], g[NPARAM];
    for (int w = 0; w < WINDOWS; w++) {
        OK(gacc_params_read(dp, p, NPARAM));
        OK(gacc_params_read(ref, pref, NPARAM));
        for (int k = 0; k < K; k++) {
            gradient(p, w, rank, k, g);
            if (w == poison_window && rank == 1 && k == 1) g[3] = INFINITY;
            OK(gacc_microbatch(dp, g, GACC_DTYPE_F32, NPARAM, batch_size(w, rank, k)));
        }
        for (int r = 0; r < world; r++)
            for (int k = 0; k < K; k++) {
                gradient(pref, w, r, k, g);
                if (w == poison_window && r == 1 && k == 1) g[3] = INFINITY;
                OK(gacc_microbatch(ref, g, GACC_DTYPE_F32, NPARAM, batch_size(w, r, k)));
            }
        gacc_step_info a, b;
        OK(gacc_step(dp, &a));
        OK(gacc_step(ref, &b));
        CHECK(a.applied == b.applied && a.applied == (w != poison_window), "window %d: applied %u/%u", w, a.applied, b.applied);
        CHECK(a.microbatches == (unsigned)(K * world), "global micro-batch count %u", a.microbatches);
        CHECK(a.total_weight == b.total_weight, "global weight %g vs %g", a.total_weight, b.total_weight);
        CHECK(a.loss_scale == b.loss_scale, "loss scale %g vs %g", a.loss_scale, b.loss_scale);
    }
    OK(gacc_params_read(dp, p, NPARAM));
    OK(gacc_params_read(ref, pref, NPARAM));
    /* fp32 summation order differs (per rank, then across ranks): a few ulps per
     * window; 15 windows of AdamW stay far below 1e-4 relative. */
    double worst = 0;
    for (int i = 0; i < NPARAM; i++) {
        double d = fabs((double)p[i] - pref[i]) / fmax(fabs((double)pref[i]), 1e-3);
        if (d > worst) worst = d;
    }
    CHECK(worst < 1e-4, "rank %d: data-parallel vs one engine: %g", rank, worst);
    float pmin[NPARAM], pmax[NPARAM];
    MPI_Allreduce(p, pmin, NPARAM, MPI_FLOAT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(p, pmax, NPARAM, MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD);
    CHECK(memcmp(pmin, pmax, sizeof pmin) == 0, "ranks hold different parameters");
    gacc_destroy(dp);
    gacc_destroy(ref);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    run(rank, world, GACC_OPTIMIZER_SGD, GACC_PRECISION_FP32, -1);
    run(rank, world, GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP32, -1);
    run(rank, world, GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP16, 6);
    int totals[2] = {passes, failures}, sums[2];
    MPI_Reduce(totals, sums, 2, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("data parallel over MPI with %d ranks\nmpi: %d passed, %d failed\n", world, sums[0], sums[1]);
    MPI_Finalize();
    return failures ? 1 : 0;
}

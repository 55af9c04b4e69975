/*
 * Bytes and time per window: one all-reduce per window (gacc_set_mpi) versus one
 * all-reduce per micro-batch (what data parallelism without accumulation-aware sync
 * does: every micro-batch's gradient is reduced before it is accumulated).
 *
 *   mpirun -np 2 bench/mpi_window [numel] [K] [windows]
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "gacc.h"

static double now(void) { return MPI_Wtime(); }

static gacc_engine *make(size_t n, float *init) {
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    gacc_tensor_desc d = {"w", n, init, 0};
    gacc_engine *e = NULL;
    if (gacc_create(&cfg, &d, 1, &e) != GACC_OK) {
        fprintf(stderr, "gacc_create: %s\n", gacc_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return e;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : (size_t)4 << 20;
    int k = argc > 2 ? atoi(argv[2]) : 8;
    int windows = argc > 3 ? atoi(argv[3]) : 5;
    float *init = calloc(n, sizeof(float)), *g = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) g[i] = (float)((i * 2654435761u) % 1000) * 1e-6f;

    /* Once per window: gacc's transport. */
    gacc_engine *dp = make(n, init);
    if (gacc_set_mpi(dp, NULL) != GACC_OK) {
        fprintf(stderr, "gacc_set_mpi: %s\n", gacc_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    uint64_t c0, b0, c1, b1;
    gacc_comm_stats(dp, &c0, &b0);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = now();
    for (int w = 0; w < windows; w++) {
        for (int j = 0; j < k; j++) gacc_microbatch(dp, g, GACC_DTYPE_F32, n, 1.0);
        gacc_step(dp, NULL);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double per_window = (now() - t0) / windows;
    gacc_comm_stats(dp, &c1, &b1);

    /* Once per micro-batch: reduce each gradient, then accumulate locally. */
    gacc_engine *local = make(n, init);
    float *red = malloc(n * sizeof(float));
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = now();
    for (int w = 0; w < windows; w++) {
        for (int j = 0; j < k; j++) {
            MPI_Allreduce(g, red, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            gacc_microbatch(local, red, GACC_DTYPE_F32, n, 1.0);
        }
        gacc_step(local, NULL);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double per_window_micro = (now() - t0) / windows;
    if (rank == 0) {
        double bytes_window = (double)(b1 - b0) / windows;
        double bytes_micro = (double)k * (double)n * 4.0;
        printf("| ranks | params | K | all-reduce | bytes/window/rank | ms/window |\n");
        printf("|---|---|---|---|---|---|\n");
        printf("| %d | %zu | %d | once per window (gacc) | %.0f | %.2f |\n", world, n, k, bytes_window, per_window * 1e3);
        printf("| %d | %zu | %d | once per micro-batch | %.0f | %.2f |\n", world, n, k, bytes_micro, per_window_micro * 1e3);
        printf("speed-up %.2fx, %.1fx fewer bytes\n", per_window_micro / per_window, bytes_micro / bytes_window);
    }
    gacc_destroy(dp);
    gacc_destroy(local);
    free(init); free(g); free(red);
    MPI_Finalize();
    return 0;
}

/*
 * The MPI side of gacc's data-parallel transport (built only with the `mpi` cargo
 * feature). MPI's handles and constants (MPI_Comm, MPI_FLOAT, MPI_SUM) differ between
 * implementations, so they are touched from C only; Rust sees an opaque context.
 *
 * The caller's communicator is duplicated (a library must not share message tags
 * with its host) and the duplicate gets MPI_ERRORS_RETURN, so a failed collective is
 * reported as GACC_ERR_COMMUNICATION instead of aborting the job.
 */
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

typedef struct gacc_mpi_ctx {
    MPI_Comm comm;
    int rank;
    int size;
} gacc_mpi_ctx;

static void describe(int rc, char *msg, int cap) {
    int len = 0;
    if (cap <= 0) return;
    msg[0] = '\0';
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS || len <= 0) {
        strncpy(msg, "unknown MPI error", (size_t)cap - 1);
        msg[cap - 1] = '\0';
    } else if (len >= cap) {
        msg[cap - 1] = '\0';
    }
}

/* comm_ptr: address of the caller's MPI_Comm, or NULL for MPI_COMM_WORLD. */
int gacc_mpi_open(const void *comm_ptr, gacc_mpi_ctx **out, char *msg, int cap) {
    int initialized = 0, finalized = 0, rc;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized) {
        strncpy(msg, "MPI is not initialized (call MPI_Init first) or already finalized", (size_t)cap - 1);
        msg[cap - 1] = '\0';
        return -1;
    }
    MPI_Comm base = comm_ptr ? *(const MPI_Comm *)comm_ptr : MPI_COMM_WORLD;
    gacc_mpi_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        strncpy(msg, "out of memory", (size_t)cap - 1);
        return -1;
    }
    rc = MPI_Comm_dup(base, &ctx->comm);
    if (rc != MPI_SUCCESS) {
        describe(rc, msg, cap);
        free(ctx);
        return -1;
    }
    MPI_Comm_set_errhandler(ctx->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(ctx->comm, &ctx->rank);
    MPI_Comm_size(ctx->comm, &ctx->size);
    *out = ctx;
    return 0;
}

void gacc_mpi_rank_size(const gacc_mpi_ctx *ctx, int *rank, int *size) {
    *rank = ctx->rank;
    *size = ctx->size;
}

/* In-place sum; is_f64 selects MPI_DOUBLE over MPI_FLOAT. Counts above INT_MAX go
 * in chunks. */
int gacc_mpi_allreduce(gacc_mpi_ctx *ctx, void *buf, size_t count, int is_f64, char *msg, int cap) {
    size_t elem = is_f64 ? 8 : 4;
    char *p = buf;
    while (count > 0) {
        int n = count > (size_t)INT_MAX ? INT_MAX : (int)count;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, n, is_f64 ? MPI_DOUBLE : MPI_FLOAT, MPI_SUM, ctx->comm);
        if (rc != MPI_SUCCESS) {
            describe(rc, msg, cap);
            return -1;
        }
        p += (size_t)n * elem;
        count -= (size_t)n;
    }
    return 0;
}

void gacc_mpi_close(gacc_mpi_ctx *ctx) {
    int finalized = 0;
    if (!ctx) return;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&ctx->comm);
    free(ctx);
}

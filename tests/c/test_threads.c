/*
 * Concept: concurrent calls on one engine are serialised and lose nothing.
 *
 * Four pthreads each hand 250 micro-batches to ONE engine at the same time (each with
 * its own distinct weights), while also querying it. The gradients are small integers
 * times 1/4 and the weights small integers, so every product and every partial sum is
 * exact in fp32 and the accumulated sum does not depend on the order the calls were
 * served in. The main thread then pads the window with a zero gradient so that the
 * total weight is a power of two (the unscale factor 1/total is exact), and steps with
 * SGD, lr 1, from zero weights: the weights must equal -acc/total EXACTLY, as computed
 * here, and so must a twin engine fed the same micro-batches from one thread.
 * gacc_step_info.total_weight and .microbatches must be exact. Each thread also checks
 * that gacc_last_error() is per thread.
 */
#include <pthread.h>

#include "check.h"

#define THREADS 4
#define PER_THREAD 250
#define N 1000

typedef struct job {
    gacc_engine *e;
    int id;
    int failures;
    int msg_ok;
} job;

static float grad_value(int t, int i, int j) { return (float)(((t * 31 + i * 7 + j * 3) % 9) - 4) * 0.25f; }
static double weight_of(int t, int i) { return (double)(1 + (t * PER_THREAD + i) % 7); }

static void *worker(void *arg) {
    job *jb = (job *)arg;
    float *g = (float *)malloc(N * sizeof(float));
    if (!g) {
        jb->failures++;
        return NULL;
    }
    /* a failure on this thread sets this thread's message only */
    char want[32];
    snprintf(want, sizeof want, "%d", N + 1 + jb->id);
    memset(g, 0, N * sizeof(float));
    if (gacc_microbatch(jb->e, g, GACC_DTYPE_F32, (size_t)(N + 1 + jb->id), 1.0) == GACC_ERR_INVALID_ARGUMENT &&
        strstr(gacc_last_error(), want) != NULL)
        jb->msg_ok = 1;
    for (int i = 0; i < PER_THREAD; i++) {
        for (int j = 0; j < N; j++) g[j] = grad_value(jb->id, i, j);
        if (gacc_microbatch(jb->e, g, GACC_DTYPE_F32, N, weight_of(jb->id, i)) != GACC_OK) jb->failures++;
        size_t n = 0;
        float s = 0.0f;
        if (gacc_numel(jb->e, &n) != GACC_OK || n != N) jb->failures++;
        if (gacc_loss_scale(jb->e, &s) != GACC_OK || s != 1.0f) jb->failures++;
    }
    /* the message is still this thread's own (other threads' failures did not touch it) */
    if (strstr(gacc_last_error(), want) == NULL) jb->msg_ok = 0;
    free(g);
    return NULL;
}

static gacc_engine *make(void) {
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = GACC_OPTIMIZER_SGD;
    cfg.lr = 1.0f;
    cfg.weight_decay = 0.0f;
    gacc_tensor_desc t[2] = {{"w", 600, NULL, 0}, {"b", 400, NULL, 1}};
    return CREATE(&cfg, t, 2);
}

int main(void) {
    gacc_engine *e = make(), *twin = make();
    if (!e || !twin) return check_finish("test_threads");

    /* the exact expectation, in double (every value is exact) */
    static double acc[N];
    double total = 0.0;
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++) {
            total += weight_of(t, i);
            for (int j = 0; j < N; j++) acc[j] += weight_of(t, i) * grad_value(t, i, j);
        }
    double pow2 = 1.0;
    while (pow2 < total + 1.0) pow2 *= 2.0;
    double pad = pow2 - total;

    pthread_t th[THREADS];
    job jobs[THREADS];
    for (int t = 0; t < THREADS; t++) {
        jobs[t] = (job){e, t, 0, 0};
        CHECK(pthread_create(&th[t], NULL, worker, &jobs[t]) == 0);
    }
    for (int t = 0; t < THREADS; t++) {
        CHECK(pthread_join(th[t], NULL) == 0);
        CHECK_MSG(jobs[t].failures == 0, "thread %d: %d failed calls", t, jobs[t].failures);
        CHECK_MSG(jobs[t].msg_ok, "thread %d: gacc_last_error() was not its own", t);
    }
    static float zeros[N], g[N];
    CHECK_OK(gacc_microbatch(e, zeros, GACC_DTYPE_F32, N, pad));
    gacc_step_info info;
    CHECK_OK(gacc_step(e, &info));
    printf("%d threads x %d micro-batches: %u micro-batches, total weight %.1f (padded by %.1f to 2^%d)\n",
           THREADS, PER_THREAD, info.microbatches, info.total_weight, pad, (int)log2(pow2));
    CHECK_MSG(info.microbatches == THREADS * PER_THREAD + 1, "microbatches %u", info.microbatches);
    CHECK_MSG(info.total_weight == pow2, "total_weight %.17g, want %.17g", info.total_weight, pow2);

    /* the same micro-batches from one thread */
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++) {
            for (int j = 0; j < N; j++) g[j] = grad_value(t, i, j);
            CHECK_OK(gacc_microbatch(twin, g, GACC_DTYPE_F32, N, weight_of(t, i)));
        }
    CHECK_OK(gacc_microbatch(twin, zeros, GACC_DTYPE_F32, N, pad));
    CHECK_OK(gacc_step(twin, NULL));

    static float p[N], q[N];
    CHECK_OK(gacc_params_read(e, p, N));
    CHECK_OK(gacc_params_read(twin, q, N));
    int wrong = 0, nonzero = 0;
    for (int j = 0; j < N; j++) {
        float want = (float)(-acc[j] / pow2); /* exact: acc is an exact multiple of 1/4 */
        if (p[j] != want) {
            if (wrong++ < 5) CHECK_MSG(0, "element %d: %.9g, want %.9g", j, (double)p[j], (double)want);
        }
        if (want != 0.0f) nonzero++;
    }
    CHECK_MSG(wrong == 0, "%d of %d elements differ from the exact sum", wrong, N);
    CHECK(nonzero > N / 2); /* the expectation is not trivially zero */
    CHECK(memcmp(p, q, sizeof p) == 0);
    gacc_destroy(e);
    gacc_destroy(twin);
    return check_finish("test_threads");
}

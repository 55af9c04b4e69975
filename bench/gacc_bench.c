/*
 * gacc side of the peer comparison (bench/compare.py runs it; it prints JSON lines).
 *
 *   gacc_bench stream  --n N --repeats R            STREAM copy/add/triad, 2 OpenMP threads
 *   gacc_bench run     --n N --k K --repeats R      accumulate and step rows through the C ABI
 *   gacc_bench mem     --n N --k K                  peak RSS of one AdamW+clip window loop
 *   gacc_bench tiny    --n N --iters I --repeats R  ns per gacc_microbatch / gacc_step
 *   gacc_bench tensors --n N --t T --repeats R      per-tensor rows: T transformer-like tensors
 *
 * Build (bench/compare.py does it):
 *   cc -O3 -march=native -fopenmp -Iinclude bench/gacc_bench.c -Ltarget/release -lgacc \
 *      -Wl,-rpath,$PWD/target/release -o build/gacc_bench
 *
 * The workload is the one every peer runs (bench/peers.py): K micro-batch gradients
 * already in memory (random, not zeros), each folded into an fp32 accumulator with
 * weight W (GACC_GRADS_MEAN), then one step with the same hyper-parameters.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "gacc.h"

#define WEIGHT 3.0
#define GRAD_SCALE 1e-2f
#define MAX_NORM 1.0f

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void check(gacc_status s, const char *what) {
    if (s != GACC_OK) {
        fprintf(stderr, "%s: %s: %s\n", what, gacc_status_name(s), gacc_last_error());
        exit(1);
    }
}

/* Buffers of 4 MiB and more are 2 MiB-aligned and advised for transparent huge pages,
 * as numpy does for its arrays of that size (the torch and numpy peers get their
 * gradients from numpy arrays, and gacc asks the same for its own buffers), so every
 * peer's inputs sit on the same kind of pages. */
static void *xmalloc(size_t bytes) {
    void *p = NULL;
    const size_t huge = (size_t)4 << 20;
    size_t align = bytes >= huge ? ((size_t)2 << 20) : 64;
    if (posix_memalign(&p, align, bytes ? bytes : 64) != 0) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
#ifdef MADV_HUGEPAGE
    if (bytes >= huge) {
        madvise(p, bytes / 4096 * 4096, MADV_HUGEPAGE);
    }
#endif
    return p;
}

/* Status fields in kB from /proc/self/status ("VmRSS", "VmHWM"). */
static long proc_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

/* xorshift64*, uniform in [-1, 1). */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float urand(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545F4914F6CDD1Dull;
    return (float)((double)(r >> 40) / (double)(1ull << 23)) - 1.0f;
}

static uint16_t f32_to_bf16(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    return (uint16_t)((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
}

static const char *LABEL = "gacc"; /* --label: the contender name printed */

/* bytes_per_param: what the row moves (each read and each write once); bytes_min: the
 * minimum of the issue-14 design for the same work (first micro-batch of a window writes
 * the accumulator, the norm partials come from the accumulation pass, the step no longer
 * zeroes acc). Since issue 14 landed, gacc's rows move the minimum, so both are the same
 * for gacc; the tables' "before issue 14" column (bench/report.py BYTE_MODEL) keeps the old
 * passes' counts. */
static void print_samples(const char *row, const char *contender, size_t n, double bytes_per_param, double bytes_min,
                          const double *s, size_t count, const char *note) {
    printf("{\"kind\":\"row\",\"row\":\"%s\",\"contender\":\"%s\",\"n\":%zu,\"bytes_per_param\":%g,"
           "\"bytes_min\":%g,\"samples_s\":[",
           row, contender ? contender : LABEL, n, bytes_per_param, bytes_min);
    for (size_t i = 0; i < count; i++) printf("%s%.9g", i ? "," : "", s[i]);
    printf("],\"note\":\"%s\"}\n", note ? note : "");
    fflush(stdout);
}

/* ---------------------------------------------------------------- STREAM ---- */

static int cmd_stream(size_t n, int repeats) {
    double *a = xmalloc(n * sizeof(double));
    double *b = xmalloc(n * sizeof(double));
    double *c = xmalloc(n * sizeof(double));
    const double scalar = 3.0;
    omp_set_num_threads(2);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        a[i] = 1.0;
        b[i] = 2.0;
        c[i] = 0.0;
    }
    double *tc = xmalloc(repeats * sizeof(double));
    double *ta = xmalloc(repeats * sizeof(double));
    double *tt = xmalloc(repeats * sizeof(double));
    double *ti = xmalloc(repeats * sizeof(double));
    for (int r = -1; r < repeats; r++) { /* r == -1: warm-up */
        double t0 = now();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) c[i] = a[i];
        double t1 = now();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) c[i] = a[i] + b[i];
        double t2 = now();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i] + scalar * c[i];
        double t3 = now();
        /* Not in STREAM: the in-place update an accumulator does (no write-allocate). */
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) c[i] += b[i];
        double t4 = now();
        if (r >= 0) {
            tc[r] = t1 - t0;
            ta[r] = t2 - t1;
            tt[r] = t3 - t2;
            ti[r] = t4 - t3;
        }
    }
    /* STREAM counts bytes read + written per element (doubles). */
    printf("{\"kind\":\"stream\",\"op\":\"copy\",\"bytes\":%zu,\"threads\":%d,\"samples_s\":[", 16 * n,
           omp_get_max_threads());
    for (int r = 0; r < repeats; r++) printf("%s%.9g", r ? "," : "", tc[r]);
    printf("]}\n{\"kind\":\"stream\",\"op\":\"add\",\"bytes\":%zu,\"threads\":%d,\"samples_s\":[", 24 * n,
           omp_get_max_threads());
    for (int r = 0; r < repeats; r++) printf("%s%.9g", r ? "," : "", ta[r]);
    printf("]}\n{\"kind\":\"stream\",\"op\":\"triad\",\"bytes\":%zu,\"threads\":%d,\"samples_s\":[", 24 * n,
           omp_get_max_threads());
    for (int r = 0; r < repeats; r++) printf("%s%.9g", r ? "," : "", tt[r]);
    printf("]}\n{\"kind\":\"stream\",\"op\":\"add_inplace\",\"bytes\":%zu,\"threads\":%d,\"samples_s\":[",
           24 * n, omp_get_max_threads());
    for (int r = 0; r < repeats; r++) printf("%s%.9g", r ? "," : "", ti[r]);
    printf("]}\n");
    /* Checksum so the compiler cannot drop the loops. */
    double sum = 0;
    for (size_t i = 0; i < n; i += 4096) sum += a[i] + c[i];
    fprintf(stderr, "stream checksum %g\n", sum);
    return 0;
}

/* ---------------------------------------------------------------- engines ---- */

typedef struct {
    const char *row;
    uint32_t optimizer;
    uint32_t precision;
    float max_norm;
    double bytes_per_param; /* before issue 14: norm pass 4 + update (acc = 0 written: 4) */
    double bytes_min;       /* issue 14: no norm pass after a full-buffer micro-batch, no acc = 0 (-8) */
} step_row;

static const step_row STEP_ROWS[] = {
    {"step_sgd_momentum", GACC_OPTIMIZER_SGD, GACC_PRECISION_FP32, 0.0f, 28, 20},
    {"step_adamw", GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP32, 0.0f, 36, 28},
    {"step_adamw_clip", GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP32, MAX_NORM, 36, 28},
    {"step_adamw_clip_fp16", GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP16, MAX_NORM, 38, 30},
};

static gacc_engine *make_engine(size_t n, uint32_t optimizer, uint32_t precision, float max_norm) {
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    cfg.optimizer = optimizer;
    if (optimizer == GACC_OPTIMIZER_SGD) {
        cfg.lr = 0.01f;
        cfg.momentum = 0.9f;
        cfg.weight_decay = 0.0f;
    } else {
        cfg.lr = 1e-3f;
        cfg.beta1 = 0.9f;
        cfg.beta2 = 0.999f;
        cfg.eps = 1e-8f;
        cfg.weight_decay = 0.01f;
    }
    cfg.precision = precision;
    cfg.max_grad_norm = max_norm;
    cfg.grad_reduction = GACC_GRADS_MEAN;
    gacc_tensor_desc t = {"params", n, NULL, 0};
    gacc_engine *e = NULL;
    check(gacc_create(&cfg, &t, 1, &e), "gacc_create");
    return e;
}

typedef struct {
    size_t n;
    int k;
    float **f32;     /* k gradients, values in [-GRAD_SCALE, GRAD_SCALE) */
    uint16_t **f16;  /* the same values, fp16 */
    uint16_t **bf16; /* the same values, bf16 */
    uint16_t **f16s; /* the same values times the initial loss scale, fp16 */
} inputs;

static uint16_t f32_to_f16_bits(float x) {
    _Float16 h = (_Float16)x;
    uint16_t b;
    memcpy(&b, &h, 2);
    return b;
}

static void make_inputs(inputs *in, size_t n, int k, int halves) {
    in->n = n;
    in->k = k;
    in->f32 = calloc(k, sizeof(float *));
    in->f16 = calloc(k, sizeof(uint16_t *));
    in->bf16 = calloc(k, sizeof(uint16_t *));
    in->f16s = calloc(k, sizeof(uint16_t *));
    for (int j = 0; j < k; j++) {
        in->f32[j] = xmalloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) in->f32[j][i] = GRAD_SCALE * urand();
        if (halves) {
            in->f16[j] = xmalloc(n * 2);
            in->bf16[j] = xmalloc(n * 2);
            in->f16s[j] = xmalloc(n * 2);
            for (size_t i = 0; i < n; i++) {
                float g = in->f32[j][i];
                in->f16[j][i] = f32_to_f16_bits(g);
                in->bf16[j][i] = f32_to_bf16(g);
                in->f16s[j][i] = f32_to_f16_bits(g * 65536.0f);
            }
        }
    }
}

static void window(gacc_engine *e, const inputs *in, uint32_t precision) {
    for (int j = 0; j < in->k; j++) {
        if (precision == GACC_PRECISION_FP16)
            check(gacc_microbatch(e, in->f16s[j], GACC_DTYPE_F16, in->n, WEIGHT), "gacc_microbatch");
        else
            check(gacc_microbatch(e, in->f32[j], GACC_DTYPE_F32, in->n, WEIGHT), "gacc_microbatch");
    }
}

static int cmd_run(size_t n, int k, int repeats) {
    inputs in;
    make_inputs(&in, n, k, 1);
    double *samples = xmalloc((size_t)repeats * k * sizeof(double));

    /* Accumulate rows: one AdamW engine; each micro-batch call timed alone. The first
     * micro-batch of each window (after a step) is its own row: issue 14 lets it write
     * the accumulator instead of reading it (8 B f32, 6 B f16/bf16; today 12, 10). */
    static const struct {
        const char *row, *first_row;
        uint32_t dtype;
        double bytes, first_min;
    } ACC[] = {{"accumulate_f32", "accumulate_f32_first", GACC_DTYPE_F32, 12, 8},
               {"accumulate_f16", "accumulate_f16_first", GACC_DTYPE_F16, 10, 6},
               {"accumulate_bf16", "accumulate_bf16_first", GACC_DTYPE_BF16, 10, 6}};
    double *first = xmalloc((size_t)repeats * sizeof(double));
    gacc_engine *e = make_engine(n, GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP32, 0.0f);
    for (size_t a = 0; a < sizeof ACC / sizeof ACC[0]; a++) {
        size_t count = 0, count_first = 0;
        for (int r = -1; r < repeats; r++) {
            for (int j = 0; j < k; j++) {
                const void *g = ACC[a].dtype == GACC_DTYPE_F32   ? (const void *)in.f32[j]
                                : ACC[a].dtype == GACC_DTYPE_F16 ? (const void *)in.f16[j]
                                                                 : (const void *)in.bf16[j];
                double t0 = now();
                check(gacc_microbatch(e, g, ACC[a].dtype, n, WEIGHT), "gacc_microbatch");
                double t1 = now();
                if (r >= 0 && j == 0) first[count_first++] = t1 - t0;
                else if (r >= 0) samples[count++] = t1 - t0;
            }
            check(gacc_step(e, NULL), "gacc_step");
        }
        print_samples(ACC[a].first_row, NULL, n, ACC[a].first_min, ACC[a].first_min, first, count_first,
                      "first micro-batch of each window");
        if (count) print_samples(ACC[a].row, NULL, n, ACC[a].bytes, ACC[a].bytes, samples, count, "");
    }
    free(first);
    gacc_destroy(e);

    /* Step rows: K untimed micro-batches, then the timed step. */
    for (size_t s = 0; s < sizeof STEP_ROWS / sizeof STEP_ROWS[0]; s++) {
        const step_row *row = &STEP_ROWS[s];
        e = make_engine(n, row->optimizer, row->precision, row->max_norm);
        size_t count = 0;
        for (int r = -1; r < repeats; r++) {
            window(e, &in, row->precision);
            gacc_step_info info;
            double t0 = now();
            check(gacc_step(e, &info), "gacc_step");
            double t1 = now();
            if (!info.applied) {
                fprintf(stderr, "%s: step skipped\n", row->row);
                exit(1);
            }
            if (r >= 0) samples[count++] = t1 - t0;
        }
        print_samples(row->row, NULL, n, row->bytes_min, row->bytes_min, samples, count, "");
        gacc_destroy(e);
    }

    /* The whole window: K f32 micro-batches + AdamW + clip + bf16 working copy, timed
     * together. Today 12 K + 38 B (every micro-batch reads and writes acc, norm pass 4,
     * update 28, acc = 0 4, bf16 copy 2); issue 14: 8 + 12 (K - 1) + 30. */
    e = make_engine(n, GACC_OPTIMIZER_ADAMW, GACC_PRECISION_BF16, MAX_NORM);
    size_t count = 0;
    for (int r = -1; r < repeats; r++) {
        gacc_step_info info;
        double t0 = now();
        window(e, &in, GACC_PRECISION_BF16);
        check(gacc_step(e, &info), "gacc_step");
        double t1 = now();
        if (!info.applied) {
            fprintf(stderr, "window: step skipped\n");
            exit(1);
        }
        if (r >= 0) samples[count++] = t1 - t0;
    }
    print_samples("window_adamw_clip_bf16", NULL, n, 8 + 12.0 * (k - 1) + 30, 8 + 12.0 * (k - 1) + 30, samples, count,
                  "K micro-batches + step");
    gacc_destroy(e);
    return 0;
}

static int cmd_mem(size_t n, int k) {
    inputs in;
    make_inputs(&in, n, k, 0);
    long baseline = proc_kb("VmRSS");
    gacc_engine *e = make_engine(n, GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP32, MAX_NORM);
    long after_create_hwm = proc_kb("VmHWM"), after_create_rss = proc_kb("VmRSS");
    for (int w = 0; w < 3; w++) {
        window(e, &in, GACC_PRECISION_FP32);
        check(gacc_step(e, NULL), "gacc_step");
    }
    long hwm = proc_kb("VmHWM");
    printf("{\"kind\":\"memory\",\"contender\":\"%s\",\"n\":%zu,\"k\":%d,\"baseline_kb\":%ld,"
           "\"peak_kb\":%ld,\"after_create_hwm_kb\":%ld,\"after_create_rss_kb\":%ld,\"end_rss_kb\":%ld}\n",
           LABEL, n, k, baseline, hwm, after_create_hwm, after_create_rss, proc_kb("VmRSS"));
    gacc_destroy(e);
    return 0;
}

/* ns per call on a tiny model: blocks of `iters` calls, one sample per block. */
static int cmd_tiny(size_t n, int iters, int repeats) {
    inputs in;
    make_inputs(&in, n, 1, 0);
    gacc_engine *e = make_engine(n, GACC_OPTIMIZER_ADAMW, GACC_PRECISION_FP32, MAX_NORM);
    double *mb = xmalloc(repeats * sizeof(double));
    double *pair = xmalloc(repeats * sizeof(double));
    double *st = xmalloc(repeats * sizeof(double));
    for (int r = -1; r < repeats; r++) {
        double t0 = now();
        for (int i = 0; i < iters; i++) gacc_microbatch(e, in.f32[0], GACC_DTYPE_F32, n, WEIGHT);
        double t1 = now();
        check(gacc_step(e, NULL), "gacc_step");
        double t2 = now();
        for (int i = 0; i < iters; i++) {
            gacc_microbatch(e, in.f32[0], GACC_DTYPE_F32, n, WEIGHT);
            gacc_step(e, NULL);
        }
        double t3 = now();
        if (r >= 0) {
            mb[r] = (t1 - t0) / iters;
            pair[r] = (t3 - t2) / iters;
        }
    }
    /* step = (micro-batch + step) - micro-batch, per block. */
    for (int r = 0; r < repeats; r++) st[r] = pair[r] - mb[r];
    print_samples("tiny_microbatch", NULL, n, 12, 12, mb, repeats, "per call, C ABI, AdamW engine");
    print_samples("tiny_step", NULL, n, 36, 36, st, repeats,
                  "per call, C ABI, AdamW+clip; (microbatch+step) minus microbatch");
    gacc_destroy(e);
    return 0;
}

/* ---------------------------------------------------------------- per tensor ---- */

/* Tensor sizes like a transformer's (bench/model_shapes.rs, the same rule): t / 8
 * layers of [d, d, 3d^2, d^2, d, d, 4d^2, 4d^2], d the largest multiple of 8 with
 * layers * (12 d^2 + 4 d) <= n. Returns the count (t) and fills sizes. */
static size_t transformer_sizes(size_t n, size_t t, size_t *sizes) {
    const size_t layers = t / 8, per_layer = n / layers;
    size_t d = 8;
    while (12 * (d + 8) * (d + 8) + 4 * (d + 8) <= per_layer) d += 8;
    const size_t layer[8] = {d, d, 3 * d * d, d * d, d, d, 4 * d * d, 4 * d * d};
    for (size_t i = 0; i < layers * 8; i++) sizes[i] = layer[i % 8];
    return layers * 8;
}

/* Rows per_tensor_T (gacc_microbatch_tensors), per_tensor_flat_T (the same call on the
 * tensors laid out in one buffer), copy_microbatch_T (copy into one buffer
 * + gacc_microbatch), microbatch_T (gacc_microbatch on the same bytes), inplace_add_T
 * (the host's acc += W * g into gacc_accumulator_ptr) and inplace_call_T
 * (gacc_microbatch_inplace alone); n in the rows is the actual parameter count. The
 * host's copy and add run on OpenMP threads beside gacc's own pool: run with
 * OMP_WAIT_POLICY=PASSIVE and GACC_CPU_SPIN_US=0 (bench/compare.py --tensors does) so
 * that neither spins on the cores the other needs next. */
static int cmd_tensors(size_t n, size_t t, int repeats) {
    if (t < 8 || t % 8) {
        fprintf(stderr, "--t must be a multiple of 8\n");
        return 2;
    }
    size_t *sizes = xmalloc(t * sizeof(size_t));
    t = transformer_sizes(n, t, sizes);
    size_t total = 0, *offs = xmalloc(t * sizeof(size_t));
    for (size_t i = 0; i < t; i++) {
        offs[i] = total;
        total += sizes[i];
    }
    gacc_tensor_desc *desc = xmalloc(t * sizeof *desc);
    gacc_grad *grads = xmalloc(t * sizeof *grads);
    float **g = xmalloc(t * sizeof(float *));
    float **acc = xmalloc(t * sizeof(float *));
    for (size_t i = 0; i < t; i++) {
        desc[i] = (gacc_tensor_desc){NULL, sizes[i], NULL, 0};
        g[i] = xmalloc(sizes[i] * sizeof(float));
        for (size_t j = 0; j < sizes[i]; j++) g[i][j] = GRAD_SCALE * urand();
        grads[i] = (gacc_grad){g[i], GACC_DTYPE_F32, sizes[i]};
    }
    gacc_config cfg;
    gacc_config_init(&cfg);
    cfg.device = GACC_DEVICE_CPU;
    gacc_engine *e = NULL;
    check(gacc_create(&cfg, desc, t, &e), "gacc_create");
    for (size_t i = 0; i < t; i++) check(gacc_accumulator_ptr(e, i, &acc[i]), "gacc_accumulator_ptr");
    float *flat = xmalloc(total * sizeof(float));
    /* (a'): the same tensors laid out one after another in one buffer (a copy of the
     * gradients, so every row reads the same values): the per-tensor call on the
     * memory gacc_microbatch reads, which separates gacc's per-tensor code from the
     * cost of the host's separate buffers. */
    float *flat_copy = xmalloc(total * sizeof(float));
    gacc_grad *flat_grads = xmalloc(t * sizeof *flat_grads);
    for (size_t i = 0; i < t; i++) {
        memcpy(flat_copy + offs[i], g[i], sizes[i] * sizeof(float));
        flat_grads[i] = (gacc_grad){flat_copy + offs[i], GACC_DTYPE_F32, sizes[i]};
    }
    /* The five rows run interleaved, one call of each per round, so that this VM's
     * memory bandwidth, which moves between regimes from one second to the next,
     * weighs on all of them alike (run one after the other, (a) and (ref) differed
     * by up to 14% in either direction from run to run). */
    static const char *NAMES[] = {"per_tensor",  "per_tensor_flat", "copy_microbatch",
                                  "microbatch",  "inplace_add",     "inplace_call"};
    /* Every row of this engine keeps today's bytes: the host took gacc_accumulator_ptr,
     * so gacc zeroes eagerly (issue 14's exception), and no window is first here. */
    static const double BYTES[] = {12, 12, 20, 12, 12, 0};
    enum { ROWS = 6 };
    double *samples = xmalloc((size_t)ROWS * (size_t)(repeats + 1) * sizeof(double));
    size_t count = 0;
    char row[64], note[64];
    snprintf(note, sizeof note, "%zu tensors", t);
    for (int r = -1; r < repeats; r++) {
        for (int which = 0; which < ROWS; which++) {
            double t0 = now();
            if (which == 0) {
                check(gacc_microbatch_tensors(e, grads, t, WEIGHT), "gacc_microbatch_tensors");
            } else if (which == 1) {
                check(gacc_microbatch_tensors(e, flat_grads, t, WEIGHT), "gacc_microbatch_tensors");
            } else if (which == 2 || which == 3) {
                if (which == 2) {
#pragma omp parallel for schedule(dynamic, 1)
                    for (size_t i = 0; i < t; i++) memcpy(flat + offs[i], g[i], sizes[i] * sizeof(float));
                }
                check(gacc_microbatch(e, flat, GACC_DTYPE_F32, total, WEIGHT), "gacc_microbatch");
            } else if (which == 4) {
#pragma omp parallel for schedule(dynamic, 1)
                for (size_t i = 0; i < t; i++) {
                    for (size_t j = 0; j < sizes[i]; j++) acc[i][j] += (float)WEIGHT * g[i][j];
                }
                check(gacc_microbatch_inplace(e, WEIGHT), "gacc_microbatch_inplace");
            } else {
                check(gacc_microbatch_inplace(e, WEIGHT), "gacc_microbatch_inplace");
            }
            double t1 = now();
            if (r >= 0) samples[(size_t)which * (size_t)repeats + count] = t1 - t0;
        }
        if (r >= 0) count++;
    }
    check(gacc_zero(e), "gacc_zero");
    for (int which = 0; which < ROWS; which++) {
        snprintf(row, sizeof row, "%s_%zu", NAMES[which], t);
        print_samples(row, NULL, total, BYTES[which], BYTES[which], samples + (size_t)which * (size_t)repeats, count,
                      note);
    }
    gacc_destroy(e);
    for (size_t i = 0; i < t; i++) free(g[i]);
    free(g), free(acc), free(grads), free(desc), free(sizes), free(offs), free(flat), free(samples);
    free(flat_copy), free(flat_grads);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr,
                "usage: gacc_bench stream|run|mem|tiny|tensors [--n N] [--t T] [--k K] [--repeats R] [--iters I]\n");
        return 2;
    }
    size_t n = 1 << 20;
    int k = 4, repeats = 5, iters = 100000;
    size_t tensors = 64;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--n")) n = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--k")) k = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--repeats")) repeats = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--t")) tensors = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--label")) LABEL = argv[i + 1];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (gacc_abi_version() != GACC_ABI_VERSION) {
        fprintf(stderr, "libgacc ABI %u does not match the header's %d\n", gacc_abi_version(), GACC_ABI_VERSION);
        return 1;
    }
    if (!strcmp(argv[1], "stream")) return cmd_stream(n, repeats);
    if (!strcmp(argv[1], "run")) return cmd_run(n, k, repeats);
    if (!strcmp(argv[1], "mem")) return cmd_mem(n, k);
    if (!strcmp(argv[1], "tiny")) return cmd_tiny(n, iters, repeats);
    if (!strcmp(argv[1], "tensors")) return cmd_tensors(n, tensors, repeats);
    fprintf(stderr, "unknown command %s\n", argv[1]);
    return 2;
}

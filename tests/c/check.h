/*
 * check.h: the tiny test harness shared by the C test programs in tests/c.
 *
 * CHECK(cond)                 counts a check; on failure prints file:line and the condition.
 * CHECK_MSG(cond, fmt, ...)   the same with a formatted explanation.
 * CHECK_OK(call)              the gacc call must return GACC_OK (prints gacc_last_error).
 * CHECK_STATUS(call, want)    the gacc call must return `want`.
 * CHECK_ERROR_NAMES(s)        gacc_last_error() must be non-empty and contain `s`.
 * check_finish(name)          prints "name: N checks, M failed" and returns the exit code.
 *
 * Plus a fixed-seed xorshift generator and small array comparisons. Header-only: every
 * function is static inline so unused ones cost nothing and raise no warning.
 */
#ifndef GACC_TESTS_CHECK_H
#define GACC_TESTS_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gacc.h"

static int check_total_;
static int check_failed_;

static inline void check_fail_(const char *file, int line, const char *what) {
    check_failed_++;
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, what);
}

#define CHECK(cond)                                                                     \
    do {                                                                                \
        check_total_++;                                                                 \
        if (!(cond)) check_fail_(__FILE__, __LINE__, #cond);                            \
    } while (0)

#define CHECK_MSG(cond, ...)                                                            \
    do {                                                                                \
        check_total_++;                                                                 \
        if (!(cond)) {                                                                  \
            check_fail_(__FILE__, __LINE__, #cond);                                     \
            fprintf(stderr, "    ");                                                    \
            fprintf(stderr, __VA_ARGS__);                                               \
            fprintf(stderr, "\n");                                                      \
        }                                                                               \
    } while (0)

#define CHECK_STATUS(call, want)                                                        \
    do {                                                                                \
        gacc_status check_s_ = (call);                                                  \
        gacc_status check_w_ = (want);                                                  \
        check_total_++;                                                                 \
        if (check_s_ != check_w_) {                                                     \
            check_fail_(__FILE__, __LINE__, #call);                                     \
            fprintf(stderr, "    returned %s, expected %s; last error: \"%s\"\n",       \
                    gacc_status_name(check_s_), gacc_status_name(check_w_),             \
                    gacc_last_error());                                                 \
        }                                                                               \
    } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, GACC_OK)

/* The last error must be non-empty and mention `needle` (a function or field name). */
#define CHECK_ERROR_NAMES(needle)                                                       \
    do {                                                                                \
        const char *check_m_ = gacc_last_error();                                       \
        check_total_++;                                                                 \
        if (check_m_ == NULL || check_m_[0] == '\0' || strstr(check_m_, (needle)) == NULL) { \
            check_fail_(__FILE__, __LINE__, "gacc_last_error() names " #needle);        \
            fprintf(stderr, "    last error: \"%s\", expected it to contain \"%s\"\n",  \
                    check_m_ ? check_m_ : "(NULL)", (needle));                          \
        }                                                                               \
    } while (0)

/* Prints the program's summary line and returns its exit status. */
static inline int check_finish(const char *name) {
    printf("%s: %d checks, %d failed\n", name, check_total_, check_failed_);
    return check_failed_ == 0 ? 0 : 1;
}

/* ---- fixed-seed random numbers (xorshift64*) ---------------------------------- */

static inline uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi), 24 random bits. */
static inline float rng_uniform(uint64_t *s, float lo, float hi) {
    float u = (float)(rng_next(s) >> 40) * (1.0f / 16777216.0f);
    return lo + (hi - lo) * u;
}

/* ---- comparisons ---------------------------------------------------------------- */

static inline double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a huge difference */
    }
    return m;
}

static inline double max_abs(const float *a, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i]);
        if (d > m) m = d;
    }
    return m;
}

/* max |a - b| / max |b|: the difference relative to the size of the parameters. */
static inline double rel_diff(const float *a, const float *b, size_t n) {
    double scale = max_abs(b, n);
    return max_abs_diff(a, b, n) / (scale > 0.0 ? scale : 1.0);
}

/* Creates an engine or reports why not (returns NULL then). */
static inline gacc_engine *create_or_report(const gacc_config *cfg, const gacc_tensor_desc *t,
                                            size_t n, const char *file, int line) {
    gacc_engine *e = NULL;
    gacc_status s = gacc_create(cfg, t, n, &e);
    check_total_++;
    if (s != GACC_OK) {
        check_fail_(file, line, "gacc_create");
        fprintf(stderr, "    %s: %s\n", gacc_status_name(s), gacc_last_error());
        return NULL;
    }
    return e;
}
#define CREATE(cfg, t, n) create_or_report((cfg), (t), (n), __FILE__, __LINE__)

#endif /* GACC_TESTS_CHECK_H */

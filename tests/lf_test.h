/*
 * lf_test.h — what every lorafuse test shares: a seeded RNG, buffers that live in a backend's memory
 * (lf_malloc) with guard regions around them, random fills without zeros, NaN poisoning, the
 * element-by-element comparison against the double-precision reference with a tolerance derived from
 * the dtype, a loop over the backends that reports a missing one as SKIP, and the pass/fail/skip tally.
 *
 * Vocabulary: a *case* is one named thing that passes or fails (lft_begin … lft_end). Checks inside a
 * case (LFT_CHECK) print what went wrong and make the case fail; the first failures of a case print
 * its seed so that it can be run again alone (LF_TEST_SEED=… in the environment sets the base seed).
 * LF_TEST_VERBOSE=1 also prints every case that passed.
 */
#ifndef LF_TEST_H
#define LF_TEST_H

#include "lorafuse.h"
#include "lf_internal.h"

#include <stddef.h>
#include <stdint.h>

/* ---- tally ----------------------------------------------------------------------------------- */

/* Starts a case; the name is printf-formatted. Cases do not nest. */
void lft_begin(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
/* Ends the current case: counts it as passed when none of its checks failed. @return 1 if passed. */
int lft_end(void);
/* Records the seed of the current case, printed with its first failure. */
void lft_set_seed(uint64_t seed);
/* 1 when the case of this full name is to run: LF_TEST_FILTER, a POSIX extended regular
 * expression, picks the cases whose names it matches (unset or empty: every case), e.g. for a
 * compute-sanitizer run over the slow shapes only; the others count as skipped, in one line at
 * the summary. An invalid expression ends the program (status 2). */
int lft_selected(const char *name);
/* Counts `count` cases as skipped and prints "SKIP <what> on <backend>: <why>". */
void lft_skip(const char *what, const char *backend, const char *why, int count);
/* Records a failed check in the current case (or as a case of its own outside lft_begin/lft_end). */
void lft_fail_at(const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* 1 when the current case has failed so far. */
int lft_case_failed(void);
/* Prints "<prog>: N passed, N failed, N skipped" and returns the exit status (1 on any failure, and
 * when nothing passed at all: a test that ran nothing proves nothing). */
int lft_summary(const char *prog);

/* Both evaluate to 1 when the condition holds, else report a failure and evaluate to 0. */
#define LFT_CHECK(cond) lft_check_at(__FILE__, __LINE__, (cond) != 0, "check failed: %s", #cond)
#define LFT_CHECKF(cond, ...) lft_check_at(__FILE__, __LINE__, (cond) != 0, __VA_ARGS__)
int lft_check_at(const char *file, int line, int ok, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
/* Checks a status; on mismatch prints both names and the context's last error. */
#define LFT_CHECK_STATUS(ctx, got, want)                                                         \
    lft_check_status_at(__FILE__, __LINE__, (ctx), (got), (want), #got)
int lft_check_status_at(const char *file, int line, const lf_context *ctx, lf_status got, lf_status want,
                        const char *expr);

/* ---- random numbers -------------------------------------------------------------------------- */

typedef struct lft_rng {
    uint64_t state;
} lft_rng;

/* The base seed of this run: LF_TEST_SEED from the environment (decimal or 0x hex), else a constant,
 * so that runs are reproducible by default. */
uint64_t lft_base_seed(void);
/* A seed for case number `index` of a test, derived from the base seed (splitmix64 of both). */
uint64_t lft_case_seed(uint64_t index);
void lft_rng_seed(lft_rng *rng, uint64_t seed);
uint64_t lft_rng_next(lft_rng *rng);
/* Uniform in [0, 1). */
double lft_rng_unit(lft_rng *rng);
/* A value whose magnitude is in [0.125, 1] and whose sign is random: never zero, never 1-only
 * patterns, and rounding it to f16/bf16 keeps it away from zero and from overflow. */
float lft_rng_value(lft_rng *rng);

/* ---- buffers in a backend's memory ----------------------------------------------------------- */

/* Bytes of guard before and after every buffer (a multiple of 64: keeps lf_malloc's alignment). */
#define LFT_GUARD 256

/* A matrix stored in a backend's memory, with a host image of the whole allocation:
 * [guard | offset | rows·stride elements | guard]. Elements outside cols (the stride gap) are
 * padding, poisoned with NaN: a kernel that reads them produces NaN, one that writes them is caught
 * by comparing the image after a call. */
typedef struct lft_mat {
    lf_context *ctx;
    lf_dtype dtype;
    int64_t rows, cols, stride;
    size_t esize;
    size_t offset;   /* bytes between the end of the front guard and element (0, 0) */
    size_t region;   /* bytes of rows·stride elements (at least one element, so data is never NULL) */
    size_t total;    /* whole allocation: guard + offset + region + guard */
    unsigned char *image; /* host copy of the whole allocation as last uploaded */
    unsigned char *dev;   /* lf_malloc'd allocation */
} lft_mat;

/* Allocates on ctx's backend; offset_elems shifts element (0, 0) by that many elements (to test
 * pointers that are not 16-byte aligned). The image is filled: guards with a canary pattern, the
 * rest with NaN. @return LF_OK or the failing status (and prints why). */
lf_status lft_mat_init(lft_mat *m, lf_context *ctx, lf_dtype dtype, int64_t rows, int64_t cols,
                       int64_t stride, int64_t offset_elems);
void lft_mat_free(lft_mat *m);
/* Host pointer to element (0, 0) of the image. */
void *lft_mat_host(const lft_mat *m);
/* Backend pointer to element (0, 0). */
void *lft_mat_dev(const lft_mat *m);
/* A view of the backend memory. */
lf_matrix lft_mat_view(const lft_mat *m);
/* Fills the elements (not the padding) with lft_rng_value rounded to the dtype. */
void lft_mat_fill_random(lft_mat *m, lft_rng *rng);
/* Multiplies every element by `factor` (use a power of two: exact, so relative errors and the derived
 * tolerance's strength are unchanged). Padding is left alone. Call lft_mat_upload afterwards. */
void lft_mat_scale(lft_mat *m, float factor);
/* Fills every element and the padding with a rotation of NaN bit patterns (quiet, negative,
 * signalling-looking payloads). */
void lft_mat_fill_nan(lft_mat *m);
/* Copies the whole image (guards included) to the backend. */
lf_status lft_mat_upload(lft_mat *m);
/* Copies the whole allocation back into out (m->total bytes). */
lf_status lft_mat_download(const lft_mat *m, unsigned char *out);
/* Compares a downloaded image with the uploaded one: guards must hold the canary, and (when
 * check_elements is 0) only padding and guards are compared, elements are left to the caller.
 * @return the number of bytes that differ (each reported once per region through lft_fail_at). */
size_t lft_mat_check_untouched(const lft_mat *m, const unsigned char *after, int check_elements,
                               const char *name);
/* Element (i, j) of an image (as returned by lft_mat_download, or m->image) as a double. */
double lft_mat_get(const lft_mat *m, const unsigned char *image, int64_t i, int64_t j);

/* ---- one LoRA problem ------------------------------------------------------------------------ */

typedef struct lft_case {
    lf_dtype dtype;
    lf_layout layout;
    int64_t m, k, n, rank;
    int has_w, has_bias;
    float scale, beta;
    int strided;  /* 0: dense; LFT_STRIDED: every operand gets stride = cols + a different small gap;
                   * LFT_PADDED16: every stride the next multiple of 16 bytes past cols (rows stay
                   * 16-byte aligned, as the Hopper kernels' copy engine needs, with N free) */
    int misalign; /* shift every operand by one element from lf_malloc's 64-byte alignment */
    uint64_t seed;
} lft_case;

enum { LFT_STRIDED = 1, LFT_PADDED16 = 2 };

/* Formats a case as "f32 peft layer+bias beta=0.5 37x129x67 r7 strided" into buf. */
const char *lft_case_name(const lft_case *c, char *buf, size_t size);

typedef struct lft_problem {
    lft_case c;
    lf_context *ctx;
    lft_mat x, w, bias, a, b, y;
    double *exact, *mag; /* reference, dense [m, n] (computed by lft_problem_reference) */
} lft_problem;

/* Allocates, fills (random inputs; y random when beta != 0, else NaN) and uploads everything. */
lf_status lft_problem_init(lft_problem *p, lf_context *ctx, const lft_case *c);
void lft_problem_free(lft_problem *p);
/* Re-uploads y's image (poisoned again, exactly as after init), e.g. before a second run. */
lf_status lft_problem_reset_y(lft_problem *p);
/* p as an lf_lora_problem: pointers into the backend's memory (on_backend) or into the host images. */
void lft_problem_lora(const lft_problem *p, int on_backend, lf_lora_problem *q);
/* Calls lf_lora_forward on the backend views. */
lf_status lft_problem_run(lft_problem *p);
/* Fills p->exact and p->mag from the reference on the host images; each element of y is then
 * checked against lf_ref_tolerance. */
void lft_problem_reference(lft_problem *p);
/* Downloads y (and every input) and checks: every element within lft_tolerance of the reference
 * (NaN never passes), y's padding and guards untouched, inputs unchanged. Failures are reported in
 * the current case. *max_abs_err (may be NULL) receives the largest |got - exact|.
 * y_bits (may be NULL) receives a malloc'd copy of y's downloaded image (y.total bytes). */
int lft_problem_check(lft_problem *p, double *max_abs_err, unsigned char **y_bits);

/* Runs one case from scratch on ctx as a counted case named "<test> <backend> <case>": init, run,
 * expect LF_OK, check. @return 1 if it passed or LF_TEST_FILTER left it out. */
int lft_run_case(lf_context *ctx, const char *test, const lft_case *c);

/* ---- backends -------------------------------------------------------------------------------- */

/* Calls fn(ctx, arg) with a fresh context for every backend (CPU, CUDA). A backend for which
 * lf_backend_available() says no is reported as "SKIP <test> on <backend>: backend not available"
 * and counted as `skip_count` skipped cases (never as passed). */
typedef void (*lft_backend_fn)(lf_context *ctx, void *arg);
void lft_for_each_backend(const char *test, int skip_count, lft_backend_fn fn, void *arg);

#endif /* LF_TEST_H */

/*
 * lf_test.c — the shared helpers of lorafuse's tests (see lf_test.h).
 */
#include "lf_test.h"

#include "cpu/lora_ref.h"
#include "lf_dtype.h"

#include <inttypes.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- tally ----------------------------------------------------------------------------------- */

/* Failures printed per case before the rest are only counted: one broken kernel would otherwise
 * print every element of every case. */
#define LFT_PRINT_LIMIT 8

static int tally_passed, tally_failed, tally_skipped;
static int in_case, case_failures;
static char case_name[512];
static uint64_t case_seed;
static int case_has_seed;

void lft_begin(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(case_name, sizeof case_name, fmt, ap);
    va_end(ap);
    in_case = 1;
    case_failures = 0;
    case_has_seed = 0;
}

void lft_set_seed(uint64_t seed)
{
    case_seed = seed;
    case_has_seed = 1;
}

int lft_end(void)
{
    int ok = case_failures == 0;
    if (ok) {
        tally_passed++;
        static int verbose = -1;
        if (verbose < 0)
            verbose = getenv("LF_TEST_VERBOSE") != NULL && getenv("LF_TEST_VERBOSE")[0] != '\0';
        if (verbose)
            printf("ok   %s\n", case_name);
    } else {
        tally_failed++;
        if (case_failures > LFT_PRINT_LIMIT)
            printf("  ... %d failed checks in all\n", case_failures);
        printf("FAIL %s\n", case_name);
    }
    in_case = 0;
    case_failures = 0;
    fflush(stdout);
    return ok;
}

int lft_case_failed(void) { return case_failures != 0; }

void lft_skip(const char *what, const char *backend, const char *why, int count)
{
    printf("SKIP %s on %s: %s\n", what, backend, why);
    tally_skipped += count > 0 ? count : 1;
    fflush(stdout);
}

void lft_fail_at(const char *file, int line, const char *fmt, ...)
{
    if (!in_case) { /* a check outside any case is a case of its own */
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        printf("FAIL %s:%d: %s\n", file, line, msg);
        tally_failed++;
        fflush(stdout);
        return;
    }
    case_failures++;
    if (case_failures == 1) {
        printf("--- %s\n", case_name);
        if (case_has_seed)
            printf("  case seed 0x%016" PRIx64 " (base seed: LF_TEST_SEED=0x%016" PRIx64 ")\n", case_seed,
                   lft_base_seed());
    }
    if (case_failures <= LFT_PRINT_LIMIT) {
        va_list ap;
        va_start(ap, fmt);
        printf("  %s:%d: ", file, line);
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
    }
    fflush(stdout);
}

int lft_check_at(const char *file, int line, int ok, const char *fmt, ...)
{
    if (ok)
        return 1;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lft_fail_at(file, line, "%s", msg);
    return 0;
}

int lft_check_status_at(const char *file, int line, const lf_context *ctx, lf_status got, lf_status want,
                        const char *expr)
{
    if (got == want)
        return 1;
    lft_fail_at(file, line, "%s returned %s (%d), expected %s; last error: \"%s\"", expr, lf_status_name(got),
                (int)got, lf_status_name(want), ctx ? lf_context_last_error(ctx) : "(no context)");
    return 0;
}

static int filtered_out; /* cases LF_TEST_FILTER left out */

int lft_selected(const char *name)
{
    static int state; /* 0: LF_TEST_FILTER not read yet, 1: none, 2: compiled into filter */
    static regex_t filter;
    if (state == 0) {
        const char *env = getenv("LF_TEST_FILTER");
        state = 1;
        if (env && *env) {
            const int err = regcomp(&filter, env, REG_EXTENDED | REG_NOSUB);
            if (err != 0) {
                char why[256];
                regerror(err, &filter, why, sizeof why);
                printf("LF_TEST_FILTER=\"%s\": %s\n", env, why);
                exit(2);
            }
            state = 2;
        }
    }
    if (state == 1 || regexec(&filter, name, 0, NULL, 0) == 0)
        return 1;
    filtered_out++;
    tally_skipped++;
    return 0;
}

int lft_summary(const char *prog)
{
    if (filtered_out > 0)
        printf("SKIP %d cases whose names LF_TEST_FILTER does not match\n", filtered_out);
    printf("%s: %d passed, %d failed, %d skipped\n", prog, tally_passed, tally_failed, tally_skipped);
    fflush(stdout);
    return (tally_failed > 0 || tally_passed == 0) ? 1 : 0;
}

/* ---- random numbers -------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t lft_base_seed(void)
{
    static int done;
    static uint64_t seed = 0x10fa5eed2024ull;
    if (!done) {
        done = 1;
        const char *env = getenv("LF_TEST_SEED");
        if (env && *env)
            seed = strtoull(env, NULL, 0);
    }
    return seed;
}

uint64_t lft_case_seed(uint64_t index)
{
    uint64_t x = lft_base_seed() ^ (index * 0xd1342543de82ef95ull);
    return splitmix64(&x);
}

void lft_rng_seed(lft_rng *rng, uint64_t seed) { rng->state = seed; }

uint64_t lft_rng_next(lft_rng *rng) { return splitmix64(&rng->state); }

double lft_rng_unit(lft_rng *rng) { return (double)(lft_rng_next(rng) >> 11) * 0x1.0p-53; }

float lft_rng_value(lft_rng *rng)
{
    uint64_t bits = lft_rng_next(rng);
    double mag = 0.125 + 0.875 * (double)(bits >> 11) * 0x1.0p-53;
    return (float)((bits & 1) ? -mag : mag);
}

/* ---- buffers --------------------------------------------------------------------------------- */

static unsigned char guard_byte(size_t i) { return (unsigned char)(0xC3u + 7u * (unsigned)(i & 0xffffu) + (unsigned)(i >> 16)); }

static void fill_guards(lft_mat *m)
{
    size_t front = LFT_GUARD + m->offset;
    for (size_t i = 0; i < front; i++)
        m->image[i] = guard_byte(i);
    for (size_t i = front + m->region; i < m->total; i++)
        m->image[i] = guard_byte(i);
}

lf_status lft_mat_init(lft_mat *m, lf_context *ctx, lf_dtype dtype, int64_t rows, int64_t cols,
                       int64_t stride, int64_t offset_elems)
{
    memset(m, 0, sizeof *m);
    m->ctx = ctx;
    m->dtype = dtype;
    m->rows = rows;
    m->cols = cols;
    m->stride = stride;
    m->esize = lf_dtype_size(dtype);
    m->offset = (size_t)offset_elems * m->esize;
    m->region = (size_t)rows * (size_t)stride * m->esize;
    if (m->region == 0)
        m->region = m->esize;
    m->total = LFT_GUARD + m->offset + m->region + LFT_GUARD;
    m->image = malloc(m->total);
    if (!m->image) {
        printf("lft_mat_init: out of host memory (%zu bytes)\n", m->total);
        return LF_ERR_OUT_OF_MEMORY;
    }
    void *dev = NULL;
    lf_status st = lf_malloc(ctx, &dev, m->total);
    if (st != LF_OK) {
        printf("lft_mat_init: lf_malloc(%zu) failed: %s (%s)\n", m->total, lf_status_name(st),
               lf_context_last_error(ctx));
        free(m->image);
        m->image = NULL;
        return st;
    }
    m->dev = dev;
    fill_guards(m);
    lft_mat_fill_nan(m);
    return LF_OK;
}

void lft_mat_free(lft_mat *m)
{
    if (m->dev)
        lf_free(m->ctx, m->dev);
    free(m->image);
    memset(m, 0, sizeof *m);
}

void *lft_mat_host(const lft_mat *m) { return m->image + LFT_GUARD + m->offset; }

void *lft_mat_dev(const lft_mat *m) { return m->dev + LFT_GUARD + m->offset; }

lf_matrix lft_mat_view(const lft_mat *m)
{
    lf_matrix v;
    v.data = lft_mat_dev(m);
    v.dtype = m->dtype;
    v.rows = m->rows;
    v.cols = m->cols;
    v.stride = m->stride;
    return v;
}

void lft_mat_fill_random(lft_mat *m, lft_rng *rng)
{
    void *h = lft_mat_host(m);
    for (int64_t i = 0; i < m->rows; i++)
        for (int64_t j = 0; j < m->cols; j++)
            lf_store_f32(h, m->dtype, i * m->stride + j, lft_rng_value(rng));
}

void lft_mat_scale(lft_mat *m, float factor)
{
    void *h = lft_mat_host(m);
    for (int64_t i = 0; i < m->rows; i++)
        for (int64_t j = 0; j < m->cols; j++) {
            int64_t e = i * m->stride + j;
            lf_store_f32(h, m->dtype, e, lf_load_f32(h, m->dtype, e) * factor);
        }
}

void lft_mat_fill_nan(lft_mat *m)
{
    static const uint32_t nan32[4] = {0x7fc00000u, 0xffc00001u, 0x7fa5a5a5u, 0xff812345u};
    static const uint16_t nan16[4] = {0x7e00u, 0xfe01u, 0x7d5au, 0xfc01u};
    static const uint16_t nanbf[4] = {0x7fc0u, 0xffc1u, 0x7fa5u, 0xff81u};
    unsigned char *h = lft_mat_host(m);
    size_t count = m->region / m->esize;
    for (size_t i = 0; i < count; i++) {
        if (m->dtype == LF_F32)
            memcpy(h + 4 * i, &nan32[i & 3], 4);
        else
            memcpy(h + 2 * i, m->dtype == LF_F16 ? &nan16[i & 3] : &nanbf[i & 3], 2);
    }
}

lf_status lft_mat_upload(lft_mat *m)
{
    lf_status st = lf_memcpy(m->ctx, m->dev, m->image, m->total, LF_COPY_HOST_TO_DEVICE);
    if (st != LF_OK)
        printf("lft_mat_upload: %s (%s)\n", lf_status_name(st), lf_context_last_error(m->ctx));
    return st;
}

lf_status lft_mat_download(const lft_mat *m, unsigned char *out)
{
    lf_status st = lf_memcpy(m->ctx, out, m->dev, m->total, LF_COPY_DEVICE_TO_HOST);
    if (st != LF_OK)
        printf("lft_mat_download: %s (%s)\n", lf_status_name(st), lf_context_last_error(m->ctx));
    return st;
}

/* Is byte `pos` of the allocation inside an element (as opposed to guard or stride padding)? */
static int byte_is_element(const lft_mat *m, size_t pos)
{
    size_t front = LFT_GUARD + m->offset;
    if (pos < front || pos >= front + m->region || m->rows == 0)
        return 0;
    size_t e = (pos - front) / m->esize;
    return (int64_t)(e % (size_t)m->stride) < m->cols;
}

size_t lft_mat_check_untouched(const lft_mat *m, const unsigned char *after, int check_elements, const char *name)
{
    size_t front = LFT_GUARD + m->offset, bad = 0;
    size_t first_guard = SIZE_MAX, first_pad = SIZE_MAX, first_elem = SIZE_MAX;
    for (size_t i = 0; i < m->total; i++) {
        if (after[i] == m->image[i])
            continue;
        if (i < front || i >= front + m->region) {
            if (first_guard == SIZE_MAX)
                first_guard = i;
        } else if (!byte_is_element(m, i)) {
            if (first_pad == SIZE_MAX)
                first_pad = i;
        } else if (check_elements) {
            if (first_elem == SIZE_MAX)
                first_elem = i;
        } else {
            continue;
        }
        bad++;
    }
    if (first_guard != SIZE_MAX)
        lft_fail_at(__FILE__, __LINE__, "%s: canary overwritten at byte %lld relative to element (0,0) "
                    "(guard region of %d bytes each side)", name, (long long)first_guard - (long long)front,
                    LFT_GUARD);
    if (first_pad != SIZE_MAX) {
        size_t e = (first_pad - front) / m->esize;
        lft_fail_at(__FILE__, __LINE__, "%s: stride padding overwritten at row %zu, column %zu (cols %lld, "
                    "stride %lld)", name, e / (size_t)m->stride, e % (size_t)m->stride, (long long)m->cols,
                    (long long)m->stride);
    }
    if (first_elem != SIZE_MAX) {
        size_t e = (first_elem - front) / m->esize;
        lft_fail_at(__FILE__, __LINE__, "%s: input modified at element (%zu, %zu)", name, e / (size_t)m->stride,
                    e % (size_t)m->stride);
    }
    return bad;
}

double lft_mat_get(const lft_mat *m, const unsigned char *image, int64_t i, int64_t j)
{
    return (double)lf_load_f32(image + LFT_GUARD + m->offset, m->dtype, i * m->stride + j);
}

/* ---- one LoRA problem ------------------------------------------------------------------------ */

const char *lft_case_name(const lft_case *c, char *buf, size_t size)
{
    snprintf(buf, size, "%s %s %s%s beta=%g scale=%g %lldx%lldx%lld r%lld%s%s", lf_dtype_name(c->dtype),
             c->layout == LF_LAYOUT_PEFT ? "peft" : c->layout == LF_LAYOUT_KN ? "kn" : "layout?",
             c->has_w ? "layer" : "delta", c->has_bias ? "+bias" : "", (double)c->beta, (double)c->scale,
             (long long)c->m, (long long)c->k, (long long)c->n, (long long)c->rank,
             c->strided == LFT_STRIDED ? " strided" : c->strided == LFT_PADDED16 ? " padded16" : "",
             c->misalign ? " misaligned" : "");
    return buf;
}

lf_status lft_problem_init(lft_problem *p, lf_context *ctx, const lft_case *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    p->ctx = ctx;
    const int peft = c->layout == LF_LAYOUT_PEFT;
    const int64_t m = c->m, k = c->k, n = c->n, r = c->rank;
    const int64_t off = c->misalign ? 1 : 0;
    const int64_t wr = peft ? n : k, wc = peft ? k : n;
    const int64_t ar = peft ? r : k, ac = peft ? k : r;
    const int64_t br = peft ? n : r, bc = peft ? r : n;
    /* Different gaps per operand, so that a kernel using one operand's stride for another fails;
     * padded to 16 bytes, the gaps differ wherever the column counts do. */
    const int strided = c->strided == LFT_STRIDED, padded = c->strided == LFT_PADDED16;
    const int64_t per16 = 16 / (int64_t)lf_dtype_size(c->dtype);
#define LFT_GAP(small, cols) (strided ? (small) : padded ? ((cols) / per16 + 1) * per16 - (cols) : 0)
    const int64_t gx = LFT_GAP(3, k), gw = LFT_GAP(5, wc), ga = LFT_GAP(1, ac);
    const int64_t gb = LFT_GAP(7, bc), gy = LFT_GAP(2, n), gbias = LFT_GAP(4, n);
#undef LFT_GAP
    lf_status st;
    if ((st = lft_mat_init(&p->x, ctx, c->dtype, m, k, k + gx, off)) != LF_OK ||
        (st = lft_mat_init(&p->a, ctx, c->dtype, ar, ac, ac + ga, off)) != LF_OK ||
        (st = lft_mat_init(&p->b, ctx, c->dtype, br, bc, bc + gb, off)) != LF_OK ||
        (st = lft_mat_init(&p->y, ctx, c->dtype, m, n, n + gy, off)) != LF_OK ||
        (c->has_w && (st = lft_mat_init(&p->w, ctx, c->dtype, wr, wc, wc + gw, off)) != LF_OK) ||
        (c->has_bias && (st = lft_mat_init(&p->bias, ctx, c->dtype, 1, n, n + gbias, off)) != LF_OK)) {
        lft_problem_free(p);
        return st;
    }
    lft_rng rng;
    lft_rng_seed(&rng, c->seed);
    lft_mat_fill_random(&p->x, &rng);
    lft_mat_fill_random(&p->a, &rng);
    lft_mat_fill_random(&p->b, &rng); /* never zero: PEFT's zero-initialised B would hide the LoRA term */
    if (c->has_w)
        lft_mat_fill_random(&p->w, &rng);
    if (c->has_bias)
        lft_mat_fill_random(&p->bias, &rng);
    if (c->beta != 0.0f)
        lft_mat_fill_random(&p->y, &rng); /* beta = 0: y stays NaN, which must not propagate */
    lft_mat *all[6] = {&p->x, &p->a, &p->b, &p->y, &p->w, &p->bias};
    for (int i = 0; i < 6; i++) {
        if (all[i]->image && (st = lft_mat_upload(all[i])) != LF_OK) {
            lft_problem_free(p);
            return st;
        }
    }
    return LF_OK;
}

void lft_problem_free(lft_problem *p)
{
    lft_mat *all[6] = {&p->x, &p->a, &p->b, &p->y, &p->w, &p->bias};
    for (int i = 0; i < 6; i++)
        if (all[i]->image)
            lft_mat_free(all[i]);
    free(p->exact);
    free(p->mag);
    p->exact = p->mag = NULL;
}

lf_status lft_problem_reset_y(lft_problem *p) { return lft_mat_upload(&p->y); }

lf_status lft_problem_run(lft_problem *p)
{
    lf_matrix x = lft_mat_view(&p->x), a = lft_mat_view(&p->a), b = lft_mat_view(&p->b), y = lft_mat_view(&p->y);
    lf_matrix w, bias;
    memset(&w, 0, sizeof w);
    memset(&bias, 0, sizeof bias);
    if (p->c.has_w)
        w = lft_mat_view(&p->w);
    if (p->c.has_bias)
        bias = lft_mat_view(&p->bias);
    return lf_lora_forward(p->ctx, p->c.layout, &x, p->c.has_w ? &w : NULL, p->c.has_bias ? &bias : NULL, &a, &b,
                           p->c.scale, p->c.beta, &y);
}

void lft_problem_reference(lft_problem *p)
{
    const int64_t m = p->c.m, n = p->c.n;
    size_t count = (size_t)(m > 0 ? m : 1) * (size_t)n;
    free(p->exact);
    free(p->mag);
    p->exact = calloc(count, sizeof(double));
    p->mag = calloc(count, sizeof(double));
    if (!p->exact || !p->mag || m == 0)
        return;
    lf_lora_problem q;
    lft_problem_lora(p, 0, &q); /* y: the values it held before the call */
    lf_ref_lora_forward_f64(&q, p->exact, p->mag);
}

void lft_problem_lora(const lft_problem *p, int on_backend, lf_lora_problem *q)
{
    void *(*at)(const lft_mat *) = on_backend ? lft_mat_dev : lft_mat_host;
    memset(q, 0, sizeof *q);
    q->layout = p->c.layout;
    q->dtype = p->c.dtype;
    q->m = p->c.m;
    q->k = p->c.k;
    q->n = p->c.n;
    q->rank = p->c.rank;
    q->x = at(&p->x);
    q->ldx = p->x.stride;
    q->w = p->c.has_w ? at(&p->w) : NULL;
    q->ldw = p->c.has_w ? p->w.stride : 0;
    q->bias = p->c.has_bias ? at(&p->bias) : NULL;
    q->a = at(&p->a);
    q->lda = p->a.stride;
    q->b = at(&p->b);
    q->ldb = p->b.stride;
    q->scale = p->c.scale;
    q->beta = p->c.beta;
    q->y = at(&p->y);
    q->ldy = p->y.stride;
}

int lft_problem_check(lft_problem *p, double *max_abs_err, unsigned char **y_bits)
{
    int ok = 1;
    double worst = 0.0, worst_ratio = 0.0;
    if (max_abs_err)
        *max_abs_err = 0.0;
    if (y_bits)
        *y_bits = NULL;
    if (!p->exact || !p->mag) {
        LFT_CHECKF(0, "out of host memory for the reference");
        return 0;
    }
    unsigned char *after = malloc(p->y.total);
    if (!LFT_CHECKF(after != NULL, "out of host memory") || !LFT_CHECK(lft_mat_download(&p->y, after) == LF_OK)) {
        free(after);
        return 0;
    }
    if (lft_mat_check_untouched(&p->y, after, 0, "y") != 0)
        ok = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < p->c.m; i++) {
        for (int64_t j = 0; j < p->c.n; j++) {
            double got = lft_mat_get(&p->y, after, i, j);
            double exact = p->exact[i * p->c.n + j], mag = p->mag[i * p->c.n + j];
            double tol = lf_ref_tolerance(p->c.dtype, p->c.k, p->c.rank, exact, mag);
            double err = fabs(got - exact);
            if (!(err <= tol)) { /* written so that NaN fails */
                ok = 0;
                if (++bad <= 4)
                    LFT_CHECKF(0, "y(%lld, %lld) = %.9g, exact %.9g, |err| %.3g > tol %.3g (mag %.3g)",
                               (long long)i, (long long)j, got, exact, err, tol, mag);
            }
            if (err == err && err > worst)
                worst = err;
            if (tol > 0 && err / tol > worst_ratio)
                worst_ratio = err / tol;
        }
    }
    if (bad > 4)
        LFT_CHECKF(0, "%lld of %lld elements of y out of tolerance (worst |err|/tol %.3g)", (long long)bad,
                   (long long)(p->c.m * p->c.n), worst_ratio);
    /* Inputs: every byte unchanged, elements included. */
    lft_mat *inputs[5] = {&p->x, &p->a, &p->b, &p->w, &p->bias};
    const char *names[5] = {"x", "a", "b", "w", "bias"};
    for (int t = 0; t < 5; t++) {
        if (!inputs[t]->image)
            continue;
        unsigned char *img = malloc(inputs[t]->total);
        if (!LFT_CHECK(img != NULL) || !LFT_CHECK(lft_mat_download(inputs[t], img) == LF_OK) ||
            lft_mat_check_untouched(inputs[t], img, 1, names[t]) != 0)
            ok = 0;
        free(img);
    }
    if (max_abs_err)
        *max_abs_err = worst;
    if (y_bits)
        *y_bits = after;
    else
        free(after);
    return ok;
}

int lft_run_case(lf_context *ctx, const char *test, const lft_case *c)
{
    char name[256], full[320];
    snprintf(full, sizeof full, "%s %s %s", test, lf_backend_name(lf_context_backend(ctx)),
             lft_case_name(c, name, sizeof name));
    if (!lft_selected(full))
        return 1;
    lft_begin("%s", full);
    lft_set_seed(c->seed);
    lft_problem p;
    lf_status st = lft_problem_init(&p, ctx, c);
    if (LFT_CHECKF(st == LF_OK, "setting up the buffers failed: %s", lf_status_name(st))) {
        st = lft_problem_run(&p);
        if (LFT_CHECK_STATUS(ctx, st, LF_OK)) {
            lft_problem_reference(&p);
            lft_problem_check(&p, NULL, NULL);
        }
        lft_problem_free(&p);
    }
    return lft_end();
}

/* ---- backends -------------------------------------------------------------------------------- */

void lft_for_each_backend(const char *test, int skip_count, lft_backend_fn fn, void *arg)
{
    static const lf_backend backends[2] = {LF_BACKEND_CPU, LF_BACKEND_CUDA};
    /* LF_TEST_BACKENDS=cuda (a comma list) narrows a run, e.g. under compute-sanitizer. */
    const char *only = getenv("LF_TEST_BACKENDS");
    for (int i = 0; i < 2; i++) {
        if (only && !strstr(only, lf_backend_name(backends[i]))) {
            lft_skip(test, lf_backend_name(backends[i]), "not selected by LF_TEST_BACKENDS", skip_count);
            continue;
        }
        if (!lf_backend_available(backends[i])) {
            lft_skip(test, lf_backend_name(backends[i]), "backend not available", skip_count);
            continue;
        }
        lf_context *ctx = NULL;
        lf_status st = lf_context_create(&ctx, backends[i]);
        if (st != LF_OK) {
            lft_begin("%s: lf_context_create(%s)", test, lf_backend_name(backends[i]));
            LFT_CHECK_STATUS(NULL, st, LF_OK);
            lft_end();
            continue;
        }
        printf("== %s on %s (%s)\n", test, lf_backend_name(backends[i]), lf_context_device_name(ctx));
        fflush(stdout);
        fn(ctx, arg);
        lf_context_destroy(ctx);
    }
}

/*
 * test_bad_input.c — bad input for every public function of lorafuse.h, on every backend present.
 *
 * lf_lora_forward: each bad argument must give its specific status, a last error that is new (not the
 * previous failure's), non-empty and names the problem (the operand and/or the word for what is wrong),
 * no crash, and memory untouched: all operands live in one backend allocation (the "arena") that is
 * compared byte for byte before and after. Each case is first given to lf_lora_problem_from_views (the
 * validation alone, lf_internal.h): if validation wrongly accepts a case whose pointers are not real,
 * the test reports it and does not hand it to lf_lora_forward, so a validation bug is a failure rather
 * than a crash of the whole test.
 *
 * Then: status strings and names, version, dtype/backend names and sizes, context functions, memory
 * functions, and LF_BACKEND_CUDA on a machine without a GPU.
 */
#include "lf_test.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* lf_malloc(SIZE_MAX) must fail cleanly; under AddressSanitizer that needs allocations that fail to
 * return NULL instead of aborting the process. Unused without ASan. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* ---- the fixture: a valid problem in one arena ----------------------------------------------- */

enum { M = 4, K = 8, N = 6, R = 2 };
#define ARENA_BYTES (16 * 4096)
/* Operands start 4 KiB apart, so that y can be moved next to or onto any of them. */
enum { OFF_X = 1 * 4096, OFF_W = 2 * 4096, OFF_BIAS = 3 * 4096, OFF_A = 4 * 4096, OFF_B = 5 * 4096, OFF_Y = 6 * 4096 };

typedef struct fixture {
    lf_context *ctx;
    unsigned char *arena; /* backend memory */
    unsigned char *image; /* what was uploaded */
    unsigned char *after;
} fixture;

typedef struct call {
    lf_layout layout;
    lf_matrix x, w, bias, a, b, y;
    int no_x, no_w, no_bias, no_a, no_b, no_y; /* pass NULL for that view */
    float scale, beta;
} call;

static void *at(const fixture *f, size_t off) { return f->arena + off; }

/* The valid PEFT f32 layer: x [4, 8], w [6, 8], bias [1, 6], a [2, 8], b [6, 2], y [4, 6]. */
static call valid_call(const fixture *f, lf_layout layout)
{
    call c;
    memset(&c, 0, sizeof c);
    const int peft = layout == LF_LAYOUT_PEFT;
    c.layout = layout;
    c.x = lf_matrix_make(LF_F32, at(f, OFF_X), M, K);
    c.w = peft ? lf_matrix_make(LF_F32, at(f, OFF_W), N, K) : lf_matrix_make(LF_F32, at(f, OFF_W), K, N);
    c.bias = lf_matrix_make(LF_F32, at(f, OFF_BIAS), 1, N);
    c.a = peft ? lf_matrix_make(LF_F32, at(f, OFF_A), R, K) : lf_matrix_make(LF_F32, at(f, OFF_A), K, R);
    c.b = peft ? lf_matrix_make(LF_F32, at(f, OFF_B), N, R) : lf_matrix_make(LF_F32, at(f, OFF_B), R, N);
    c.y = lf_matrix_make(LF_F32, at(f, OFF_Y), M, N);
    c.scale = 2.0f;
    c.beta = 0.5f;
    return c;
}

/* Is `word` (or its plural) in `text` as a token, not inside a longer identifier? Case-insensitive. */
static int has_token(const char *text, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = text; *p; p++) {
        if (strncasecmp(p, word, n) != 0)
            continue;
        int before = p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        const char *end = p + n;
        if ((*end == 's' || *end == 'S') && !(isalnum((unsigned char)end[1]) || end[1] == '_'))
            end++; /* a plural names the same thing: "streams" */
        int after = !(isalnum((unsigned char)*end) || *end == '_');
        if (before && after)
            return 1;
    }
    return 0;
}

/* Leaves a known, different message in last_error, so that a call that fails without setting its own
 * message (or leaves a stale one) is caught. */
static const char *plant_sentinel(lf_context *ctx)
{
    lf_context_set_threads(ctx, -1);
    return "lf_context_set_threads";
}

static void check_message(lf_context *ctx, const char *sentinel_word, const char *const *words)
{
    const char *msg = lf_context_last_error(ctx);
    if (!LFT_CHECKF(msg && msg[0], "lf_context_last_error is empty"))
        return;
    LFT_CHECKF(strstr(msg, sentinel_word) == NULL, "last error is stale: \"%s\"", msg);
    for (int i = 0; words[i]; i++)
        LFT_CHECKF(has_token(msg, words[i]), "last error \"%s\" does not name \"%s\"", msg, words[i]);
}

/* Runs one lf_lora_forward case. want != LF_OK: nothing in the arena may change. want == LF_OK:
 * only bytes inside [y_lo, y_hi) of the arena may change. words: NULL-terminated. */
static void expect_impl(fixture *f, const char *what, const call *c, lf_status want, const char *const *words)
{
    lft_begin("test_bad_input %s lf_lora_forward: %s -> %s", lf_backend_name(lf_context_backend(f->ctx)), what,
              lf_status_name(want));
    lf_context *ctx = f->ctx;
    const lf_matrix *x = c->no_x ? NULL : &c->x, *w = c->no_w ? NULL : &c->w, *bias = c->no_bias ? NULL : &c->bias;
    const lf_matrix *a = c->no_a ? NULL : &c->a, *b = c->no_b ? NULL : &c->b, *y = c->no_y ? NULL : &c->y;

    LFT_CHECK(lf_memcpy(ctx, f->arena, f->image, ARENA_BYTES, LF_COPY_HOST_TO_DEVICE) == LF_OK);
    const char *sentinel = plant_sentinel(ctx);
    lf_lora_problem p;
    lf_status st = lf_lora_problem_from_views(ctx, c->layout, x, w, bias, a, b, c->scale, c->beta, y, &p);
    int validated = LFT_CHECKF(st == want, "validation (lf_lora_problem_from_views) returned %s, expected %s; "
                               "last error: \"%s\"", lf_status_name(st), lf_status_name(want),
                               lf_context_last_error(ctx));
    if (!validated && st == LF_OK) {
        LFT_CHECKF(0, "not calling lf_lora_forward: validation accepted pointers that are not real");
    } else {
        if (want != LF_OK)
            sentinel = plant_sentinel(ctx);
        st = lf_lora_forward(ctx, c->layout, x, w, bias, a, b, c->scale, c->beta, y);
        LFT_CHECK_STATUS(ctx, st, want);
        if (want != LF_OK)
            check_message(ctx, sentinel, words);
        LFT_CHECK(lf_synchronize(ctx) == LF_OK);
    }
    /* Memory: untouched on failure; on success only y's extent may change. */
    if (LFT_CHECK(lf_memcpy(ctx, f->after, f->arena, ARENA_BYTES, LF_COPY_DEVICE_TO_HOST) == LF_OK)) {
        uintptr_t lo = 0, hi = 0;
        if (want == LF_OK && y && y->rows > 0) {
            size_t es = lf_dtype_size(y->dtype);
            lo = (uintptr_t)((unsigned char *)y->data - f->arena);
            hi = lo + (size_t)((y->rows - 1) * y->stride + y->cols) * es;
        }
        for (size_t i = 0; i < ARENA_BYTES; i++) {
            if (f->after[i] != f->image[i] && !(i >= lo && i < hi)) {
                LFT_CHECKF(0, "memory changed at arena byte %zu (y starts at %zu)", i, (size_t)OFF_Y);
                break;
            }
        }
    }
    lft_end();
}

#define EXPECT(f, what, c, want, ...)                                                                    \
    do {                                                                                                 \
        const char *const words_[] = {__VA_ARGS__, NULL};                                                \
        expect_impl((f), (what), (c), (want), words_);                                                   \
    } while (0)

/* A valid call that a backend may decline: LF_OK (writing only inside y) or LF_ERR_UNSUPPORTED with a
 * message (writing nothing). Never a crash, never another status. */
static void expect_ok_or_unsupported(fixture *f, const char *what, const call *c)
{
    lft_begin("test_bad_input %s lf_lora_forward: %s -> LF_OK or LF_ERR_UNSUPPORTED",
              lf_backend_name(lf_context_backend(f->ctx)), what);
    lf_context *ctx = f->ctx;
    const lf_matrix *w = c->no_w ? NULL : &c->w, *bias = c->no_bias ? NULL : &c->bias;
    LFT_CHECK(lf_memcpy(ctx, f->arena, f->image, ARENA_BYTES, LF_COPY_HOST_TO_DEVICE) == LF_OK);
    lf_lora_problem p;
    lf_status st = lf_lora_problem_from_views(ctx, c->layout, &c->x, w, bias, &c->a, &c->b, c->scale, c->beta,
                                              &c->y, &p);
    if (LFT_CHECK_STATUS(ctx, st, LF_OK)) {
        const char *sentinel = plant_sentinel(ctx);
        st = lf_lora_forward(ctx, c->layout, &c->x, w, bias, &c->a, &c->b, c->scale, c->beta, &c->y);
        LFT_CHECKF(st == LF_OK || st == LF_ERR_UNSUPPORTED, "lf_lora_forward returned %s (%s)", lf_status_name(st),
                   lf_context_last_error(ctx));
        if (st != LF_OK) {
            static const char *const none[] = {NULL};
            check_message(ctx, sentinel, none);
        }
        LFT_CHECK(lf_synchronize(ctx) == LF_OK);
        if (LFT_CHECK(lf_memcpy(ctx, f->after, f->arena, ARENA_BYTES, LF_COPY_DEVICE_TO_HOST) == LF_OK)) {
            size_t lo = (size_t)((unsigned char *)c->y.data - f->arena);
            size_t hi = st == LF_OK ? lo + (size_t)c->y.cols * lf_dtype_size(c->y.dtype) : lo; /* one row */
            for (size_t i = 0; i < ARENA_BYTES; i++)
                if (f->after[i] != f->image[i] && !(i >= lo && i < hi)) {
                    LFT_CHECKF(0, "memory changed at arena byte %zu (y starts at %zu)", i, lo);
                    break;
                }
        }
    }
    lft_end();
}

static void forward_cases(fixture *f)
{
    const int64_t huge = (int64_t)1 << 62;
    call c;

    /* ---- NULL pointers ---- */
    lft_begin("test_bad_input %s lf_lora_forward: ctx NULL", lf_backend_name(lf_context_backend(f->ctx)));
    c = valid_call(f, LF_LAYOUT_PEFT);
    LFT_CHECK_STATUS(NULL, lf_lora_forward(NULL, c.layout, &c.x, &c.w, &c.bias, &c.a, &c.b, 1.0f, 0.0f, &c.y),
                     LF_ERR_NULL_POINTER);
    LFT_CHECK(lf_context_last_error(NULL) != NULL && lf_context_last_error(NULL)[0] != '\0');
    lft_end();
    c = valid_call(f, LF_LAYOUT_PEFT), c.no_x = 1;
    EXPECT(f, "x NULL", &c, LF_ERR_NULL_POINTER, "x");
    c = valid_call(f, LF_LAYOUT_PEFT), c.no_a = 1;
    EXPECT(f, "a NULL", &c, LF_ERR_NULL_POINTER, "a");
    c = valid_call(f, LF_LAYOUT_PEFT), c.no_b = 1;
    EXPECT(f, "b NULL", &c, LF_ERR_NULL_POINTER, "b");
    c = valid_call(f, LF_LAYOUT_PEFT), c.no_y = 1;
    EXPECT(f, "y NULL", &c, LF_ERR_NULL_POINTER, "y");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.data = NULL;
    EXPECT(f, "x.data NULL", &c, LF_ERR_NULL_POINTER, "x");
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.data = NULL;
    EXPECT(f, "w.data NULL", &c, LF_ERR_NULL_POINTER, "w");
    c = valid_call(f, LF_LAYOUT_PEFT), c.bias.data = NULL;
    EXPECT(f, "bias.data NULL", &c, LF_ERR_NULL_POINTER, "bias");
    c = valid_call(f, LF_LAYOUT_PEFT), c.a.data = NULL;
    EXPECT(f, "a.data NULL", &c, LF_ERR_NULL_POINTER, "a");
    c = valid_call(f, LF_LAYOUT_KN), c.b.data = NULL;
    EXPECT(f, "b.data NULL (kn)", &c, LF_ERR_NULL_POINTER, "b");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.data = NULL;
    EXPECT(f, "y.data NULL", &c, LF_ERR_NULL_POINTER, "y");

    /* ---- shapes that disagree (the first operand found inconsistent is named) ---- */
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.rows = M + 1;
    EXPECT(f, "x has one row more than y", &c, LF_ERR_SHAPE_MISMATCH, "y");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.cols = K + 1, c.x.stride = K + 1;
    EXPECT(f, "x.cols != a.cols", &c, LF_ERR_SHAPE_MISMATCH, "a");
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.rows = N - 1;
    EXPECT(f, "w.rows != N", &c, LF_ERR_SHAPE_MISMATCH, "w");
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.cols = K - 1;
    EXPECT(f, "w.cols != K", &c, LF_ERR_SHAPE_MISMATCH, "w");
    c = valid_call(f, LF_LAYOUT_PEFT), c.bias.cols = N - 1;
    EXPECT(f, "bias.cols != N", &c, LF_ERR_SHAPE_MISMATCH, "bias");
    c = valid_call(f, LF_LAYOUT_PEFT), c.bias.rows = 2;
    EXPECT(f, "bias has 2 rows", &c, LF_ERR_SHAPE_MISMATCH, "bias");
    c = valid_call(f, LF_LAYOUT_PEFT), c.a.cols = K - 1;
    EXPECT(f, "a.cols != K", &c, LF_ERR_SHAPE_MISMATCH, "a");
    c = valid_call(f, LF_LAYOUT_PEFT), c.a.rows = R + 1;
    EXPECT(f, "a.rows (rank) != b.cols", &c, LF_ERR_SHAPE_MISMATCH, "b");
    c = valid_call(f, LF_LAYOUT_PEFT), c.b.rows = N + 1;
    EXPECT(f, "b.rows != N", &c, LF_ERR_SHAPE_MISMATCH, "b");
    c = valid_call(f, LF_LAYOUT_PEFT), c.b.cols = R - 1;
    EXPECT(f, "b.cols != rank", &c, LF_ERR_SHAPE_MISMATCH, "b");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.rows = M - 1;
    EXPECT(f, "y.rows != M", &c, LF_ERR_SHAPE_MISMATCH, "y");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.cols = N - 1;
    EXPECT(f, "y.cols != b.rows", &c, LF_ERR_SHAPE_MISMATCH, "b");
    /* PEFT-shaped weights given with LF_LAYOUT_KN */
    c = valid_call(f, LF_LAYOUT_KN), c.w = valid_call(f, LF_LAYOUT_PEFT).w;
    EXPECT(f, "kn: w given as [N, K]", &c, LF_ERR_SHAPE_MISMATCH, "w");
    c = valid_call(f, LF_LAYOUT_KN), c.b = valid_call(f, LF_LAYOUT_PEFT).b;
    EXPECT(f, "kn: b given as [N, r]", &c, LF_ERR_SHAPE_MISMATCH, "b");
    c = valid_call(f, LF_LAYOUT_KN), c.a.rows = K + 1;
    EXPECT(f, "kn: a.rows != K", &c, LF_ERR_SHAPE_MISMATCH, "a");

    /* ---- negative sizes, K or N of 0, rank ---- */
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.rows = -1;
    EXPECT(f, "M = -1", &c, LF_ERR_INVALID_VALUE, "negative");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.cols = -1;
    EXPECT(f, "K = -1", &c, LF_ERR_INVALID_VALUE, "negative");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.cols = -1;
    EXPECT(f, "N = -1", &c, LF_ERR_INVALID_VALUE, "negative");
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.rows = -N;
    EXPECT(f, "w.rows negative", &c, LF_ERR_INVALID_VALUE, "w", "negative");
    c = valid_call(f, LF_LAYOUT_PEFT), c.bias.rows = -1;
    EXPECT(f, "bias.rows negative", &c, LF_ERR_INVALID_VALUE, "bias", "negative");
    c = valid_call(f, LF_LAYOUT_PEFT), c.b.rows = -1;
    EXPECT(f, "b.rows negative", &c, LF_ERR_INVALID_VALUE, "b", "negative");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.rows = -1;
    EXPECT(f, "y.rows negative", &c, LF_ERR_INVALID_VALUE, "y", "negative");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.stride = -K;
    EXPECT(f, "x.stride negative", &c, LF_ERR_INVALID_VALUE, "x", "negative");
    c = valid_call(f, LF_LAYOUT_PEFT), c.a.rows = -1;
    EXPECT(f, "rank negative", &c, LF_ERR_INVALID_VALUE, "rank");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.cols = 0, c.x.stride = 0, c.a.cols = 0, c.w.cols = 0;
    EXPECT(f, "K = 0", &c, LF_ERR_INVALID_VALUE, "K");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.cols = 0, c.y.stride = 0, c.b.rows = 0, c.w.rows = 0, c.bias.cols = 0;
    EXPECT(f, "N = 0", &c, LF_ERR_INVALID_VALUE, "N");
    c = valid_call(f, LF_LAYOUT_PEFT), c.a.rows = 0, c.b.cols = 0, c.b.stride = 0;
    EXPECT(f, "rank 0", &c, LF_ERR_INVALID_VALUE, "rank");
    c = valid_call(f, LF_LAYOUT_KN), c.a.cols = 0, c.a.stride = 0, c.b.rows = 0;
    EXPECT(f, "kn: rank 0", &c, LF_ERR_INVALID_VALUE, "rank");
    /* Rank 1025 over a tiny buffer: rejected before the memory is looked at. */
    c = valid_call(f, LF_LAYOUT_PEFT), c.a.rows = LF_MAX_RANK + 1, c.b.cols = LF_MAX_RANK + 1,
    c.b.stride = LF_MAX_RANK + 1;
    EXPECT(f, "rank 1025", &c, LF_ERR_INVALID_VALUE, "rank");
    c = valid_call(f, LF_LAYOUT_KN), c.a.cols = LF_MAX_RANK + 1, c.a.stride = LF_MAX_RANK + 1,
    c.b.rows = LF_MAX_RANK + 1;
    EXPECT(f, "kn: rank 1025", &c, LF_ERR_INVALID_VALUE, "rank");
    /* M = 0 is a no-op only once everything else is valid. */
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.rows = 0, c.y.rows = 0, c.a.rows = 0, c.b.cols = 0;
    EXPECT(f, "M = 0 with rank 0", &c, LF_ERR_INVALID_VALUE, "rank");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.rows = 0, c.y.rows = 0, c.w.cols = K + 1, c.w.stride = K + 1;
    EXPECT(f, "M = 0 with a bad w", &c, LF_ERR_SHAPE_MISMATCH, "w");

    /* ---- strides ---- */
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.stride = K - 1;
    EXPECT(f, "x.stride < cols", &c, LF_ERR_BAD_STRIDE, "x", "stride");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.stride = 0;
    EXPECT(f, "x.stride = 0", &c, LF_ERR_BAD_STRIDE, "x", "stride");
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.stride = K - 1;
    EXPECT(f, "w.stride < cols", &c, LF_ERR_BAD_STRIDE, "w", "stride");
    c = valid_call(f, LF_LAYOUT_PEFT), c.bias.stride = N - 1;
    EXPECT(f, "bias.stride < cols", &c, LF_ERR_BAD_STRIDE, "bias", "stride");
    c = valid_call(f, LF_LAYOUT_PEFT), c.a.stride = K - 1;
    EXPECT(f, "a.stride < cols", &c, LF_ERR_BAD_STRIDE, "a", "stride");
    c = valid_call(f, LF_LAYOUT_KN), c.b.stride = N - 1;
    EXPECT(f, "kn: b.stride < cols", &c, LF_ERR_BAD_STRIDE, "b", "stride");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.stride = N - 1;
    EXPECT(f, "y.stride < cols", &c, LF_ERR_BAD_STRIDE, "y", "stride");

    /* ---- sizes whose byte count overflows size_t (over a tiny real buffer) ---- */
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.rows = huge, c.y.rows = huge;
    EXPECT(f, "M = 2^62", &c, LF_ERR_OVERFLOW, "x");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.stride = huge;
    EXPECT(f, "x.stride = 2^62", &c, LF_ERR_OVERFLOW, "x");
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.stride = huge;
    EXPECT(f, "w.stride = 2^62", &c, LF_ERR_OVERFLOW, "w");
    c = valid_call(f, LF_LAYOUT_PEFT), c.a.stride = huge;
    EXPECT(f, "a.stride = 2^62", &c, LF_ERR_OVERFLOW, "a");
    c = valid_call(f, LF_LAYOUT_PEFT), c.b.stride = huge;
    EXPECT(f, "b.stride = 2^62", &c, LF_ERR_OVERFLOW, "b");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.stride = huge;
    EXPECT(f, "y.stride = 2^62", &c, LF_ERR_OVERFLOW, "y");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.stride = INT64_MAX;
    EXPECT(f, "x.stride = INT64_MAX", &c, LF_ERR_OVERFLOW, "x");
    /* One row whose own length overflows: K = 2^62 f32 is 2^64 bytes. */
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.rows = 1, c.y.rows = 1, c.no_w = 1, c.x.cols = huge, c.x.stride = huge,
    c.a.rows = 1, c.a.cols = huge, c.a.stride = huge, c.b.cols = 1, c.b.stride = 1;
    EXPECT(f, "M = 1, K = 2^62 (one row of 2^64 bytes)", &c, LF_ERR_OVERFLOW, "x");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.rows = 1, c.y.rows = 1, c.no_w = 1, c.x.cols = huge + 1,
    c.x.stride = huge + 1, c.a.rows = 1, c.a.cols = huge + 1, c.a.stride = huge + 1, c.b.cols = 1, c.b.stride = 1;
    EXPECT(f, "M = 1, K = 2^62 + 1", &c, LF_ERR_OVERFLOW, "x");
    c = valid_call(f, LF_LAYOUT_PEFT), c.bias.cols = huge, c.bias.stride = huge, c.y.cols = huge,
    c.y.stride = huge, c.b.rows = huge, c.w.rows = huge;
    EXPECT(f, "N = 2^62", &c, LF_ERR_OVERFLOW, "b");
    /* A view that runs past the end of the address space. */
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.data = (void *)(UINTPTR_MAX - 15);
    EXPECT(f, "w ends past the top of the address space", &c, LF_ERR_OVERFLOW, "w");

    /* ---- dtypes ---- */
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.dtype = LF_F16;
    EXPECT(f, "w f16, rest f32", &c, LF_ERR_DTYPE_MISMATCH, "w");
    c = valid_call(f, LF_LAYOUT_PEFT), c.bias.dtype = LF_BF16;
    EXPECT(f, "bias bf16, rest f32", &c, LF_ERR_DTYPE_MISMATCH, "bias");
    c = valid_call(f, LF_LAYOUT_PEFT), c.a.dtype = LF_BF16;
    EXPECT(f, "a bf16, rest f32", &c, LF_ERR_DTYPE_MISMATCH, "a");
    c = valid_call(f, LF_LAYOUT_PEFT), c.b.dtype = LF_F16;
    EXPECT(f, "b f16, rest f32", &c, LF_ERR_DTYPE_MISMATCH, "b");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.dtype = LF_F16;
    EXPECT(f, "y f16, rest f32 (f32 in, f16 out)", &c, LF_ERR_DTYPE_MISMATCH, "y");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.dtype = LF_BF16;
    EXPECT(f, "x bf16, rest f32", &c, LF_ERR_DTYPE_MISMATCH, "a");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.dtype = LF_F16, c.a.dtype = LF_F16, c.b.dtype = LF_F16,
    c.y.dtype = LF_F16, c.w.dtype = LF_F16, c.bias.dtype = LF_BF16;
    EXPECT(f, "f16 with a bf16 bias", &c, LF_ERR_DTYPE_MISMATCH, "bias");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.dtype = (lf_dtype)3;
    EXPECT(f, "x dtype 3", &c, LF_ERR_INVALID_VALUE, "dtype");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.dtype = (lf_dtype)-1;
    EXPECT(f, "x dtype -1", &c, LF_ERR_INVALID_VALUE, "dtype");
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.dtype = (lf_dtype)99;
    EXPECT(f, "w dtype 99", &c, LF_ERR_INVALID_VALUE, "w", "dtype");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.dtype = (lf_dtype)-7;
    EXPECT(f, "y dtype -7", &c, LF_ERR_INVALID_VALUE, "y", "dtype");

    /* ---- enums and scalars ---- */
    c = valid_call(f, LF_LAYOUT_PEFT), c.layout = (lf_layout)2;
    EXPECT(f, "layout 2", &c, LF_ERR_INVALID_VALUE, "layout");
    c = valid_call(f, LF_LAYOUT_PEFT), c.layout = (lf_layout)-1;
    EXPECT(f, "layout -1", &c, LF_ERR_INVALID_VALUE, "layout");
    static const float bad_scalars[3] = {NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 3; i++) {
        char what[64];
        c = valid_call(f, LF_LAYOUT_PEFT), c.scale = bad_scalars[i];
        snprintf(what, sizeof what, "scale = %g", (double)bad_scalars[i]);
        EXPECT(f, what, &c, LF_ERR_INVALID_VALUE, "scale");
        c = valid_call(f, LF_LAYOUT_PEFT), c.beta = bad_scalars[i];
        snprintf(what, sizeof what, "beta = %g", (double)bad_scalars[i]);
        EXPECT(f, what, &c, LF_ERR_INVALID_VALUE, "beta");
    }

    /* ---- y overlapping an input ---- */
    static const struct {
        const char *name;
        size_t off;
        size_t bytes;
    } inputs[5] = {{"x", OFF_X, M * K * 4}, {"w", OFF_W, N * K * 4}, {"bias", OFF_BIAS, N * 4},
                   {"a", OFF_A, R * K * 4}, {"b", OFF_B, N * R * 4}};
    const size_t y_bytes = M * N * 4;
    for (int i = 0; i < 5; i++) {
        char what[96];
        c = valid_call(f, LF_LAYOUT_PEFT), c.y.data = at(f, inputs[i].off);
        snprintf(what, sizeof what, "y == %s", inputs[i].name);
        EXPECT(f, what, &c, LF_ERR_ALIASING, inputs[i].name);
        c = valid_call(f, LF_LAYOUT_PEFT), c.y.data = at(f, inputs[i].off + inputs[i].bytes - 4);
        snprintf(what, sizeof what, "y starts on the last element of %s", inputs[i].name);
        EXPECT(f, what, &c, LF_ERR_ALIASING, inputs[i].name);
        c = valid_call(f, LF_LAYOUT_PEFT), c.y.data = at(f, inputs[i].off - y_bytes + 4);
        snprintf(what, sizeof what, "y ends on the first element of %s", inputs[i].name);
        EXPECT(f, what, &c, LF_ERR_ALIASING, inputs[i].name);
    }
    /* A strided y whose last element is x's first: the extent counts (M-1)·stride + N elements. */
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.stride = N + 4;
    c.y.data = at(f, OFF_X - ((M - 1) * (N + 4) + N - 1) * 4);
    EXPECT(f, "strided y ends on x[0]", &c, LF_ERR_ALIASING, "x");
    /* KN layout too */
    c = valid_call(f, LF_LAYOUT_KN), c.y.data = at(f, OFF_A + 8);
    EXPECT(f, "kn: y inside a", &c, LF_ERR_ALIASING, "a");

    /* ---- valid views with strides beyond 32 bits: one row each, so only row 0 is ever touched.
     * Backends built on 32-bit BLAS interfaces may decline them (LF_ERR_UNSUPPORTED), never misread. */
    const int64_t big = ((int64_t)1 << 31) + 64;
    for (int has_w = 0; has_w < 2; has_w++) {
        c = valid_call(f, LF_LAYOUT_PEFT), c.x.rows = 1, c.y.rows = 1, c.x.stride = big, c.y.stride = big + 2;
        c.no_w = !has_w;
        expect_ok_or_unsupported(f, has_w ? "layer: M = 1, x and y strides > 2^31" :
                                 "delta: M = 1, x and y strides > 2^31", &c);
    }

    /* ---- valid edge cases: must be accepted, and write nothing outside y ---- */
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.data = at(f, OFF_X + M * K * 4);
    EXPECT(f, "y right after x (adjacent, no overlap)", &c, LF_OK, "");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.data = at(f, OFF_W - y_bytes);
    EXPECT(f, "y right before w (adjacent, no overlap)", &c, LF_OK, "");
    c = valid_call(f, LF_LAYOUT_PEFT), c.y.stride = N + 4;
    c.y.data = at(f, OFF_X - ((M - 1) * (N + 4) + N) * 4);
    EXPECT(f, "strided y ending right before x", &c, LF_OK, "");
    c = valid_call(f, LF_LAYOUT_PEFT), c.w.data = c.x.data, c.a.data = c.x.data;
    EXPECT(f, "inputs overlapping each other (w = a = x)", &c, LF_OK, "");
    c = valid_call(f, LF_LAYOUT_PEFT), c.x.rows = 0, c.y.rows = 0, c.x.data = NULL, c.y.data = NULL;
    EXPECT(f, "M = 0 with NULL x.data and y.data (a no-op)", &c, LF_OK, "");
    c = valid_call(f, LF_LAYOUT_KN), c.x.rows = 0, c.y.rows = 0;
    EXPECT(f, "kn: M = 0 (a no-op, y untouched)", &c, LF_OK, "");
    c = valid_call(f, LF_LAYOUT_PEFT), c.no_w = 1, c.no_bias = 1, c.w.data = NULL;
    EXPECT(f, "w and bias NULL (the delta alone)", &c, LF_OK, "");
}

/* ---- every other public function ------------------------------------------------------------- */

static void context_cases(lf_context *ctx)
{
    const char *be = lf_backend_name(lf_context_backend(ctx));

    lft_begin("test_bad_input %s context getters", be);
    LFT_CHECK(lf_context_backend(ctx) == LF_BACKEND_CPU || lf_context_backend(ctx) == LF_BACKEND_CUDA);
    LFT_CHECK(lf_context_device_name(ctx) != NULL && lf_context_device_name(ctx)[0] != '\0');
    LFT_CHECK(lf_context_device_name(NULL) != NULL);
    LFT_CHECK(lf_context_last_error(NULL) != NULL && lf_context_last_error(NULL)[0] != '\0');
    lft_end();

    lft_begin("test_bad_input %s lf_context_set_threads", be);
    LFT_CHECK_STATUS(NULL, lf_context_set_threads(NULL, 1), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(ctx, lf_context_set_threads(ctx, -1), LF_ERR_INVALID_VALUE);
    LFT_CHECK(has_token(lf_context_last_error(ctx), "threads"));
    LFT_CHECK_STATUS(ctx, lf_context_set_threads(ctx, -2147483647 - 1), LF_ERR_INVALID_VALUE);
    LFT_CHECK_STATUS(ctx, lf_context_set_threads(ctx, 1), LF_OK);
    LFT_CHECK_STATUS(ctx, lf_context_set_threads(ctx, 0), LF_OK);
    lft_end();

    lft_begin("test_bad_input %s lf_context_set_stream", be);
    LFT_CHECK_STATUS(NULL, lf_context_set_stream(NULL, NULL), LF_ERR_NULL_POINTER);
    if (lf_context_backend(ctx) == LF_BACKEND_CPU) {
        const char *sentinel = plant_sentinel(ctx);
        LFT_CHECK_STATUS(ctx, lf_context_set_stream(ctx, NULL), LF_ERR_UNSUPPORTED);
        static const char *const words[] = {"stream", NULL};
        check_message(ctx, sentinel, words);
    } else {
        LFT_CHECK_STATUS(ctx, lf_context_set_stream(ctx, NULL), LF_OK); /* the legacy default stream */
    }
    lft_end();

    lft_begin("test_bad_input %s lf_context_set_allow_tf32", be);
    LFT_CHECK_STATUS(NULL, lf_context_set_allow_tf32(NULL, 1), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(ctx, lf_context_set_allow_tf32(ctx, 1), LF_OK);
    LFT_CHECK_STATUS(ctx, lf_context_set_allow_tf32(ctx, 0), LF_OK);
    lft_end();

    lft_begin("test_bad_input %s lf_synchronize", be);
    LFT_CHECK_STATUS(NULL, lf_synchronize(NULL), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(ctx, lf_synchronize(ctx), LF_OK);
    lft_end();
}

static void memory_cases(lf_context *ctx)
{
    const char *be = lf_backend_name(lf_context_backend(ctx));
    void *p = (void *)&p;

    lft_begin("test_bad_input %s lf_malloc", be);
    LFT_CHECK_STATUS(NULL, lf_malloc(NULL, &p, 64), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(ctx, lf_malloc(ctx, NULL, 64), LF_ERR_NULL_POINTER);
    p = (void *)&p;
    LFT_CHECK_STATUS(ctx, lf_malloc(ctx, &p, 0), LF_OK);
    LFT_CHECKF(p == NULL, "lf_malloc(0) must set *ptr to NULL");
    /* Sizes no allocator can serve: a clean failure, never LF_OK with a wrapped-around size. */
    static const size_t huge[3] = {SIZE_MAX, SIZE_MAX - 10, SIZE_MAX / 2 + 1};
    for (int i = 0; i < 3; i++) {
        p = (void *)&p;
        lf_status st = lf_malloc(ctx, &p, huge[i]);
        LFT_CHECKF(st == LF_ERR_OUT_OF_MEMORY, "lf_malloc(%zu) returned %s, expected LF_ERR_OUT_OF_MEMORY", huge[i],
                   lf_status_name(st));
        LFT_CHECKF(p == NULL, "a failed lf_malloc(%zu) left *ptr = %p", huge[i], p);
        if (st == LF_OK)
            lf_free(ctx, p);
        else
            LFT_CHECK(lf_context_last_error(ctx)[0] != '\0');
    }
    p = NULL;
    LFT_CHECK_STATUS(ctx, lf_malloc(ctx, &p, 100), LF_OK);
    LFT_CHECK(p != NULL);
    if (lf_context_backend(ctx) == LF_BACKEND_CPU)
        LFT_CHECKF(((uintptr_t)p & 63u) == 0, "lf_malloc returned %p, not 64-byte aligned", p);
    lft_end();

    lft_begin("test_bad_input %s lf_memcpy", be);
    unsigned char host[100], back[100];
    for (int i = 0; i < 100; i++)
        host[i] = (unsigned char)(i * 13 + 1);
    void *q = NULL;
    LFT_CHECK_STATUS(ctx, lf_malloc(ctx, &q, 100), LF_OK);
    LFT_CHECK_STATUS(NULL, lf_memcpy(NULL, p, host, 100, LF_COPY_HOST_TO_DEVICE), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(ctx, lf_memcpy(ctx, NULL, host, 100, LF_COPY_HOST_TO_DEVICE), LF_ERR_NULL_POINTER);
    LFT_CHECK(has_token(lf_context_last_error(ctx), "dst"));
    LFT_CHECK_STATUS(ctx, lf_memcpy(ctx, p, NULL, 100, LF_COPY_HOST_TO_DEVICE), LF_ERR_NULL_POINTER);
    LFT_CHECK(has_token(lf_context_last_error(ctx), "src"));
    LFT_CHECK_STATUS(ctx, lf_memcpy(ctx, p, host, 100, (lf_copy_kind)3), LF_ERR_INVALID_VALUE);
    LFT_CHECK(has_token(lf_context_last_error(ctx), "kind"));
    LFT_CHECK_STATUS(ctx, lf_memcpy(ctx, p, host, 100, (lf_copy_kind)-1), LF_ERR_INVALID_VALUE);
    LFT_CHECK_STATUS(ctx, lf_memcpy(ctx, NULL, NULL, 0, LF_COPY_DEVICE_TO_HOST), LF_OK);
    /* Round trip host → device → device → host. */
    memset(back, 0, sizeof back);
    LFT_CHECK_STATUS(ctx, lf_memcpy(ctx, p, host, 100, LF_COPY_HOST_TO_DEVICE), LF_OK);
    LFT_CHECK_STATUS(ctx, lf_memcpy(ctx, q, p, 100, LF_COPY_DEVICE_TO_DEVICE), LF_OK);
    LFT_CHECK_STATUS(ctx, lf_memcpy(ctx, back, q, 100, LF_COPY_DEVICE_TO_HOST), LF_OK);
    LFT_CHECK(memcmp(host, back, 100) == 0);
    lft_end();

    lft_begin("test_bad_input %s lf_free", be);
    LFT_CHECK_STATUS(NULL, lf_free(NULL, p), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(ctx, lf_free(ctx, NULL), LF_OK);
    LFT_CHECK_STATUS(ctx, lf_free(ctx, p), LF_OK);
    LFT_CHECK_STATUS(ctx, lf_free(ctx, q), LF_OK);
    lft_end();
}

static void per_backend(lf_context *ctx, void *arg)
{
    (void)arg;
    fixture f;
    memset(&f, 0, sizeof f);
    f.ctx = ctx;
    void *arena = NULL;
    lft_begin("test_bad_input %s fixture", lf_backend_name(lf_context_backend(ctx)));
    f.image = malloc(ARENA_BYTES);
    f.after = malloc(ARENA_BYTES);
    if (LFT_CHECK(f.image && f.after) && LFT_CHECK_STATUS(ctx, lf_malloc(ctx, &arena, ARENA_BYTES), LF_OK)) {
        f.arena = arena;
        lft_rng rng;
        lft_rng_seed(&rng, lft_case_seed(7));
        for (size_t i = 0; i < ARENA_BYTES / 4; i++) {
            float v = lft_rng_value(&rng);
            memcpy(f.image + 4 * i, &v, 4);
        }
    }
    if (lft_end()) {
        forward_cases(&f);
        context_cases(ctx);
        memory_cases(ctx);
    }
    if (arena)
        lf_free(ctx, arena);
    free(f.image);
    free(f.after);
}

/* ---- functions without a context ------------------------------------------------------------- */

static void static_cases(void)
{
    static const char *const names[] = {"LF_OK", "LF_ERR_NULL_POINTER", "LF_ERR_INVALID_VALUE",
                                        "LF_ERR_SHAPE_MISMATCH", "LF_ERR_BAD_STRIDE", "LF_ERR_OVERFLOW",
                                        "LF_ERR_DTYPE_MISMATCH", "LF_ERR_ALIASING", "LF_ERR_UNSUPPORTED",
                                        "LF_ERR_BACKEND_UNAVAILABLE", "LF_ERR_OUT_OF_MEMORY", "LF_ERR_DEVICE",
                                        "LF_ERR_INTERNAL", "LF_ERR_IO", "LF_ERR_BAD_FORMAT", "LF_ERR_NOT_FOUND",
                                        "LF_ERR_RANK_REFUSED"};
    const int count = (int)(sizeof names / sizeof names[0]);

    lft_begin("test_bad_input lf_status_string / lf_status_name");
    LFT_CHECK(count == LF_ERR_RANK_REFUSED + 1);
    for (int s = 0; s < count; s++) {
        const char *name = lf_status_name((lf_status)s), *text = lf_status_string((lf_status)s);
        LFT_CHECKF(name && strcmp(name, names[s]) == 0, "lf_status_name(%d) = \"%s\", expected \"%s\"", s,
                   name ? name : "(null)", names[s]);
        LFT_CHECKF(text && text[0] && strcmp(text, "unknown status") != 0, "lf_status_string(%d) = \"%s\"", s,
                   text ? text : "(null)");
        for (int t = 0; t < s; t++)
            LFT_CHECKF(strcmp(text, lf_status_string((lf_status)t)) != 0, "statuses %d and %d share a string", s,
                       t);
    }
    static const int unknown[4] = {LF_ERR_RANK_REFUSED + 1, LF_ERR_RANK_REFUSED + 2, -1, 1000000};
    for (int i = 0; i < 4; i++) {
        const char *name = lf_status_name((lf_status)unknown[i]), *text = lf_status_string((lf_status)unknown[i]);
        LFT_CHECKF(name && strcmp(name, "LF_UNKNOWN") == 0, "lf_status_name(%d) = \"%s\"", unknown[i],
                   name ? name : "(null)");
        LFT_CHECKF(text && strcmp(text, "unknown status") == 0, "lf_status_string(%d) = \"%s\"", unknown[i],
                   text ? text : "(null)");
    }
    lft_end();

    lft_begin("test_bad_input lf_version_number / lf_version_string");
    LFT_CHECKF(lf_version_number() == LF_VERSION_NUMBER, "lf_version_number() = %u, header says %d",
               lf_version_number(), LF_VERSION_NUMBER);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", LF_VERSION_MAJOR, LF_VERSION_MINOR, LF_VERSION_PATCH);
    LFT_CHECKF(strcmp(lf_version_string(), want) == 0, "lf_version_string() = \"%s\", expected \"%s\"",
               lf_version_string(), want);
    lft_end();

    lft_begin("test_bad_input lf_dtype_size / lf_dtype_name");
    LFT_CHECK(lf_dtype_size(LF_F32) == 4);
    LFT_CHECK(lf_dtype_size(LF_F16) == 2);
    LFT_CHECK(lf_dtype_size(LF_BF16) == 2);
    LFT_CHECK(lf_dtype_size((lf_dtype)3) == 0);
    LFT_CHECK(lf_dtype_size((lf_dtype)-1) == 0);
    LFT_CHECK(strcmp(lf_dtype_name(LF_F32), "f32") == 0);
    LFT_CHECK(strcmp(lf_dtype_name(LF_F16), "f16") == 0);
    LFT_CHECK(strcmp(lf_dtype_name(LF_BF16), "bf16") == 0);
    LFT_CHECK(strcmp(lf_dtype_name((lf_dtype)3), "invalid") == 0);
    LFT_CHECK(strcmp(lf_dtype_name((lf_dtype)-1), "invalid") == 0);
    lft_end();

    lft_begin("test_bad_input lf_backend_name / lf_backend_available");
    LFT_CHECK(strcmp(lf_backend_name(LF_BACKEND_AUTO), "auto") == 0);
    LFT_CHECK(strcmp(lf_backend_name(LF_BACKEND_CPU), "cpu") == 0);
    LFT_CHECK(strcmp(lf_backend_name(LF_BACKEND_CUDA), "cuda") == 0);
    LFT_CHECK(strcmp(lf_backend_name((lf_backend)3), "invalid") == 0);
    LFT_CHECK(strcmp(lf_backend_name((lf_backend)-1), "invalid") == 0);
    LFT_CHECK(lf_backend_available(LF_BACKEND_AUTO) == 1);
    LFT_CHECK(lf_backend_available(LF_BACKEND_CPU) == 1);
    LFT_CHECK(lf_backend_available((lf_backend)3) == 0);
    LFT_CHECK(lf_backend_available((lf_backend)-1) == 0);
    lft_end();

    lft_begin("test_bad_input lf_context_create / lf_context_destroy");
    lf_context *ctx = (lf_context *)&ctx;
    LFT_CHECK_STATUS(NULL, lf_context_create(NULL, LF_BACKEND_CPU), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(NULL, lf_context_create(NULL, LF_BACKEND_AUTO), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(NULL, lf_context_create(&ctx, (lf_backend)3), LF_ERR_INVALID_VALUE);
    LFT_CHECKF(ctx == NULL, "a failed lf_context_create must set *out to NULL");
    ctx = (lf_context *)&ctx;
    LFT_CHECK_STATUS(NULL, lf_context_create(&ctx, (lf_backend)-1), LF_ERR_INVALID_VALUE);
    LFT_CHECK(ctx == NULL);
    if (!lf_backend_available(LF_BACKEND_CUDA)) {
        ctx = (lf_context *)&ctx;
        LFT_CHECK_STATUS(NULL, lf_context_create(&ctx, LF_BACKEND_CUDA), LF_ERR_BACKEND_UNAVAILABLE);
        LFT_CHECK(ctx == NULL);
    } else {
        printf("   (CUDA is available here: LF_ERR_BACKEND_UNAVAILABLE for LF_BACKEND_CUDA not asserted)\n");
    }
    ctx = NULL;
    if (LFT_CHECK_STATUS(NULL, lf_context_create(&ctx, LF_BACKEND_AUTO), LF_OK)) {
        lf_backend got = lf_context_backend(ctx);
        LFT_CHECKF(got == (lf_backend_available(LF_BACKEND_CUDA) ? LF_BACKEND_CUDA : LF_BACKEND_CPU),
                   "LF_BACKEND_AUTO took %s", lf_backend_name(got));
        LFT_CHECKF(strcmp(lf_context_last_error(ctx), "") == 0, "a new context's last error is \"%s\"",
                   lf_context_last_error(ctx));
        lf_context_destroy(ctx);
    }
    lf_context_destroy(NULL); /* a no-op */
    lft_end();
}

int main(void)
{
    static_cases();
    lft_for_each_backend("test_bad_input", 1, per_backend, NULL);
    return lft_summary("test_bad_input");
}

/*
 * test_ops.c — the table-driven sweep of lf_lora_forward against the double-precision reference:
 * every dtype × layout × (delta | layer) × (bias | none) × beta (0, 1, 0.5) on awkward shapes, on
 * every backend present; then bitwise determinism and thread counts 1 and 2.
 *
 * Every case: random inputs (never zero, B included), y poisoned with NaN when beta = 0, NaN in every
 * stride gap, canaries around every buffer, every element within the derived tolerance
 * (lft_tolerance), inputs unchanged. LF_TEST_SEED=<n> reruns with other random values.
 */
#include "lf_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct shape {
    int64_t m, k, n, rank;
    int strided, misalign;
} shape;

/* Awkward on purpose: nothing a multiple of 8/16/64 unless noted, odd K and N, M of 0 and 1, rank 1,
 * 7, 64 and 1024, every operand strided differently, pointers off 16-byte alignment. */
static const shape sweep_shapes[] = {
    {1, 1, 1, 1, 0, 0},        /* the smallest problem */
    {1, 300, 200, 16, 0, 0},   /* M = 1: decode */
    {1, 64, 64, 7, 1, 0},      /* M = 1, strided */
    {0, 16, 8, 4, 1, 0},       /* M = 0: a no-op, y untouched */
    {37, 129, 67, 7, 1, 0},    /* odd everything, strided */
    {37, 129, 67, 1, 0, 1},    /* rank 1, dense but misaligned */
    {3, 5000, 3, 1, 0, 0},     /* long K, tiny N */
    {130, 17, 257, 7, 1, 0},   /* N just past 256 */
    {130, 17, 257, 64, 0, 0},  /* rank 64 */
    {16, 64, 128, 16, 0, 0},   /* aligned and dense: the SIMD path's comfortable case */
    {65, 96, 33, 8, 1, 1},     /* strided and misaligned together */
    {5, 33, 19, 1024, 1, 0},   /* the largest rank */
};
#define N_SHAPES (sizeof sweep_shapes / sizeof sweep_shapes[0])

static const lf_dtype dtypes[3] = {LF_F32, LF_F16, LF_BF16};
static const lf_layout layouts[2] = {LF_LAYOUT_PEFT, LF_LAYOUT_KN};
static const float betas[3] = {0.0f, 1.0f, 0.5f};
static const float scales[3] = {2.0f, -0.75f, 0.3125f};
#define CASES_PER_SHAPE (3 * 2 * 2 * 2 * 3)

static lft_case make_case(const shape *s, int dt, int lay, int has_w, int has_bias, int be, uint64_t index)
{
    lft_case c;
    memset(&c, 0, sizeof c);
    c.dtype = dtypes[dt];
    c.layout = layouts[lay];
    c.m = s->m;
    c.k = s->k;
    c.n = s->n;
    c.rank = s->rank;
    c.has_w = has_w;
    c.has_bias = has_bias;
    c.beta = betas[be];
    c.scale = scales[index % 3];
    c.strided = s->strided;
    c.misalign = s->misalign;
    c.seed = lft_case_seed(index);
    return c;
}

static void sweep(lf_context *ctx, void *arg)
{
    (void)arg;
    uint64_t index = 0;
    int failed = 0;
    for (size_t si = 0; si < N_SHAPES; si++)
        for (int dt = 0; dt < 3; dt++)
            for (int lay = 0; lay < 2; lay++)
                for (int has_w = 0; has_w < 2; has_w++)
                    for (int has_bias = 0; has_bias < 2; has_bias++)
                        for (int be = 0; be < 3; be++) {
                            lft_case c = make_case(&sweep_shapes[si], dt, lay, has_w, has_bias, be, index++);
                            failed += !lft_run_case(ctx, "test_ops sweep", &c);
                        }
    printf("   sweep: %llu cases, %d failed\n", (unsigned long long)index, failed);
}

/* Same inputs twice → identical bits, for each thread count (the promise is per backend and thread
 * count). Also checks both runs against the reference. */
static const shape det_shapes[] = {
    {37, 129, 67, 7, 1, 0},
    {64, 256, 96, 16, 0, 0},
    {130, 17, 257, 64, 1, 1},
};
static const int thread_counts[3] = {0, 1, 2};

static void determinism(lf_context *ctx, void *arg)
{
    (void)arg;
    uint64_t index = 100000;
    for (int ti = 0; ti < 3; ti++) {
        LFT_CHECK_STATUS(ctx, lf_context_set_threads(ctx, thread_counts[ti]), LF_OK);
        for (size_t si = 0; si < sizeof det_shapes / sizeof det_shapes[0]; si++)
            for (int dt = 0; dt < 3; dt++)
                for (int lay = 0; lay < 2; lay++) {
                    lft_case c = make_case(&det_shapes[si], dt, lay, 1, 1, 2, index++);
                    char name[256];
                    lft_begin("test_ops determinism %s threads=%d %s", lf_backend_name(lf_context_backend(ctx)),
                              thread_counts[ti], lft_case_name(&c, name, sizeof name));
                    lft_set_seed(c.seed);
                    lft_problem p;
                    if (LFT_CHECK(lft_problem_init(&p, ctx, &c) == LF_OK)) {
                        unsigned char *first = NULL, *second = NULL;
                        lft_problem_reference(&p);
                        if (LFT_CHECK_STATUS(ctx, lft_problem_run(&p), LF_OK))
                            lft_problem_check(&p, NULL, &first);
                        if (LFT_CHECK(lft_problem_reset_y(&p) == LF_OK) &&
                            LFT_CHECK_STATUS(ctx, lft_problem_run(&p), LF_OK))
                            lft_problem_check(&p, NULL, &second);
                        if (first && second)
                            LFT_CHECKF(memcmp(first, second, p.y.total) == 0,
                                       "two runs on the same inputs gave different bits");
                        free(first);
                        free(second);
                        lft_problem_free(&p);
                    }
                    lft_end();
                }
    }
    LFT_CHECK_STATUS(ctx, lf_context_set_threads(ctx, 0), LF_OK);
}

/* Thread counts 1 and 2 each pass a slice of the sweep (larger shapes, so that work is split). */
static const shape thread_shapes[] = {
    {37, 129, 67, 7, 1, 0},
    {64, 256, 96, 16, 0, 0},
    {130, 17, 257, 7, 1, 1},
    {1, 300, 200, 16, 0, 0},
};

static void threads(lf_context *ctx, void *arg)
{
    (void)arg;
    uint64_t index = 200000;
    for (int t = 1; t <= 2; t++) {
        LFT_CHECK_STATUS(ctx, lf_context_set_threads(ctx, t), LF_OK);
        char test[64];
        snprintf(test, sizeof test, "test_ops threads=%d", t);
        for (size_t si = 0; si < sizeof thread_shapes / sizeof thread_shapes[0]; si++)
            for (int dt = 0; dt < 3; dt++)
                for (int lay = 0; lay < 2; lay++)
                    for (int has_w = 0; has_w < 2; has_w++) {
                        lft_case c = make_case(&thread_shapes[si], dt, lay, has_w, 1, 2, index++);
                        lft_run_case(ctx, test, &c);
                    }
    }
    LFT_CHECK_STATUS(ctx, lf_context_set_threads(ctx, 0), LF_OK);
}

int main(void)
{
    printf("test_ops: base seed LF_TEST_SEED=0x%016llx\n", (unsigned long long)lft_base_seed());
    lft_for_each_backend("test_ops sweep", (int)(N_SHAPES * CASES_PER_SHAPE), sweep, NULL);
    lft_for_each_backend("test_ops determinism", 3 * 3 * 3 * 2, determinism, NULL);
    lft_for_each_backend("test_ops threads", 2 * 4 * 3 * 2 * 2, threads, NULL);
    return lft_summary("test_ops");
}

/*
 * test_ops.c — the table-driven sweep of lf_lora_forward against the double-precision reference:
 * every dtype × layout × (delta | layer) × (bias | none) × beta (0, 1, 0.5) on awkward shapes, on
 * every backend present; then bitwise determinism and thread counts 1 and 2.
 *
 * Every case: random inputs (never zero, B included), y poisoned with NaN when beta = 0, NaN in every
 * stride gap, canaries around every buffer, every element within the derived tolerance
 * (lft_tolerance), inputs unchanged. LF_TEST_SEED=<n> reruns with other random values.
 *
 * Then the shapes the CUDA plan sends to the Hopper kernel (lora_hopper.cu) and to its split-K form:
 * each case asks the plan which implementation it chose; on a compute capability 9.0 device any
 * other choice fails, on other GPUs the case is reported as skipped with the reason. The persistent
 * kernel's shapes also run it without its LoRA term (the bench's own base GEMM). Last, one shape of
 * each CUDA layer path runs as a captured CUDA graph replayed with new inputs.
 */
#include "lf_test.h"
#include "cuda/heuristics.h" /* LF_CUDA_HOPPER: the plan's implementation ids */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef LF_TEST_CUDA
#include <cuda_runtime_api.h>
#endif

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
    {5, 72, 4360, 16, 0, 0},   /* few tokens on wide W: CUDA decode, columns past M zero-filled, K tail */
    {24, 200, 296, 32, 0, 0},  /* CUDA decode with 32 token columns (17-32 tokens), K tail, partial tile */
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

/* ---- the Hopper kernel ---------------------------------------------------------------------- */

/* Shapes with tiles enough to take the Hopper path on an H100 (heuristics.h: lf_cuda_hopper_fits):
 * M, N and K past whole tiles (128, 256, 64) where noted, both T widths (16: r ≤ 16; 64: r ≤ 64),
 * bf16 and f16, bias on and off, beta 0 (the store warps' epilogue), 1 and 0.5 (the register one);
 * then shapes for the split-K form (lf_cuda_hopper_mid_split: 128 × 64 or 128 × 128 tiles, r ≤ 16).
 * Dense operands: K, N and r are multiples of 8 (16-byte rows, the copy engine's rule). */
typedef struct hopper_shape {
    shape s;
    int dt, has_bias, be; /* indices into dtypes, betas */
    int impl; /* LF_CUDA_HOPPER, LF_CUDA_HOPPER_MID (the split-K form for few tiles) or _DECODE (few tokens) */
} hopper_shape;
static const hopper_shape hopper_shapes[] = {
    /* tile widths on 132 SMs (H100, H200; lf_cuda_hopper_tile_cols): 192 columns for the first four
     * and the seventh, 224 for the sixth, 256 for the fifth */
    {{1100, 1032, 4360, 16, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER}, /* bf16, every tail: M 76, K 8, N 136 past whole tiles */
    {{1100, 72, 4104, 8, 0, 0}, 1, 0, 1, LF_CUDA_HOPPER},    /* f16, short K (one whole stage and a tail), r 8 */
    {{1030, 136, 4616, 40, 0, 0}, 2, 1, 2, LF_CUDA_HOPPER},  /* bf16, r 40: T 64 wide, 3 of 4 k16 steps per LoRA stage */
    {{1100, 264, 4360, 64, 0, 0}, 1, 1, 0, LF_CUDA_HOPPER},  /* f16, r 64 */
    {{1024, 512, 4096, 64, 0, 0}, 2, 0, 2, LF_CUDA_HOPPER},  /* bf16, whole tiles everywhere */
    {{1600, 264, 2000, 16, 0, 0}, 2, 1, 1, LF_CUDA_HOPPER},  /* bf16, r 16, narrow N: 9 column tiles, the last part-filled */
    {{1200, 520, 4104, 16, 0, 0}, 1, 0, 0, LF_CUDA_HOPPER},  /* f16, beta 0, no bias: the store warps alone, M and N tails */
    /* each tile width with its tails: 256 columns (128 tiles in one round), 224 (115 in one round,
     * not 100 of 256) and 192 (219 in 2 rounds, not 165 of 256) — bf16 r 16 with bias through the
     * store warps (16, 14 or 12 chunks a staged row, each with its swizzle), f16 r 40 (two LoRA
     * stages) with beta 1 or 0.5 through the register epilogue, N ≢ 0 mod 8 with strides padded to
     * 16 bytes (the store warps' element-wise column tail); M and N tails in all, K tails in most */
    {{1000, 1032, 4000, 16, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER},
    {{1000, 136, 4000, 40, 0, 0}, 1, 0, 1, LF_CUDA_HOPPER},
    {{1000, 520, 3999, 16, LFT_PADDED16, 0}, 1, 0, 0, LF_CUDA_HOPPER},
    {{520, 264, 5000, 16, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER},
    {{520, 136, 5000, 40, 0, 0}, 1, 0, 2, LF_CUDA_HOPPER},
    {{300, 264, 14000, 16, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER},
    {{300, 136, 14000, 40, 0, 0}, 1, 0, 1, LF_CUDA_HOPPER},
    {{260, 264, 13999, 16, LFT_PADDED16, 0}, 2, 0, 0, LF_CUDA_HOPPER},
    /* 128 columns (one round where wider tiles leave SMs idle; 8 chunks a staged row): 112 tiles
     * of 256 tokens in two full rows with a K tail, bf16 r 16 with bias through the store warps;
     * 96 tiles of 200 tokens with M and N tails, f16 r 40 (two LoRA stages) with beta 0.5 through
     * the register epilogue; 128 tiles with an M tail and N ≢ 0 mod 8 (strides padded to 16 bytes) */
    {{256, 1032, 7168, 16, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER},
    {{200, 136, 6104, 40, 0, 0}, 1, 0, 2, LF_CUDA_HOPPER},
    {{500, 520, 3999, 16, LFT_PADDED16, 0}, 1, 0, 0, LF_CUDA_HOPPER},
    /* T workers that take tiles after T (lf_cuda_hopper_schedule): 8 of them at 4096 × 2048 (one tile
     * each after T, through the store warps: bf16 with bias, beta 0), 32 at 4096 × 1000 (four
     * column tiles a row block, the last part-filled; f16, beta 0.5, strides padded to 16 bytes) */
    {{4096, 264, 2048, 16, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER},
    {{4096, 136, 1000, 16, LFT_PADDED16, 0}, 1, 0, 2, LF_CUDA_HOPPER},
    /* the same at the other widths and T 64 wide, each worker's T ring (9–11 stages) becoming its
     * tile ring (4 or 6), a worker's tiles the last columns of its last row block: 18 workers of 35
     * row blocks with 128-column tiles (bf16, bias, beta 0), 13 of 50 with 224 (f16, beta 1), 17 of
     * 49 with 192 (bf16, beta 0.5), 16 of 16 with 192 (bf16, r 8, beta 0.5), 7 of 7 with 256 at
     * r 40, six tiles each (f16, bias, beta 0) */
    {{4381, 72, 776, 16, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER},
    {{6305, 72, 968, 16, 0, 0}, 1, 0, 1, LF_CUDA_HOPPER},
    {{6157, 72, 776, 16, 0, 0}, 2, 0, 2, LF_CUDA_HOPPER},
    {{2048, 136, 1352, 8, 0, 0}, 2, 0, 2, LF_CUDA_HOPPER},
    {{896, 72, 28680, 40, 0, 0}, 1, 1, 0, LF_CUDA_HOPPER},
    /* the split-K form (r ≤ 16; tiles and splits as on an H200; a CTA finishes its share of the
     * live rows): 64 tiles of 128 × 64 (pairs), 16 narrow ones of 77 tokens with K and N tails
     * (clusters of 6), 51 tiles of 128 × 128 with an M tail (pairs), 80 wide ones of 100 tokens
     * and a short K (one CTA a tile), 60 narrow ones of 90 tokens with an N tail (pairs), 32 narrow
     * ones with a K tail (clusters of 3), 32 narrow ones in two full rows with K and N tails
     * (clusters of 3); half-full rows: 17 wide tiles of 64 tokens (clusters of 6), 64 narrow ones
     * of 192 tokens (pairs) */
    {{128, 4096, 4096, 16, 0, 0}, 2, 0, 0, LF_CUDA_HOPPER_MID},
    {{77, 1032, 1000, 8, 0, 0}, 1, 1, 1, LF_CUDA_HOPPER_MID},
    {{330, 520, 2056, 8, 0, 0}, 2, 1, 2, LF_CUDA_HOPPER_MID},
    {{100, 264, 10240, 16, 0, 0}, 1, 0, 0, LF_CUDA_HOPPER_MID},
    {{90, 2048, 3832, 16, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER_MID},
    {{100, 1032, 2048, 16, 0, 0}, 2, 1, 2, LF_CUDA_HOPPER_MID},
    {{256, 1032, 1000, 8, 0, 0}, 1, 1, 1, LF_CUDA_HOPPER_MID},
    {{64, 1032, 2056, 16, 0, 0}, 2, 1, 1, LF_CUDA_HOPPER_MID},
    {{192, 520, 2048, 8, 0, 0}, 1, 0, 2, LF_CUDA_HOPPER_MID},
    /* N ≢ 0 mod 8 with every stride padded to 16 bytes: the element-wise column tails of the store
     * warps (beta 0) and of the split-K finish (beta 0.5: narrow tiles in clusters of 6, a row of
     * 120 tokens and a full one) */
    {{1100, 1032, 4100, 16, LFT_PADDED16, 0}, 2, 1, 0, LF_CUDA_HOPPER},
    {{120, 1032, 1001, 16, LFT_PADDED16, 0}, 1, 1, 2, LF_CUDA_HOPPER_MID},
    {{128, 1032, 1001, 16, LFT_PADDED16, 0}, 2, 0, 2, LF_CUDA_HOPPER_MID},
    /* the decode form (M ≤ 64, r ≤ 16, tiles filling an H100's or H200's 132 SMs in rounds more
     * than ¾ full): up to 16 tokens 32-row tiles (T in the wgmma's spare rows) at 4096 → 4096,
     * with the last tile's 8 rows and a K tail, with 2–3 tiles a CTA and the ring wrapping, and
     * with a last tile of 18 rows; then 64-row tiles: 16 tokens with N and K tails (204 tiles), one token on exactly 132 tiles,
     * 7 tokens at r 5 and beta 1 and 3 tokens with N ≢ 0 mod 8 (both with strides padded to 16
     * bytes), 16 tokens at r 8 with two tiles on most CTAs, 4 tokens with three or four tiles a CTA
     * (B's staging buffers reused, the ring wrapping), 5 tokens with K under one stage and r 1, 16
     * tokens in f16 at r 12 with a bias and beta 0.5 and one token at a K tail, two tiles a CTA
     * each (the first computing T by the second wgmma, the next without);
     * then 48-row tiles (T in the wgmma's rows 48–63): 12 tokens on 128 tiles, 9 tokens at r 9 with
     * a bias, padded strides and a last tile of 40 rows, 2 tokens on 107 tiles (one round, 81%);
     * then 17–64 tokens (64 token columns, 32- or 48-row tiles in one round; the ring wraps past
     * 13 K stages): 64 tokens on 128 tiles of 32, 25 at r 7 with a last tile of 8 rows and a K
     * tail, 20 (where the CUDA-core decode kernel does not fit) on 48-row tiles with a last one of
     * 40 rows, 33 on 105 tiles of 48 with a last one of 8 rows, 64 in f16 at r 8 on 129 tiles of 32
     * with a last one of 4 rows (N ≢ 0 mod 8: strides padded to 16 bytes); then 64 token columns on
     * 64-row tiles (A's box in a slot of its own, T by x's rows × A's): 64 tokens on 132 tiles, 40
     * in f16 at r 7 with a bias and beta 1 on 219 tiles (two rounds, the last tile 48 rows, a K
     * tail), 25 at r 12 with a bias and beta 0.5 on 112 tiles with a K tail, 33 in f16 at r 1 with
     * K under two stages on 256 tiles (two a CTA: B's buffers swap; B's rows padded to 16
     * bytes, as TMA and the form need) */
    {{16, 4096, 4096, 16, 0, 0}, 2, 0, 0, LF_CUDA_HOPPER_DECODE}, /* 32-row tiles: 128 of them */
    {{5, 1000, 4200, 7, LFT_PADDED16, 0}, 1, 1, 1, LF_CUDA_HOPPER_DECODE}, /* 32-row tiles, the last 8 rows, K tail */
    {{4, 520, 11008, 16, 0, 0}, 2, 1, 1, LF_CUDA_HOPPER_DECODE},   /* 344 tiles of 32: 2-3 a CTA, the ring wrapping */
    {{3, 1000, 10002, 5, LFT_PADDED16, 0}, 1, 0, 2, LF_CUDA_HOPPER_DECODE}, /* 313 tiles of 32, the last 18 rows */
    {{16, 1032, 13000, 16, 0, 0}, 2, 1, 1, LF_CUDA_HOPPER_DECODE},
    {{1, 200, 8448, 16, 0, 0}, 1, 0, 0, LF_CUDA_HOPPER_DECODE},
    {{7, 4104, 14000, 5, LFT_PADDED16, 0}, 2, 0, 2, LF_CUDA_HOPPER_DECODE},
    {{3, 1032, 8443, 16, LFT_PADDED16, 0}, 1, 1, 0, LF_CUDA_HOPPER_DECODE},
    /* 131 tiles of 64: an odd tile count, a last tile of 63 rows */
    {{6, 264, 8383, 16, LFT_PADDED16, 0}, 2, 1, 1, LF_CUDA_HOPPER_DECODE},
    {{16, 520, 14336, 8, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER_DECODE},
    {{4, 1032, 25600, 16, 0, 0}, 2, 0, 1, LF_CUDA_HOPPER_DECODE},
    {{5, 40, 8448, 1, LFT_PADDED16, 0}, 1, 1, 2, LF_CUDA_HOPPER_DECODE},
    {{16, 1000, 14336, 12, LFT_PADDED16, 0}, 1, 1, 2, LF_CUDA_HOPPER_DECODE}, /* f16: T's window, then a tile without */
    {{1, 4104, 16384, 16, 0, 0}, 2, 0, 0, LF_CUDA_HOPPER_DECODE}, /* one token, 256 tiles of 64: two a CTA */
    {{12, 1032, 6144, 16, 0, 0}, 2, 0, 2, LF_CUDA_HOPPER_DECODE},  /* 128 tiles of 48 */
    {{9, 520, 6136, 9, LFT_PADDED16, 0}, 1, 1, 1, LF_CUDA_HOPPER_DECODE}, /* 128 tiles of 48, the last 40 rows */
    {{2, 4096, 5120, 16, 0, 0}, 2, 1, 0, LF_CUDA_HOPPER_DECODE},   /* 107 tiles of 48 */
    {{64, 1032, 4096, 16, 0, 0}, 2, 0, 0, LF_CUDA_HOPPER_DECODE},
    {{25, 1000, 4200, 7, LFT_PADDED16, 0}, 1, 1, 1, LF_CUDA_HOPPER_DECODE},
    {{20, 520, 6136, 9, LFT_PADDED16, 0}, 2, 1, 2, LF_CUDA_HOPPER_DECODE},
    {{33, 264, 5000, 16, 0, 0}, 2, 0, 1, LF_CUDA_HOPPER_DECODE},
    {{64, 1032, 4100, 8, LFT_PADDED16, 0}, 1, 1, 0, LF_CUDA_HOPPER_DECODE},
    {{64, 1032, 8448, 16, 0, 0}, 2, 0, 0, LF_CUDA_HOPPER_DECODE},
    {{40, 520, 14000, 7, LFT_PADDED16, 0}, 1, 1, 1, LF_CUDA_HOPPER_DECODE},
    {{25, 4104, 7168, 12, LFT_PADDED16, 0}, 2, 1, 2, LF_CUDA_HOPPER_DECODE},
    {{33, 72, 16384, 1, LFT_PADDED16, 0}, 1, 0, 0, LF_CUDA_HOPPER_DECODE},
    /* the plain-load stream (M ≤ 8, r ≤ 16, 132 to 262 tiles of 16 rows on an H100's or H200's 132
     * SMs, one a block): one token on 256 tiles; 8 tokens with K and N tails, r 7 and strides
     * padded to 16 bytes; K under one step a warp (most warps stream nothing, T's values loaded
     * after the loop); one step in all on exactly 132 tiles, r 1; a K tail on 188 tiles with r 12
     * (B's rows padded to 16 bytes: the stream needs 16-byte strides); the most
     * tiles (262) with 7 tokens of the longest x the block holds nearly */
    {{1, 4096, 4096, 16, 0, 0}, 2, 0, 0, LF_CUDA_STREAM},
    {{8, 1000, 4100, 7, LFT_PADDED16, 0}, 1, 1, 1, LF_CUDA_STREAM},
    {{5, 72, 2200, 16, 0, 0}, 2, 1, 2, LF_CUDA_STREAM},
    {{3, 8, 2112, 1, LFT_PADDED16, 0}, 1, 0, 0, LF_CUDA_STREAM},
    {{2, 4104, 3000, 12, LFT_PADDED16, 0}, 2, 1, 0, LF_CUDA_STREAM},
    {{7, 6000, 4192, 16, 0, 0}, 2, 0, 1, LF_CUDA_STREAM},
    {{8, 6368, 4096, 16, 0, 0}, 2, 1, 0, LF_CUDA_STREAM}, /* x of 8 tokens at the block's shared-memory limit */
    /* a K tail of less than 8 (rows padded to 16 bytes, the padding not zero): not the stream's */
    {{3, 1001, 4096, 16, LFT_PADDED16, 0}, 2, 1, 1, LF_CUDA_HOPPER_DECODE},
};
#define N_HOPPER (sizeof hopper_shapes / sizeof hopper_shapes[0])
/* Cases a shape runs: the layer, and for the Hopper kernel also its own base GEMM. */
static int hopper_cases(const hopper_shape *h) { return h->impl == LF_CUDA_HOPPER ? 2 : 1; }
static int hopper_cases_all(void)
{
    int n = 0;
    for (size_t i = 0; i < N_HOPPER; i++)
        n += hopper_cases(&hopper_shapes[i]);
    return n;
}

static lft_case hopper_case(const hopper_shape *h, uint64_t index)
{
    return make_case(&h->s, h->dt, 0, 1, h->has_bias, h->be, index);
}

/* The implementation the context's plan chose for p (building the plan if needed), -1 on error. */
static int planned_impl(lft_problem *p)
{
    lf_lora_problem q;
    lft_problem_lora(p, 1, &q);
    const lf_plan *plan;
    return lf_plan_get(p->ctx, &q, &plan) == LF_OK ? plan->impl : -1;
}

#define HOPPER_NOT_TAKEN "the plan did not choose the Hopper kernel (it needs compute capability 9.0 and sm_90a code)"

/* Whether the current device is one the Hopper kernel is built for (compute capability 9.0): there
 * a shape of this list that does not reach it is a failure, not a skip, so that the default path
 * of an H100 cannot go untested. Without the CUDA runtime in the test: unknown, so a skip. */
static int device_is_hopper(void)
{
#ifdef LF_TEST_CUDA
    int dev = 0, major = 0, minor = 0;
    return cudaGetDevice(&dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
           minor == 0;
#else
    return 0;
#endif
}

#define DECODE_NOT_TAKEN "the plan did not choose the decode kernel (its shared memory does not fit this GPU)"

/* Whether the plan took implementation `impl` (LF_CUDA_HOPPER, _HOPPER_MID, _DECODE or _GEMM) for p;
 * if not, a skip of the caller's `cases` on other GPUs and a failure (with what the plan chose) on compute
 * capability 9.0, where both run. */
static int impl_taken(lft_problem *p, const char *what, int impl, int cases)
{
    const int got = planned_impl(p);
    if (got == impl)
        return 1;
    if (device_is_hopper()) {
        lft_begin("%s", what);
        LFT_CHECKF(0, "compute capability 9.0, but the plan chose implementation %d, not %d (-1: planning failed)",
                   got, impl);
        lft_end();
    } else {
        lft_skip(what, "cuda",
                 impl == LF_CUDA_HOPPER   ? HOPPER_NOT_TAKEN
                 : impl == LF_CUDA_DECODE ? DECODE_NOT_TAKEN
                                          : "the plan chose another implementation on this GPU",
                 cases);
    }
    return 0;
}

/* Every element against the reference, and a second run bitwise equal to the first. */
static void hopper_case_run(lf_context *ctx, const lft_case *c, const hopper_shape *h)
{
    char name[256], what[320];
    snprintf(what, sizeof what, "test_ops hopper %s", lft_case_name(c, name, sizeof name));
    if (!lft_selected(what))
        return;
    lft_problem p;
    if (lft_problem_init(&p, ctx, c) != LF_OK) {
        lft_begin("%s: setup", what);
        LFT_CHECK(0);
        lft_end();
        return;
    }
    if (!impl_taken(&p, what, h->impl, hopper_cases(h))) {
        lft_problem_free(&p);
        return;
    }
    lft_begin("%s", what);
    lft_set_seed(c->seed);
    unsigned char *first = NULL, *second = NULL;
    lft_problem_reference(&p);
    if (LFT_CHECK_STATUS(ctx, lft_problem_run(&p), LF_OK))
        lft_problem_check(&p, NULL, &first);
    if (LFT_CHECK(lft_problem_reset_y(&p) == LF_OK) && LFT_CHECK_STATUS(ctx, lft_problem_run(&p), LF_OK))
        lft_problem_check(&p, NULL, &second);
    if (first && second)
        LFT_CHECKF(memcmp(first, second, p.y.total) == 0, "two runs on the same inputs gave different bits");
    free(first);
    free(second);
    lft_end();
    if (h->impl != LF_CUDA_HOPPER) {
        lft_problem_free(&p);
        return;
    }

    /* The same kernel without its LoRA term (the bench's own base GEMM, y = beta·y + x·Wᵀ + bias):
     * every element against the reference with scale 0. */
    lft_begin("%s own base GEMM", what);
    p.c.scale = 0.0f;
    lft_problem_reference(&p);
    lf_lora_problem q;
    lft_problem_lora(&p, 1, &q);
    if (LFT_CHECK(lft_problem_reset_y(&p) == LF_OK) && LFT_CHECK_STATUS(ctx, ctx->ops->own_base_gemm(ctx, &q), LF_OK) &&
        LFT_CHECK_STATUS(ctx, lf_synchronize(ctx), LF_OK))
        lft_problem_check(&p, NULL, NULL);
    lft_problem_free(&p);
    lft_end();
}

#ifdef LF_TEST_CUDA
#define CUDA_OK(call) LFT_CHECKF((call) == cudaSuccess, "%s failed", #call)
/* One call of implementation `impl` captured into a graph and replayed: with new x in between, each
 * replay must compute with its own x (a kernel whose per-call state came from the host at capture
 * would reuse the first replay's T); then, for beta 0, three launches back to back before one check
 * (a kernel that keeps state on the device between launches must leave it as it found it). */
static void graph_replay(lf_context *ctx, const lft_case *c, const char *kind, int impl)
{
    char name[256], what[320];
    snprintf(what, sizeof what, "test_ops %s graph replay %s", kind, lft_case_name(c, name, sizeof name));
    if (!lft_selected(what))
        return;
    cudaStream_t s = NULL;
    lft_problem p;
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess || lft_problem_init(&p, ctx, c) != LF_OK) {
        lft_begin("%s: setup", what);
        LFT_CHECK(0);
        lft_end();
        if (s)
            cudaStreamDestroy(s);
        return;
    }
    if (!impl_taken(&p, what, impl, 1)) {
        lft_problem_free(&p);
        cudaStreamDestroy(s);
        return;
    }
    lft_begin("%s", what);
    lft_set_seed(c->seed);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    if (LFT_CHECK_STATUS(ctx, lf_context_set_stream(ctx, s), LF_OK) &&
        CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal))) {
        const lf_status st = lft_problem_run(&p);
        const int captured = CUDA_OK(cudaStreamEndCapture(s, &graph));
        if (LFT_CHECK_STATUS(ctx, st, LF_OK) && captured && CUDA_OK(cudaGraphInstantiate(&exec, graph, 0))) {
            lft_rng rng;
            lft_rng_seed(&rng, c->seed ^ 0x5bd1e995u);
            for (int replay = 0; replay < 3 && !lft_case_failed(); replay++) {
                if (replay == 1) { /* new x: same shape, other values */
                    lft_mat_fill_random(&p.x, &rng);
                    LFT_CHECK(lft_mat_upload(&p.x) == LF_OK);
                }
                const int launches = replay == 2 && c->beta == 0.0f ? 3 : 1;
                int launched = 1;
                lft_problem_reference(&p);
                if (LFT_CHECK(lft_problem_reset_y(&p) == LF_OK)) {
                    for (int l = 0; l < launches; l++)
                        launched = launched && CUDA_OK(cudaGraphLaunch(exec, s));
                    if (launched && CUDA_OK(cudaStreamSynchronize(s)))
                        lft_problem_check(&p, NULL, NULL);
                }
            }
        }
    }
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    LFT_CHECK_STATUS(ctx, lf_context_set_stream(ctx, NULL), LF_OK);
    lft_problem_free(&p);
    cudaStreamDestroy(s);
    lft_end();
}
#endif

static void hopper(lf_context *ctx, void *arg)
{
    (void)arg;
    if (lf_context_backend(ctx) != LF_BACKEND_CUDA) {
        lft_skip("test_ops hopper", lf_backend_name(lf_context_backend(ctx)), "the Hopper kernel is CUDA's",
                 hopper_cases_all());
        return;
    }
    uint64_t index = 300000;
    for (size_t i = 0; i < N_HOPPER; i++) {
        const lft_case c = hopper_case(&hopper_shapes[i], index++);
        hopper_case_run(ctx, &c, &hopper_shapes[i]);
    }
}

/* A decode-sized layer (bf16, PEFT, aligned, beta 0) for the graph test: the CUDA decode kernel;
 * and one for the GEMM path (the KN layout, which the Hopper kernels do not take: cuBLAS inside the
 * capture, with its workspace bound to the capturing stream), with bias and beta 0.5. */
static const shape decode_graph_shape = {5, 520, 1000, 16, 0, 0};
static const shape gemm_graph_shape = {100, 520, 1000, 16, 0, 0};
#define N_GRAPH_CASES 7

/* The first shape of hopper_shapes with m tokens and n outputs (the list's order is free to change). */
static const hopper_shape *hopper_shape_of(int64_t m, int64_t n)
{
    for (size_t i = 0; i < N_HOPPER; i++)
        if (hopper_shapes[i].s.m == m && hopper_shapes[i].s.n == n)
            return &hopper_shapes[i];
    return &hopper_shapes[0];
}

static void graphs(lf_context *ctx, void *arg)
{
    (void)arg;
    const lft_case cases[N_GRAPH_CASES] = {hopper_case(&hopper_shapes[0], 310000),
                                           make_case(&decode_graph_shape, 2, 0, 1, 0, 0, 310001),
                                           make_case(&gemm_graph_shape, 2, 1, 1, 1, 2, 310002),
                                           hopper_case(hopper_shape_of(128, 4096), 310003),
                                           hopper_case(hopper_shape_of(16, 13000), 310004),
                                           hopper_case(hopper_shape_of(8, 4100), 310005),
                                           hopper_case(hopper_shape_of(64, 4096), 310006)};
    const char *kinds[N_GRAPH_CASES] = {"hopper", "decode", "GEMM path", "hopper split-K", "hopper decode", "stream",
                                        "hopper decode 64-column"};
    const int impls[N_GRAPH_CASES] = {LF_CUDA_HOPPER,     LF_CUDA_DECODE,        LF_CUDA_GEMM,
                                      LF_CUDA_HOPPER_MID, LF_CUDA_HOPPER_DECODE, LF_CUDA_STREAM,
                                      LF_CUDA_HOPPER_DECODE};
    for (int i = 0; i < N_GRAPH_CASES; i++) {
        char name[256];
        if (lf_context_backend(ctx) != LF_BACKEND_CUDA) {
            lft_skip(lft_case_name(&cases[i], name, sizeof name), lf_backend_name(lf_context_backend(ctx)),
                     "graph capture is CUDA's", 1);
            continue;
        }
#ifdef LF_TEST_CUDA
        graph_replay(ctx, &cases[i], kinds[i], impls[i]);
#else
        (void)kinds, (void)impls;
        lft_skip(lft_case_name(&cases[i], name, sizeof name), "cuda",
                 "test_ops was built without the CUDA runtime: no graph capture", 1);
#endif
    }
}

/* ---- layers back to back -------------------------------------------------------------------- */

/* CHAIN layers queued with no synchronization between them, each reading the one before's y as its
 * x and adding into its own y (beta 1). On sm_90 the decode kernels and the split-K form start
 * while the call before them still runs (PDL) and may read only W before their wait: a read of x
 * or y moved above it, or
 * a T workspace written before the call before has read it, shows here as a wrong result. W and B
 * are scaled by a power of two near 1/√K so that the values stay O(1) along the chain. */
#define CHAIN 3
typedef struct chain_shape {
    shape s;
    int impl; /* the CUDA implementation the plan must choose on an H100 */
    int cpu;  /* small enough to run on the CPU backend too */
} chain_shape;
static const chain_shape chain_shapes[] = {
    {{16, 1032, 1032, 16, 0, 0}, LF_CUDA_DECODE, 1},        /* the T kernel, then the decode kernel */
    {{77, 1032, 1032, 8, 0, 0}, LF_CUDA_HOPPER_MID, 1},     /* the split-K form, clusters of CTAs */
    {{77, 4104, 4104, 8, 0, 0}, LF_CUDA_HOPPER_MID, 0},     /* ~21 K stages a CTA: past the W filled early */
    {{16, 8448, 8448, 16, 0, 0}, LF_CUDA_HOPPER_DECODE, 0}, /* one round of 132 tiles */
    {{16, 4096, 4096, 16, 0, 0}, LF_CUDA_HOPPER_DECODE, 0}, /* 128 tiles of 32 rows: T in the wgmma */
    {{48, 4096, 4096, 16, 0, 0}, LF_CUDA_HOPPER_DECODE, 0}, /* the same with 64 token columns */
    {{4, 4096, 4096, 16, 0, 0}, LF_CUDA_STREAM, 0},         /* the T workers' epochs, call after call */
};
#define N_CHAIN_SHAPES (sizeof chain_shapes / sizeof chain_shapes[0])

static void chain_case(lf_context *ctx, const chain_shape *cs, uint64_t index)
{
    char name[256], what[320];
    lft_case c = make_case(&cs->s, 2, 0, 1, 1, 1, index); /* bf16, PEFT, bias, beta 1 */
    snprintf(what, sizeof what, "test_ops chained x%d %s", CHAIN, lft_case_name(&c, name, sizeof name));
    if (!lft_selected(what))
        return;
    const int cuda = lf_context_backend(ctx) == LF_BACKEND_CUDA;
    if (!cuda && !cs->cpu) {
        lft_skip(what, lf_backend_name(lf_context_backend(ctx)), "sized for a CUDA Hopper form", 1);
        return;
    }
    lft_problem p[CHAIN];
    int ready = 0, ok = 1;
    float shrink = 1.0f;
    while (shrink * shrink * (float)c.k > 1.0f)
        shrink *= 0.5f;
    while (ready < CHAIN && ok) { /* a failed init frees what it allocated */
        c.seed = lft_case_seed(index * CHAIN + (uint64_t)ready);
        ok = lft_problem_init(&p[ready], ctx, &c) == LF_OK;
        if (!ok)
            break;
        lft_mat_scale(&p[ready].w, shrink);
        lft_mat_scale(&p[ready].b, shrink);
        ok = lft_mat_upload(&p[ready].w) == LF_OK && lft_mat_upload(&p[ready].b) == LF_OK;
        ready++;
    }
    if (!ok) {
        lft_begin("%s: setup", what);
        LFT_CHECK(0);
        lft_end();
    } else if (!cuda || impl_taken(&p[0], what, cs->impl, 1)) {
        lft_begin("%s", what);
        lft_set_seed(c.seed);
        int queued = 1;
        for (int j = 0; j < CHAIN && queued; j++) {
            lf_matrix x = lft_mat_view(j ? &p[j - 1].y : &p[j].x), w = lft_mat_view(&p[j].w),
                      bias = lft_mat_view(&p[j].bias), a = lft_mat_view(&p[j].a), b = lft_mat_view(&p[j].b),
                      y = lft_mat_view(&p[j].y);
            queued = LFT_CHECK_STATUS(ctx, lf_lora_forward(ctx, c.layout, &x, &w, &bias, &a, &b, c.scale, c.beta, &y),
                                      LF_OK);
        }
        unsigned char *prev_y = NULL;
        if (queued && LFT_CHECK_STATUS(ctx, lf_synchronize(ctx), LF_OK))
            for (int j = 0; j < CHAIN; j++) {
                if (j) { /* the reference's x is what the call before left in its y */
                    if (!LFT_CHECKF(prev_y && p[j].x.total == p[j - 1].y.total, "y of layer %d as x of the next", j))
                        break;
                    memcpy(p[j].x.image, prev_y, p[j].x.total);
                    free(prev_y);
                    prev_y = NULL;
                    if (!LFT_CHECK(lft_mat_upload(&p[j].x) == LF_OK))
                        break;
                }
                lft_problem_reference(&p[j]);
                lft_problem_check(&p[j], NULL, j + 1 < CHAIN ? &prev_y : NULL);
            }
        free(prev_y);
        lft_end();
    }
    for (int j = 0; j < ready; j++)
        lft_problem_free(&p[j]);
}

static void chained(lf_context *ctx, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < N_CHAIN_SHAPES; i++)
        chain_case(ctx, &chain_shapes[i], 320000 + i);
}

int main(void)
{
    printf("test_ops: base seed LF_TEST_SEED=0x%016llx\n", (unsigned long long)lft_base_seed());
    lft_for_each_backend("test_ops sweep", (int)(N_SHAPES * CASES_PER_SHAPE), sweep, NULL);
    lft_for_each_backend("test_ops determinism", 3 * 3 * 3 * 2, determinism, NULL);
    lft_for_each_backend("test_ops threads", 2 * 4 * 3 * 2 * 2, threads, NULL);
    lft_for_each_backend("test_ops hopper", hopper_cases_all(), hopper, NULL);
    lft_for_each_backend("test_ops graph replay", N_GRAPH_CASES, graphs, NULL);
    lft_for_each_backend("test_ops chained", (int)N_CHAIN_SHAPES, chained, NULL);
    return lft_summary("test_ops");
}

/*
 * test_plan.c — the plan cache (src/plan.c) seen through the context's internals (lf_internal.h):
 *  - a repeated call with the same key builds no new plan (ctx->plans_built unchanged);
 *  - a different shape, dtype or flag (beta ≠ 0) builds one; going back to a cached key does not;
 *  - more than LF_PLAN_CACHE_SIZE distinct shapes keep working and stay correct (ring replacement):
 *    the newest LF_PLAN_CACHE_SIZE stay cached, an evicted one is rebuilt and still correct;
 *  - steady-state calls allocate nothing: the workspace pointer and size stay the same, and the
 *    backend's alloc hook (wrapped here with a counter) is not called at all.
 * Results are checked against the reference throughout: a cached plan must still compute the right
 * thing.
 * Then the CUDA backend's kernel-choice rules (src/cuda/heuristics.h, plain C), on any machine: the
 * limits each kernel relies on (the decode kernel's token columns cover M, the Hopper kernel gets
 * only what it can do) over every M, N and rank a rule can see.
 */
#include "lf_test.h"
#include "cuda/heuristics.h"

#include <stdio.h>
#include <string.h>

/* Counting wrapper around the backend's alloc: ctx->ops is swapped for a copy whose alloc counts. */
static const lf_backend_ops *real_ops;
static lf_backend_ops counting_ops;
static int alloc_calls;

static lf_status counting_alloc(lf_context *ctx, void **ptr, size_t bytes)
{
    alloc_calls++;
    return real_ops->alloc(ctx, ptr, bytes);
}

static lft_case plan_case(lf_dtype dtype, int64_t m, int64_t k, int64_t n, int64_t rank, float beta, uint64_t index)
{
    lft_case c;
    memset(&c, 0, sizeof c);
    c.dtype = dtype;
    c.layout = LF_LAYOUT_PEFT;
    c.m = m;
    c.k = k;
    c.n = n;
    c.rank = rank;
    c.has_w = 1;
    c.has_bias = 1;
    c.scale = 1.5f;
    c.beta = beta;
    c.seed = lft_case_seed(index);
    return c;
}

/* Runs p once (y poisoned again first) and checks the result. */
static int run_and_check(lft_problem *p)
{
    if (!LFT_CHECK(lft_problem_reset_y(p) == LF_OK))
        return 0;
    if (!LFT_CHECK_STATUS(p->ctx, lft_problem_run(p), LF_OK))
        return 0;
    return lft_problem_check(p, NULL, NULL);
}

static void repeat_and_change(lf_context *ctx)
{
    const char *be = lf_backend_name(lf_context_backend(ctx));
    lft_problem p1, p2, p3, p4;
    lft_case c1 = plan_case(LF_F32, 37, 129, 67, 7, 0.0f, 1);
    lft_case c2 = plan_case(LF_F32, 38, 129, 67, 7, 0.0f, 2); /* another M */
    lft_case c3 = plan_case(LF_F32, 37, 129, 67, 7, 1.0f, 3); /* same shape, beta ≠ 0: another key */
    lft_case c4 = plan_case(LF_BF16, 37, 129, 67, 7, 0.0f, 4); /* same shape, another dtype */
    lft_begin("test_plan %s: setup", be);
    int ok = LFT_CHECK(lft_problem_init(&p1, ctx, &c1) == LF_OK);
    ok = ok && LFT_CHECK(lft_problem_init(&p2, ctx, &c2) == LF_OK);
    ok = ok && LFT_CHECK(lft_problem_init(&p3, ctx, &c3) == LF_OK);
    ok = ok && LFT_CHECK(lft_problem_init(&p4, ctx, &c4) == LF_OK);
    lft_end();
    if (!ok)
        return; /* (buffers of a failed setup leak: the test has failed anyway) */
    lft_problem_reference(&p1);
    lft_problem_reference(&p2);
    lft_problem_reference(&p3);
    lft_problem_reference(&p4);

    lft_begin("test_plan %s: first call of a shape builds one plan", be);
    uint64_t built0 = ctx->plans_built;
    run_and_check(&p1);
    LFT_CHECKF(ctx->plans_built == built0 + 1, "plans_built went from %llu to %llu", (unsigned long long)built0,
               (unsigned long long)ctx->plans_built);
    lft_end();

    lft_begin("test_plan %s: repeated calls of the same shape reuse the plan and the workspace", be);
    uint64_t built1 = ctx->plans_built;
    void *ws = ctx->workspace;
    size_t ws_bytes = ctx->workspace_bytes;
    int count = ctx->plan_count;
    for (int i = 0; i < 5; i++) {
        run_and_check(&p1);
        LFT_CHECKF(ctx->plans_built == built1, "call %d built a plan (plans_built %llu -> %llu)", i,
                   (unsigned long long)built1, (unsigned long long)ctx->plans_built);
        LFT_CHECKF(ctx->workspace == ws && ctx->workspace_bytes == ws_bytes,
                   "call %d changed the workspace (%p, %zu) -> (%p, %zu)", i, ws, ws_bytes, ctx->workspace,
                   ctx->workspace_bytes);
        LFT_CHECK(ctx->plan_count == count);
    }
    lft_end();

    lft_begin("test_plan %s: a different M, beta flag or dtype builds a plan each", be);
    uint64_t b = ctx->plans_built;
    run_and_check(&p2);
    LFT_CHECKF(ctx->plans_built == b + 1, "another M: plans_built %llu -> %llu", (unsigned long long)b,
               (unsigned long long)ctx->plans_built);
    b = ctx->plans_built;
    run_and_check(&p3);
    LFT_CHECKF(ctx->plans_built == b + 1, "beta != 0: plans_built %llu -> %llu", (unsigned long long)b,
               (unsigned long long)ctx->plans_built);
    b = ctx->plans_built;
    run_and_check(&p4);
    LFT_CHECKF(ctx->plans_built == b + 1, "bf16: plans_built %llu -> %llu", (unsigned long long)b,
               (unsigned long long)ctx->plans_built);
    lft_end();

    lft_begin("test_plan %s: going back to cached shapes builds nothing", be);
    b = ctx->plans_built;
    run_and_check(&p1);
    run_and_check(&p2);
    run_and_check(&p3);
    run_and_check(&p4);
    LFT_CHECKF(ctx->plans_built == b, "plans_built %llu -> %llu", (unsigned long long)b,
               (unsigned long long)ctx->plans_built);
    /* Every cached plan's workspace fits in the context's. */
    for (int i = 0; i < ctx->plan_count; i++)
        LFT_CHECKF(ctx->plans[i].workspace_bytes <= ctx->workspace_bytes, "plan %d needs %zu bytes of workspace, "
                   "the context has %zu", i, ctx->plans[i].workspace_bytes, ctx->workspace_bytes);
    lft_end();

    lft_problem_free(&p1);
    lft_problem_free(&p2);
    lft_problem_free(&p3);
    lft_problem_free(&p4);
}

/* More distinct shapes than the ring holds. Uses its own context so the count starts at zero. */
static void ring(lf_backend backend)
{
    const char *be = lf_backend_name(backend);
    lf_context *ctx = NULL;
    lft_begin("test_plan %s: more than LF_PLAN_CACHE_SIZE (%d) shapes", be, LF_PLAN_CACHE_SIZE);
    if (!LFT_CHECK_STATUS(NULL, lf_context_create(&ctx, backend), LF_OK)) {
        lft_end();
        return;
    }
    const int total = LF_PLAN_CACHE_SIZE + 9;
    for (int s = 0; s < total; s++) {
        /* Shape s: M = s + 1 (every key distinct); K, N, rank odd and small to stay quick. */
        lft_case c = plan_case(LF_F32, s + 1, 23, 19, 3, 0.0f, 1000 + (uint64_t)s);
        lft_problem p;
        if (!LFT_CHECK(lft_problem_init(&p, ctx, &c) == LF_OK))
            break;
        lft_problem_reference(&p);
        uint64_t b = ctx->plans_built;
        if (!run_and_check(&p))
            LFT_CHECKF(0, "shape %d (M = %d) is wrong", s, s + 1);
        LFT_CHECKF(ctx->plans_built == b + 1, "shape %d: plans_built %llu -> %llu", s, (unsigned long long)b,
                   (unsigned long long)ctx->plans_built);
        LFT_CHECK(ctx->plan_count == (s + 1 < LF_PLAN_CACHE_SIZE ? s + 1 : LF_PLAN_CACHE_SIZE));
        lft_problem_free(&p);
    }
    /* The newest LF_PLAN_CACHE_SIZE shapes are cached: none of them builds again. */
    for (int s = total - LF_PLAN_CACHE_SIZE; s < total && !lft_case_failed(); s += 7) {
        lft_case c = plan_case(LF_F32, s + 1, 23, 19, 3, 0.0f, 2000 + (uint64_t)s);
        lft_problem p;
        if (!LFT_CHECK(lft_problem_init(&p, ctx, &c) == LF_OK))
            break;
        lft_problem_reference(&p);
        uint64_t b = ctx->plans_built;
        run_and_check(&p);
        LFT_CHECKF(ctx->plans_built == b, "recent shape %d was rebuilt", s);
        lft_problem_free(&p);
    }
    /* The oldest were replaced: running one again builds it again, and it is still right. */
    for (int s = 0; s < 3; s++) {
        lft_case c = plan_case(LF_F32, s + 1, 23, 19, 3, 0.0f, 3000 + (uint64_t)s);
        lft_problem p;
        if (!LFT_CHECK(lft_problem_init(&p, ctx, &c) == LF_OK))
            break;
        lft_problem_reference(&p);
        uint64_t b = ctx->plans_built;
        run_and_check(&p);
        LFT_CHECKF(ctx->plans_built == b + 1, "evicted shape %d: plans_built %llu -> %llu", s,
                   (unsigned long long)b, (unsigned long long)ctx->plans_built);
        LFT_CHECK(ctx->plan_count == LF_PLAN_CACHE_SIZE);
        lft_problem_free(&p);
    }
    lf_context_destroy(ctx);
    lft_end();
}

/* Steady state: after the first call of each shape, calls allocate nothing through the backend and
 * leave the workspace where it is — also after a larger shape grew it and a smaller one runs again. */
static void steady_state(lf_context *ctx)
{
    const char *be = lf_backend_name(lf_context_backend(ctx));
    static const int64_t shapes[][4] = {
        {130, 17, 257, 64}, {1, 300, 200, 16}, {64, 256, 96, 16}, {5, 33, 19, 1024}, {37, 129, 67, 7}};
    static const lf_dtype dts[3] = {LF_F32, LF_F16, LF_BF16};
    lft_begin("test_plan %s: steady-state calls allocate nothing and keep the workspace", be);
    lft_problem ps[5 * 3];
    int n = 0;
    for (int s = 0; s < 5; s++)
        for (int d = 0; d < 3; d++) {
            lft_case c = plan_case(dts[d], shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], 0.5f,
                                   4000 + (uint64_t)n);
            if (!LFT_CHECK(lft_problem_init(&ps[n], ctx, &c) == LF_OK))
                goto done;
            lft_problem_reference(&ps[n]);
            n++;
        }
    /* Warm up: every key once (plans built, workspace grown to the largest need). */
    for (int i = 0; i < n; i++)
        run_and_check(&ps[i]);
    {
        void *ws = ctx->workspace;
        size_t ws_bytes = ctx->workspace_bytes;
        uint64_t built = ctx->plans_built;
        real_ops = ctx->ops;
        counting_ops = *ctx->ops;
        counting_ops.alloc = counting_alloc;
        alloc_calls = 0;
        /* Only the library's calls run while the counter is in place: uploads of y are memcpy, not alloc. */
        ctx->ops = &counting_ops;
        for (int rep = 0; rep < 3; rep++)
            for (int i = n - 1; i >= 0; i--) {
                LFT_CHECK(lft_problem_reset_y(&ps[i]) == LF_OK);
                LFT_CHECK_STATUS(ctx, lft_problem_run(&ps[i]), LF_OK);
                LFT_CHECKF(ctx->workspace == ws && ctx->workspace_bytes == ws_bytes,
                           "a steady call moved the workspace (%p, %zu) -> (%p, %zu)", ws, ws_bytes,
                           ctx->workspace, ctx->workspace_bytes);
            }
        ctx->ops = real_ops;
        LFT_CHECKF(alloc_calls == 0, "steady-state calls called the backend's alloc %d times", alloc_calls);
        LFT_CHECKF(ctx->plans_built == built, "steady-state calls built %llu plans",
                   (unsigned long long)(ctx->plans_built - built));
        for (int i = 0; i < n; i++) /* y holds the last run of each problem */
            lft_problem_check(&ps[i], NULL, NULL);
    }
done:
    for (int i = 0; i < n; i++)
        lft_problem_free(&ps[i]);
    lft_end();
}

static void plan_tests(lf_context *ctx, void *arg)
{
    (void)arg;
    repeat_and_change(ctx);
    steady_state(ctx);
    ring(lf_context_backend(ctx));
}

/* The rules' guarantees, checked exhaustively where the inputs are small and at the edges elsewhere. */
static void heuristics_tests(void)
{
    lft_begin("test_plan cuda heuristics: decode token columns cover M, tiles cover N");
    for (int64_t m = 1; m <= 32; m++) {
        const int nt = lf_cuda_decode_nt(m);
        LFT_CHECKF(nt == 1 || nt == 2 || nt == 4, "M %lld: NT %d is not instantiated", (long long)m, nt);
        LFT_CHECKF(8 * nt >= m, "M %lld: NT %d covers %d tokens", (long long)m, nt, 8 * nt);
        for (int64_t n = 1; n <= 20000; n += n < 300 ? 1 : 997) {
            const int rt = lf_cuda_decode_rt(nt, n, 132);
            const int64_t grid = lf_cuda_decode_grid(n, rt, lf_cuda_decode_per_sm(nt) * 132);
            LFT_CHECKF(rt == 1 || rt == 2, "M %lld N %lld: RT %d", (long long)m, (long long)n, rt);
            LFT_CHECKF(grid >= 1 && grid <= lf_cuda_decode_per_sm(nt) * 132, "M %lld N %lld: grid %lld",
                       (long long)m, (long long)n, (long long)grid);
        }
    }
    lft_end();

    /* On 132 SMs, 17-32 tokens run one block per SM: a single tile each while N fits 132 tiles of 32
     * rows (N <= 4224, 16-row tiles up to 2112), never beyond. */
    lft_begin("test_plan cuda heuristics: the decode kernel up to 16 tokens, to 32 while a block streams one tile");
    for (int64_t m = 1; m <= 80; m++)
        for (int64_t n = 8; n <= 20000; n += 248) {
            const int fits = lf_cuda_decode_fits(LF_BF16, LF_LAYOUT_PEFT, LF_PLAN_ALIGNED16, m, n, 16, 132);
            const int expect = m <= 16 || (m <= 32 && n <= 4224);
            LFT_CHECKF(fits == expect, "M %lld N %lld: fits %d, expected %d", (long long)m, (long long)n, fits, expect);
        }
    LFT_CHECK(!lf_cuda_decode_fits(LF_BF16, LF_LAYOUT_PEFT, 0, 1, 4096, 16, 132)); /* unaligned */
    LFT_CHECK(!lf_cuda_decode_fits(LF_F32, LF_LAYOUT_PEFT, LF_PLAN_ALIGNED16, 1, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_decode_fits(LF_BF16, LF_LAYOUT_KN, LF_PLAN_ALIGNED16, 1, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_decode_fits(LF_BF16, LF_LAYOUT_PEFT, LF_PLAN_ALIGNED16, 1, 4096, 65, 132)); /* rank */
    /* Tile height: the fewer rows for the busiest block, and 32-row tiles on a tie. */
    LFT_CHECK(lf_cuda_decode_rt(2, 4096, 132) == 1);  /* 256 tiles of 16 on 264 blocks, against 128 of 32 */
    LFT_CHECK(lf_cuda_decode_rt(2, 14336, 132) == 2); /* 4 × 16 rows or 2 × 32 rows: the tie */
    LFT_CHECK(lf_cuda_decode_rt(4, 4096, 132) == 2);  /* one block per SM: 2 × 16 rows or 1 × 32 */
    /* Many adapters: the decode kernels' MULTI form up to 4 tokens, which always run NT 1. */
    LFT_CHECK(lf_cuda_multi_decode_wins(1) && lf_cuda_multi_decode_wins(4) && !lf_cuda_multi_decode_wins(5));
    for (int64_t m = 1; m <= 64; m++)
        LFT_CHECKF(!lf_cuda_multi_decode_wins(m) || lf_cuda_decode_nt(m) == 1, "M %lld: MULTI with NT %d",
                   (long long)m, lf_cuda_decode_nt(m));
    /* Up to 8 tokens one 8-column group (two blocks per SM, as with 16 columns). */
    LFT_CHECK(lf_cuda_decode_nt(8) == 1 && lf_cuda_decode_nt(9) == 2 && lf_cuda_decode_per_sm(1) == 2);
    lft_end();

    lft_begin("test_plan cuda heuristics: the Hopper kernel only where it can run and was measured to win");
    const uint32_t ok_flags = LF_PLAN_HAS_W | LF_PLAN_ALIGNED16;
    for (int64_t m = 1; m <= 9000; m += m < 1100 ? 31 : 1013)
        for (int64_t n = 8; n <= 20000; n += 248)
            for (int64_t r = 1; r <= 80; r += 9) {
                const int fits = lf_cuda_hopper_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, m, n, r, 132);
                /* tiles at the width the launch takes (the rule below checks it) for 128 tile CTAs */
                const int64_t cols = lf_cuda_hopper_tile_cols(m, n, 128), tiles = (m + 127) / 128 * ((n + cols - 1) / cols);
                const int expect = r <= LF_CUDA_HOPPER_MAX_RANK && n > (r <= 16 ? 768 : 3840) && tiles >= 96;
                LFT_CHECKF(fits == expect, "M %lld N %lld r %lld: fits %d, expected %d", (long long)m, (long long)n,
                           (long long)r, fits, expect);
            }
    /* never a layout, dtype or alignment the kernel does not handle, nor the delta op */
    LFT_CHECK(!lf_cuda_hopper_fits(LF_BF16, LF_LAYOUT_KN, ok_flags, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_fits(LF_F32, LF_LAYOUT_PEFT, ok_flags, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_fits(LF_BF16, LF_LAYOUT_PEFT, LF_PLAN_HAS_W, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_fits(LF_BF16, LF_LAYOUT_PEFT, LF_PLAN_ALIGNED16, 4096, 4096, 16, 132));
    LFT_CHECK(lf_cuda_hopper_fits(LF_F16, LF_LAYOUT_PEFT, ok_flags, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, LF_CUDA_HOPPER_MAX_M + 1, 4096, 16, 132));
    lft_end();

    lft_begin("test_plan cuda heuristics: the Hopper kernel's tiles narrower than 256 only where they take fewer column-rounds");
    /* rounds (ceil(tiles / CTAs)) times the width: 224 or 192 only where at least 10% below the
     * best wider one's, 128 only where at least 30% below */
    for (int64_t m = 1; m <= 9000; m += 97)
        for (int64_t n = 8; n <= 30000; n += 136)
            for (int64_t ctas = 124; ctas <= 132; ctas += 4) {
                const int64_t tm = (m + 127) / 128;
                const int64_t c256 = (tm * ((n + 255) / 256) + ctas - 1) / ctas * 256;
                const int64_t c224 = (tm * ((n + 223) / 224) + ctas - 1) / ctas * 224;
                const int64_t c192 = (tm * ((n + 191) / 192) + ctas - 1) / ctas * 192;
                const int64_t c128 = (tm * ((n + 127) / 128) + ctas - 1) / ctas * 128;
                const int64_t wider = 10 * c224 <= 9 * c256 ? c224 : c256; /* the best of 224 and 256 */
                const int64_t wide = 10 * c192 <= 9 * wider ? c192 : wider; /* of 192, 224 and 256 */
                const int expect = 10 * c128 <= 7 * wide       ? 128
                                   : 10 * c192 <= 9 * wider    ? 192
                                   : 10 * c224 <= 9 * c256     ? 224
                                                               : 256;
                const int cols = lf_cuda_hopper_tile_cols(m, n, ctas);
                LFT_CHECKF(cols == expect, "M %lld N %lld on %lld CTAs: %d columns, expected %d", (long long)m,
                           (long long)n, (long long)ctas, cols, expect);
            }
    /* M = 1024, N = 14336 (4 rounds of 224 instead of 4 of 256, the last half full); M = 1024, N =
     * 5120 (160 tiles of 256 in 2 rounds, 216 of 192 in 2); the suite's other shapes keep 256 (8192
     * × 14336 on 132 CTAs: 192 would save 0.9%, under the 10%); test_ops' shapes of each width */
    LFT_CHECK(lf_cuda_hopper_tile_cols(1024, 5120, 128) == 192 && lf_cuda_hopper_tile_cols(1024, 6144, 128) == 192);
    LFT_CHECK(lf_cuda_hopper_tile_cols(1024, 14336, 128) == 224 && lf_cuda_hopper_tile_cols(1024, 14336, 132) == 224);
    LFT_CHECK(lf_cuda_hopper_tile_cols(300, 14000, 128) == 192 && lf_cuda_hopper_tile_cols(260, 13999, 129) == 192);
    LFT_CHECK(lf_cuda_hopper_tile_cols(520, 5000, 128) == 224 && lf_cuda_hopper_tile_cols(520, 5000, 132) == 224);
    LFT_CHECK(lf_cuda_hopper_tile_cols(4096, 14336, 128) == 256 && lf_cuda_hopper_tile_cols(8192, 14336, 132) == 256);
    LFT_CHECK(lf_cuda_hopper_tile_cols(1000, 4000, 128) == 256 && lf_cuda_hopper_tile_cols(1000, 3999, 128) == 256);
    LFT_CHECK(lf_cuda_hopper_tile_cols(1024, 4096, 128) == 256 && lf_cuda_hopper_tile_cols(4096, 4096, 132) == 256);
    LFT_CHECK(lf_cuda_hopper_tile_cols(8192, 8192, 128) == 256 && lf_cuda_hopper_tile_cols(1024, 14336, 0) == 256);
    /* 128 columns in one round where wider tiles leave SMs idle: tensor-parallel gate_proj's shard
     * at 256 tokens (112 tiles, against 56 of 256 or 76 of 192), 384 and 512 tokens at 4096 → 4096,
     * 128 tokens at 4096 → 14336; test_ops' shapes of that width */
    LFT_CHECK(lf_cuda_hopper_tile_cols(256, 7168, 130) == 128 && lf_cuda_hopper_tile_cols(384, 4096, 129) == 128);
    LFT_CHECK(lf_cuda_hopper_tile_cols(512, 4096, 128) == 128 && lf_cuda_hopper_tile_cols(128, 14336, 131) == 128);
    LFT_CHECK(lf_cuda_hopper_tile_cols(200, 6104, 130) == 128 && lf_cuda_hopper_tile_cols(500, 3999, 128) == 128);
    LFT_CHECK(lf_cuda_hopper_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 256, 7168, 16, 132));
    LFT_CHECK(lf_cuda_hopper_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 128, 14336, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 256, 4096, 16, 132)); /* 64 tiles of 128 */
    lft_end();

    lft_begin("test_plan cuda heuristics: the Hopper kernel's T workers, and tiles for them where T would outlast the tiles");
#define SCHED(m, n, lw, cols_, workers_, worker_tiles_, tile_ctas_)                                      \
    do {                                                                                                  \
        const lf_cuda_hopper_sched s_ = lf_cuda_hopper_schedule(m, n, lw, 132);                           \
        LFT_CHECKF(s_.cols == (cols_) && s_.workers == (workers_) && s_.worker_tiles == (worker_tiles_) && \
                       s_.tile_ctas == (tile_ctas_),                                                      \
                   "%d x %d, T width %d: %d columns, %d workers with %d tiles each, %d tile CTAs", m, n, lw, \
                   s_.cols, s_.workers, s_.worker_tiles, s_.tile_ctas);                                   \
    } while (0)
    /* 4 workers and no tiles for them where T ends before the tiles need it (one round at M 1024,
     * four at 4096; two row blocks at M 256, 2048 × 2048 where more workers would take tiles) */
    SCHED(1024, 4096, 16, 256, 4, 0, 128);
    SCHED(4096, 4096, 16, 256, 4, 0, 128);
    SCHED(256, 7168, 16, 128, 2, 0, 130);
    SCHED(2048, 2048, 16, 256, 4, 0, 128);
    /* tiles for the workers: 8 of 132 CTAs at M 4096, N 2048 (256 tiles: the other 124 CTAs take
     * two), 32 at N 1024 (128 tiles: one T row block each, then a tile; 96 tiles for 100 CTAs); a
     * worker a row block and no tiles for them at 1600 × 2000 (117 tiles on 119 CTAs: 5 workers
     * tie, with T three times as long) */
    SCHED(4096, 2048, 16, 256, 8, 1, 124);
    SCHED(4096, 1024, 16, 256, 32, 1, 100);
    SCHED(1600, 2000, 16, 224, 13, 0, 119);
    /* the kernel's tile order (lf_cuda_hopper_cta_tile) over the schedule's grid: every tile once,
     * a worker's in its own row blocks (≡ its index mod workers, whose T it computes), every other
     * CTA with a tile, at most one CTA an SM; M and N with tails, both T widths, 132 and 114 SMs */
    static unsigned char taken[64 * 128];
    int with_worker_tiles = 0;
    for (int sms = 114; sms <= 132; sms += 18)
        for (int lw = 16; lw <= 64; lw += 48)
            for (int m = 100; m <= 8192; m += 197)
                for (int n = 520; n <= 16384; n += 328) {
                    const lf_cuda_hopper_sched s_ = lf_cuda_hopper_schedule(m, n, lw, sms);
                    const int tiles_m = (m + 127) / 128, tiles_n = (n + s_.cols - 1) / s_.cols;
                    const int grid = lf_cuda_hopper_grid(&s_, tiles_m, tiles_n);
                    int ok = grid <= sms && s_.workers <= tiles_m && s_.worker_tiles <= tiles_n;
                    memset(taken, 0, (size_t)tiles_m * tiles_n);
                    for (int cta = 0; ok && cta < grid; cta++) {
                        int mb, nb, k;
                        for (k = 0; ok && lf_cuda_hopper_cta_tile(tiles_m, tiles_n, s_.workers, s_.worker_tiles, grid,
                                                                   cta, k, &mb, &nb);
                             k++)
                            ok = mb >= 0 && mb < tiles_m && nb >= 0 && nb < tiles_n && !taken[mb * tiles_n + nb]++ &&
                                 (cta >= s_.workers || mb % s_.workers == cta);
                        ok = ok && (cta < s_.workers || k > 0);
                    }
                    for (int t = 0; ok && t < tiles_m * tiles_n; t++)
                        ok = taken[t] == 1;
                    with_worker_tiles += s_.worker_tiles > 0;
                    LFT_CHECKF(ok, "%d x %d, T width %d, %d SMs: %d workers with %d tiles each, grid %d", m, n, lw, sms,
                               s_.workers, s_.worker_tiles, grid);
                }
    LFT_CHECKF(with_worker_tiles > 100, "%d shapes with tiles for the workers", with_worker_tiles);
    /* no LoRA term: no workers */
    SCHED(4096, 2048, 0, 256, 0, 0, 132);
#undef SCHED
    lft_end();

    lft_begin("test_plan cuda heuristics: the Hopper decode form for up to 64 tokens where its tiles fill the SMs");
    /* one CTA per SM, rounds more than ¾ full: 64-row tiles where they do that (100–132 tiles on 132
     * SMs, 6336 < N ≤ 8448; 199–264, 12672 < N ≤ 16896; …), else 32-row ones, else 48-row ones
     * (99 < tiles ≤ 132: 4752 < N ≤ 6336); M ≤ 64 (past 16 tokens 32- or 48-row tiles in one
     * round, else 64-row ones), r ≤ 16 */
    LFT_CHECK(lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 16, 14336, 16, 132));
    LFT_CHECK(lf_cuda_hopper_decode_fits(LF_F16, LF_LAYOUT_PEFT, ok_flags, 1, 8385, 1, 132));
    LFT_CHECK(lf_cuda_hopper_decode_fits(LF_F16, LF_LAYOUT_PEFT, ok_flags, 1, 8448, 1, 132));
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 14336, 132) == 64);  /* 224 tiles: 2 rounds, 85% */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 8448, 132) == 64);   /* 132 */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 8384, 132) == 64);   /* 131: one round, 99% */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 11008, 132) == 32);  /* 172 of 64: 65%; 344 of 32: 87% */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 4096, 132) == 32);   /* 64 of 64 rows: ½; 128 of 32: 97% */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 12673, 132) == 64);  /* 199 */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 6144, 132) == 48);   /* 96 of 64, 192 of 32: 73%; 128 of 48 */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 6336, 132) == 48);   /* 99 of 64: ¾, not more; 132 of 48 */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 4753, 132) == 48);   /* 100 of 48 */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 4752, 132) == 0);    /* 99 of 48, 149 of 32: ¾ and 56% */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 8449, 132) == 0);    /* 133 of 64: ½ full; 265 of 32: ⅔; 177 of 48: ⅔ */
    LFT_CHECK(lf_cuda_hopper_decode_rows(16, 3168, 132) == 0);    /* 99 of 32 rows: ¾, not more */
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 8449, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 16, 3168, 16, 132)); /* the decode kernel's */
    LFT_CHECK(lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 16, 4096, 16, 132));
    LFT_CHECK(lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 16, 4096, 16, 64));
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 65, 4096, 16, 132));
    /* 17–64 tokens: 32- or 48-row tiles in one round (T in the wgmma's spare rows), else 64-row
     * ones in rounds more than ¾ full (A's box in a slot of its own) */
    LFT_CHECK(lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 64, 4096, 16, 132));
    LFT_CHECK(lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 64, 14336, 16, 132));
    LFT_CHECK(lf_cuda_hopper_decode_rows(17, 4096, 132) == 32);
    LFT_CHECK(lf_cuda_hopper_decode_rows(64, 6144, 132) == 48);  /* 192 of 32: two rounds; 128 of 48 */
    LFT_CHECK(lf_cuda_hopper_decode_rows(64, 8448, 132) == 64);  /* 264 of 32: two rounds; 132 of 64 */
    LFT_CHECK(lf_cuda_hopper_decode_rows(33, 7168, 132) == 64);  /* 112 of 64: one round, 85% */
    LFT_CHECK(lf_cuda_hopper_decode_rows(64, 14336, 132) == 64); /* 224 of 64: two rounds, 85% */
    LFT_CHECK(lf_cuda_hopper_decode_rows(64, 11008, 132) == 0);  /* 172 of 64: 65% */
    LFT_CHECK(lf_cuda_hopper_decode_rows(17, 3168, 132) == 0);   /* 99 of 32, 66 of 48, 50 of 64 */
    /* up to 24 tokens the CUDA-core decode kernel keeps the layers it takes */
    LFT_CHECK(lf_cuda_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 24, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 24, 4096, 16, 132));
    LFT_CHECK(lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 25, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 20, 6136, 16, 132));
    LFT_CHECK(lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 20, 6136, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 16, 14336, 17, 132));
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 16, 14336, 0, 132));
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_KN, ok_flags, 16, 14336, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_F32, LF_LAYOUT_PEFT, ok_flags, 16, 14336, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, LF_PLAN_HAS_W, 16, 14336, 16, 132));
    LFT_CHECK(!lf_cuda_hopper_decode_fits(LF_BF16, LF_LAYOUT_PEFT, LF_PLAN_ALIGNED16, 16, 14336, 16, 132));
    lft_end();

    lft_begin("test_plan cuda heuristics: the plain-load stream for 1-8 tokens, one 16-row tile a block");
    /* two blocks an SM less the two T workers: 132 to 262 tiles of 16 rows on 132 SMs */
    LFT_CHECK(lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 4096, 4096, 16, 132)); /* 256 tiles */
    LFT_CHECK(lf_cuda_stream_fits(LF_F16, LF_LAYOUT_PEFT, ok_flags, 8, 4096, 4096, 1, 132));
    LFT_CHECK(lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 4096, 2112, 16, 132));  /* 132 */
    LFT_CHECK(lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 4096, 4192, 16, 132));  /* 262 */
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 4096, 2096, 16, 132)); /* 131 */
    LFT_CHECK(lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 4096, 2097, 16, 132));  /* 132, the last 1 row */
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 4096, 4193, 16, 132)); /* 263 */
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 9, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 0, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 4096, 4096, 17, 132));
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 4096, 4096, 0, 132));
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_KN, ok_flags, 1, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_fits(LF_F32, LF_LAYOUT_PEFT, ok_flags, 1, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, LF_PLAN_HAS_W, 1, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, LF_PLAN_ALIGNED16, 1, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 4097, 4096, 16, 132)); /* K tail under 8 */
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 3, 1001, 4096, 16, 132));
    /* x staged whole: 8 tokens of K 14336 do not fit a block's shared memory, one token does */
    LFT_CHECK(lf_cuda_stream_smem(1, 4096, 0) == LF_CUDA_STREAM_FIXED_SMEM(1, 1, 0) + 128 * 64 + 64);
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 8, 14336, 4096, 16, 132));
    LFT_CHECK(lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 1, 14336, 4096, 16, 132));
    /* the longest x of 8 tokens: 199 steps of 32 (10240 + 8 · (199 · 64 + 64) = 112640 bytes) */
    LFT_CHECK(lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 8, 6368, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_fits(LF_BF16, LF_LAYOUT_PEFT, ok_flags, 8, 6376, 4096, 16, 132));
    /* many adapters: one T worker a token (up to 8) takes a block slot each, and every token's B
     * rows 3072 bytes more (8 tokens: 13312 + 8 · (193 · 64 + 64) = 112640 at K 6176) */
    LFT_CHECK(LF_CUDA_STREAM_FIXED_SMEM(1, 1, 0) == 10240 && LF_CUDA_STREAM_FIXED_SMEM(1, 1, 1) == 13312);
    LFT_CHECK(lf_cuda_stream_multi_fits(LF_BF16, 1, 4096, 4096, 16, 132));
    LFT_CHECK(lf_cuda_stream_multi_fits(LF_F16, 8, 4096, 4096, 16, 132));   /* 256 tiles + 8 workers */
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_BF16, 8, 4096, 4112, 16, 132)); /* 257 + 8 */
    LFT_CHECK(lf_cuda_stream_multi_fits(LF_BF16, 1, 4096, 4208, 16, 132));  /* 263 + 1 */
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_BF16, 1, 4096, 4224, 16, 132)); /* 264 + 1 */
    LFT_CHECK(lf_cuda_stream_multi_fits(LF_BF16, 1, 4096, 2112, 16, 132));  /* 132 tiles */
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_BF16, 1, 4096, 2096, 16, 132)); /* 131 tiles */
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_BF16, 17, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_BF16, 1, 4096, 4096, 17, 132)); /* the set's max rank */
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_F32, 1, 4096, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_BF16, 1, 4100, 4096, 16, 132));
    LFT_CHECK(lf_cuda_stream_multi_fits(LF_BF16, 8, 6176, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_BF16, 8, 6184, 4096, 16, 132));
    /* 9–16 tokens: K halves over a cluster's two blocks, whole clusters of tiles after 8 workers;
     * 16 tokens of K 5184 (81 steps a half): 28672 + 16 · (81 · 64 + 64) = 112640 */
    LFT_CHECK(lf_cuda_stream_split(8) == 1 && lf_cuda_stream_split(9) == 2 && lf_cuda_stream_multi_workers(16) == 8);
    LFT_CHECK(LF_CUDA_STREAM_FIXED_SMEM(2, 2, 1) == 28672);
    LFT_CHECK(lf_cuda_stream_multi_fits(LF_BF16, 16, 4096, 4096, 16, 132)); /* 8 + 256 */
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_BF16, 16, 4096, 4097, 16, 132)); /* 8 + 258 */
    LFT_CHECK(lf_cuda_stream_multi_fits(LF_BF16, 9, 4096, 4096, 16, 132));
    LFT_CHECK(lf_cuda_stream_multi_fits(LF_BF16, 16, 5184, 4096, 16, 132));
    LFT_CHECK(!lf_cuda_stream_multi_fits(LF_BF16, 16, 5192, 4096, 16, 132));
    lft_end();

    lft_begin("test_plan cuda heuristics: the Hopper kernel's split-K form covers the SMs in one wave");
    /* an H200's slots (dev/cuda/cluster_slots.cu and the library's own count agree: 132 CTAs in
     * clusters of 1 and 2, 117 of 3, 120 of 4, 110 of 5, 102 of 6, 105 of 7, 120 of 8) */
    const int h200[9] = {0, 132, 132, 117, 120, 110, 102, 105, 120}, pairs[9] = {0, 132, 132, 0, 0, 0, 0, 0, 0};
#define MID(dt, m, k, n, r, slots, split, width)                                                         \
    do {                                                                                             \
        int bn_ = 0;                                                                                 \
        LFT_CHECK(lf_cuda_hopper_mid_split(dt, LF_LAYOUT_PEFT, ok_flags, m, k, n, r, slots, &bn_) == (split)); \
        LFT_CHECK((split) == 0 || bn_ == (width));                                                   \
    } while (0)
    /* 128 × 64 tiles where they take a split of 2 or more on as many CTAs: 64 at M = 128, N = 4096
     * (2 × 64 = 128 CTAs in pairs, against 3 × 32 = 96 wide; 3 × 64 > 117), also with the row of
     * tiles half full (M 64), 64 at M = 256, N = 2048 (pairs, against 3 × 32), 16 at N = 1024
     * (clusters of 6: 8 × 16 > 120, 7 × 16 > 105; against 8 × 8 wide), 32 at M = 100, N = 2048
     * (clusters of 3, against 6 × 16) */
    MID(LF_BF16, 128, 4096, 4096, 16, h200, 2, 64);
    MID(LF_BF16, 128, 4096, 4096, 16, pairs, 2, 64);
    MID(LF_BF16, 64, 4096, 4096, 16, h200, 2, 64);
    MID(LF_BF16, 256, 4096, 2048, 16, h200, 2, 64);
    MID(LF_BF16, 128, 4096, 1024, 16, h200, 6, 64);
    MID(LF_BF16, 96, 4096, 1024, 16, h200, 6, 64);
    MID(LF_BF16, 100, 1032, 2048, 16, h200, 3, 64);
    /* 128 × 128 tiles otherwise: fewer narrow CTAs (M 128, N 2560: 2 × 40 narrow against 5 × 20
     * wide), no narrow split (M 192 and 256, N 4096: 128 narrow tiles would run one CTA each, 64
     * wide ones take pairs) */
    MID(LF_BF16, 128, 4096, 2560, 16, h200, 5, 128);
    MID(LF_BF16, 192, 4096, 4096, 16, h200, 2, 128);
    MID(LF_F16, 256, 2048, 4096, 8, h200, 2, 128);
    /* one CTA a tile where one row of tiles fills a wave, or K holds one stage */
    MID(LF_BF16, 128, 4096, 14336, 16, h200, 1, 128);
    MID(LF_BF16, 100, 64, 4096, 16, h200, 1, 128);
    /* none: one CTA a tile in two rows (M 256, N 7168: the persistent kernel's 128-column tiles
     * take it, lf_cuda_hopper_fits), more tiles than a wave, past r 16 */
    MID(LF_BF16, 256, 4096, 7168, 16, h200, 0, 0);
    MID(LF_BF16, 640, 4096, 4096, 16, h200, 0, 0);
    MID(LF_BF16, 128, 4096, 4096, 17, h200, 0, 0);
#undef MID
    /* the kernel's operand limits */
    int bn = 0;
    LFT_CHECK(lf_cuda_hopper_mid_split(LF_BF16, LF_LAYOUT_KN, ok_flags, 128, 4096, 4096, 16, h200, &bn) == 0);
    LFT_CHECK(lf_cuda_hopper_mid_split(LF_F32, LF_LAYOUT_PEFT, ok_flags, 128, 4096, 4096, 16, h200, &bn) == 0);
    LFT_CHECK(lf_cuda_hopper_mid_split(LF_BF16, LF_LAYOUT_PEFT, LF_PLAN_HAS_W, 128, 4096, 4096, 16, h200, &bn) == 0);
    lft_end();
}

int main(void)
{
    printf("test_plan: base seed LF_TEST_SEED=0x%016llx\n", (unsigned long long)lft_base_seed());
    lft_for_each_backend("test_plan", 7, plan_tests, NULL);
    heuristics_tests();
    return lft_summary("test_plan");
}

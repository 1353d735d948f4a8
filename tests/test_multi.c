/*
 * test_multi.c — many adapters in one batch (lf_adapter_set_*, lf_lora_forward_multi and
 * lf_lora_forward_segments) against the per-token reference (lf_ref_lora_multi_f64), on every
 * backend present.
 *
 * Mappings: random (ids from -1 to past the capacity: empty slots and out-of-range ids mean no
 * adapter), all -1, one adapter for every token, one token per adapter; ranks differ per adapter;
 * M = 1, M ≤ 256 (the fused kernel on sm_90, but a 16-bit delta of one loaded slot past 128 tokens)
 * and beyond (the shrink and the expand); delta and layer;
 * beta 0 / 1 / 0.5; bias; every dtype and layout; strided and misaligned operands. Every case: y
 * poisoned with NaN when beta = 0, every element within the derived tolerance, y's padding and
 * guards untouched; the segment form must give the same bits as the per-token form, and a second
 * run the same bits as the first. Then: hot swap of one slot between calls (from host and from
 * device memory), adapters loaded that no token uses (y must keep every bit), CUDA graphs
 * captured with one or two adapters loaded and replayed after one more was loaded, and bad input
 * (statuses, y untouched). The shapes past the fused kernel's sizes
 * run a second time on a context made with LF_CUDA_MULTI_GRID_Y=1: one block a tile group, so
 * that the shrink's and the expand's loops over several tiles a block run too.
 */
#include "lf_test.h"

#include "cpu/lora_ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef LF_TEST_CUDA
#include <cuda_runtime_api.h>
#endif

enum mapping { MAP_RANDOM, MAP_NONE, MAP_ONE, MAP_EACH };
static const char *mapping_name[] = {"random", "all-none", "one-adapter", "one-token-each"};

typedef struct mcase {
    lf_dtype dtype;
    lf_layout layout;
    int64_t m, k, n;
    int capacity;
    int64_t max_rank;
    int has_w, has_bias;
    float beta;
    enum mapping map;
    int strided, misalign;
    int dense; /* every slot holds an adapter of rank max_rank (else the last is empty, ranks vary) */
    int load_from_device;
    uint64_t seed;
} mcase;

/* The operands of one case: x, w, bias, y and per slot a host/device copy of A and B. */
typedef struct mprob {
    mcase c;
    lf_context *ctx;
    lft_mat x, w, bias, y;
    lft_mat *a, *b;   /* [capacity]; rows 0 for an empty slot */
    int64_t *rank;    /* [capacity]; 0: empty */
    float *scale;
    int32_t *ids;     /* host, [m] */
    int32_t *ids_dev; /* context memory */
    lf_adapter_set *set;
} mprob;

static void mprob_free(mprob *p)
{
    lft_mat_free(&p->x), lft_mat_free(&p->w), lft_mat_free(&p->bias), lft_mat_free(&p->y);
    for (int i = 0; p->a && i < p->c.capacity; i++)
        lft_mat_free(&p->a[i]), lft_mat_free(&p->b[i]);
    free(p->a), free(p->b), free(p->rank), free(p->scale), free(p->ids);
    if (p->ids_dev)
        lf_free(p->ctx, p->ids_dev);
    lf_adapter_set_destroy(p->set);
    memset(p, 0, sizeof *p);
}

/* Fills slot i with a fresh random adapter of rank r and loads it into the set. */
static lf_status load_adapter(mprob *p, int i, int64_t r, lft_rng *rng)
{
    const mcase *c = &p->c;
    const int peft = c->layout == LF_LAYOUT_PEFT;
    const int64_t ga = c->strided ? 1 : 0, gb = c->strided ? 7 : 0, off = c->misalign ? 1 : 0;
    lft_mat_free(&p->a[i]), lft_mat_free(&p->b[i]);
    lf_status st;
    if ((st = lft_mat_init(&p->a[i], p->ctx, c->dtype, peft ? r : c->k, peft ? c->k : r, (peft ? c->k : r) + ga, off)) !=
            LF_OK ||
        (st = lft_mat_init(&p->b[i], p->ctx, c->dtype, peft ? c->n : r, peft ? r : c->n, (peft ? r : c->n) + gb, off)) !=
            LF_OK)
        return st;
    lft_mat_fill_random(&p->a[i], rng);
    lft_mat_fill_random(&p->b[i], rng);
    p->rank[i] = r;
    p->scale[i] = (float)(0.25 + lft_rng_unit(rng)) * (lft_rng_unit(rng) < 0.5 ? -1.0f : 1.0f);
    lf_matrix av, bv;
    lf_copy_kind from;
    if (c->load_from_device) {
        if ((st = lft_mat_upload(&p->a[i])) != LF_OK || (st = lft_mat_upload(&p->b[i])) != LF_OK)
            return st;
        av = lft_mat_view(&p->a[i]), bv = lft_mat_view(&p->b[i]);
        from = LF_COPY_DEVICE_TO_DEVICE;
    } else { /* the host images themselves */
        av = lft_mat_view(&p->a[i]), bv = lft_mat_view(&p->b[i]);
        av.data = lft_mat_host(&p->a[i]), bv.data = lft_mat_host(&p->b[i]);
        from = LF_COPY_HOST_TO_DEVICE;
    }
    return lf_adapter_set_load(p->set, i, c->layout, &av, &bv, p->scale[i], from);
}

static lf_status mprob_init(mprob *p, lf_context *ctx, const mcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    p->ctx = ctx;
    const int peft = c->layout == LF_LAYOUT_PEFT;
    const int64_t gx = c->strided ? 3 : 0, gw = c->strided ? 5 : 0, gy = c->strided ? 2 : 0;
    const int64_t off = c->misalign ? 1 : 0;
    p->a = calloc((size_t)c->capacity, sizeof *p->a);
    p->b = calloc((size_t)c->capacity, sizeof *p->b);
    p->rank = calloc((size_t)c->capacity, sizeof *p->rank);
    p->scale = calloc((size_t)c->capacity, sizeof *p->scale);
    p->ids = calloc((size_t)c->m + 1, sizeof *p->ids);
    lf_status st = p->a && p->b && p->rank && p->scale && p->ids ? LF_OK : LF_ERR_OUT_OF_MEMORY;
    if (st == LF_OK)
        st = lft_mat_init(&p->x, ctx, c->dtype, c->m, c->k, c->k + gx, off);
    if (st == LF_OK)
        st = lft_mat_init(&p->y, ctx, c->dtype, c->m, c->n, c->n + gy, off);
    if (st == LF_OK && c->has_w)
        st = lft_mat_init(&p->w, ctx, c->dtype, peft ? c->n : c->k, peft ? c->k : c->n, (peft ? c->k : c->n) + gw, off);
    if (st == LF_OK && c->has_bias)
        st = lft_mat_init(&p->bias, ctx, c->dtype, 1, c->n, c->n, off);
    if (st == LF_OK)
        st = lf_adapter_set_create(ctx, c->dtype, c->k, c->n, c->capacity, c->max_rank, &p->set);
    if (st != LF_OK) {
        mprob_free(p);
        return st;
    }
    lft_rng rng;
    lft_rng_seed(&rng, c->seed);
    lft_mat_fill_random(&p->x, &rng);
    if (c->has_w)
        lft_mat_fill_random(&p->w, &rng);
    if (c->has_bias)
        lft_mat_fill_random(&p->bias, &rng);
    if (c->beta != 0.0f)
        lft_mat_fill_random(&p->y, &rng);
    /* Every slot but the last gets an adapter of its own rank (1..max_rank, max_rank included);
     * dense: every slot, at max_rank. */
    for (int i = 0; i < c->capacity - (c->capacity > 1 && !c->dense) && st == LF_OK; i++) {
        const int64_t r =
            i == 0 || c->dense ? c->max_rank : 1 + (int64_t)(lft_rng_unit(&rng) * (double)c->max_rank);
        st = load_adapter(p, i, r, &rng);
    }
    for (int64_t t = 0; t < c->m; t++) {
        switch (c->map) {
        case MAP_RANDOM: /* -1 .. capacity + 1: none, every slot, the empty one, out of range */
            p->ids[t] = (int32_t)(lft_rng_unit(&rng) * (double)(c->capacity + 3)) - 1;
            break;
        case MAP_NONE:
            p->ids[t] = -1;
            break;
        case MAP_ONE:
            p->ids[t] = 0;
            break;
        case MAP_EACH:
            p->ids[t] = (int32_t)(t % (c->capacity > 1 ? c->capacity - 1 : 1));
            break;
        }
    }
    lft_mat *all[4] = {&p->x, &p->y, &p->w, &p->bias};
    for (int i = 0; i < 4 && st == LF_OK; i++)
        if (all[i]->image)
            st = lft_mat_upload(all[i]);
    if (st == LF_OK)
        st = lf_malloc(ctx, (void **)&p->ids_dev, (size_t)(c->m + 1) * sizeof(int32_t));
    if (st == LF_OK)
        st = lf_memcpy(ctx, p->ids_dev, p->ids, (size_t)(c->m + 1) * sizeof(int32_t), LF_COPY_HOST_TO_DEVICE);
    if (st != LF_OK)
        mprob_free(p);
    return st;
}

static lf_status run_tokens(mprob *p)
{
    lf_matrix x = lft_mat_view(&p->x), y = lft_mat_view(&p->y), w = lft_mat_view(&p->w), bias = lft_mat_view(&p->bias);
    return lf_lora_forward_multi(p->ctx, p->set, p->c.layout, &x, p->c.has_w ? &w : NULL,
                                 p->c.has_bias ? &bias : NULL, p->ids_dev, p->c.beta, &y);
}

static int is_none(const mprob *p, int32_t id) { return id < 0 || id >= p->c.capacity || p->rank[id] == 0; }

/* The same mapping as runs of equal ids, one segment per run; a leading and a trailing run without
 * an adapter are left outside every segment, and an empty segment precedes the first one. */
static lf_status run_segments(mprob *p)
{
    const int64_t m = p->c.m;
    int32_t *starts = malloc((size_t)(2 * m + 2) * sizeof *starts), *adapter = malloc((size_t)(2 * m + 1) * sizeof *adapter);
    void *dev = NULL;
    lf_status st = starts && adapter ? LF_OK : LF_ERR_OUT_OF_MEMORY;
    int64_t s = 0, covered = 0;
    for (int64_t t = 0, e; t < m && st == LF_OK; t = e) {
        for (e = t; e < m && p->ids[e] == p->ids[t]; e++)
            ;
        if (is_none(p, p->ids[t]) && (t == 0 || e == m))
            continue;
        if (s == 0) { /* an empty run: [t, t) */
            starts[s] = (int32_t)t;
            adapter[s++] = 0;
        }
        starts[s] = (int32_t)t;
        adapter[s++] = p->ids[t];
        covered = e;
    }
    starts[s] = (int32_t)covered;
    const size_t bytes = (size_t)(2 * s + 1) * sizeof(int32_t);
    if (st == LF_OK)
        st = lf_malloc(p->ctx, &dev, bytes);
    if (st == LF_OK)
        st = lf_memcpy(p->ctx, dev, starts, (size_t)(s + 1) * sizeof(int32_t), LF_COPY_HOST_TO_DEVICE);
    if (st == LF_OK && s > 0)
        st = lf_memcpy(p->ctx, (int32_t *)dev + s + 1, adapter, (size_t)s * sizeof(int32_t), LF_COPY_HOST_TO_DEVICE);
    if (st == LF_OK) {
        lf_matrix x = lft_mat_view(&p->x), y = lft_mat_view(&p->y), w = lft_mat_view(&p->w),
                  bias = lft_mat_view(&p->bias);
        st = lf_lora_forward_segments(p->ctx, p->set, p->c.layout, &x, p->c.has_w ? &w : NULL,
                                      p->c.has_bias ? &bias : NULL, dev, (int32_t *)dev + s + 1, s, p->c.beta, &y);
        if (st == LF_OK)
            st = lf_synchronize(p->ctx);
    }
    if (dev)
        lf_free(p->ctx, dev);
    free(starts), free(adapter);
    return st;
}

/* Downloads y and checks every element against the reference, and padding and guards. *bits gets
 * the downloaded image (caller frees). */
static void check_y(mprob *p, unsigned char **bits)
{
    const mcase *c = &p->c;
    const int64_t m = c->m, n = c->n;
    unsigned char *got = malloc(p->y.total);
    double *exact = malloc((size_t)(m * n) * sizeof *exact), *mag = malloc((size_t)(m * n) * sizeof *mag);
    lf_lora_problem *ads = calloc((size_t)c->capacity, sizeof *ads);
    int32_t *ids = malloc((size_t)m * sizeof *ids);
    if (!got || !exact || !mag || !ads || !ids || !LFT_CHECK(lft_mat_download(&p->y, got) == LF_OK)) {
        LFT_CHECKF(0, "out of memory or download failed");
        goto done;
    }
    lf_lora_problem hp = {.layout = c->layout, .dtype = c->dtype, .m = m, .k = c->k, .n = n, .rank = 1,
                          .x = lft_mat_host(&p->x), .ldx = p->x.stride,
                          .w = c->has_w ? lft_mat_host(&p->w) : NULL, .ldw = p->w.stride,
                          .bias = c->has_bias ? lft_mat_host(&p->bias) : NULL, .beta = c->beta,
                          .y = lft_mat_host(&p->y), .ldy = p->y.stride};
    for (int i = 0; i < c->capacity; i++) {
        const int ok = p->rank[i] > 0;
        ads[i] = (lf_lora_problem){.a = ok ? lft_mat_host(&p->a[i]) : NULL, .lda = p->a[i].stride,
                                   .b = ok ? lft_mat_host(&p->b[i]) : NULL, .ldb = p->b[i].stride,
                                   .rank = ok ? p->rank[i] : 1, .scale = p->scale[i]};
    }
    for (int64_t t = 0; t < m; t++) /* an empty slot is none too */
        ids[t] = is_none(p, p->ids[t]) ? -1 : p->ids[t];
    lf_ref_lora_multi_f64(&hp, ads, c->capacity, ids, exact, mag);
    int64_t bad = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            const double v = lft_mat_get(&p->y, got, i, j), e = exact[i * n + j];
            const double tol = lf_ref_tolerance(c->dtype, c->k, c->max_rank, e, mag[i * n + j]);
            if (!(fabs(v - e) <= tol) && bad++ < 4)
                LFT_CHECKF(0, "y[%lld][%lld] = %.9g, expected %.9g (tolerance %.3g, adapter %d)", (long long)i,
                           (long long)j, v, e, tol, ids[i]);
        }
    LFT_CHECKF(bad == 0, "%lld elements of y out of tolerance", (long long)bad);
    lft_mat_check_untouched(&p->y, got, 0, "y");
    if (bits) {
        *bits = got;
        got = NULL;
    }
done:
    free(got), free(exact), free(mag), free(ads), free(ids);
}

static const char *case_name(const mcase *c, char *buf, size_t size)
{
    snprintf(buf, size, "%s %s %s%s beta=%g %lldx%lldx%lld L%d r<=%lld %s%s%s%s%s", lf_dtype_name(c->dtype),
             c->layout == LF_LAYOUT_PEFT ? "peft" : "kn", c->has_w ? "layer" : "delta", c->has_bias ? "+bias" : "",
             (double)c->beta, (long long)c->m, (long long)c->k, (long long)c->n, c->capacity, (long long)c->max_rank,
             mapping_name[c->map], c->strided ? " strided" : "", c->misalign ? " misaligned" : "",
             c->dense ? " dense" : "", c->load_from_device ? " device-loaded" : "");
    return buf;
}

/* One case: per-token form checked, the segment form and a repeat bitwise equal to it. */
static void run_case(lf_context *ctx, const mcase *c)
{
    char name[256], full[320];
    snprintf(full, sizeof full, "multi %s %s", lf_backend_name(lf_context_backend(ctx)),
             case_name(c, name, sizeof name));
    if (!lft_selected(full))
        return;
    lft_begin("%s", full);
    lft_set_seed(c->seed);
    mprob p;
    lf_status st = mprob_init(&p, ctx, c);
    if (!LFT_CHECK_STATUS(ctx, st, LF_OK)) {
        lft_end();
        return;
    }
    unsigned char *first = NULL, *again = NULL;
    if (LFT_CHECK_STATUS(ctx, run_tokens(&p), LF_OK)) {
        check_y(&p, &first);
        /* the segment form, then the per-token form again, each from the same initial y */
        for (int form = 0; form < 2 && first; form++) {
            if (!LFT_CHECK_STATUS(ctx, lft_mat_upload(&p.y), LF_OK) ||
                !LFT_CHECK_STATUS(ctx, form == 0 ? run_segments(&p) : run_tokens(&p), LF_OK))
                break;
            again = malloc(p.y.total);
            if (again && lft_mat_download(&p.y, again) == LF_OK)
                LFT_CHECKF(memcmp(first, again, p.y.total) == 0, "%s: y differs bitwise from the first per-token run",
                           form == 0 ? "segment form" : "second per-token run");
            free(again);
            again = NULL;
        }
    }
    free(first);
    mprob_free(&p);
    lft_end();
}

typedef struct shape {
    int64_t m, k, n;
    int capacity;
    int64_t max_rank;
    int strided, misalign;
    int dense; /* every slot loaded at max_rank */
} shape;

static const shape shapes[] = {
    {1, 300, 200, 4, 16, 0, 0, 0},   /* M = 1 */
    {16, 256, 256, 8, 16, 0, 0, 0},  /* decode-like, aligned */
    /* the decode kernels' many-adapter form on CUDA (16-bit, PEFT, aligned, M <= 4): */
    {1, 256, 136, 3, 16, 0, 0, 0},   /* one token */
    {2, 1024, 8200, 4, 16, 0, 0, 0}, /* 32-row tiles (on 132 SMs), N % 16 = 8 */
    {3, 1024, 8196, 8, 16, 0, 0, 0}, /* N % 8 = 4: the last 8-feature group crosses N */
    /* the plain-load stream's many-adapter form (16-bit, PEFT, aligned, M <= 16, max rank <= 16,
     * K % 8 = 0, at least 132 tiles of 16 rows and min(M, 8) workers + the tiles <= 264 on 132
     * SMs): */
    {1, 1024, 4096, 4, 16, 0, 0, 0},   /* one token */
    {5, 1000, 2120, 6, 12, 0, 0, 0},   /* K % 32 = 8, N % 16 = 8, rank 12 */
    {8, 4104, 4000, 9, 16, 0, 0, 0},   /* eight tokens, a K tail */
    {3, 1024, 4100, 8, 16, 0, 0, 0},   /* N % 8 = 4: a B chunk runs past N into the set's row padding */
    /* ... past 8 tokens, K halves over the two blocks of a cluster: */
    {16, 1000, 4096, 5, 16, 0, 0, 0},  /* 16 tokens, K % 32 = 8 */
    {13, 520, 2210, 4, 12, 0, 0, 0},   /* 139 tiles: the last cluster's second tile empty; rank 12 */
    {9, 8, 2112, 3, 16, 0, 0, 0},      /* one K step: the second half of K empty */
    {4, 520, 200, 6, 64, 0, 0, 0},   /* K tail (520 % 32 = 8), a partial tile, rank 64 */
    {37, 129, 67, 5, 7, 1, 0, 0},    /* odd everything, strided */
    /* the fused kernel's bucketing by warp votes (CUDA, M <= 32): */
    {32, 200, 72, 1, 16, 0, 0, 0},   /* one slot: two tiles of one adapter */
    {29, 72, 41, 2, 7, 1, 0, 0},     /* K 72 over 8 K slices: a partial slice, empty ones; rank 7 */
    {64, 96, 33, 70, 8, 0, 1, 0},    /* more slots than tokens, misaligned */
    /* ... its work items by slot (M <= 16, fewer slots than tokens, every slot at the max rank,
     * <= 16): */
    {12, 129, 67, 3, 7, 1, 1, 1},    /* strided and misaligned: x's rows staged by scalars; empty
                                      * K slices */
    {8, 4096, 520, 1, 16, 0, 0, 1},  /* one slot */
    {16, 520, 2210, 5, 12, 0, 0, 1}, /* rank 12, a K tail, N chunks with a part-full last one */
    {150, 257, 130, 9, 24, 0, 0, 0}, /* M > 64, ranks past 16 */
    {200, 520, 264, 2, 16, 0, 0, 0}, /* one slot loaded, 200 tokens: the 16-bit deltas take the ordered
                                   * kernels (past LF_FUSED_ONE_SLOT_M), f32 and the layer the fused one */
    {300, 64, 64, 3, 5, 1, 1, 0},    /* long groups (more than one tile per adapter) */
    /* M > 256 (also on sm_90): the tensor-core shrink, and the tensor-core expand where y's rows
     * take 16-byte accesses */
    {520, 264, 264, 9, 40, 0, 0, 0},  /* ranks in up to 3 chunks of 16, K and N tails */
    {300, 1100, 264, 2, 16, 0, 0, 0}, /* three K slices, the last partial; one adapter over many tiles */
    {264, 64, 1032, 3, 24, 0, 0, 0},  /* three column slices of the mma expand, the last of 8 columns */
    {280, 200, 200, 4, 200, 1, 0, 0}, /* strided: scalar staging, the CUDA-core expand on 48-token tiles */
    {272, 72, 136, 3, 800, 0, 0, 0},  /* rank past 760: the expands' T past 48 KiB of shared memory */
    {300, 64, 64, 1024, 2, 0, 0, 0},  /* the largest set: 1025 bins, most without tiles */
    {2048, 64, 64, 901, 2, 0, 0, 0},  /* 900 loaded slots at one bucketing round: past a wave of tiles
                                    * (132 SMs), so the grids are one wave, blocks of several tiles */
    {40, 600, 136, 3, 800, 0, 0, 0},  /* too large for the fused kernel at M <= 64 (K slices of 256):
                                    * three K slices */
    /* past one bucketing round (2048 tokens): the rounds' bin counts from multi_count_kernel */
    {4500, 72, 136, 5, 16, 0, 0, 0},  /* three rounds, the last partial; tiles across round boundaries */
    {5000, 64, 64, 300, 2, 0, 0, 0},  /* 301 bins a round, most adapters with a few tokens */
    {4500, 200, 200, 4, 200, 1, 0, 0}, /* strided, rank 200: scalar staging, 48-token tiles across rounds */
    /* the token-ordered shrink on CUDA (16-bit, at most 8 slots loaded, max rank <= 16, 16-byte rows,
     * K % 8 = 0): */
    {300, 2312, 24, 6, 16, 0, 0, 0},  /* 10 K slices of 256 (few tiles), the last of 8 elements */
    {700, 2600, 24, 2, 12, 0, 0, 0},  /* 6 K slices of 512 (11 tiles: 2 x 11 x 6 >= 132 SMs), the last
                                    * of 40 elements; a part-full last tile; rank <= 12 */
    {500, 600, 72, 4, 16, 0, 0, 0},   /* 3 slices of 256, the last of 88 elements (halves of 2 and 1) */
    {2100, 72, 130, 2, 16, 0, 0, 0},  /* one K slice; y's rows not in 16-byte vectors: the bucketed
                                    * expand reading T by token, two bucketing rounds (the count
                                    * kernel first) */
    /* ... and with it the token-ordered expand where y's rows are (N % 8 = 0: the shapes above
     * but 2100 x 72 x 130; of them 300 x 2312 x 24 with 5 slots loaded and 500 x 600 x 72 with 3
     * take its staged form, below), with one slot loaded 512 columns and 64 tokens a block: */
    {600, 64, 1032, 2, 16, 0, 0, 0},  /* the layer's too: three column slices, the last of 8 columns; a
                                    * part-full last tile */
    {2100, 72, 136, 2, 16, 0, 0, 0},  /* past one bucketing round with no kernel bucketing: no count
                                    * kernel */
    /* several, 256 columns and 128 tokens a block and each slot's B rows staged: */
    {330, 96, 1096, 3, 11, 0, 0, 0},  /* 2 adapters; the last slice of 72 columns */
    {1100, 136, 520, 9, 16, 0, 0, 0}, /* 8 adapters (the most the ordered kernels take); the last slice
                                    * of 8 columns */
};
#define FIRST_UNFUSED_SHAPE 22 /* shapes from here on are past the fused kernel's sizes */
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

/* arg: NULL for every shape; else the index of the first shape to run (size_t), CUDA only (the
 * second pass under LF_CUDA_MULTI_GRID_Y, which the CPU backend does not read). */
static void sweep(lf_context *ctx, void *arg)
{
    const size_t first = arg ? *(const size_t *)arg : 0;
    if (arg && lf_context_backend(ctx) != LF_BACKEND_CUDA) {
        lft_skip("multi sweep, one block a tile group", lf_backend_name(lf_context_backend(ctx)),
                 "LF_CUDA_MULTI_GRID_Y is a CUDA knob", (int)((N_SHAPES - first) * 3 * 2 * 4));
        return;
    }
    uint64_t index = 0;
    static const lf_dtype dtypes[3] = {LF_F32, LF_F16, LF_BF16};
    static const float betas[3] = {0.0f, 1.0f, 0.5f};
    for (size_t s = first; s < N_SHAPES; s++)
        for (int dt = 0; dt < 3; dt++)
            for (int has_w = 0; has_w <= 1; has_w++)
                for (int map = 0; map < 4; map++) {
                    const shape *sh = &shapes[s];
                    /* layout, beta, bias and the load path rotate with the index; the layout
                     * also with the dtype, so that every mapping meets a 16-bit PEFT layer */
                    mcase c = {.dtype = dtypes[dt], .layout = (index + dt) % 2 ? LF_LAYOUT_KN : LF_LAYOUT_PEFT,
                               .m = sh->m, .k = sh->k, .n = sh->n, .capacity = sh->capacity,
                               .max_rank = sh->max_rank, .has_w = has_w, .has_bias = (index / 3) % 2 == 0,
                               .beta = betas[(index / 2) % 3], .map = (enum mapping)map, .strided = sh->strided,
                               .misalign = sh->misalign, .dense = sh->dense, .load_from_device = index % 5 == 1,
                               .seed = lft_case_seed(index)};
                    index++;
                    run_case(ctx, &c);
                }
}
#define SWEEP_CASES (N_SHAPES * 3 * 2 * 4)

/* Hot swap: slot 1 replaced between calls (a smaller rank, so that its storage keeps rows of the
 * old adapter past it; from host, then from device), slot 0 unchanged; each call checked against
 * the reference of the adapters it should see. 4 tokens take the CUDA decode kernels' MULTI form,
 * 24 the side stream, 2 and 12 at N 2120 the plain-load stream's many-adapter form (12: K halves). */
#define HOT_SWAP_CASES 8
static void hot_swap(lf_context *ctx, void *arg)
{
    (void)arg;
    for (int form = 0; form < HOT_SWAP_CASES; form++) {
        const int from_device = form % 2;
        const int64_t m = form < 2 ? 24 : form < 4 ? 4 : form < 6 ? 2 : 12;
        lft_begin("multi %s hot swap (%s, M=%lld)", lf_backend_name(lf_context_backend(ctx)),
                  from_device ? "device" : "host", (long long)m);
        mcase c = {.dtype = LF_BF16, .layout = LF_LAYOUT_PEFT, .m = m, .k = 192, .n = m == 2 || m == 12 ? 2120 : 160,
                   .capacity = 3, .max_rank = 16, .has_w = 1, .beta = 0.0f, .map = MAP_RANDOM, .seed = lft_case_seed(900 + form)};
        mprob p;
        if (LFT_CHECK_STATUS(ctx, mprob_init(&p, ctx, &c), LF_OK)) {
            for (int64_t t = 0; t < c.m; t++) /* both slots used */
                p.ids[t] = (int32_t)(t % 2);
            lf_memcpy(ctx, p.ids_dev, p.ids, (size_t)c.m * sizeof(int32_t), LF_COPY_HOST_TO_DEVICE);
            lft_rng rng;
            lft_rng_seed(&rng, c.seed ^ 0x5a5a);
            if (LFT_CHECK_STATUS(ctx, load_adapter(&p, 1, c.max_rank, &rng), LF_OK) && /* full rank first */
                LFT_CHECK_STATUS(ctx, run_tokens(&p), LF_OK))
                check_y(&p, NULL);
            p.c.load_from_device = from_device;
            if (LFT_CHECK_STATUS(ctx, load_adapter(&p, 1, 3, &rng), LF_OK) && LFT_CHECK(lf_adapter_set_rank(p.set, 1) == 3) &&
                LFT_CHECK_STATUS(ctx, lft_mat_upload(&p.y), LF_OK) && LFT_CHECK_STATUS(ctx, run_tokens(&p), LF_OK))
                check_y(&p, NULL);
            /* cleared: slot 1's tokens get no adapter */
            if (LFT_CHECK_STATUS(ctx, lf_adapter_set_clear(p.set, 1), LF_OK)) {
                p.rank[1] = 0;
                if (LFT_CHECK_STATUS(ctx, lft_mat_upload(&p.y), LF_OK) && LFT_CHECK_STATUS(ctx, run_tokens(&p), LF_OK))
                    check_y(&p, NULL);
            }
            mprob_free(&p);
        }
        lft_end();
    }
}

/* Adapters loaded that no token uses change no bit of y: every token uses slot 0 while one, two
 * and then three slots are loaded. On CUDA the three calls take different kernels for the same
 * sums — the ordered shrink with x's and A's rows staged (one slot), x's only (two), both from
 * memory (three); the ordered expand's one-slot form (B's fragments from memory, 64-token tiles)
 * and its staged form (the slots' B rows in shared memory, 128-token tiles) — so a fragment, a
 * staged row or a sub-tile out of place shows as a changed bit, even where it stays within the
 * tolerance. The delta only (the layer takes the ordered shrink with one slot loaded only). */
#define UNUSED_SLOT_CASES 2
static void unused_slots(lf_context *ctx, void *arg)
{
    (void)arg;
    for (int dt = 0; dt < UNUSED_SLOT_CASES; dt++) {
        const mcase c = {.dtype = dt ? LF_F16 : LF_BF16, .layout = LF_LAYOUT_PEFT, .m = 600, .k = 1040, .n = 264,
                         .capacity = 4, .max_rank = 16, .beta = 0.0f, .map = MAP_ONE, .seed = lft_case_seed(930 + dt)};
        lft_begin("multi %s unused adapters (%s, 600 tokens of slot 0; 1, 2, 3 slots loaded)",
                  lf_backend_name(lf_context_backend(ctx)), lf_dtype_name(c.dtype));
        mprob p;
        if (!LFT_CHECK_STATUS(ctx, mprob_init(&p, ctx, &c), LF_OK)) { /* slots 0, 1, 2 loaded */
            lft_end();
            continue;
        }
        lft_rng rng;
        lft_rng_seed(&rng, c.seed ^ 0x5a5a);
        unsigned char *first = NULL;
        if (LFT_CHECK_STATUS(ctx, lf_adapter_set_clear(p.set, 1), LF_OK) &&
            LFT_CHECK_STATUS(ctx, lf_adapter_set_clear(p.set, 2), LF_OK) && LFT_CHECK_STATUS(ctx, run_tokens(&p), LF_OK))
            check_y(&p, &first);
        for (int slot = 1; slot <= 2 && first; slot++) {
            unsigned char *again = NULL;
            if (LFT_CHECK_STATUS(ctx, load_adapter(&p, slot, slot == 1 ? c.max_rank : 5, &rng), LF_OK) &&
                LFT_CHECK_STATUS(ctx, lft_mat_upload(&p.y), LF_OK) && LFT_CHECK_STATUS(ctx, run_tokens(&p), LF_OK))
                check_y(&p, &again);
            LFT_CHECKF(again && memcmp(first, again, p.y.total) == 0,
                       "y with %d slots loaded differs from y with one", slot + 1);
            free(again);
        }
        free(first);
        mprob_free(&p);
        lft_end();
    }
}

#ifdef LF_TEST_CUDA
/* before: slots loaded at the capture (0 .. before - 1); slot `before` is loaded after it. */
static void graph_case(lf_context *ctx, const char *be, int before)
{
    lft_begin("multi %s graph replay after a load (600 tokens, slot %d loaded after the capture)", be, before);
    const mcase c = {.dtype = LF_BF16, .layout = LF_LAYOUT_PEFT, .m = 600, .k = 1040, .n = 264,
                     .capacity = before + 2, .max_rank = 16, .beta = 0.0f, .map = MAP_ONE,
                     .seed = lft_case_seed(920 + before)};
    mprob p;
    if (!LFT_CHECK_STATUS(ctx, mprob_init(&p, ctx, &c), LF_OK)) {
        lft_end();
        return;
    }
    for (int64_t t = 0; t < c.m; t++) /* slots 0 .. before in turn */
        p.ids[t] = (int32_t)(t % (before + 1));
    cudaStream_t s = NULL;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    lft_rng rng;
    lft_rng_seed(&rng, c.seed ^ 0x5a5a);
    if (LFT_CHECK_STATUS(ctx, lf_memcpy(ctx, p.ids_dev, p.ids, (size_t)c.m * sizeof(int32_t), LF_COPY_HOST_TO_DEVICE),
                         LF_OK) &&
        LFT_CHECK_STATUS(ctx, lf_adapter_set_clear(p.set, before), LF_OK) &&
        LFT_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess) &&
        LFT_CHECK_STATUS(ctx, lf_context_set_stream(ctx, s), LF_OK) &&
        LFT_CHECK_STATUS(ctx, run_tokens(&p), LF_OK) && /* the workspace grows outside the capture */
        LFT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess)) {
        const lf_status st = run_tokens(&p);
        const int captured = LFT_CHECK(cudaStreamEndCapture(s, &graph) == cudaSuccess);
        p.rank[before] = 0;
        for (int replay = 0; replay < 2 && LFT_CHECK_STATUS(ctx, st, LF_OK) && captured; replay++) {
            if (replay == 1 && !LFT_CHECK_STATUS(ctx, load_adapter(&p, before, c.max_rank, &rng), LF_OK))
                break;
            if (LFT_CHECK_STATUS(ctx, lft_mat_upload(&p.y), LF_OK) &&
                (exec || LFT_CHECK(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess)) &&
                LFT_CHECK(cudaGraphLaunch(exec, s) == cudaSuccess) && LFT_CHECK(cudaStreamSynchronize(s) == cudaSuccess))
                check_y(&p, NULL);
        }
    }
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    LFT_CHECK_STATUS(ctx, lf_context_set_stream(ctx, NULL), LF_OK);
    if (s)
        cudaStreamDestroy(s);
    mprob_free(&p);
    lft_end();
}
#endif

/* A captured CUDA graph replayed after the set changed: captured while slot 0 alone is loaded (the
 * plan then sees one slot: the ordered shrink stages that slot's A), replayed after slot 1 got an
 * adapter; then the same with slots 0 and 1 at the capture and slot 2 after it (the plan stages
 * x's rows up to two loaded slots, and the expand two slots' B rows: the replay has three). The
 * tokens of the slot loaded last must use their own adapter: a kernel that took the capture-time
 * set's slots for every token would give them another's A or B. 600 tokens: past the fused
 * kernel. */
#define GRAPH_CASES 2
static void graph_after_load(lf_context *ctx, void *arg)
{
    (void)arg;
    const char *be = lf_backend_name(lf_context_backend(ctx));
#ifdef LF_TEST_CUDA
    if (lf_context_backend(ctx) != LF_BACKEND_CUDA) {
        lft_skip("multi graph replay after a load", be, "graph capture is CUDA's", GRAPH_CASES);
        return;
    }
    for (int before = 1; before <= GRAPH_CASES; before++)
        graph_case(ctx, be, before);
#else
    lft_skip("multi graph replay after a load", be, "test_multi was built without the CUDA runtime", GRAPH_CASES);
#endif
}

/* One adapter and many on one context, queued with no synchronization between them: on CUDA the
 * plain-load stream's launches share the context's control words (the epoch word, the T workers'
 * tagged values) while their grids differ — 16 tokens in clusters with 8 T workers, one adapter's
 * 2 workers, 5 tokens' 5 — and each starts while the one before still runs (PDL). A value or an
 * epoch taken from the wrong launch shows as a wrong y. One synchronize, then every y checked. */
static void mixed_queue(lf_context *ctx, void *arg)
{
    (void)arg;
    lft_begin("multi %s mixed queue (16 tokens, one adapter, 5 tokens)", lf_backend_name(lf_context_backend(ctx)));
    const mcase c16 = {.dtype = LF_BF16, .layout = LF_LAYOUT_PEFT, .m = 16, .k = 1024, .n = 4096, .capacity = 4,
                       .max_rank = 16, .has_w = 1, .has_bias = 1, .beta = 0.5f, .map = MAP_RANDOM,
                       .seed = lft_case_seed(910)};
    mcase c5 = c16;
    c5.m = 5, c5.n = 2120, c5.has_bias = 0, c5.beta = 0.0f, c5.seed = lft_case_seed(911);
    const lft_case one = {.dtype = LF_BF16, .layout = LF_LAYOUT_PEFT, .m = 4, .k = 2048, .n = 4096, .rank = 16,
                          .has_w = 1, .has_bias = 1, .scale = 0.5f, .beta = 1.0f, .seed = lft_case_seed(912)};
    mprob p16, p5;
    lft_problem q;
    const int ok16 = LFT_CHECK_STATUS(ctx, mprob_init(&p16, ctx, &c16), LF_OK);
    const int ok5 = ok16 && LFT_CHECK_STATUS(ctx, mprob_init(&p5, ctx, &c5), LF_OK);
    const int okq = ok5 && LFT_CHECK(lft_problem_init(&q, ctx, &one) == LF_OK);
    if (okq && LFT_CHECK_STATUS(ctx, run_tokens(&p16), LF_OK) && LFT_CHECK_STATUS(ctx, lft_problem_run(&q), LF_OK) &&
        LFT_CHECK_STATUS(ctx, run_tokens(&p5), LF_OK) && LFT_CHECK_STATUS(ctx, lf_synchronize(ctx), LF_OK)) {
        check_y(&p16, NULL);
        lft_problem_reference(&q);
        lft_problem_check(&q, NULL, NULL);
        check_y(&p5, NULL);
    }
    if (okq)
        lft_problem_free(&q);
    if (ok5)
        mprob_free(&p5);
    if (ok16)
        mprob_free(&p16);
    lft_end();
}
#define MIXED_QUEUE_CASES 1

/* Bad input: a status, a message, and y untouched. */
static void bad_input(lf_context *ctx, void *arg)
{
    (void)arg;
    const char *be = lf_backend_name(lf_context_backend(ctx));
    lft_begin("multi %s bad input", be);
    lf_adapter_set *set = NULL;
    LFT_CHECK_STATUS(ctx, lf_adapter_set_create(ctx, LF_BF16, 64, 32, 0, 8, &set), LF_ERR_INVALID_VALUE);
    LFT_CHECK(set == NULL);
    LFT_CHECK_STATUS(ctx, lf_adapter_set_create(ctx, LF_BF16, 64, 32, LF_MAX_ADAPTERS + 1, 8, &set), LF_ERR_INVALID_VALUE);
    LFT_CHECK_STATUS(ctx, lf_adapter_set_create(ctx, LF_BF16, 64, 32, 2, LF_MAX_RANK + 1, &set), LF_ERR_INVALID_VALUE);
    LFT_CHECK_STATUS(ctx, lf_adapter_set_create(ctx, LF_BF16, 0, 32, 2, 8, &set), LF_ERR_INVALID_VALUE);
    LFT_CHECK_STATUS(ctx, lf_adapter_set_create(ctx, (lf_dtype)7, 64, 32, 2, 8, &set), LF_ERR_INVALID_VALUE);
    LFT_CHECK_STATUS(ctx, lf_adapter_set_create(ctx, LF_BF16, 64, 32, 2, 8, NULL), LF_ERR_NULL_POINTER);
    mcase c = {.dtype = LF_BF16, .layout = LF_LAYOUT_PEFT, .m = 8, .k = 64, .n = 32, .capacity = 2, .max_rank = 8,
               .beta = 0.0f, .map = MAP_ONE, .seed = 77};
    mprob p;
    if (LFT_CHECK_STATUS(ctx, mprob_init(&p, ctx, &c), LF_OK)) {
        lf_matrix x = lft_mat_view(&p.x), y = lft_mat_view(&p.y), a = lft_mat_view(&p.a[0]), b = lft_mat_view(&p.b[0]);
        a.data = lft_mat_host(&p.a[0]), b.data = lft_mat_host(&p.b[0]);
        /* loads */
        LFT_CHECK_STATUS(ctx, lf_adapter_set_load(p.set, 2, c.layout, &a, &b, 1.0f, LF_COPY_HOST_TO_DEVICE),
                         LF_ERR_INVALID_VALUE);
        LFT_CHECK_STATUS(ctx, lf_adapter_set_load(p.set, -1, c.layout, &a, &b, 1.0f, LF_COPY_HOST_TO_DEVICE),
                         LF_ERR_INVALID_VALUE);
        LFT_CHECK_STATUS(ctx, lf_adapter_set_load(p.set, 0, c.layout, &a, &b, 1.0f, LF_COPY_DEVICE_TO_HOST),
                         LF_ERR_INVALID_VALUE);
        LFT_CHECK_STATUS(ctx, lf_adapter_set_load(p.set, 0, c.layout, NULL, &b, 1.0f, LF_COPY_HOST_TO_DEVICE),
                         LF_ERR_NULL_POINTER);
        LFT_CHECK_STATUS(ctx, lf_adapter_set_load(p.set, 0, c.layout, &a, &b, 1.0f / 0.0f, LF_COPY_HOST_TO_DEVICE),
                         LF_ERR_INVALID_VALUE);
        lf_matrix wide_b = b;
        wide_b.rows = b.rows + 1;
        LFT_CHECK_STATUS(ctx, lf_adapter_set_load(p.set, 0, c.layout, &a, &wide_b, 1.0f, LF_COPY_HOST_TO_DEVICE),
                         LF_ERR_SHAPE_MISMATCH);
        lf_matrix f32_a = a;
        f32_a.dtype = LF_F32;
        LFT_CHECK_STATUS(ctx, lf_adapter_set_load(p.set, 0, c.layout, &f32_a, &b, 1.0f, LF_COPY_HOST_TO_DEVICE),
                         LF_ERR_DTYPE_MISMATCH);
        LFT_CHECK(lf_adapter_set_rank(p.set, 0) == p.rank[0]); /* failed loads left the slot alone */
        LFT_CHECK(lf_adapter_set_rank(p.set, 5) == 0 && lf_adapter_set_rank(NULL, 0) == 0);
        LFT_CHECK_STATUS(ctx, lf_adapter_set_clear(p.set, 9), LF_ERR_INVALID_VALUE);
        /* calls: every failure leaves y (poisoned) untouched */
        lf_matrix bad_x = x;
        bad_x.cols = c.k + 1;
        lf_matrix f16_x = x;
        f16_x.dtype = LF_F16;
        lf_matrix y_on_x = y;
        y_on_x.data = x.data;
        LFT_CHECK_STATUS(ctx, lf_lora_forward_multi(ctx, NULL, c.layout, &x, NULL, NULL, p.ids_dev, 0.0f, &y),
                         LF_ERR_NULL_POINTER);
        LFT_CHECK_STATUS(ctx, lf_lora_forward_multi(ctx, p.set, c.layout, &x, NULL, NULL, NULL, 0.0f, &y),
                         LF_ERR_NULL_POINTER);
        LFT_CHECK_STATUS(ctx, lf_lora_forward_multi(ctx, p.set, c.layout, &bad_x, NULL, NULL, p.ids_dev, 0.0f, &y),
                         LF_ERR_SHAPE_MISMATCH);
        LFT_CHECK_STATUS(ctx, lf_lora_forward_multi(ctx, p.set, c.layout, &f16_x, NULL, NULL, p.ids_dev, 0.0f, &y),
                         LF_ERR_DTYPE_MISMATCH);
        LFT_CHECK_STATUS(ctx, lf_lora_forward_multi(ctx, p.set, (lf_layout)5, &x, NULL, NULL, p.ids_dev, 0.0f, &y),
                         LF_ERR_INVALID_VALUE);
        LFT_CHECK_STATUS(ctx, lf_lora_forward_multi(ctx, p.set, c.layout, &x, NULL, NULL, p.ids_dev, 0.0f / 0.0f, &y),
                         LF_ERR_INVALID_VALUE);
        LFT_CHECK_STATUS(ctx, lf_lora_forward_multi(ctx, p.set, c.layout, &x, NULL, NULL, p.ids_dev, 0.0f, &y_on_x),
                         LF_ERR_ALIASING);
        LFT_CHECK(strlen(lf_context_last_error(ctx)) > 0);
        LFT_CHECK_STATUS(ctx, lf_lora_forward_segments(ctx, p.set, c.layout, &x, NULL, NULL, p.ids_dev, p.ids_dev, -1,
                                                       0.0f, &y),
                         LF_ERR_INVALID_VALUE);
        LFT_CHECK_STATUS(ctx, lf_lora_forward_segments(ctx, p.set, c.layout, &x, NULL, NULL, NULL, p.ids_dev, 1, 0.0f,
                                                       &y),
                         LF_ERR_NULL_POINTER);
        lf_context *other = NULL;
        if (lf_context_create(&other, lf_context_backend(ctx)) == LF_OK) {
            LFT_CHECK_STATUS(other, lf_lora_forward_multi(other, p.set, c.layout, &x, NULL, NULL, p.ids_dev, 0.0f, &y),
                             LF_ERR_INVALID_VALUE);
            lf_context_destroy(other);
        }
        unsigned char *after = malloc(p.y.total);
        if (after && LFT_CHECK(lft_mat_download(&p.y, after) == LF_OK))
            LFT_CHECK(lft_mat_check_untouched(&p.y, after, 1, "y after failed calls") == 0);
        free(after);
        mprob_free(&p);
    }
    lft_end();
}
#define BAD_INPUT_CASES 1

int main(void)
{
    lft_for_each_backend("multi sweep", (int)SWEEP_CASES, sweep, NULL);
    static const size_t unfused = FIRST_UNFUSED_SHAPE;
    setenv("LF_CUDA_MULTI_GRID_Y", "1", 1); /* read when the context is created */
    lft_for_each_backend("multi sweep, one block a tile group", (int)((N_SHAPES - unfused) * 3 * 2 * 4), sweep,
                         (void *)&unfused);
    unsetenv("LF_CUDA_MULTI_GRID_Y");
    lft_for_each_backend("multi hot swap", HOT_SWAP_CASES, hot_swap, NULL);
    lft_for_each_backend("multi unused adapters", UNUSED_SLOT_CASES, unused_slots, NULL);
    lft_for_each_backend("multi mixed queue", MIXED_QUEUE_CASES, mixed_queue, NULL);
    lft_for_each_backend("multi graph replay after a load", GRAPH_CASES, graph_after_load, NULL);
    lft_for_each_backend("multi bad input", BAD_INPUT_CASES, bad_input, NULL);
    return lft_summary("test_multi");
}

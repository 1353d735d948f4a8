/*
 * lora_multi.c — lf_lora_forward_multi / _segments on the CPU, built from the fast path's pieces
 * (lora_fwd.h: the project and expand kernels, the dtype conversions) and, for the layer, the
 * single-adapter layer itself.
 *
 *   deltas   tokens are grouped by adapter (a stable counting sort on the host: the ids are host
 *            memory here). One task per adapter packs its A and B to fp32 once, then projects and
 *            expands its runs of consecutive tokens in place in y (y = beta·y + bias + s·T·B,
 *            rounded once). Tokens without an adapter are left alone when beta = 1 and there is no
 *            bias, else get y = beta·y + bias (an expand of rank 0). Tasks write disjoint rows of
 *            y, each row through the same operations whoever runs it: bitwise reproducible.
 *   layer    per group, the single-adapter layer (lf_lora_forward) on the group's rows gathered into
 *            panels: one rounding, as the contract wants. W is read once per adapter used (the
 *            tokens without one: a zero adapter with scale 0, the base layer alone); fine for
 *            prefill-sized groups, W-bound for decode batches that use many adapters.
 *
 * Calls allocate their scratch (the grouping, per-thread fp32 panels, the layer's gathered rows)
 * with malloc, all of it before y is written: a call that fails leaves y untouched. Unlike the
 * single-adapter path, nothing here is planned per shape yet.
 */
#include "lora_fwd.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Rows projected and expanded at a time: bounds the per-task panels. */
#define MULTI_PANEL_ROWS 64

static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The CPU's part of a set: a zero adapter for the base-GEMM call of the layer. */
typedef struct cpu_set_state {
    void *zeros; /* max(K, N) zero elements of the set's dtype */
} cpu_set_state;

lf_status lf_cpu_adapter_set_init(lf_context *ctx, lf_adapter_set *set)
{
    cpu_set_state *s = calloc(1, sizeof *s);
    const int64_t count = set->k > set->n ? set->k : set->n;
    if (s)
        s->zeros = calloc((size_t)count, lf_dtype_size(set->dtype));
    if (!s || !s->zeros) {
        free(s);
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_adapter_set_create: out of host memory");
    }
    set->backend = s;
    return LF_OK;
}

void lf_cpu_adapter_set_destroy(lf_context *ctx, lf_adapter_set *set)
{
    (void)ctx;
    cpu_set_state *s = set->backend;
    free(s->zeros);
    free(s);
    set->backend = NULL;
}

/* The slot token t uses, or -1: per-token ids or segments, and an empty slot counts as none. */
static void slots_of_tokens(const lf_multi_problem *p, int32_t *slot)
{
    const lf_adapter_set *set = p->set;
    if (p->token_adapter) {
        for (int64_t t = 0; t < p->m; t++)
            slot[t] = p->token_adapter[t];
    } else {
        for (int64_t t = 0; t < p->m; t++)
            slot[t] = -1;
        for (int64_t s = 0; s < p->segments; s++) {
            const int64_t lo = p->seg_starts[s] < 0 ? 0 : p->seg_starts[s];
            const int64_t hi = min64(p->seg_starts[s + 1], p->m);
            for (int64_t t = lo; t < hi; t++)
                slot[t] = p->seg_adapter[s];
        }
    }
    for (int64_t t = 0; t < p->m; t++)
        if (slot[t] < 0 || slot[t] >= set->capacity || set->slots[slot[t]].rank <= 0)
            slot[t] = -1;
}

/* fp32 scratch of one delta task for adapters of rank ≤ rank: A and B packed, a panel of T and x. */
static size_t group_floats(const lf_cpu_kernels *kern, const lf_multi_problem *p, int64_t rank)
{
    const int64_t kp = round_up(p->k, kern->vl), rp = round_up(rank, kern->proj_ranks);
    const int64_t np = round_up(p->n, kern->expand_cols);
    return (size_t)(rp * kp + rank * np + MULTI_PANEL_ROWS * (rp + kp));
}

/* Applies one group (adapter `slot`, or none when slot < 0) to its tokens tok[0..count), in
 * increasing order: runs of consecutive tokens are projected and expanded together. buf holds
 * group_floats(rank) floats. */
static void run_group(const lf_cpu_kernels *kern, const lf_multi_problem *p, const float *bias_f, int32_t slot,
                      const int32_t *tok, int64_t count, float *buf)
{
    const lf_adapter_set *set = p->set;
    const size_t es = lf_dtype_size(p->dtype);
    const int64_t rank = slot >= 0 ? set->slots[slot].rank : 0;
    const int64_t kp = round_up(p->k, kern->vl), rp = round_up(rank, kern->proj_ranks);
    const int64_t np = round_up(p->n, kern->expand_cols);
    float *af = buf, *bf = af + rp * kp, *tf = bf + rank * np, *xf = tf + MULTI_PANEL_ROWS * rp;
    /* Pack A [rp][kp] and B [rank][np] to fp32, zero padded as the kernels want. */
    for (int64_t t = 0; t < rp; t++) {
        float *row = af + t * kp;
        int64_t done = 0;
        if (t < rank) {
            kern->to_f32((const char *)set->a + ((size_t)slot * set->max_rank + t) * set->lda * es, p->dtype, p->k, row);
            done = p->k;
        }
        memset(row + done, 0, (size_t)(kp - done) * sizeof(float));
    }
    for (int64_t t = 0; t < rank; t++) {
        kern->to_f32((const char *)set->b + ((size_t)slot * set->max_rank + t) * set->ldb * es, p->dtype, p->n,
                     bf + t * np);
        memset(bf + t * np + p->n, 0, (size_t)(np - p->n) * sizeof(float));
    }
    const float scale = slot >= 0 ? set->slots[slot].scale : 0.0f;
    for (int64_t i = 0; i < count;) {
        /* A run of consecutive tokens, at most a panel. */
        int64_t len = 1;
        while (i + len < count && len < MULTI_PANEL_ROWS && tok[i + len] == tok[i] + len)
            len++;
        const int64_t t0 = tok[i];
        char *yrow = (char *)p->y + (size_t)(t0 * p->ldy) * es;
        if (rank > 0) {
            const float *x = (const float *)((const char *)p->x + (size_t)(t0 * p->ldx) * es);
            int64_t ldx = p->ldx;
            if (p->dtype != LF_F32) {
                for (int64_t r = 0; r < len; r++)
                    kern->to_f32((const char *)p->x + (size_t)((t0 + r) * p->ldx) * es, p->dtype, p->k,
                                 xf + r * kp);
                x = xf, ldx = kp;
            }
            const lf_cpu_project_args pa = {.x = x, .ldx = ldx, .rows = len, .k = p->k, .a = af, .lda = kp,
                                            .t0 = 0, .t1 = rp, .scale = scale, .t = tf, .ldt = rp};
            kern->project(&pa);
        }
        const lf_cpu_expand_args ea = {.t = tf, .ldt = rp, .rows = len, .cols = p->n, .rank = rank, .b = bf,
                                       .ldb = np, .bias = bias_f, .beta = p->beta, .yin = yrow,
                                       .yin_dtype = p->dtype, .ldyin = p->ldy, .out = yrow,
                                       .out_dtype = p->dtype, .ldout = p->ldy};
        kern->expand(&ea);
        i += len;
    }
}

/* Applies the layer to one group through the single-adapter layer on gathered rows: the x (and,
 * for beta ≠ 0, y) rows of the group's tokens into xp and yp, lf_lora_forward into yp (the
 * adapter's A or B transposed to W's layout into tr; no adapter: a zero adapter with scale 0, which
 * adds exactly nothing). The caller scatters yp back once every group has succeeded. */
static lf_status run_layer_group(lf_context *ctx, const lf_multi_problem *p, int32_t slot, const int32_t *tok,
                                 int64_t count, unsigned char *xp, unsigned char *yp, unsigned char *tr)
{
    const lf_adapter_set *set = p->set;
    const cpu_set_state *s = set->backend;
    const size_t es = lf_dtype_size(p->dtype);
    const int peft = p->layout == LF_LAYOUT_PEFT;
    const int64_t rank = slot >= 0 ? set->slots[slot].rank : 1;
    /* The operand the stacked storage does not hold in W's layout: B as [N, r] (PEFT) or A as [K, r]. */
    const int64_t tr_rows = peft ? p->n : p->k;
    for (int64_t i = 0; i < count; i++) {
        memcpy(xp + (size_t)(i * p->k) * es, (const char *)p->x + (size_t)(tok[i] * p->ldx) * es, (size_t)p->k * es);
        if (p->beta != 0.0f)
            memcpy(yp + (size_t)(i * p->n) * es, (const char *)p->y + (size_t)(tok[i] * p->ldy) * es, (size_t)p->n * es);
    }
    lf_matrix a, b;
    float scale = 0.0f;
    if (slot >= 0) {
        const unsigned char *sa = (const unsigned char *)set->a + (size_t)slot * set->max_rank * set->lda * es;
        const unsigned char *sb = (const unsigned char *)set->b + (size_t)slot * set->max_rank * set->ldb * es;
        const unsigned char *src = peft ? sb : sa;
        const int64_t ld = peft ? set->ldb : set->lda;
        for (int64_t t = 0; t < rank; t++)
            for (int64_t e = 0; e < tr_rows; e++)
                memcpy(tr + (size_t)(e * rank + t) * es, src + (size_t)(t * ld + e) * es, es);
        a = peft ? (lf_matrix){(void *)sa, p->dtype, rank, p->k, set->lda} : (lf_matrix){tr, p->dtype, p->k, rank, rank};
        b = peft ? (lf_matrix){tr, p->dtype, p->n, rank, rank} : (lf_matrix){(void *)sb, p->dtype, rank, p->n, set->ldb};
        scale = set->slots[slot].scale;
    } else {
        a = (lf_matrix){s->zeros, p->dtype, peft ? 1 : p->k, peft ? p->k : 1, peft ? p->k : 1};
        b = (lf_matrix){s->zeros, p->dtype, peft ? p->n : 1, peft ? 1 : p->n, peft ? 1 : p->n};
    }
    const lf_matrix x = {xp, p->dtype, count, p->k, p->k}, y = {yp, p->dtype, count, p->n, p->n};
    const lf_matrix w = {(void *)p->w, p->dtype, peft ? p->n : p->k, peft ? p->k : p->n, p->ldw};
    const lf_matrix bias = {(void *)p->bias, p->dtype, 1, p->n, p->n};
    return lf_lora_forward(ctx, p->layout, &x, &w, p->bias ? &bias : NULL, &a, &b, scale, p->beta, &y);
}

lf_status lf_cpu_lora_multi(lf_context *ctx, const lf_cpu_kernels *kern, const lf_multi_problem *p)
{
    const lf_adapter_set *set = p->set;
    const int groups = set->capacity + 1; /* group `capacity`: tokens without an adapter */
    int32_t *slot = malloc((size_t)p->m * sizeof *slot);
    int32_t *order = malloc((size_t)p->m * sizeof *order);
    int64_t *start = calloc((size_t)groups + 1, sizeof *start);
    int64_t *fill = malloc((size_t)groups * sizeof *fill);
    const int64_t np = round_up(p->n, kern->expand_cols);
    float *bias_f = p->bias && !p->w ? calloc((size_t)np, sizeof *bias_f) : NULL;
    lf_status st = LF_OK;
    if (!slot || !order || !start || !fill || (p->bias && !p->w && !bias_f)) {
        st = lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_lora_forward_multi: out of host memory");
        goto done;
    }
    slots_of_tokens(p, slot);
    /* Stable counting sort: start[g]..start[g+1] are group g's tokens in increasing order. */
    for (int64_t t = 0; t < p->m; t++)
        start[(slot[t] < 0 ? set->capacity : slot[t]) + 1]++;
    for (int g = 0; g < groups; g++)
        start[g + 1] += start[g];
    memcpy(fill, start, (size_t)groups * sizeof *fill);
    for (int64_t t = 0; t < p->m; t++)
        order[fill[slot[t] < 0 ? set->capacity : slot[t]]++] = (int32_t)t;
    if (p->w) { /* one layer call per group (each threaded itself) into gathered rows, then y */
        const size_t es = lf_dtype_size(p->dtype);
        const int64_t tr_rows = p->layout == LF_LAYOUT_PEFT ? p->n : p->k;
        unsigned char *xs = malloc((size_t)p->m * (size_t)(p->k + p->n) * es + (size_t)(tr_rows * set->max_rank) * es);
        if (!xs) {
            st = lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_lora_forward_multi: out of host memory");
            goto done;
        }
        unsigned char *ys = xs + (size_t)(p->m * p->k) * es, *tr = ys + (size_t)(p->m * p->n) * es;
        for (int g = 0; g < groups && st == LF_OK; g++)
            if (start[g + 1] > start[g])
                st = run_layer_group(ctx, p, g == set->capacity ? -1 : g, order + start[g], start[g + 1] - start[g],
                                     xs + (size_t)(start[g] * p->k) * es, ys + (size_t)(start[g] * p->n) * es, tr);
        for (int64_t i = 0; i < p->m && st == LF_OK; i++) /* every group done: only now is y written */
            memcpy((char *)p->y + (size_t)(order[i] * p->ldy) * es, ys + (size_t)(i * p->n) * es, (size_t)p->n * es);
        free(xs);
        goto done;
    }
    /* Delta: one scratch per thread, sized for the largest rank in use, before y is written. */
    int64_t rank_max = 0;
    for (int g = 0; g < set->capacity; g++)
        if (start[g + 1] > start[g] && set->slots[g].rank > rank_max)
            rank_max = set->slots[g].rank;
    const int threads = lf_cpu_threads(ctx);
    const size_t per_task = group_floats(kern, p, rank_max);
    float *scratch = malloc((size_t)threads * per_task * sizeof(float));
    if (!scratch) {
        st = lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_lora_forward_multi: out of host memory");
        goto done;
    }
    if (p->bias)
        kern->to_f32(p->bias, p->dtype, p->n, bias_f);
    const int skip_none = p->beta == 1.0f && !p->bias; /* y already holds their result */
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int g = 0; g < groups; g++) {
        const int64_t count = start[g + 1] - start[g];
        if (count == 0 || (g == set->capacity && skip_none))
            continue;
        run_group(kern, p, bias_f, g == set->capacity ? -1 : g, order + start[g], count,
                  scratch + (size_t)omp_get_thread_num() * per_task);
    }
    free(scratch);
done:
    free(slot);
    free(order);
    free(start);
    free(fill);
    free(bias_f);
    return st;
}

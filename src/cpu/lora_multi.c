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
 *   layer    W is read once per panel of rows, whatever the adapters: per panel, the deltas (with
 *            beta·y and bias, every token) go into an fp32 accumulator as above — y itself for
 *            f32 — then column tasks add x·Wᵀ with one single-threaded sgemm each (16-bit: x and
 *            the task's slice of W converted to fp32 first) and round once into y. (It used to
 *            run the single-adapter layer once per adapter group: W read L + 1 times, 3.2× the
 *            base GEMM at 8 adapters and 16 tokens.)
 *
 * Calls allocate their scratch (the grouping, per-thread fp32 panels, the layer's accumulator and
 * W slices) with malloc, all of it before y is written: a call that fails leaves y untouched. The
 * decomposition (panels, column blocks) depends on the problem only, not on the thread count, so
 * results are bitwise the same with any number of threads. Unlike the single-adapter path,
 * nothing here is planned per shape yet.
 */
#include "lora_fwd.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Rows projected and expanded at a time: bounds the per-task panels. */
#define MULTI_PANEL_ROWS 64
/* Layer: rows per panel (the fp32 accumulator, and x converted, hold a panel), and the most floats
 * of W's fp32 slice one column task converts (16-bit). */
#define LAYER_PANEL_ROWS 256
#define LAYER_W_SLICE_FLOATS (1 << 21)

static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

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

/* Where run_group writes token t's row: base + (t - row0)·ld elements of dtype. */
typedef struct group_out {
    void *base;
    lf_dtype dtype;
    int64_t ld, row0;
} group_out;

/* Applies one group (adapter `slot`, or none when slot < 0) to its tokens tok[0..count), in
 * increasing order: runs of consecutive tokens are projected and expanded together, reading
 * beta·y from y and writing beta·y + bias + s·T·B to out. buf holds group_floats(rank) floats. */
static void run_group(const lf_cpu_kernels *kern, const lf_multi_problem *p, const float *bias_f, int32_t slot,
                      const int32_t *tok, int64_t count, float *buf, const group_out *out)
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
        const char *yrow = (const char *)p->y + (size_t)(t0 * p->ldy) * es;
        char *orow = (char *)out->base + (size_t)((t0 - out->row0) * out->ld) * lf_dtype_size(out->dtype);
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
                                       .yin_dtype = p->dtype, .ldyin = p->ldy, .out = orow,
                                       .out_dtype = out->dtype, .ldout = out->ld};
        kern->expand(&ea);
        i += len;
    }
}

/* The layer, one panel of rows [i0, i0 + rows) after another (cursor[g]: group g's next token):
 * the deltas into acc (fp32; y itself for f32), then column tasks of cb columns add x·Wᵀ and round
 * into y. Scratch: per thread per_task floats (run_group) and cb·K floats (W's slice, 16-bit);
 * acc and xf hold a panel (16-bit). */
static void run_layer(const lf_cpu_kernels *kern, const lf_multi_problem *p, const float *bias_f,
                      const int64_t *start, const int32_t *order, int64_t *cursor, int none_group, float *scratch,
                      size_t per_task, float *acc, float *xf, float *wf, int64_t cb, int threads)
{
    const size_t es = lf_dtype_size(p->dtype);
    const int f32 = p->dtype == LF_F32, peft = p->layout == LF_LAYOUT_PEFT;
    const int skip_none = f32 && p->beta == 1.0f && !p->bias; /* y already holds their beta·y + bias */
    const int64_t tasks = (p->n + cb - 1) / cb;
    for (int64_t i0 = 0; i0 < p->m; i0 += LAYER_PANEL_ROWS) {
        const int64_t rows = min64(LAYER_PANEL_ROWS, p->m - i0);
        const group_out out = f32 ? (group_out){p->y, LF_F32, p->ldy, 0} : (group_out){acc, LF_F32, p->n, i0};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (int g = 0; g <= none_group; g++) {
            int64_t hi = cursor[g];
            while (hi < start[g + 1] && order[hi] < i0 + rows)
                hi++;
            if (hi > cursor[g] && !(g == none_group && skip_none))
                run_group(kern, p, bias_f, g == none_group ? -1 : g, order + cursor[g], hi - cursor[g],
                          scratch + (size_t)omp_get_thread_num() * per_task, &out);
            cursor[g] = hi;
        }
        if (!f32)
            for (int64_t r = 0; r < rows; r++)
                kern->to_f32((const char *)p->x + (size_t)((i0 + r) * p->ldx) * es, p->dtype, p->k, xf + r * p->k);
        const float *x = f32 ? (const float *)p->x + i0 * p->ldx : xf;
        const int64_t ldx = f32 ? p->ldx : p->k;
        float *c = f32 ? (float *)p->y + i0 * p->ldy : acc;
        const int64_t ldc = f32 ? p->ldy : p->n;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (int64_t task = 0; task < tasks; task++) {
            const int64_t j0 = task * cb, cols = min64(cb, p->n - j0);
            const float *w = (const float *)p->w + (peft ? j0 * p->ldw : j0);
            int64_t ldw = p->ldw;
            if (!f32) { /* the task's columns of W in fp32 */
                float *slice = wf + (size_t)omp_get_thread_num() * (size_t)(cb * p->k);
                ldw = peft ? p->k : cols;
                lf_cpu_w_cols_to_f32(kern, p->w, p->dtype, p->layout, p->ldw, p->k, j0, cols, slice, ldw);
                w = slice;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, peft ? CblasTrans : CblasNoTrans, (int)rows, (int)cols,
                        (int)p->k, 1.0f, x, (int)ldx, w, (int)ldw, 1.0f, c + j0, (int)ldc);
            if (!f32)
                for (int64_t r = 0; r < rows; r++)
                    kern->from_f32(acc + r * p->n + j0, cols, p->dtype,
                                   (char *)p->y + (size_t)((i0 + r) * p->ldy + j0) * es);
        }
    }
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
    float *bias_f = p->bias ? calloc((size_t)np, sizeof *bias_f) : NULL;
    lf_status st = LF_OK;
    if (!slot || !order || !start || !fill || (p->bias && !bias_f)) {
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
    /* Scratch, all of it before y is written: per thread, a group task's (sized for the largest
     * rank in use) and, for the 16-bit layer, a slice of W in fp32; the layer's panel of x and
     * its accumulator. */
    int64_t rank_max = 0;
    for (int g = 0; g < set->capacity; g++)
        if (start[g + 1] > start[g] && set->slots[g].rank > rank_max)
            rank_max = set->slots[g].rank;
    const int threads = lf_cpu_threads(ctx);
    const size_t per_task = group_floats(kern, p, rank_max);
    const int cvt = p->w && p->dtype != LF_F32;
    const int64_t panel = min64(p->m, LAYER_PANEL_ROWS);
    /* column blocks: a multiple of the expand tile, W's slice within budget, at least two tasks */
    const int64_t ec = kern->expand_cols;
    int64_t cb = round_up((p->n + 1) / 2, ec);
    if (cvt && cb * p->k > LAYER_W_SLICE_FLOATS)
        cb = LAYER_W_SLICE_FLOATS / p->k / ec * ec > ec ? LAYER_W_SLICE_FLOATS / p->k / ec * ec : ec;
    float *scratch = malloc((size_t)threads * per_task * sizeof(float));
    float *wf = cvt ? malloc((size_t)threads * (size_t)(cb * p->k) * sizeof(float)) : NULL;
    float *xf = cvt ? malloc((size_t)(panel * p->k) * sizeof(float)) : NULL;
    float *acc = cvt ? malloc((size_t)(panel * p->n) * sizeof(float)) : NULL;
    int64_t *cursor = malloc((size_t)groups * sizeof *cursor);
    if (!scratch || !cursor || (cvt && (!wf || !xf || !acc))) {
        st = lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_lora_forward_multi: out of host memory");
    } else if (p->w && (p->ldx > INT_MAX || p->ldw > INT_MAX || p->ldy > INT_MAX || p->k > INT_MAX ||
                        p->n > INT_MAX || panel * p->k > INT_MAX)) {
        st = lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_lora_forward_multi: the CPU backend's GEMM takes sizes and "
                     "row strides up to %d", INT_MAX);
    } else {
        if (p->bias)
            kern->to_f32(p->bias, p->dtype, p->n, bias_f);
        if (p->w) {
            memcpy(cursor, start, (size_t)groups * sizeof *cursor);
            lf_cpu_blas_single_begin(); /* one single-threaded sgemm per column task */
            run_layer(kern, p, bias_f, start, order, cursor, set->capacity, scratch, per_task, acc, xf, wf, cb,
                      threads);
            lf_cpu_blas_single_end();
        } else {
            const int skip_none = p->beta == 1.0f && !p->bias; /* y already holds their result */
            const group_out out = {p->y, p->dtype, p->ldy, 0};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
            for (int g = 0; g < groups; g++) {
                const int64_t count = start[g + 1] - start[g];
                if (count == 0 || (g == set->capacity && skip_none))
                    continue;
                run_group(kern, p, bias_f, g == set->capacity ? -1 : g, order + start[g], count,
                          scratch + (size_t)omp_get_thread_num() * per_task, &out);
            }
        }
    }
    free(scratch);
    free(wf);
    free(xf);
    free(acc);
    free(cursor);
done:
    free(slot);
    free(order);
    free(start);
    free(fill);
    free(bias_f);
    return st;
}

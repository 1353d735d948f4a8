/*
 * tp.c — tensor-parallel LoRA layers: shard views, and the row-parallel driver that folds the LoRA
 * term into each rank's partial output before the one all-reduce the base layer needs anyway.
 *
 * The partial outputs are computed by the ordinary ops (lf_lora_forward and its many-adapter forms)
 * on row chunks of x and y, so they keep those ops' validation, plans and kernels; the communicator
 * (tp_internal.h) sums each chunk while the next one is computed.
 */
#include "tp_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

lf_status lf_tp_split(int64_t n, int parts, int index, int64_t *begin, int64_t *count)
{
    if (!begin || !count)
        return LF_ERR_NULL_POINTER;
    if (n < 0 || parts < 1 || index < 0 || index >= parts)
        return LF_ERR_INVALID_VALUE;
    const int64_t base = n / parts, extra = n % parts;
    *begin = index * base + (index < extra ? index : extra);
    *count = base + (index < extra ? 1 : 0);
    return LF_OK;
}

/* Rows [r0, r0 + rows) and columns [c0, c0 + cols) of m, as a view. */
static lf_matrix sub_view(const lf_matrix *m, int64_t r0, int64_t rows, int64_t c0, int64_t cols)
{
    lf_matrix v = *m;
    v.data = (char *)m->data + (size_t)(r0 * m->stride + c0) * lf_dtype_size(m->dtype);
    v.rows = rows;
    v.cols = cols;
    return v;
}

lf_status lf_tp_shard_lora(lf_tp_kind kind, lf_layout layout, int parts, int index, const lf_matrix *w,
                           const lf_matrix *bias, const lf_matrix *a, const lf_matrix *b, lf_matrix *w_shard,
                           lf_matrix *bias_shard, lf_matrix *a_shard, lf_matrix *b_shard)
{
    if (!a || !b || !w_shard || !bias_shard || !a_shard || !b_shard)
        return LF_ERR_NULL_POINTER;
    if ((kind != LF_TP_COLUMN && kind != LF_TP_ROW) || (layout != LF_LAYOUT_PEFT && layout != LF_LAYOUT_KN))
        return LF_ERR_INVALID_VALUE;
    const int peft = layout == LF_LAYOUT_PEFT;
    /* K, N and the rank as the full A and B give them */
    const int64_t k = peft ? a->cols : a->rows, r = peft ? a->rows : a->cols, n = peft ? b->rows : b->cols;
    if ((peft ? b->cols : b->rows) != r)
        return LF_ERR_SHAPE_MISMATCH;
    if (w && (peft ? w->rows != n || w->cols != k : w->rows != k || w->cols != n))
        return LF_ERR_SHAPE_MISMATCH;
    if (bias && (bias->rows != 1 || bias->cols != n))
        return LF_ERR_SHAPE_MISMATCH;
    int64_t begin, count;
    lf_status st = lf_tp_split(kind == LF_TP_COLUMN ? n : k, parts, index, &begin, &count);
    if (st != LF_OK)
        return st;
    if (count == 0)
        return LF_ERR_INVALID_VALUE; /* more ranks than rows or columns to share */
    const lf_matrix none = {0};
    *w_shard = none;
    *bias_shard = none;
    *a_shard = *a;
    *b_shard = *b;
    if (kind == LF_TP_COLUMN) { /* the slice of N: W's rows (PEFT) or columns (KN), likewise B */
        if (w)
            *w_shard = peft ? sub_view(w, begin, count, 0, k) : sub_view(w, 0, k, begin, count);
        if (bias)
            *bias_shard = sub_view(bias, 0, 1, begin, count);
        *b_shard = peft ? sub_view(b, begin, count, 0, r) : sub_view(b, 0, r, begin, count);
    } else { /* the slice of K: W's and A's columns (PEFT) or rows (KN) */
        if (w)
            *w_shard = peft ? sub_view(w, 0, n, begin, count) : sub_view(w, begin, count, 0, n);
        if (bias)
            *bias_shard = *bias;
        *a_shard = peft ? sub_view(a, 0, r, begin, count) : sub_view(a, begin, count, 0, r);
    }
    return LF_OK;
}

/* Measured (bench --tp's forced-chunk sweep, 2 × H100 over NVLink, NCCL 2.28, µs per call). With
 * every SM to each chunk's compute (2026-11-25, 1 / 2 / 4 / 8 chunks): o_proj M = 4096 281.4 /
 * 311.7 / 347.6 / 448.6, and as bad at M = 256 and for down_proj: the Hopper kernel is persistent,
 * so the next chunk's compute held every SM and the all-reduce beside it could not start. Leaving
 * SMs to the all-reduce (lf_tp_overlap_sms; 2026-11-26, chunks/SMs left, two calls): o_proj M = 4096
 * (K 2048 a rank) 1 chunk 244.5–245.0, 2/0 277.0–278.0, 2/16 276.1, 2/24 264.4, 2/32 229.4–229.5,
 * 2/40 229.4, 2/48 234.8, 3/32 257.3, 4/32 268.9–269.3, 8/32 429.8 (the TP base layer, cuBLAS and
 * the all-reduce one after the other: 236.5–237.1); down_proj M = 4096 (K 7168) 1 chunk 475.6–480.3,
 * 2/32 491.9–492.9, 4/32 588.4–592.4; at M = 256 every chunked run lost (o_proj 44.8 → 56.0,
 * down_proj 68.0 → 92.8). Two chunks paid where the all-reduce of half the rows takes about as long
 * as the other half's compute (o_proj: the second chunk's 256 tiles on 96 CTAs, three rounds
 * instead of two, hide the first chunk's sum); with K 7168 the compute is 3.5 times longer and
 * the rounds it loses cost more than the sum hides. That tells the two layers apart only by the
 * rank's K, and the rule must not read it: K splits unevenly (K/P or K/P + 1 a rank), so ranks on
 * either side of any threshold would issue different all-reduces and NCCL would hang. From M, N
 * and P alone two chunks at 4096 rows would trade o_proj's 16 µs for down_proj's 11–16: one chunk.
 * (The many-adapter forms were never timed in chunks: their kernels size their grids to the whole
 * GPU and would leave an all-reduce no SMs either.) Chunks stay reachable by lf_tp_comm_force_chunks
 * (tests, the bench's sweep) and by the caller's lf_tp_comm_set_row_chunks (who knows the layers and
 * sets the same on every rank), with lf_tp_overlap_sms SMs left to each all-reduce. */
int lf_tp_row_chunks(int64_t m, int64_t n, int parts)
{
    (void)m, (void)n, (void)parts;
    return 1;
}

/* NCCL runs 24 channels on two NVLink H100s (its init log), yet leaving 24 SMs gave 264 µs where
 * 32 gave 229 (sweep above): 32. */
int lf_tp_overlap_sms(void) { return 32; }

lf_status lf_tp_comm_from_nccl(lf_context *ctx, void *nccl_comm, lf_tp_comm **out)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    if (!out)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_tp_comm_from_nccl: out is NULL");
    *out = NULL;
    if (!nccl_comm)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_tp_comm_from_nccl: the NCCL communicator is NULL");
#ifdef LF_HAVE_NCCL
    if (ctx->ops->kind != LF_BACKEND_CUDA)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_tp_comm_from_nccl: NCCL needs a CUDA context, this one is %s",
                       lf_backend_name(ctx->ops->kind));
    return lf_tp_comm_from_nccl_impl(ctx, nccl_comm, out);
#else
    return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_tp_comm_from_nccl: lorafuse was built without NCCL");
#endif
}

void lf_tp_comm_destroy(lf_tp_comm *comm)
{
    if (comm)
        comm->ops->destroy(comm);
}

int lf_tp_comm_rank(const lf_tp_comm *comm) { return comm ? comm->rank : -1; }
int lf_tp_comm_size(const lf_tp_comm *comm) { return comm ? comm->size : -1; }

void lf_tp_comm_force_chunks(lf_tp_comm *comm, int chunks)
{
    comm->row_chunks = chunks > 0 ? chunks : 0;
    comm->reduce_alone = chunks > 0;
}

void lf_tp_comm_force_overlap_sms(lf_tp_comm *comm, int sms) { comm->overlap_sms = sms >= 0 ? sms : -1; }

lf_status lf_tp_comm_set_row_chunks(lf_tp_comm *comm, int chunks)
{
    if (!comm)
        return LF_ERR_NULL_POINTER;
    if (chunks < 0 || chunks > LF_TP_MAX_ROW_CHUNKS)
        return lf_fail(comm->ctx, LF_ERR_INVALID_VALUE, "lf_tp_comm_set_row_chunks: chunks is %d, not 0..%d", chunks,
                       LF_TP_MAX_ROW_CHUNKS);
    comm->row_chunks = chunks;
    return LF_OK;
}

lf_status lf_tp_comm_set_checked(lf_tp_comm *comm, int on)
{
    if (!comm)
        return LF_ERR_NULL_POINTER;
    if (on != 0 && on != 1)
        return lf_fail(comm->ctx, LF_ERR_INVALID_VALUE, "lf_tp_comm_set_checked: on is %d, not 0 or 1", on);
    comm->checked = on;
    return LF_OK;
}

/* ---- the row-parallel driver ------------------------------------------------------------------ */

/* Computes this rank's partial output for rows [r0, r0 + rows) into y_rows: beta and bias only on
 * rank 0 (first). */
typedef lf_status (*partial_fn)(lf_context *ctx, const void *arg, int64_t r0, int64_t rows, int first,
                                const lf_matrix *y_rows);

typedef enum { ROW_SINGLE, ROW_PER_TOKEN, ROW_SEGMENTS } row_form; /* segments are never chunked */

typedef struct row_args {
    row_form form;
    lf_layout layout;
    const lf_matrix *x, *w, *bias, *a, *b;
    float scale, beta;
    const lf_adapter_set *set; /* many-adapter forms */
    const int32_t *token_adapter;
    const int32_t *seg_starts, *seg_adapter;
    int64_t segments;
} row_args;

/* x's rows [r0, r0 + rows) (x itself when it is NULL or has no data: the op reports that). */
static lf_matrix x_rows(const lf_matrix *x, int64_t r0, int64_t rows)
{
    if (!x->data)
        return *x;
    return sub_view(x, r0, rows, 0, x->cols);
}

static lf_status partial_single(lf_context *ctx, const void *arg, int64_t r0, int64_t rows, int first,
                                const lf_matrix *y_rows)
{
    const row_args *g = arg;
    const lf_matrix x = g->x ? x_rows(g->x, r0, rows) : (lf_matrix){0};
    return lf_lora_forward(ctx, g->layout, g->x ? &x : NULL, g->w, first ? g->bias : NULL, g->a, g->b, g->scale,
                           first ? g->beta : 0.0f, y_rows);
}

static lf_status partial_multi(lf_context *ctx, const void *arg, int64_t r0, int64_t rows, int first,
                               const lf_matrix *y_rows)
{
    const row_args *g = arg;
    const lf_matrix x = g->x ? x_rows(g->x, r0, rows) : (lf_matrix){0};
    return lf_lora_forward_multi(ctx, g->set, g->layout, g->x ? &x : NULL, g->w, first ? g->bias : NULL,
                                 g->token_adapter ? g->token_adapter + r0 : NULL, first ? g->beta : 0.0f, y_rows);
}

static lf_status partial_segments(lf_context *ctx, const void *arg, int64_t r0, int64_t rows, int first,
                                  const lf_matrix *y_rows)
{
    const row_args *g = arg;
    (void)r0, (void)rows; /* never chunked: segments may cross chunk boundaries */
    return lf_lora_forward_segments(ctx, g->set, g->layout, g->x, g->w, first ? g->bias : NULL, g->seg_starts,
                                    g->seg_adapter, g->segments, first ? g->beta : 0.0f, y_rows);
}

/* Prefixes the message of a failure inside the op with the TP function's name. */
static lf_status name_failure(lf_context *ctx, lf_status st, const char *fn)
{
    if (st != LF_OK) {
        char inner[LF_ERROR_CAPACITY];
        snprintf(inner, sizeof inner, "%s", ctx->last_error);
        lf_fail(ctx, st, "%s: %s", fn, inner);
    }
    return st;
}

/* Checked mode: what each rank is about to do, compared across the ranks before anything is summed.
 * A rank that refused its call still takes part (with its sizes zeroed), so that the others learn
 * of it instead of waiting in an all-reduce it will never issue. */
enum { AGREE_REFUSED, AGREE_DTYPE, AGREE_M, AGREE_N, AGREE_CHUNKS, AGREE_FORM, AGREE_COUNT };

static lf_status agree_call(lf_context *ctx, lf_tp_comm *comm, lf_status local, const int64_t *call, const char *fn)
{
    int64_t mine[AGREE_COUNT] = {0}, max[AGREE_COUNT], min[AGREE_COUNT];
    mine[AGREE_REFUSED] = local != LF_OK;
    for (int i = AGREE_DTYPE; i < AGREE_COUNT && local == LF_OK; i++)
        mine[i] = call[i];
    lf_status st = comm->ops->agree(comm, mine, AGREE_COUNT, max, min);
    if (st != LF_OK)
        return local != LF_OK ? local : name_failure(ctx, st, fn);
    if (local != LF_OK)
        return local; /* the others now refuse as well; this rank's own message stands */
    if (max[AGREE_REFUSED])
        return lf_fail(ctx, LF_ERR_RANK_REFUSED, "%s: another rank refused this call (checked mode); nothing was "
                       "summed", fn);
    if (max[AGREE_DTYPE] != min[AGREE_DTYPE])
        return lf_fail(ctx, LF_ERR_DTYPE_MISMATCH, "%s: the ranks pass y of different dtypes (checked mode); nothing "
                       "was summed", fn);
    for (int i = AGREE_M; i < AGREE_COUNT; i++)
        if (max[i] != min[i])
            return lf_fail(ctx, LF_ERR_SHAPE_MISMATCH, "%s: the ranks' calls differ (checked mode; nothing was "
                           "summed): M %lld..%lld, N %lld..%lld, row chunks %lld..%lld, op form %lld..%lld", fn,
                           (long long)min[AGREE_M], (long long)max[AGREE_M], (long long)min[AGREE_N],
                           (long long)max[AGREE_N], (long long)min[AGREE_CHUNKS], (long long)max[AGREE_CHUNKS],
                           (long long)min[AGREE_FORM], (long long)max[AGREE_FORM]);
    return LF_OK;
}

/* Checked mode, after a chunk's compute and before its all-reduce: whether every rank computed it
 * (a failure inside the op, on any rank, must not leave the others waiting in the sum). */
static lf_status agree_computed(lf_context *ctx, lf_tp_comm *comm, lf_status local, int chunk, const char *fn)
{
    const int64_t mine[1] = {local != LF_OK};
    int64_t max[1], min[1];
    const lf_status st = comm->ops->agree(comm, mine, 1, max, min);
    if (local != LF_OK)
        return local;
    if (st != LF_OK)
        return name_failure(ctx, st, fn);
    if (max[0])
        return lf_fail(ctx, LF_ERR_RANK_REFUSED, "%s: another rank failed to compute row chunk %d (checked mode); "
                       "it was not summed", fn, chunk);
    return LF_OK;
}

/* Everything lf_lora_forward / _multi / _segments would check, on the whole call. */
static lf_status check_whole_call(lf_context *ctx, const lf_matrix *y, const row_args *g, const char *fn)
{
    if (!y || (y->rows > 0 && !y->data))
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "%s: y is NULL or has no data", fn);
    if (y->rows > 1 && y->stride != y->cols)
        return lf_fail(ctx, LF_ERR_BAD_STRIDE, "%s: y must be dense for the all-reduce (stride %lld, %lld columns)",
                       fn, (long long)y->stride, (long long)y->cols);
    if (g->form == ROW_SINGLE) {
        lf_lora_problem whole;
        return name_failure(ctx, lf_lora_problem_from_views(ctx, g->layout, g->x, g->w, g->bias, g->a, g->b, g->scale,
                                                            g->beta, y, &whole),
                            fn);
    }
    lf_status st = g->form == ROW_SEGMENTS ? lf_multi_segments_in_range(ctx, fn, g->segments) : LF_OK;
    lf_multi_problem whole;
    if (st == LF_OK)
        st = lf_multi_problem_from_views(ctx, fn, g->set, g->layout, g->x, g->w, g->bias, g->beta, y, &whole);
    if (st != LF_OK || whole.m == 0)
        return st;
    /* The per-token form's chunks see only their own ids, so the ids must not lie in y's rows
     * that an earlier chunk writes: the whole ids against the whole y. */
    return g->form == ROW_PER_TOKEN ? lf_multi_check_ids(ctx, fn, &whole, g->token_adapter)
                                    : lf_multi_check_segments(ctx, fn, &whole, g->seg_starts, g->seg_adapter,
                                                              g->segments);
}

static lf_status row_forward(lf_context *ctx, lf_tp_comm *comm, const lf_matrix *y, int64_t m, partial_fn partial,
                             const row_args *g, const char *fn)
{
    if (!comm)
        return ctx ? lf_fail(ctx, LF_ERR_NULL_POINTER, "%s: comm is NULL", fn) : LF_ERR_NULL_POINTER;
    if (!ctx || comm->ctx != ctx) {
        if (comm->checked) { /* tell the other ranks, through the comm's own context */
            const int64_t call[AGREE_COUNT] = {0};
            agree_call(comm->ctx, comm, LF_ERR_INVALID_VALUE, call, fn);
        }
        return ctx ? lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: comm belongs to another context", fn)
                   : LF_ERR_NULL_POINTER;
    }
    /* The whole call first, on every rank with beta and bias (only rank 0 hands them to the op): a
     * call rank 0 refuses is refused by all, before any all-reduce, and y overlapping x's rows or
     * the ids of a later chunk is seen. */
    lf_status st = check_whole_call(ctx, y, g, fn);
    if (st == LF_OK && (m < 0 || y->rows != m))
        m = 0; /* the op reports the shapes */
    int chunks = st != LF_OK || g->form == ROW_SEGMENTS ? 1
                 : comm->row_chunks > 0                  ? comm->row_chunks
                                                         : lf_tp_row_chunks(m, y->cols, comm->size);
    if (chunks > m)
        chunks = m > 0 ? (int)m : 1; /* every chunk at least one row */
    if (comm->checked) {
        const int64_t call[AGREE_COUNT] = {[AGREE_DTYPE] = st == LF_OK ? y->dtype : 0, [AGREE_M] = m,
                                           [AGREE_N] = st == LF_OK ? y->cols : 0, [AGREE_CHUNKS] = chunks,
                                           [AGREE_FORM] = g->form};
        st = agree_call(ctx, comm, st, call, fn);
    }
    if (st != LF_OK)
        return st;
    for (int c = 0; c < chunks; c++) {
        int64_t r0 = 0, rows = m;
        if (chunks > 1)
            lf_tp_split(m, chunks, c, &r0, &rows);
        const lf_matrix y_rows = y->data ? sub_view(y, r0, rows, 0, y->cols) : *y;
        st = name_failure(ctx, partial(ctx, g, r0, rows, comm->rank == 0, chunks > 1 ? &y_rows : y), fn);
        if (comm->checked)
            st = agree_computed(ctx, comm, st, c, fn);
        if (st == LF_OK && rows > 0 && (comm->size > 1 || comm->reduce_alone)) /* one rank: its partial output is the sum */
            st = name_failure(ctx, comm->ops->allreduce(comm, y_rows.data, (size_t)(rows * y->cols), y->dtype,
                                                        chunks > 1),
                              fn);
        if (st != LF_OK) {
            comm->ops->join(comm); /* order later work after what was already issued */
            return st;
        }
    }
    return comm->ops->join(comm);
}

lf_status lf_tp_row_forward(lf_context *ctx, lf_tp_comm *comm, lf_layout layout, const lf_matrix *x_p,
                            const lf_matrix *w_p, const lf_matrix *bias, const lf_matrix *a_p, const lf_matrix *b,
                            float scale, float beta, const lf_matrix *y)
{
    const row_args g = {.form = ROW_SINGLE, .layout = layout, .x = x_p, .w = w_p, .bias = bias, .a = a_p, .b = b,
                        .scale = scale, .beta = beta};
    return row_forward(ctx, comm, y, x_p ? x_p->rows : 0, partial_single, &g, "lf_tp_row_forward");
}

lf_status lf_tp_row_forward_multi(lf_context *ctx, lf_tp_comm *comm, const lf_adapter_set *set, lf_layout layout,
                                  const lf_matrix *x_p, const lf_matrix *w_p, const lf_matrix *bias,
                                  const int32_t *token_adapter, float beta, const lf_matrix *y)
{
    const row_args g = {.form = ROW_PER_TOKEN, .layout = layout, .x = x_p, .w = w_p, .bias = bias, .beta = beta,
                        .set = set, .token_adapter = token_adapter};
    /* chunked as the single-adapter form: each chunk's tokens carry their own ids */
    return row_forward(ctx, comm, y, x_p ? x_p->rows : 0, partial_multi, &g, "lf_tp_row_forward_multi");
}

lf_status lf_tp_row_forward_segments(lf_context *ctx, lf_tp_comm *comm, const lf_adapter_set *set,
                                     lf_layout layout, const lf_matrix *x_p, const lf_matrix *w_p,
                                     const lf_matrix *bias, const int32_t *seg_starts,
                                     const int32_t *seg_adapter, int64_t segments, float beta,
                                     const lf_matrix *y)
{
    const row_args g = {.form = ROW_SEGMENTS, .layout = layout, .x = x_p, .w = w_p, .bias = bias, .beta = beta,
                        .set = set, .seg_starts = seg_starts, .seg_adapter = seg_adapter, .segments = segments};
    return row_forward(ctx, comm, y, x_p ? x_p->rows : 0, partial_segments, &g, "lf_tp_row_forward_segments");
}

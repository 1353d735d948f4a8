/*
 * adapter_set.c — many adapters in one batch: the adapter set (stacked storage in the context's
 * memory, one table entry per slot) and the validation and dispatch of lf_lora_forward_multi and
 * lf_lora_forward_segments. No arithmetic happens here; the backends run lf_multi_problem.
 *
 * Views are validated by lf_lora_problem_from_views (lorafuse.c), the same checks lf_lora_forward
 * makes, on a stand-in problem: for a load, M = 0 with the adapter as a and b; for a call, the real
 * x, w, bias and y with rank-1 views of the set's storage as a and b. Its messages name
 * lf_lora_forward; rename() puts the caller's name in their place.
 */
#include "lf_internal.h"

#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

static const char LF_SINGLE_PREFIX[] = "lf_lora_forward: ";

/* Replaces lf_lora_forward's name at the start of ctx's message with fn's. */
static lf_status rename_failure(lf_context *ctx, lf_status st, const char *fn)
{
    if (st == LF_OK)
        return st;
    const size_t len = sizeof LF_SINGLE_PREFIX - 1;
    if (strncmp(ctx->last_error, LF_SINGLE_PREFIX, len) == 0) {
        char rest[LF_ERROR_CAPACITY];
        memcpy(rest, ctx->last_error + len, sizeof rest - len);
        rest[sizeof rest - len - 1] = '\0';
        lf_fail(ctx, st, "%s: %s", fn, rest);
    }
    return st;
}

static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

/* Elements from the start of slot `slot` of a stacked array with rows of ld elements. */
static size_t slot_offset(const lf_adapter_set *set, int slot, int64_t ld)
{
    return (size_t)slot * (size_t)set->max_rank * (size_t)ld;
}

/* One slot's host mirror, and the count of loaded slots beside it. */
static void mirror_slot(lf_adapter_set *set, int slot, lf_adapter_slot entry)
{
    set->loaded += (entry.rank > 0) - (set->host_slots[slot].rank > 0);
    set->host_slots[slot] = entry;
}

/* Writes one slot's table entry in the context's memory (ordered on the stream) and its mirror. */
static lf_status write_slot(lf_adapter_set *set, int slot, int32_t rank, float scale)
{
    lf_context *ctx = set->ctx;
    const lf_adapter_slot entry = {rank, scale};
    lf_status st = ctx->ops->copy(ctx, &set->slots[slot], &entry, sizeof entry, LF_COPY_HOST_TO_DEVICE);
    if (st == LF_OK)
        mirror_slot(set, slot, entry);
    return st;
}

lf_status lf_adapter_set_create(lf_context *ctx, lf_dtype dtype, int64_t k, int64_t n, int capacity,
                                int64_t max_rank, lf_adapter_set **out)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    if (!out)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_adapter_set_create: out is NULL");
    *out = NULL;
    const size_t es = lf_dtype_size(dtype);
    if (es == 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_adapter_set_create: unknown dtype %d", (int)dtype);
    if (k < 1 || n < 1)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_adapter_set_create: K (%lld) and N (%lld) must be >= 1",
                       (long long)k, (long long)n);
    if (capacity < 1 || capacity > LF_MAX_ADAPTERS)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_adapter_set_create: capacity %d is outside 1..%d", capacity,
                       LF_MAX_ADAPTERS);
    if (max_rank < 1 || max_rank > LF_MAX_RANK)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_adapter_set_create: max_rank %lld is outside 1..%d",
                       (long long)max_rank, LF_MAX_RANK);
    /* Rows padded to 16 bytes: every row of the storage starts aligned for vector loads. */
    const int64_t per16 = (int64_t)(16 / es);
    const int64_t lda = round_up(k, per16), ldb = round_up(n, per16);
    const uint64_t rows = (uint64_t)capacity * (uint64_t)max_rank; /* <= 2^20 */
    if ((uint64_t)lda > SIZE_MAX / es / rows || (uint64_t)ldb > SIZE_MAX / es / rows)
        return lf_fail(ctx, LF_ERR_OVERFLOW, "lf_adapter_set_create: %d adapters of rank %lld for %lld -> %lld "
                       "do not fit in size_t bytes", capacity, (long long)max_rank, (long long)k, (long long)n);

    lf_adapter_set *set = calloc(1, sizeof *set);
    lf_adapter_slot *mirror = calloc((size_t)capacity, sizeof *mirror);
    if (!set || !mirror) {
        free(set);
        free(mirror);
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_adapter_set_create: out of host memory");
    }
    *set = (lf_adapter_set){.ctx = ctx, .dtype = dtype, .k = k, .n = n, .max_rank = max_rank,
                            .capacity = capacity, .lda = lda, .ldb = ldb, .host_slots = mirror};
    const size_t table = (size_t)capacity * sizeof(lf_adapter_slot);
    lf_status st = ctx->ops->alloc(ctx, &set->a, (size_t)rows * (size_t)lda * es);
    if (st == LF_OK)
        st = ctx->ops->alloc(ctx, &set->b, (size_t)rows * (size_t)ldb * es);
    if (st == LF_OK)
        st = ctx->ops->alloc(ctx, (void **)&set->slots, table);
    if (st == LF_OK) /* every slot empty: the mirror is zeroed */
        st = ctx->ops->copy(ctx, set->slots, mirror, table, LF_COPY_HOST_TO_DEVICE);
    if (st == LF_OK && ctx->ops->adapter_set_init)
        st = ctx->ops->adapter_set_init(ctx, set);
    if (st != LF_OK) {
        lf_adapter_set_destroy(set);
        return st;
    }
    *out = set;
    return LF_OK;
}

void lf_adapter_set_destroy(lf_adapter_set *set)
{
    if (!set)
        return;
    lf_context *ctx = set->ctx;
    ctx->ops->synchronize(ctx); /* queued calls may still read the set */
    if (set->backend && ctx->ops->adapter_set_destroy)
        ctx->ops->adapter_set_destroy(ctx, set);
    if (set->a)
        ctx->ops->release(ctx, set->a);
    if (set->b)
        ctx->ops->release(ctx, set->b);
    if (set->slots)
        ctx->ops->release(ctx, set->slots);
    free(set->host_slots);
    free(set);
}

int64_t lf_adapter_set_rank(const lf_adapter_set *set, int slot)
{
    if (!set || slot < 0 || slot >= set->capacity)
        return 0;
    return set->host_slots[slot].rank;
}

/* Copies element (i, j) of A or B as the set stores them, in their own dtype, from a source in
 * `layout`: A row t (t < rank) holds A[t, 0..K), B row t holds B[0..N, t]. */
static void pack_rows(const lf_adapter_set *set, const lf_adapter_source *src, unsigned char *a_out,
                      unsigned char *b_out)
{
    const size_t es = lf_dtype_size(set->dtype);
    const int peft = src->layout == LF_LAYOUT_PEFT;
    const unsigned char *a = src->a, *b = src->b;
    for (int64_t t = 0; t < src->rank; t++) {
        for (int64_t kk = 0; kk < set->k; kk++) {
            const int64_t at = peft ? t * src->lda + kk : kk * src->lda + t;
            memcpy(a_out + (size_t)(t * set->lda + kk) * es, a + (size_t)at * es, es);
        }
        for (int64_t j = 0; j < set->n; j++) {
            const int64_t at = peft ? j * src->ldb + t : t * src->ldb + j;
            memcpy(b_out + (size_t)(t * set->ldb + j) * es, b + (size_t)at * es, es);
        }
    }
}

/* The host path of a load: pack into host memory, then copy (synchronous) into the slot. */
static lf_status load_from_host(lf_adapter_set *set, int slot, const lf_adapter_source *src)
{
    lf_context *ctx = set->ctx;
    const size_t es = lf_dtype_size(set->dtype);
    const size_t a_bytes = (size_t)src->rank * (size_t)set->lda * es, b_bytes = (size_t)src->rank * (size_t)set->ldb * es;
    unsigned char *staged = calloc(1, a_bytes + b_bytes);
    if (!staged)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_adapter_set_load: out of host memory (%zu bytes)",
                       a_bytes + b_bytes);
    pack_rows(set, src, staged, staged + a_bytes);
    /* Empty the slot first: should a copy fail half-way, no call reads a half-written adapter. */
    lf_status st = write_slot(set, slot, 0, 0.0f);
    if (st == LF_OK)
        st = ctx->ops->copy(ctx, (unsigned char *)set->a + slot_offset(set, slot, set->lda) * es, staged, a_bytes,
                            LF_COPY_HOST_TO_DEVICE);
    if (st == LF_OK)
        st = ctx->ops->copy(ctx, (unsigned char *)set->b + slot_offset(set, slot, set->ldb) * es, staged + a_bytes,
                            b_bytes, LF_COPY_HOST_TO_DEVICE);
    if (st == LF_OK)
        st = write_slot(set, slot, (int32_t)src->rank, src->scale);
    free(staged);
    return st;
}

lf_status lf_adapter_set_load(lf_adapter_set *set, int slot, lf_layout layout, const lf_matrix *a,
                              const lf_matrix *b, float scale, lf_copy_kind from)
{
    if (!set)
        return LF_ERR_NULL_POINTER;
    lf_context *ctx = set->ctx;
    static const char fn[] = "lf_adapter_set_load";
    if (slot < 0 || slot >= set->capacity)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: slot %d is outside 0..%d", fn, slot, set->capacity - 1);
    if (from != LF_COPY_HOST_TO_DEVICE && from != LF_COPY_DEVICE_TO_DEVICE)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: from must be LF_COPY_HOST_TO_DEVICE or "
                       "LF_COPY_DEVICE_TO_DEVICE (got %d)", fn, (int)from);
    if (a && b && a->dtype != set->dtype && lf_dtype_size(a->dtype) != 0)
        return lf_fail(ctx, LF_ERR_DTYPE_MISMATCH, "%s: a is %s but the set holds %s", fn, lf_dtype_name(a->dtype),
                       lf_dtype_name(set->dtype));
    /* An M = 0 problem: x and y span nothing, a and b get every check lf_lora_forward makes. */
    const lf_matrix x = {NULL, set->dtype, 0, set->k, set->k}, y = {NULL, set->dtype, 0, set->n, set->n};
    lf_lora_problem p;
    lf_status st = rename_failure(ctx, lf_lora_problem_from_views(ctx, layout, &x, NULL, NULL, a, b, scale, 0.0f, &y, &p), fn);
    if (st != LF_OK)
        return st;
    if (p.rank > set->max_rank)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: rank %lld is over the set's max_rank %lld", fn,
                       (long long)p.rank, (long long)set->max_rank);
    const lf_adapter_source src = {layout, p.rank, p.a, p.lda, p.b, p.ldb, scale};
    if (from == LF_COPY_DEVICE_TO_DEVICE && ctx->ops->adapter_load_device) {
        st = ctx->ops->adapter_load_device(ctx, set, slot, &src);
        if (st == LF_OK)
            mirror_slot(set, slot, (lf_adapter_slot){(int32_t)p.rank, scale});
        return st;
    }
    return load_from_host(set, slot, &src);
}

lf_status lf_adapter_set_clear(lf_adapter_set *set, int slot)
{
    if (!set)
        return LF_ERR_NULL_POINTER;
    if (slot < 0 || slot >= set->capacity)
        return lf_fail(set->ctx, LF_ERR_INVALID_VALUE, "lf_adapter_set_clear: slot %d is outside 0..%d", slot,
                       set->capacity - 1);
    return write_slot(set, slot, 0, 0.0f);
}

/* ---- calls -------------------------------------------------------------------------------------- */

/* 1 when [p, p + bytes) and y's rows overlap. */
static int overlaps_y(const void *p, size_t bytes, const lf_multi_problem *q)
{
    const uintptr_t b0 = (uintptr_t)p, b1 = b0 + bytes;
    const uintptr_t y0 = (uintptr_t)q->y;
    const uintptr_t y1 = y0 + ((size_t)(q->m - 1) * (size_t)q->ldy + (size_t)q->n) * lf_dtype_size(q->dtype);
    return b0 < y1 && y0 < b1;
}

/* lf_internal.h */
lf_status lf_multi_problem_from_views(lf_context *ctx, const char *fn, const lf_adapter_set *set,
                                     lf_layout layout, const lf_matrix *x, const lf_matrix *w,
                                     const lf_matrix *bias, float beta, const lf_matrix *y, lf_multi_problem *q)
{
    if (!set || !x || !y)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "%s: %s is NULL", fn, !set ? "set" : !x ? "x" : "y");
    if (set->ctx != ctx)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: the adapter set belongs to another context", fn);
    if (x->dtype != set->dtype && lf_dtype_size(x->dtype) != 0)
        return lf_fail(ctx, LF_ERR_DTYPE_MISMATCH, "%s: x is %s but the adapter set holds %s", fn,
                       lf_dtype_name(x->dtype), lf_dtype_name(set->dtype));
    if (x->rows > INT32_MAX) /* tokens are indexed with int32, as the segment starts are */
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "%s: %lld tokens: at most 2^31 - 1 per call", fn, (long long)x->rows);
    if (x->cols != set->k || y->cols != set->n)
        return lf_fail(ctx, LF_ERR_SHAPE_MISMATCH, "%s: x is [%lld, %lld] and y [%lld, %lld], but the adapter set "
                       "is for K = %lld, N = %lld", fn, (long long)x->rows, (long long)x->cols, (long long)y->rows,
                       (long long)y->cols, (long long)set->k, (long long)set->n);
    /* Rank-1 views of slot 0 stand in for a and b: valid by construction, and y may not overlap them. */
    const int peft = layout == LF_LAYOUT_PEFT;
    lf_matrix a = {set->a, set->dtype, peft ? 1 : set->k, peft ? set->k : 1, peft ? set->lda : 1};
    lf_matrix b = {set->b, set->dtype, peft ? set->n : 1, peft ? 1 : set->n, peft ? 1 : set->ldb};
    lf_lora_problem p;
    lf_status st = rename_failure(ctx, lf_lora_problem_from_views(ctx, layout, x, w, bias, &a, &b, 1.0f, beta, y, &p), fn);
    if (st != LF_OK)
        return st;
    *q = (lf_multi_problem){.layout = layout, .dtype = p.dtype, .m = p.m, .k = p.k, .n = p.n, .x = p.x,
                            .ldx = p.ldx, .w = p.w, .ldw = p.ldw, .bias = p.bias, .beta = beta, .y = p.y,
                            .ldy = p.ldy, .set = set};
    return LF_OK;
}

static lf_status run_multi(lf_context *ctx, const char *fn, const lf_multi_problem *q)
{
    if (!ctx->ops->lora_multi)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "%s: the %s backend has no multi-adapter op", fn,
                       lf_backend_name(ctx->ops->kind));
    return ctx->ops->lora_multi(ctx, q);
}

/* lf_internal.h */
lf_status lf_multi_check_ids(lf_context *ctx, const char *fn, const lf_multi_problem *q, const int32_t *token_adapter)
{
    if (!token_adapter)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "%s: token_adapter is NULL", fn);
    if (overlaps_y(token_adapter, (size_t)q->m * sizeof(int32_t), q))
        return lf_fail(ctx, LF_ERR_ALIASING, "%s: y overlaps token_adapter", fn);
    return LF_OK;
}

/* lf_internal.h */
lf_status lf_multi_segments_in_range(lf_context *ctx, const char *fn, int64_t segments)
{
    if (segments < 0 || segments > ((int64_t)1 << 30))
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: segments = %lld is outside 0..2^30", fn, (long long)segments);
    return LF_OK;
}

/* lf_internal.h */
lf_status lf_multi_check_segments(lf_context *ctx, const char *fn, const lf_multi_problem *q, const int32_t *seg_starts,
                                  const int32_t *seg_adapter, int64_t segments)
{
    if (!seg_starts || (segments > 0 && !seg_adapter))
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "%s: %s is NULL", fn, !seg_starts ? "seg_starts" : "seg_adapter");
    if (overlaps_y(seg_starts, (size_t)(segments + 1) * sizeof(int32_t), q) ||
        (segments > 0 && overlaps_y(seg_adapter, (size_t)segments * sizeof(int32_t), q)))
        return lf_fail(ctx, LF_ERR_ALIASING, "%s: y overlaps seg_starts or seg_adapter", fn);
    return LF_OK;
}

lf_status lf_lora_forward_multi(lf_context *ctx, const lf_adapter_set *set, lf_layout layout, const lf_matrix *x,
                                const lf_matrix *w, const lf_matrix *bias, const int32_t *token_adapter,
                                float beta, const lf_matrix *y)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    static const char fn[] = "lf_lora_forward_multi";
    lf_multi_problem q;
    lf_status st = lf_multi_problem_from_views(ctx, fn, set, layout, x, w, bias, beta, y, &q);
    if (st != LF_OK || q.m == 0)
        return st;
    if ((st = lf_multi_check_ids(ctx, fn, &q, token_adapter)) != LF_OK)
        return st;
    q.token_adapter = token_adapter;
    return run_multi(ctx, fn, &q);
}

lf_status lf_lora_forward_segments(lf_context *ctx, const lf_adapter_set *set, lf_layout layout,
                                   const lf_matrix *x, const lf_matrix *w, const lf_matrix *bias,
                                   const int32_t *seg_starts, const int32_t *seg_adapter, int64_t segments,
                                   float beta, const lf_matrix *y)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    static const char fn[] = "lf_lora_forward_segments";
    lf_status st = lf_multi_segments_in_range(ctx, fn, segments);
    if (st != LF_OK)
        return st;
    lf_multi_problem q;
    st = lf_multi_problem_from_views(ctx, fn, set, layout, x, w, bias, beta, y, &q);
    if (st != LF_OK || q.m == 0)
        return st;
    if ((st = lf_multi_check_segments(ctx, fn, &q, seg_starts, seg_adapter, segments)) != LF_OK)
        return st;
    q.seg_starts = seg_starts;
    q.seg_adapter = seg_adapter;
    q.segments = segments;
    return run_multi(ctx, fn, &q);
}

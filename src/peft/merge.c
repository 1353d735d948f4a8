/*
 * merge.c — lf_peft_merge / lf_peft_unmerge: validation of the views, then the context's backend
 * (src/cpu/lora_merge.c, src/cuda/merge.cu) does W ← W ± scale·B·A in place.
 */
#include "lf_internal.h"

#include <math.h>

/* Checks one view's dtype, shape and stride against what the merge expects, and returns the bytes it
 * spans as [*begin, *end). */
static lf_status merge_view(lf_context *ctx, const char *fn, const char *name, const lf_matrix *v, int64_t rows,
                            int64_t cols, uintptr_t *begin, uintptr_t *end)
{
    const size_t es = lf_dtype_size(v->dtype);
    if (es == 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: %s has an unknown dtype (%d)", fn, name, (int)v->dtype);
    if (v->rows != rows || v->cols != cols)
        return lf_fail(ctx, LF_ERR_SHAPE_MISMATCH, "%s: %s is [%lld, %lld], expected [%lld, %lld]", fn, name,
                       (long long)v->rows, (long long)v->cols, (long long)rows, (long long)cols);
    if (v->stride < v->cols)
        return lf_fail(ctx, LF_ERR_BAD_STRIDE, "%s: %s has stride %lld < cols %lld", fn, name, (long long)v->stride,
                       (long long)v->cols);
    if (!v->data)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "%s: %s.data is NULL", fn, name);
    const uint64_t limit = (uint64_t)SIZE_MAX / es, rows1 = (uint64_t)(rows - 1), stride = (uint64_t)v->stride;
    if ((uint64_t)cols > limit || stride > limit || (stride && rows1 > (limit - (uint64_t)cols) / stride))
        return lf_fail(ctx, LF_ERR_OVERFLOW, "%s: %s spans more bytes than size_t holds", fn, name);
    const uint64_t bytes = (rows1 * stride + (uint64_t)cols) * es;
    if (bytes > UINTPTR_MAX - (uintptr_t)v->data)
        return lf_fail(ctx, LF_ERR_OVERFLOW, "%s: %s runs past the end of the address space", fn, name);
    *begin = (uintptr_t)v->data;
    *end = *begin + (uintptr_t)bytes;
    return LF_OK;
}

static lf_status merge_signed(lf_context *ctx, const char *fn, const lf_matrix *w, const lf_matrix *a,
                              const lf_matrix *b, float scale, int fan_in_fan_out)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    if (!w || !a || !b)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "%s: %s is NULL", fn, !w ? "w" : !a ? "a" : "b");
    if (!isfinite(scale))
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: scale %g is not finite", fn, (double)scale);
    const int64_t rank = a->rows, in = a->cols, out = b->rows;
    if (rank < 1 || rank > LF_MAX_RANK)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: rank %lld (a.rows) is outside 1..%d", fn, (long long)rank,
                       LF_MAX_RANK);
    if (in < 1 || out < 1)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: in features %lld (a.cols) and out features %lld (b.rows) "
                       "must be >= 1", fn, (long long)in, (long long)out);
    if (a->dtype != b->dtype)
        return lf_fail(ctx, LF_ERR_DTYPE_MISMATCH, "%s: a is %s but b is %s", fn, lf_dtype_name(a->dtype),
                       lf_dtype_name(b->dtype));
    uintptr_t wb, we, ab, ae, bb, be;
    lf_status s;
    if ((s = merge_view(ctx, fn, "a", a, rank, in, &ab, &ae)) != LF_OK ||
        (s = merge_view(ctx, fn, "b", b, out, rank, &bb, &be)) != LF_OK ||
        (s = merge_view(ctx, fn, fan_in_fan_out ? "w (fan_in_fan_out: [in, out])" : "w", w,
                        fan_in_fan_out ? in : out, fan_in_fan_out ? out : in, &wb, &we)) != LF_OK)
        return s;
    if ((wb < ae && ab < we) || (wb < be && bb < we))
        return lf_fail(ctx, LF_ERR_ALIASING, "%s: w overlaps %s; it is written in place", fn,
                       wb < ae && ab < we ? "a" : "b");
    if (!ctx->ops->lora_merge)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "%s: the %s backend cannot merge", fn,
                       lf_backend_name(ctx->ops->kind));
    const lf_merge_problem p = {
        .w_dtype = w->dtype, .ab_dtype = a->dtype, .w_transposed = fan_in_fan_out != 0,
        .out = out, .in = in, .rank = rank,
        .w = w->data, .ldw = w->stride, .a = a->data, .lda = a->stride, .b = b->data, .ldb = b->stride,
        .scale = scale,
    };
    return ctx->ops->lora_merge(ctx, &p);
}

lf_status lf_peft_merge(lf_context *ctx, const lf_matrix *w, const lf_matrix *a, const lf_matrix *b, float scale,
                        int fan_in_fan_out)
{
    return merge_signed(ctx, "lf_peft_merge", w, a, b, scale, fan_in_fan_out);
}

/* −scale is exact, so W − s·B·A is computed with the same single rounding as the merge. */
lf_status lf_peft_unmerge(lf_context *ctx, const lf_matrix *w, const lf_matrix *a, const lf_matrix *b, float scale,
                          int fan_in_fan_out)
{
    return merge_signed(ctx, "lf_peft_unmerge", w, a, b, -scale, fan_in_fan_out);
}

/*
 * lorafuse.c — the public API's front end: contexts, status strings, argument validation, and the
 * dispatch of every call to the context's backend. No arithmetic happens here.
 */
#include "lf_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

unsigned lf_version_number(void) { return LF_VERSION_NUMBER; }

const char *lf_version_string(void)
{
#define LF_STR2(x) #x
#define LF_STR(x) LF_STR2(x)
    return LF_STR(LF_VERSION_MAJOR) "." LF_STR(LF_VERSION_MINOR) "." LF_STR(LF_VERSION_PATCH);
#undef LF_STR
#undef LF_STR2
}

static const struct {
    const char *name;
    const char *text;
} status_table[] = {
    [LF_OK] = {"LF_OK", "success"},
    [LF_ERR_NULL_POINTER] = {"LF_ERR_NULL_POINTER", "a required pointer is NULL"},
    [LF_ERR_INVALID_VALUE] = {"LF_ERR_INVALID_VALUE", "an argument is outside its allowed range"},
    [LF_ERR_SHAPE_MISMATCH] = {"LF_ERR_SHAPE_MISMATCH", "operand shapes do not agree"},
    [LF_ERR_BAD_STRIDE] = {"LF_ERR_BAD_STRIDE", "a row stride is smaller than the row length"},
    [LF_ERR_OVERFLOW] = {"LF_ERR_OVERFLOW", "a size in bytes does not fit in size_t"},
    [LF_ERR_DTYPE_MISMATCH] = {"LF_ERR_DTYPE_MISMATCH", "operands have different dtypes"},
    [LF_ERR_ALIASING] = {"LF_ERR_ALIASING", "the output overlaps an input"},
    [LF_ERR_UNSUPPORTED] = {"LF_ERR_UNSUPPORTED", "not supported by this build or backend"},
    [LF_ERR_BACKEND_UNAVAILABLE] = {"LF_ERR_BACKEND_UNAVAILABLE", "backend not built or no device"},
    [LF_ERR_OUT_OF_MEMORY] = {"LF_ERR_OUT_OF_MEMORY", "out of memory"},
    [LF_ERR_DEVICE] = {"LF_ERR_DEVICE", "the device runtime reported an error"},
    [LF_ERR_INTERNAL] = {"LF_ERR_INTERNAL", "internal error in lorafuse"},
    [LF_ERR_IO] = {"LF_ERR_IO", "a file could not be read or written"},
    [LF_ERR_BAD_FORMAT] = {"LF_ERR_BAD_FORMAT", "a file is malformed"},
    [LF_ERR_NOT_FOUND] = {"LF_ERR_NOT_FOUND", "no tensor or module of that name"},
    [LF_ERR_RANK_REFUSED] = {"LF_ERR_RANK_REFUSED", "another rank of the tensor-parallel group refused the call"},
};

static int status_known(lf_status s)
{
    return (int)s >= 0 && (size_t)s < sizeof status_table / sizeof status_table[0];
}

const char *lf_status_string(lf_status s) { return status_known(s) ? status_table[s].text : "unknown status"; }
const char *lf_status_name(lf_status s) { return status_known(s) ? status_table[s].name : "LF_UNKNOWN"; }

size_t lf_dtype_size(lf_dtype d)
{
    switch (d) {
    case LF_F32:
        return 4;
    case LF_F16:
    case LF_BF16:
        return 2;
    }
    return 0;
}

const char *lf_dtype_name(lf_dtype d)
{
    switch (d) {
    case LF_F32:
        return "f32";
    case LF_F16:
        return "f16";
    case LF_BF16:
        return "bf16";
    }
    return "invalid";
}

const char *lf_backend_name(lf_backend b)
{
    switch (b) {
    case LF_BACKEND_AUTO:
        return "auto";
    case LF_BACKEND_CPU:
        return "cpu";
    case LF_BACKEND_CUDA:
        return "cuda";
    }
    return "invalid";
}

int lf_backend_available(lf_backend b)
{
    switch (b) {
    case LF_BACKEND_AUTO:
    case LF_BACKEND_CPU:
        return 1;
    case LF_BACKEND_CUDA:
        return lf_cuda_backend_ops() != NULL && lf_cuda_device_present();
    }
    return 0;
}

lf_status lf_fail(lf_context *ctx, lf_status status, const char *fmt, ...)
{
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
        va_end(ap);
    }
    return status;
}

lf_status lf_context_create(lf_context **out, lf_backend backend)
{
    if (!out)
        return LF_ERR_NULL_POINTER;
    *out = NULL;
    const lf_backend_ops *ops;
    switch (backend) {
    case LF_BACKEND_AUTO:
        ops = lf_backend_available(LF_BACKEND_CUDA) ? lf_cuda_backend_ops() : lf_cpu_backend_ops();
        break;
    case LF_BACKEND_CPU:
        ops = lf_cpu_backend_ops();
        break;
    case LF_BACKEND_CUDA:
        if (!lf_backend_available(LF_BACKEND_CUDA))
            return LF_ERR_BACKEND_UNAVAILABLE;
        ops = lf_cuda_backend_ops();
        break;
    default:
        return LF_ERR_INVALID_VALUE;
    }
    lf_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return LF_ERR_OUT_OF_MEMORY;
    ctx->ops = ops;
    lf_status st = ops->init(ctx);
    if (st != LF_OK) {
        free(ctx);
        return st;
    }
    *out = ctx;
    return LF_OK;
}

void lf_context_destroy(lf_context *ctx)
{
    if (!ctx)
        return;
    if (ctx->workspace)
        ctx->ops->release(ctx, ctx->workspace);
    ctx->ops->destroy(ctx);
    free(ctx);
}

lf_backend lf_context_backend(const lf_context *ctx) { return ctx ? ctx->ops->kind : LF_BACKEND_AUTO; }

const char *lf_context_device_name(const lf_context *ctx) { return ctx ? ctx->device_name : "(no context)"; }

const char *lf_context_last_error(const lf_context *ctx)
{
    return ctx ? ctx->last_error : "lf_context_last_error: the context is NULL";
}

lf_status lf_context_set_threads(lf_context *ctx, int threads)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    if (threads < 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_context_set_threads: threads = %d is negative", threads);
    ctx->threads = threads;
    return LF_OK;
}

lf_status lf_context_set_stream(lf_context *ctx, void *stream)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    if (ctx->ops->kind != LF_BACKEND_CUDA)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_context_set_stream: the context runs on the %s backend, "
                       "which has no streams", lf_backend_name(ctx->ops->kind));
    ctx->stream = stream;
    return LF_OK;
}

lf_status lf_context_set_allow_tf32(lf_context *ctx, int allow)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    ctx->allow_tf32 = allow != 0;
    return LF_OK;
}

/* ---- validation ------------------------------------------------------------------------------ */

/* Checks one view against an expected shape and returns its byte extent [begin, end). */
typedef struct {
    const char *name;
    const lf_matrix *view;
    int64_t rows, cols; /* expected */
} operand;

static lf_status check_view(lf_context *ctx, const operand *o, lf_dtype dtype, uintptr_t *begin, uintptr_t *end)
{
    const lf_matrix *v = o->view;
    if (v->rows < 0 || v->cols < 0 || v->stride < 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_lora_forward: %s has a negative size "
                       "(rows %lld, cols %lld, stride %lld)", o->name, (long long)v->rows,
                       (long long)v->cols, (long long)v->stride);
    if (lf_dtype_size(v->dtype) == 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_lora_forward: %s has an unknown dtype (%d)",
                       o->name, (int)v->dtype);
    if (v->dtype != dtype)
        return lf_fail(ctx, LF_ERR_DTYPE_MISMATCH, "lf_lora_forward: %s is %s but x is %s; all operands "
                       "must share one dtype", o->name, lf_dtype_name(v->dtype), lf_dtype_name(dtype));
    if (v->rows != o->rows || v->cols != o->cols)
        return lf_fail(ctx, LF_ERR_SHAPE_MISMATCH, "lf_lora_forward: %s is [%lld, %lld], expected "
                       "[%lld, %lld]", o->name, (long long)v->rows, (long long)v->cols,
                       (long long)o->rows, (long long)o->cols);
    if (v->stride < v->cols)
        return lf_fail(ctx, LF_ERR_BAD_STRIDE, "lf_lora_forward: %s has stride %lld < cols %lld",
                       o->name, (long long)v->stride, (long long)v->cols);
    *begin = *end = (uintptr_t)v->data;
    if (v->rows == 0)
        return LF_OK; /* empty: spans no memory, data may be anything */
    if (!v->data)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_lora_forward: %s.data is NULL", o->name);
    /* Elements spanned: (rows-1)·stride + cols, in bytes, must not overflow the address space. */
    size_t esize = lf_dtype_size(v->dtype);
    uint64_t limit = (uint64_t)SIZE_MAX / esize;
    uint64_t rows1 = (uint64_t)(v->rows - 1), stride = (uint64_t)v->stride, cols = (uint64_t)v->cols;
    if (cols > limit || stride > limit || (stride != 0 && rows1 > (limit - cols) / stride))
        return lf_fail(ctx, LF_ERR_OVERFLOW, "lf_lora_forward: %s ([%lld, %lld], stride %lld) spans more "
                       "bytes than size_t holds", o->name, (long long)v->rows, (long long)v->cols,
                       (long long)v->stride);
    uint64_t bytes = (rows1 * stride + cols) * esize;
    if (bytes > UINTPTR_MAX - (uintptr_t)v->data)
        return lf_fail(ctx, LF_ERR_OVERFLOW, "lf_lora_forward: %s runs past the end of the address space",
                       o->name);
    *end = (uintptr_t)v->data + (uintptr_t)bytes;
    return LF_OK;
}

lf_status lf_lora_problem_from_views(lf_context *ctx, lf_layout layout, const lf_matrix *x,
                                     const lf_matrix *w, const lf_matrix *bias, const lf_matrix *a,
                                     const lf_matrix *b, float scale, float beta,
                                     const lf_matrix *y, lf_lora_problem *p)
{
    if (!x || !a || !b || !y)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_lora_forward: %s is NULL (only w and bias are optional)",
                       !x ? "x" : !a ? "a" : !b ? "b" : "y");
    if (layout != LF_LAYOUT_PEFT && layout != LF_LAYOUT_KN)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_lora_forward: unknown layout %d", (int)layout);
    if (!isfinite(scale) || !isfinite(beta))
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_lora_forward: scale (%g) and beta (%g) must be finite",
                       (double)scale, (double)beta);
    const int peft = layout == LF_LAYOUT_PEFT;
    const int64_t m = x->rows, k = x->cols, n = y->cols;
    const int64_t r = peft ? a->rows : a->cols;
    if (m < 0 || k < 0 || n < 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_lora_forward: negative size (M %lld, K %lld, N %lld)",
                       (long long)m, (long long)k, (long long)n);
    if (k == 0 || n == 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_lora_forward: K (%lld) and N (%lld) must be >= 1",
                       (long long)k, (long long)n);
    if (r < 1 || r > LF_MAX_RANK)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_lora_forward: rank %lld is outside 1..%d "
                       "(rank = a.%s)", (long long)r, LF_MAX_RANK, peft ? "rows" : "cols");
    if (lf_dtype_size(x->dtype) == 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_lora_forward: x has an unknown dtype (%d)", (int)x->dtype);

    operand ops[6] = {
        {"x", x, m, k},
        {"a", a, peft ? r : k, peft ? k : r},
        {"b", b, peft ? n : r, peft ? r : n},
        {"y", y, m, n},
        {"w", w, peft ? n : k, peft ? k : n},
        {"bias", bias, 1, n},
    };
    const int count = 4 + (w != NULL) + (bias != NULL);
    uintptr_t begin[6], end[6];
    for (int i = 0, j = 0; i < 6; i++) {
        if (!ops[i].view)
            continue;
        lf_status st = check_view(ctx, &ops[i], x->dtype, &begin[j], &end[j]);
        if (st != LF_OK)
            return st;
        ops[j] = ops[i];
        j++;
    }
    /* ops[0..count) now holds the present operands, y at index 3. */
    for (int i = 0; i < count; i++) {
        if (i == 3)
            continue;
        if (begin[i] < end[3] && begin[3] < end[i])
            return lf_fail(ctx, LF_ERR_ALIASING, "lf_lora_forward: y overlaps %s; the output must not "
                           "share memory with an input", ops[i].name);
    }

    *p = (lf_lora_problem){
        .layout = layout, .dtype = x->dtype, .m = m, .k = k, .n = n, .rank = r,
        .x = x->data, .ldx = x->stride,
        .w = w ? w->data : NULL, .ldw = w ? w->stride : 0,
        .bias = bias ? bias->data : NULL,
        .a = a->data, .lda = a->stride, .b = b->data, .ldb = b->stride,
        .scale = scale, .beta = beta, .y = y->data, .ldy = y->stride,
    };
    return LF_OK;
}

lf_status lf_lora_forward(lf_context *ctx, lf_layout layout, const lf_matrix *x, const lf_matrix *w,
                          const lf_matrix *bias, const lf_matrix *a, const lf_matrix *b,
                          float scale, float beta, const lf_matrix *y)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    lf_lora_problem p;
    lf_status st = lf_lora_problem_from_views(ctx, layout, x, w, bias, a, b, scale, beta, y, &p);
    if (st != LF_OK || p.m == 0)
        return st;
    const lf_plan *plan;
    st = lf_plan_get(ctx, &p, &plan);
    if (st != LF_OK)
        return st;
    return ctx->ops->lora_forward(ctx, plan, &p);
}

/* ---- memory ---------------------------------------------------------------------------------- */

lf_status lf_malloc(lf_context *ctx, void **ptr, size_t bytes)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    if (!ptr)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_malloc: ptr is NULL");
    *ptr = NULL;
    if (bytes == 0)
        return LF_OK;
    return ctx->ops->alloc(ctx, ptr, bytes);
}

lf_status lf_free(lf_context *ctx, void *ptr)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    return ptr ? ctx->ops->release(ctx, ptr) : LF_OK;
}

lf_status lf_memcpy(lf_context *ctx, void *dst, const void *src, size_t bytes, lf_copy_kind kind)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    if (kind != LF_COPY_HOST_TO_DEVICE && kind != LF_COPY_DEVICE_TO_HOST && kind != LF_COPY_DEVICE_TO_DEVICE)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_memcpy: unknown copy kind %d", (int)kind);
    if (bytes == 0)
        return LF_OK;
    if (!dst || !src)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_memcpy: %s is NULL", !dst ? "dst" : "src");
    return ctx->ops->copy(ctx, dst, src, bytes, kind);
}

lf_status lf_synchronize(lf_context *ctx)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    return ctx->ops->synchronize(ctx);
}

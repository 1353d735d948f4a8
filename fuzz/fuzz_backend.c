/*
 * fuzz_backend.c — the CPU backend as far as the parsers need it (contexts, host memory), for the
 * fuzz targets alone. The kernels stay out of the fuzz build: the parsers never reach them, and
 * their run-time ISA dispatch needs builtins Debian's clang 14 lacks.
 */
#include "lf_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lf_status fuzz_init(lf_context *ctx)
{
    snprintf(ctx->device_name, sizeof ctx->device_name, "fuzz (parsers only)");
    return LF_OK;
}

static void fuzz_destroy(lf_context *ctx) { (void)ctx; }

static lf_status fuzz_alloc(lf_context *ctx, void **ptr, size_t bytes)
{
    *ptr = malloc(bytes);
    return *ptr ? LF_OK : lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "no memory");
}

static lf_status fuzz_release(lf_context *ctx, void *ptr)
{
    (void)ctx;
    free(ptr);
    return LF_OK;
}

static lf_status fuzz_copy(lf_context *ctx, void *dst, const void *src, size_t bytes, lf_copy_kind kind)
{
    (void)ctx;
    (void)kind;
    memcpy(dst, src, bytes);
    return LF_OK;
}

static const lf_backend_ops fuzz_ops = {
    .kind = LF_BACKEND_CPU,
    .init = fuzz_init,
    .destroy = fuzz_destroy,
    .alloc = fuzz_alloc,
    .release = fuzz_release,
    .copy = fuzz_copy,
};

const lf_backend_ops *lf_cpu_backend_ops(void) { return &fuzz_ops; }

/* plan.c is not linked: nothing the fuzz targets call plans a kernel. */
lf_status lf_plan_get(lf_context *ctx, const lf_lora_problem *p, const lf_plan **plan)
{
    (void)p;
    (void)plan;
    return lf_fail(ctx, LF_ERR_UNSUPPORTED, "the fuzz build has no kernels");
}

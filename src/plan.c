/*
 * plan.c — the per-context plan cache.
 *
 * A backend's choice of implementation and blocking depends only on the plan key (op, shape, dtype,
 * layout, and the few flags that change what fits), so it is made once per key and reused, as
 * cuBLASLt plans are. The cache is a fixed ring inside the context: a lookup is a short linear scan
 * and never allocates; workspace grows only when a new plan needs more than any plan before it.
 */
#include "lf_internal.h"

#include <limits.h>
#include <string.h>

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

lf_plan_key lf_plan_key_of(const lf_lora_problem *p)
{
    const int64_t esize = (int64_t)lf_dtype_size(p->dtype);
    uint32_t flags = 0;
    if (p->w)
        flags |= LF_PLAN_HAS_W;
    if (p->bias)
        flags |= LF_PLAN_HAS_BIAS;
    if (p->beta != 0.0f)
        flags |= LF_PLAN_BETA_NONZERO;
    int all16 = aligned16(p->x) && aligned16(p->a) && aligned16(p->b) && aligned16(p->y) &&
                (p->ldx * esize) % 16 == 0 && (p->lda * esize) % 16 == 0 && (p->ldb * esize) % 16 == 0 &&
                (p->ldy * esize) % 16 == 0;
    if (p->w)
        all16 = all16 && aligned16(p->w) && (p->ldw * esize) % 16 == 0;
    if (p->bias)
        all16 = all16 && aligned16(p->bias);
    if (all16)
        flags |= LF_PLAN_ALIGNED16;
    /* One row's stride is never used: a backend passes the row length for it. */
    const int64_t ld_x = p->m > 1 ? p->ldx : 0, ld_y = p->m > 1 ? p->ldy : 0;
    if (ld_x <= INT_MAX && ld_y <= INT_MAX && p->lda <= INT_MAX && p->ldb <= INT_MAX && (!p->w || p->ldw <= INT_MAX))
        flags |= LF_PLAN_STRIDES_INT;
    lf_plan_key key;
    memset(&key, 0, sizeof key); /* keys are compared with memcmp: padding must be zero */
    key.op = LF_OP_LORA_FORWARD;
    key.dtype = p->dtype;
    key.layout = p->layout;
    key.flags = flags;
    key.m = p->m;
    key.k = p->k;
    key.n = p->n;
    key.rank = p->rank;
    return key;
}

lf_status lf_workspace_reserve(lf_context *ctx, size_t bytes)
{
    if (bytes <= ctx->workspace_bytes)
        return LF_OK;
    void *grown = NULL;
    lf_status st = ctx->ops->alloc(ctx, &grown, bytes);
    if (st != LF_OK)
        return st;
    if (ctx->workspace) {
        /* Work queued earlier may still use the old workspace (CUDA): wait before freeing it. */
        st = ctx->ops->synchronize(ctx);
        if (st == LF_OK)
            st = ctx->ops->release(ctx, ctx->workspace);
        if (st != LF_OK) {
            ctx->ops->release(ctx, grown);
            return st;
        }
    }
    ctx->workspace = grown;
    ctx->workspace_bytes = bytes;
    return LF_OK;
}

lf_status lf_plan_get(lf_context *ctx, const lf_lora_problem *p, const lf_plan **out)
{
    const lf_plan_key key = lf_plan_key_of(p);
    for (int i = 0; i < ctx->plan_count; i++) {
        if (memcmp(&ctx->plans[i].key, &key, sizeof key) == 0) {
            *out = &ctx->plans[i];
            return LF_OK;
        }
    }

    lf_plan plan;
    memset(&plan, 0, sizeof plan);
    plan.key = key;
    lf_status st = ctx->ops->plan(ctx, p, &plan);
    if (st != LF_OK)
        return st;
    if ((st = lf_workspace_reserve(ctx, plan.workspace_bytes)) != LF_OK)
        return st;

    int slot = ctx->plan_count < LF_PLAN_CACHE_SIZE ? ctx->plan_count++ : ctx->plan_next;
    if (ctx->plan_count == LF_PLAN_CACHE_SIZE)
        ctx->plan_next = (slot + 1) % LF_PLAN_CACHE_SIZE;
    ctx->plans[slot] = plan;
    ctx->plans_built++;
    *out = &ctx->plans[slot];
    return LF_OK;
}

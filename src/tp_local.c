/*
 * tp_local.c — a communicator that simulates P ranks inside one process (CPU contexts), so that the
 * tests check the row-parallel maths on any machine: each rank's all-reduces are recorded, and
 * lf_tp_local_group_finish sums them once every rank has run its layer.
 */
#include "tp_internal.h"
#include "lf_dtype.h"

#include <stdlib.h>

#define LOCAL_MAX_PENDING 64 /* all-reduces per rank between two finishes */

typedef struct pending {
    void *data;
    size_t count;
    lf_dtype dtype;
} pending;

typedef struct local_rank {
    lf_tp_comm comm;
    pending queue[LOCAL_MAX_PENDING];
    int queued;
    int overflow;
} local_rank;

struct lf_tp_local_group {
    int parts;
    local_rank *ranks;
};

static lf_status local_allreduce(lf_tp_comm *comm, void *data, size_t count, lf_dtype dtype, int overlap)
{
    (void)overlap; /* the sums happen in lf_tp_local_group_finish, after every rank's calls */
    local_rank *r = comm->impl;
    if (r->queued == LOCAL_MAX_PENDING) {
        r->overflow = 1;
        return lf_fail(comm->ctx, LF_ERR_UNSUPPORTED, "local TP group: more than %d all-reduces before a finish",
                       LOCAL_MAX_PENDING);
    }
    r->queue[r->queued++] = (pending){data, count, dtype};
    return LF_OK;
}

static lf_status local_join(lf_tp_comm *comm)
{
    (void)comm; /* the sums happen in lf_tp_local_group_finish */
    return LF_OK;
}

static void local_destroy(lf_tp_comm *comm)
{
    (void)comm; /* owned by the group */
}

static const lf_tp_comm_ops local_ops = {local_allreduce, local_join, local_destroy};

lf_status lf_tp_local_group_create(int parts, lf_tp_local_group **out)
{
    if (!out)
        return LF_ERR_NULL_POINTER;
    *out = NULL;
    if (parts < 1)
        return LF_ERR_INVALID_VALUE;
    lf_tp_local_group *g = calloc(1, sizeof *g);
    if (!g || !(g->ranks = calloc((size_t)parts, sizeof *g->ranks))) {
        free(g);
        return LF_ERR_OUT_OF_MEMORY;
    }
    g->parts = parts;
    *out = g;
    return LF_OK;
}

void lf_tp_local_group_destroy(lf_tp_local_group *group)
{
    if (group)
        free(group->ranks);
    free(group);
}

lf_status lf_tp_local_comm(lf_tp_local_group *group, lf_context *ctx, int index, lf_tp_comm **out)
{
    if (!group || !ctx || !out)
        return LF_ERR_NULL_POINTER;
    if (index < 0 || index >= group->parts)
        return LF_ERR_INVALID_VALUE;
    if (ctx->ops->kind != LF_BACKEND_CPU)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "local TP group: needs a CPU context (host memory)");
    local_rank *r = &group->ranks[index];
    r->comm = (lf_tp_comm){&local_ops, ctx, index, group->parts, r, 0};
    *out = &r->comm;
    return LF_OK;
}

lf_status lf_tp_local_group_finish(lf_tp_local_group *group)
{
    if (!group)
        return LF_ERR_NULL_POINTER;
    const local_rank *first = &group->ranks[0];
    lf_status st = LF_OK;
    for (int p = 0; p < group->parts; p++) {
        const local_rank *r = &group->ranks[p];
        if (r->overflow || r->queued != first->queued)
            st = LF_ERR_INVALID_VALUE;
        for (int q = 0; q < r->queued && st == LF_OK; q++)
            if (r->queue[q].count != first->queue[q].count || r->queue[q].dtype != first->queue[q].dtype)
                st = LF_ERR_INVALID_VALUE;
    }
    for (int q = 0; q < first->queued && st == LF_OK; q++) {
        const pending *e = &first->queue[q];
        for (size_t i = 0; i < e->count; i++) {
            float sum = 0.0f; /* in rank order: the same bits every time */
            for (int p = 0; p < group->parts; p++)
                sum += lf_load_f32(group->ranks[p].queue[q].data, e->dtype, (int64_t)i);
            for (int p = 0; p < group->parts; p++)
                lf_store_f32(group->ranks[p].queue[q].data, e->dtype, (int64_t)i, sum);
        }
    }
    for (int p = 0; p < group->parts; p++)
        group->ranks[p].queued = group->ranks[p].overflow = 0;
    return st;
}

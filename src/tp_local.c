/*
 * tp_local.c — a communicator that simulates P ranks inside one process (CPU contexts), so that the
 * tests check the row-parallel maths on any machine: each rank's all-reduces are recorded, and
 * lf_tp_local_group_finish sums them once every rank has run its layer.
 */
#include "tp_internal.h"
#include "lf_dtype.h"

#include <pthread.h>
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
    lf_tp_local_group *group;
} local_rank;

struct lf_tp_local_group {
    int parts;
    local_rank *ranks;
    /* checked mode's barrier: ranks fold their values into acc_* as they arrive; the last one
     * publishes them in res_* and opens the next round. A fast rank may arrive for round n + 1
     * before a slow one has read round n's result, but round n + 1 cannot complete (and rewrite
     * res_*) until the slow one arrives for it too, after reading. */
    pthread_mutex_t lock;
    pthread_cond_t opened;
    int arrived;
    unsigned round;
    int64_t acc_max[LF_TP_AGREE_MAX], acc_min[LF_TP_AGREE_MAX], res_max[LF_TP_AGREE_MAX], res_min[LF_TP_AGREE_MAX];
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

static lf_status local_agree(lf_tp_comm *comm, const int64_t *mine, int count, int64_t *max, int64_t *min)
{
    local_rank *r = comm->impl;
    lf_tp_local_group *g = r->group;
    if (count < 1 || count > LF_TP_AGREE_MAX)
        return lf_fail(comm->ctx, LF_ERR_INTERNAL, "local TP group: %d values to agree on", count);
    pthread_mutex_lock(&g->lock);
    const unsigned round = g->round;
    for (int i = 0; i < count; i++) {
        g->acc_max[i] = g->arrived == 0 || mine[i] > g->acc_max[i] ? mine[i] : g->acc_max[i];
        g->acc_min[i] = g->arrived == 0 || mine[i] < g->acc_min[i] ? mine[i] : g->acc_min[i];
    }
    if (++g->arrived == g->parts) {
        for (int i = 0; i < count; i++)
            g->res_max[i] = g->acc_max[i], g->res_min[i] = g->acc_min[i];
        g->arrived = 0;
        g->round++;
        pthread_cond_broadcast(&g->opened);
    }
    while (g->round == round)
        pthread_cond_wait(&g->opened, &g->lock);
    for (int i = 0; i < count; i++)
        max[i] = g->res_max[i], min[i] = g->res_min[i];
    pthread_mutex_unlock(&g->lock);
    return LF_OK;
}

static void local_destroy(lf_tp_comm *comm)
{
    (void)comm; /* owned by the group */
}

static const lf_tp_comm_ops local_ops = {local_allreduce, local_join, local_agree, local_destroy};

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
    if (pthread_mutex_init(&g->lock, NULL) != 0) {
        free(g->ranks);
        free(g);
        return LF_ERR_OUT_OF_MEMORY;
    }
    if (pthread_cond_init(&g->opened, NULL) != 0) {
        pthread_mutex_destroy(&g->lock);
        free(g->ranks);
        free(g);
        return LF_ERR_OUT_OF_MEMORY;
    }
    *out = g;
    return LF_OK;
}

void lf_tp_local_group_destroy(lf_tp_local_group *group)
{
    if (group) {
        pthread_cond_destroy(&group->opened);
        pthread_mutex_destroy(&group->lock);
        free(group->ranks);
    }
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
    r->comm = (lf_tp_comm){&local_ops, ctx, index, group->parts, r, 0, 0, -1, 0};
    r->group = group;
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

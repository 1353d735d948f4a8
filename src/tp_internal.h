/*
 * tp_internal.h — what a tensor-parallel communicator does for the row-parallel driver (src/tp.c).
 *
 * Two implementations: NCCL (src/cuda/tp_nccl.cu, when the library is built with it) and a local
 * group that simulates P ranks inside one process on the CPU backend (src/tp_local.c), which the
 * tests use to check the sharding maths without GPUs.
 */
#ifndef LF_TP_INTERNAL_H
#define LF_TP_INTERNAL_H

#include "lf_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_tp_comm_ops {
    /* Sums `count` elements at data (dtype, in ctx's memory) over the ranks, in place, after the
     * work queued so far on the context; may return before the sum is done (stream order).
     * overlap: more rows follow (row chunks), so the sum may run beside the context's work until
     * join; otherwise it runs in the context's order (no fork to join). */
    lf_status (*allreduce)(lf_tp_comm *comm, void *data, size_t count, lf_dtype dtype, int overlap);
    /* After a layer's last allreduce: work queued on the context from now on sees every sum. */
    lf_status (*join)(lf_tp_comm *comm);
    /* Checked mode: max[i] and min[i] of mine[i] over the ranks (count ≤ LF_TP_AGREE_MAX), after
     * every rank has called it; blocks the host until then. */
    lf_status (*agree)(lf_tp_comm *comm, const int64_t *mine, int count, int64_t *max, int64_t *min);
    void (*destroy)(lf_tp_comm *comm);
} lf_tp_comm_ops;

#define LF_TP_AGREE_MAX 8 /* values one agreement compares */

struct lf_tp_comm {
    const lf_tp_comm_ops *ops;
    lf_context *ctx;
    int rank, size;
    void *impl;        /* the implementation's state */
    int reduce_alone;  /* tests (lf_tp_comm_force_chunks): all-reduces with one rank too */
    int checked;       /* lf_tp_comm_set_checked */
    int overlap_sms;   /* bench: lf_tp_comm_force_overlap_sms; -1: lf_tp_overlap_sms's */
    int row_chunks;    /* lf_tp_comm_set_row_chunks or _force_chunks; 0: the plan's */
};

/* Tests only: this communicator's row layers run in `chunks` row chunks (the per-segment form in
 * one) and issue every all-reduce even with one rank, so that a single GPU runs the communicator's
 * whole path — the fork onto its stream, the all-reduces, the join — which one rank otherwise skips
 * (a sum over one rank is the identity). 0 restores the plan's choice (and clears what
 * lf_tp_comm_set_row_chunks set). */
void lf_tp_comm_force_chunks(lf_tp_comm *comm, int chunks);

/* Bench only: the SMs this communicator's chunked row layers leave to each all-reduce while the
 * next chunk computes (lf_tp_overlap_sms otherwise); a negative value restores the plan's. */
void lf_tp_comm_force_overlap_sms(lf_tp_comm *comm, int sms);
/* The NCCL communicator (src/cuda/tp_nccl.cu, built with NCCL only); ctx is a CUDA context. */
lf_status lf_tp_comm_from_nccl_impl(lf_context *ctx, void *nccl_comm, lf_tp_comm **out);

/* Row chunks of a row-parallel layer: the all-reduce of chunk i overlaps the compute of chunk
 * i + 1. A pure function of (M, N, P), the same on every rank (never of the rank's K: see tp.c). */
int lf_tp_row_chunks(int64_t m, int64_t n, int parts);
/* SMs the compute of chunk i + 1 leaves free for the all-reduce of chunk i (the persistent kernels
 * would otherwise hold every SM until they end, and the all-reduce's kernel could not start). */
int lf_tp_overlap_sms(void);

/* ---- the local group (CPU contexts, tests) ---------------------------------------------------- */

typedef struct lf_tp_local_group lf_tp_local_group;

/* A group of `parts` simulated ranks in this process. */
lf_status lf_tp_local_group_create(int parts, lf_tp_local_group **out);
void lf_tp_local_group_destroy(lf_tp_local_group *group);
/* Rank `index`'s communicator in the group, for a CPU context. Checked mode (agree) meets the
 * other ranks at a barrier: each rank then calls from its own thread. */
lf_status lf_tp_local_comm(lf_tp_local_group *group, lf_context *ctx, int index, lf_tp_comm **out);
/* Completes the all-reduces every rank has issued since the last finish: the k-th allreduce of
 * every rank is summed in fp32 in rank order, rounded once and written to every rank's buffer.
 * LF_ERR_INVALID_VALUE when the ranks issued different all-reduces (count, dtype or number). */
lf_status lf_tp_local_group_finish(lf_tp_local_group *group);

#ifdef __cplusplus
}
#endif

#endif /* LF_TP_INTERNAL_H */

/*
 * tp_nccl.cu — the NCCL communicator of the row-parallel layers (built only when NCCL is found).
 *
 * A layer cut into row chunks runs each chunk's all-reduce on a second stream that waits for the
 * chunk's compute on the context's stream, so the sum of chunk i overlaps the compute of chunk
 * i + 1; join makes the context's stream wait for the last sum. A layer of one chunk sums in the
 * context's stream: with a fork and join it had nothing to overlap, and the row layer cost 2–6 µs
 * more than the column layer of the same shape at P = 1 (bench --tp, H100, 2026-11-25). Events,
 * not host synchronization: the pattern is legal inside CUDA graph capture (the second stream joins
 * the capture through the first event). NCCL's own reduction order is fixed for a communicator, so
 * results repeat bit for bit. Checked mode's agreement (lf_tp_comm_set_checked) is one more small
 * all-reduce on the context's stream, which the host waits for.
 */
#include "common.cuh"
#include "../tp_internal.h"

#include <nccl.h>
#include <stdlib.h>

namespace {

struct nccl_state {
    lf_tp_comm comm;
    ncclComm_t nccl;
    cudaStream_t side;
    cudaEvent_t ready, done; /* compute → side stream; side stream → context stream */
    bool pending;            /* an all-reduce was issued since the last join */
    int64_t *agree_dev;      /* checked mode: [max | −min] of each value, summed by ncclMax */
    int64_t *agree_host;     /* pinned: the values going in and coming out */
};

ncclDataType_t nccl_type(lf_dtype d)
{
    return d == LF_F32 ? ncclFloat32 : d == LF_F16 ? ncclFloat16 : ncclBfloat16;
}

#define LF_NCCL_CHECK(ctx, call)                                                                     \
    do {                                                                                             \
        ncclResult_t r_ = (call);                                                                    \
        if (r_ != ncclSuccess)                                                                       \
            return lf_fail((ctx), LF_ERR_DEVICE, "%s failed: %s (%s)", #call, ncclGetErrorString(r_), \
                           ncclGetLastError(NULL));                                                  \
    } while (0)

/* A communicator with an error pending (a failed peer, ncclCommAbort) would take the collective and
 * never finish it: refuse before issuing one. */
lf_status check_healthy(nccl_state *s)
{
    ncclResult_t pending = ncclSuccess;
    LF_NCCL_CHECK(s->comm.ctx, ncclCommGetAsyncError(s->nccl, &pending));
    if (pending != ncclSuccess && pending != ncclInProgress)
        return lf_fail(s->comm.ctx, LF_ERR_DEVICE, "the NCCL communicator is in an error state: %s (%s)",
                       ncclGetErrorString(pending), ncclGetLastError(s->nccl));
    return LF_OK;
}

lf_status nccl_allreduce(lf_tp_comm *comm, void *data, size_t count, lf_dtype dtype, int overlap)
{
    nccl_state *s = static_cast<nccl_state *>(comm->impl);
    lf_context *ctx = comm->ctx;
    const lf_status st = check_healthy(s);
    if (st != LF_OK)
        return st;
    if (!overlap) { /* nothing to overlap with: the context's stream, no fork and join */
        LF_NCCL_CHECK(ctx, ncclAllReduce(data, data, count, nccl_type(dtype), ncclSum, s->nccl, lf_cuda_stream(ctx)));
        return LF_OK;
    }
    LF_CUDA_CHECK(ctx, cudaEventRecord(s->ready, lf_cuda_stream(ctx)));
    LF_CUDA_CHECK(ctx, cudaStreamWaitEvent(s->side, s->ready, 0));
    s->pending = true; /* forked: join must follow, whatever NCCL says */
    LF_NCCL_CHECK(ctx, ncclAllReduce(data, data, count, nccl_type(dtype), ncclSum, s->nccl, s->side));
    /* the next chunk's compute leaves this sum its SMs, until join */
    lf_cuda_state_of(ctx)->sm_reserve = comm->overlap_sms >= 0 ? comm->overlap_sms : lf_tp_overlap_sms();
    return LF_OK;
}

lf_status nccl_join(lf_tp_comm *comm)
{
    nccl_state *s = static_cast<nccl_state *>(comm->impl);
    lf_cuda_state_of(comm->ctx)->sm_reserve = 0;
    if (!s->pending)
        return LF_OK;
    s->pending = false;
    LF_CUDA_CHECK(comm->ctx, cudaEventRecord(s->done, s->side));
    LF_CUDA_CHECK(comm->ctx, cudaStreamWaitEvent(lf_cuda_stream(comm->ctx), s->done, 0));
    return LF_OK;
}

/* One all-reduce (ncclMax) over each value and its negation gives max and −min at once; the host
 * waits for it as NCCL advises for a blocking wait (poll the stream, watch the communicator's error)
 * so that a peer's failure ends the wait with a status. */
lf_status nccl_agree(lf_tp_comm *comm, const int64_t *mine, int count, int64_t *max, int64_t *min)
{
    nccl_state *s = static_cast<nccl_state *>(comm->impl);
    lf_context *ctx = comm->ctx;
    if (count < 1 || count > LF_TP_AGREE_MAX)
        return lf_fail(ctx, LF_ERR_INTERNAL, "checked mode: %d values to agree on", count);
    cudaStream_t st = lf_cuda_stream(ctx);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    LF_CUDA_CHECK(ctx, cudaStreamIsCapturing(st, &capture));
    if (capture != cudaStreamCaptureStatusNone)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "checked mode waits on the host for the ranks' answer, which graph "
                       "capture forbids: turn it off (lf_tp_comm_set_checked) before capturing");
    lf_status health = check_healthy(s);
    if (health != LF_OK)
        return health;
    for (int i = 0; i < count; i++)
        s->agree_host[i] = mine[i], s->agree_host[count + i] = -mine[i];
    const size_t bytes = 2 * (size_t)count * sizeof(int64_t);
    LF_CUDA_CHECK(ctx, cudaMemcpyAsync(s->agree_dev, s->agree_host, bytes, cudaMemcpyHostToDevice, st));
    LF_NCCL_CHECK(ctx, ncclAllReduce(s->agree_dev, s->agree_dev, 2 * (size_t)count, ncclInt64, ncclMax, s->nccl, st));
    LF_CUDA_CHECK(ctx, cudaMemcpyAsync(s->agree_host, s->agree_dev, bytes, cudaMemcpyDeviceToHost, st));
    cudaError_t e;
    while ((e = cudaStreamQuery(st)) == cudaErrorNotReady)
        if ((health = check_healthy(s)) != LF_OK)
            return health;
    if (e != cudaSuccess)
        return lf_fail(ctx, LF_ERR_DEVICE, "checked mode: %s", cudaGetErrorString(e));
    for (int i = 0; i < count; i++)
        max[i] = s->agree_host[i], min[i] = -s->agree_host[count + i];
    return LF_OK;
}

void nccl_destroy(lf_tp_comm *comm)
{
    nccl_state *s = static_cast<nccl_state *>(comm->impl);
    if (s->side) {
        cudaStreamSynchronize(s->side); /* its last all-reduce may still read or write y */
        cudaStreamDestroy(s->side);
    }
    if (s->ready)
        cudaEventDestroy(s->ready);
    if (s->done)
        cudaEventDestroy(s->done);
    if (s->agree_dev)
        cudaFree(s->agree_dev);
    if (s->agree_host)
        cudaFreeHost(s->agree_host);
    free(s);
}

const lf_tp_comm_ops nccl_ops = {nccl_allreduce, nccl_join, nccl_agree, nccl_destroy};

} /* namespace */

extern "C" lf_status lf_tp_comm_from_nccl_impl(lf_context *ctx, void *nccl_comm, lf_tp_comm **out)
{
    nccl_state *s = static_cast<nccl_state *>(calloc(1, sizeof(nccl_state)));
    if (!s)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_tp_comm_from_nccl: out of host memory");
    s->nccl = static_cast<ncclComm_t>(nccl_comm);
    s->comm = lf_tp_comm{&nccl_ops, ctx, 0, 0, s, 0, 0, -1, 0};
    int comm_device = -1, current = -1;
    ncclResult_t r = ncclCommUserRank(s->nccl, &s->comm.rank);
    if (r == ncclSuccess)
        r = ncclCommCount(s->nccl, &s->comm.size);
    if (r == ncclSuccess)
        r = ncclCommCuDevice(s->nccl, &comm_device);
    if (r != ncclSuccess) {
        free(s);
        return lf_fail(ctx, LF_ERR_DEVICE, "lf_tp_comm_from_nccl: not a usable NCCL communicator: %s",
                       ncclGetErrorString(r));
    }
    /* The all-reduces run on the context's buffers and streams: all three must be on one device,
     * and the handle's own stream is created on the current one. */
    const int ctx_device = lf_cuda_state_of(ctx)->device;
    if (comm_device != ctx_device || cudaGetDevice(&current) != cudaSuccess || current != ctx_device) {
        free(s);
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_tp_comm_from_nccl: the communicator is on device %d, the "
                       "context on device %d, and device %d is current: they must be one device",
                       comm_device, ctx_device, current);
    }
    cudaError_t e = cudaStreamCreateWithFlags(&s->side, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming);
    if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming);
    const size_t agree_bytes = 2 * LF_TP_AGREE_MAX * sizeof(int64_t);
    if (e == cudaSuccess)
        e = cudaMalloc(&s->agree_dev, agree_bytes);
    if (e == cudaSuccess)
        e = cudaMallocHost(&s->agree_host, agree_bytes);
    if (e != cudaSuccess) {
        nccl_destroy(&s->comm);
        return lf_fail(ctx, LF_ERR_DEVICE, "lf_tp_comm_from_nccl: %s", cudaGetErrorString(e));
    }
    *out = &s->comm;
    return LF_OK;
}

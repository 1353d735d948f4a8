/*
 * dev/cuda/lab_check.h — the standalone labs' error check: a failed CUDA call ends the lab run with
 * its file, line and CUDA's error text (a lab is a program, not the library: exiting is its answer);
 * their timer, per-launch µs by graph replay; and the streaming load the read-floor and decode
 * labs share.
 */
#ifndef LF_LAB_CHECK_H
#define LF_LAB_CHECK_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                                     \
    do {                                                                                             \
        cudaError_t e_ = (call);                                                                     \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

#ifdef __CUDACC__
/* 16 bytes read once: no L1 allocation, the whole 128-byte line fetched into L2 (the next
 * request for its other half hits there). */
static __device__ __forceinline__ uint4 ld_nc(const void *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
#endif

/* Per-launch µs by graph replay: record(ctx, i, st) issues launch i (0..launches-1, e.g. over
 * rotating buffers) into one captured graph; the best of three rounds of `replays` replays. */
typedef void (*lab_record_fn)(const void *ctx, int i, cudaStream_t st);
static inline double lab_time_graph(lab_record_fn record, const void *ctx, cudaStream_t st, int launches, int replays)
{
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < launches; ++i)
        record(ctx, i, st);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    for (int i = 0; i < 3; ++i)
        CK(cudaGraphLaunch(ge, st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double best = 1e30;
    for (int round = 0; round < 3; ++round) {
        CK(cudaEventRecord(e0, st));
        for (int i = 0; i < replays; ++i)
            CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        const double us = ms * 1e3 / ((double)replays * launches);
        best = us < best ? us : best;
    }
    CK(cudaGetLastError());
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return best;
}

#endif /* LF_LAB_CHECK_H */

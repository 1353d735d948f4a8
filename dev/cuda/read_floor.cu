/*
 * dev/cuda/read_floor.cu — the floor under the decode kernels: how fast one launch can read W.
 *
 * The decode targets ask for a fused layer at ≥ 85% of the copy bandwidth the bench measures
 * (device-to-device memcpy: bytes read + written per second). At M ≤ 16 the layer is a stream
 * of W (32 MiB for 4096², 112 MiB for 4096 → 14336), so the question this lab answers is what a
 * single graph-replayed launch that only reads W (no math, no stores) reaches on this GPU, with
 * the request patterns a GEMV can use:
 *   ld        16-byte loads into registers, U in flight per thread; each block owns a contiguous
 *             range (as a GEMV block owns rows of W)
 *   ld-nc     the same through ld.global.nc.L1::no_allocate with the 128-byte L2 prefetch hint
 *   ld-gs     ld-nc, grid-stride (consecutive blocks read consecutive vectors)
 *   bulk      one thread per block streams its range by cp.async.bulk (TMA, 1-D) into a shared
 *             ring of S chunks completing on mbarriers; all threads read each chunk from shared
 *             memory, then the slot is refilled
 *   empty     an empty kernel: the launch cost inside a graph
 *   memcpy    cudaMemcpyAsync device to device of the same size (the bench's copy bandwidth)
 * Operands rotate over 8 buffers (256 MiB or more) so that W never sits in the 50 MB L2.
 *
 *   make -C dev/cuda bin/read_floor && dev/cuda/bin/read_floor      (on the device)
 *
 * `read_floor tile` times instead the many-adapter shrink's x at 2048 tokens (16 MiB, rows of 8
 * KiB) read in the (rows × bytes) tiles a shrink block can take, beside a contiguous range a block
 * (dev/cuda/NOTES.md, twentieth session: every pattern 6.9–7.3 µs on the H100).
 * `read_floor blocks` times 56 MiB (4096 → 7168) and 32 MiB (4096²) read by 64, 112 and 128
 * blocks against one a SM, and the like at two and four a SM (block_counts).
 */
#include <cuda_runtime.h>

#include "lab_check.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ROT = 8, LAUNCHES = 24, REPLAYS = 20 };

/* A value that depends on every byte read, stored only if it matches a constant nobody chose:
 * the loads cannot be dropped and nothing is written in practice. */
static __device__ __forceinline__ void keep(unsigned acc, unsigned *sink)
{
    if (acc == 0x9e3779b9u)
        sink[blockIdx.x] = acc;
}

template <int U, bool NC, bool GRID_STRIDE>
__global__ void read_ld(const uint4 *__restrict__ w, size_t total, unsigned *sink)
{
    size_t begin, end, step;
    if (GRID_STRIDE) {
        begin = (size_t)blockIdx.x * blockDim.x + threadIdx.x, end = total, step = (size_t)gridDim.x * blockDim.x;
    } else {
        const size_t per = (total + gridDim.x - 1) / gridDim.x;
        begin = blockIdx.x * per + threadIdx.x, end = (blockIdx.x + 1) * per, step = blockDim.x;
        end = end < total ? end : total;
    }
    unsigned acc = 0;
    for (size_t i = begin; i < end; i += U * step) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const size_t j = i + u * step;
            v[u] = j < end ? (NC ? ld_nc(w + j) : w[j]) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
            acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    keep(acc, sink);
}

/* The many-adapter shrink's request pattern: block (x, y) reads rows y·R .. y·R + R - 1 of a
 * row-major matrix, bytes x·C .. x·C + C - 1 of each (rows of S bytes), U vectors a thread in
 * flight. */
template <int U>
__global__ void read_tile(const char *__restrict__ w, int row_bytes, int tile_rows, int chunk_bytes, unsigned *sink)
{
    const char *base = w + (size_t)blockIdx.y * tile_rows * row_bytes + (size_t)blockIdx.x * chunk_bytes;
    const int vpr = chunk_bytes / 16, n = tile_rows * vpr;
    unsigned acc = 0;
    for (int i = threadIdx.x; i < n; i += U * blockDim.x) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int e = i + u * blockDim.x;
            v[u] = e < n ? ld_nc((const uint4 *)(base + (size_t)(e / vpr) * row_bytes + (e % vpr) * 16))
                         : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
            acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    keep(acc, sink);
}

static __device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

template <int STAGES, int CHUNK>
__global__ void read_bulk(const char *__restrict__ w, size_t total, unsigned *sink)
{
    extern __shared__ __align__(128) char ring[];
    __shared__ __align__(8) uint64_t full[STAGES];
    /* 16-byte multiples per block (the bulk copy's unit); the last block takes the remainder */
    const size_t share = total / gridDim.x / 16 * 16, base = blockIdx.x * share;
    const size_t per = blockIdx.x + 1 == gridDim.x ? total - base : share;
    const int chunks = (int)((per + CHUNK - 1) / CHUNK);
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s)
            asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(smem_u32(&full[s])));
        asm volatile("fence.mbarrier_init.release.cluster;");
    }
    __syncthreads();
    auto issue = [&](int c) {
        const int slot = c % STAGES;
        const size_t off = (size_t)c * CHUNK;
        const uint32_t bytes = (uint32_t)(per - off < CHUNK ? per - off : CHUNK);
        const uint32_t bar = smem_u32(&full[slot]);
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes));
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                         smem_u32(ring + slot * CHUNK)),
                     "l"(w + base + off), "r"(bytes), "r"(bar)
                     : "memory");
    };
    if (threadIdx.x == 0)
        for (int c = 0; c < STAGES && c < chunks; ++c)
            issue(c);
    unsigned acc = 0;
    for (int c = 0; c < chunks; ++c) {
        const int slot = c % STAGES;
        const uint32_t parity = (c / STAGES) & 1, bar = smem_u32(&full[slot]);
        asm volatile("{\n .reg .pred p;\n wait_%=:\n mbarrier.try_wait.parity.shared.b64 p, [%0], %1;\n"
                     " @!p bra wait_%=;\n}" ::"r"(bar),
                     "r"(parity)
                     : "memory");
        const uint4 *chunk = (const uint4 *)(ring + slot * CHUNK);
        for (int i = threadIdx.x; i < CHUNK / 16; i += blockDim.x) {
            const uint4 v = chunk[i];
            acc ^= v.x ^ v.y ^ v.z ^ v.w;
        }
        __syncthreads(); /* every thread is done with the slot before it is refilled */
        if (threadIdx.x == 0 && c + STAGES < chunks)
            issue(c + STAGES);
    }
    keep(acc, sink);
}

__global__ void empty_kernel(unsigned *sink) { keep(threadIdx.x, sink); }

typedef void (*launch_fn)(const void *w, size_t bytes, unsigned *sink, cudaStream_t st);

/* Per-launch µs by graph replay: LAUNCHES launches over the rotating buffers in one graph. */
struct floor_run {
    launch_fn fn;
    void *const *bufs;
    size_t bytes;
    unsigned *sink;
};
static void record_floor(const void *ctx, int i, cudaStream_t st)
{
    const floor_run *r = (const floor_run *)ctx;
    r->fn(r->bufs[i % ROT], r->bytes, r->sink, st);
}
static double time_graph(launch_fn fn, void *const *bufs, size_t bytes, unsigned *sink, cudaStream_t st)
{
    const floor_run r = {fn, bufs, bytes, sink};
    return lab_time_graph(record_floor, &r, st, LAUNCHES, REPLAYS);
}

static int g_blocks, g_threads;

template <int U, bool NC, bool GS>
static void launch_ld(const void *w, size_t bytes, unsigned *sink, cudaStream_t st)
{
    read_ld<U, NC, GS><<<g_blocks, g_threads, 0, st>>>((const uint4 *)w, bytes / 16, sink);
}
template <int STAGES, int CHUNK>
static void launch_bulk(const void *w, size_t bytes, unsigned *sink, cudaStream_t st)
{
    read_bulk<STAGES, CHUNK><<<g_blocks, g_threads, STAGES * CHUNK, st>>>((const char *)w, bytes, sink);
}
static int g_row_bytes, g_tile_rows, g_chunk;
template <int U>
static void launch_tile(const void *w, size_t bytes, unsigned *sink, cudaStream_t st)
{
    const dim3 grid((unsigned)(g_row_bytes / g_chunk), (unsigned)(bytes / g_row_bytes / g_tile_rows));
    read_tile<U><<<grid, g_threads, 0, st>>>((const char *)w, g_row_bytes, g_tile_rows, g_chunk, sink);
}

static void launch_empty(const void *, size_t, unsigned *sink, cudaStream_t st) { empty_kernel<<<g_blocks, 32, 0, st>>>(sink); }
static void *g_dst;
static void launch_memcpy(const void *w, size_t bytes, unsigned *, cudaStream_t st)
{
    CK(cudaMemcpyAsync(g_dst, w, bytes, cudaMemcpyDeviceToDevice, st));
}

/* `read_floor tile`: x of the many-adapter delta at 2048 tokens (16 MiB, rows of 8 KiB) read in
 * the tiles a shrink block can take, beside a contiguous range a block. */
static void tile_patterns(void *const *bufs, unsigned *sink, cudaStream_t st, int sms)
{
    const size_t bytes = (size_t)16 << 20;
    g_blocks = sms, g_threads = 32;
    const double copy_us = time_graph(launch_memcpy, bufs, bytes, sink, st);
    const double copy_gbs = 2.0 * bytes / (copy_us * 1e3);
    printf("\n== 16 MiB, rows of 8 KiB: copy %.1f GB/s; read floor at that rate %.2f us\n", copy_gbs,
           bytes / (copy_gbs * 1e3));
    struct tile {
        int rows, chunk, threads;
        launch_fn fn;
        const char *u;
    } tiles[] = {
        {64, 1024, 256, launch_tile<16>, "U16"}, {64, 1024, 256, launch_tile<4>, "U4"},
        {64, 512, 256, launch_tile<8>, "U8"},    {16, 4096, 256, launch_tile<16>, "U16"},
        {8, 8192, 256, launch_tile<16>, "U16"},  {32, 2048, 256, launch_tile<16>, "U16"},
        {64, 1024, 512, launch_tile<8>, "U8"},
    };
    g_row_bytes = 8192;
    for (const tile &t : tiles) {
        g_tile_rows = t.rows, g_chunk = t.chunk, g_threads = t.threads;
        const double us = time_graph(t.fn, bufs, bytes, sink, st);
        printf("tile %2d rows x %4d B, %3d threads, %s, %4zu blocks  %8.2f us  %7.1f GB/s  %5.1f%% of copy\n",
               t.rows, t.chunk, t.threads, t.u, bytes / 8192 / t.rows * (8192 / t.chunk), us, bytes / (us * 1e3),
               100.0 * bytes / (us * 1e3) / copy_gbs);
    }
    g_blocks = 2 * sms, g_threads = 256;
    const double us = time_graph(launch_ld<8, true, true>, bufs, bytes, sink, st);
    printf("contiguous ld-gs U8, 2/SM x 256               %8.2f us  %7.1f GB/s  %5.1f%% of copy\n", us,
           bytes / (us * 1e3), 100.0 * bytes / (us * 1e3) / copy_gbs);
}

/* `read_floor blocks`: W of one 4096 → 7168 layer (56 MiB, more than L2), then of 4096 → 4096
 * (32 MiB), read by as many blocks as a decode form has tiles (64 or 112 of 64 rows, 128 of 32)
 * and by one or two a SM, each block a contiguous equal range: whether idle SMs, or HBM itself,
 * set the time of a layer whose tiles leave SMs without work (dev/cuda/NOTES.md, twenty-ninth
 * session). */
static void block_counts(void *const *bufs, unsigned *sink, cudaStream_t st, int sms, size_t bytes)
{
    g_blocks = sms, g_threads = 32;
    const double copy_us = time_graph(launch_memcpy, bufs, bytes, sink, st);
    const double copy_gbs = 2.0 * bytes / (copy_us * 1e3);
    printf("\n== %.1f MiB: copy %.1f GB/s; read floor at that rate %.2f us\n", bytes / 1048576.0, copy_gbs,
           bytes / (copy_gbs * 1e3));
    struct count {
        const char *name;
        launch_fn fn;
        int blocks, threads;
    } counts[] = {
        {"bulk 8x16K", launch_bulk<8, 16384>, 64, 256},  {"bulk 8x16K", launch_bulk<8, 16384>, 112, 256},
        {"bulk 8x16K", launch_bulk<8, 16384>, 128, 256}, {"bulk 8x16K", launch_bulk<8, 16384>, sms, 256},
        {"bulk 6x16K", launch_bulk<6, 16384>, 224, 256}, {"bulk 6x16K", launch_bulk<6, 16384>, 2 * sms, 256},
        {"ld-nc U8", launch_ld<8, true, false>, 224, 256}, {"ld-nc U8", launch_ld<8, true, false>, 2 * sms, 256},
        {"ld-nc U8", launch_ld<8, true, false>, 448, 256}, {"ld-nc U8", launch_ld<8, true, false>, 4 * sms, 256},
    };
    for (const count &c : counts) {
        g_blocks = c.blocks, g_threads = c.threads;
        const double us = time_graph(c.fn, bufs, bytes, sink, st);
        printf("%-12s %4d blocks x %3d  %8.2f us  %7.1f GB/s  %5.1f%% of copy\n", c.name, c.blocks, c.threads, us,
               bytes / (us * 1e3), 100.0 * bytes / (us * 1e3) / copy_gbs);
    }
}

template <int STAGES, int CHUNK>
static void allow_bulk_smem(void)
{
    CK(cudaFuncSetAttribute(read_bulk<STAGES, CHUNK>, cudaFuncAttributeMaxDynamicSharedMemorySize, STAGES * CHUNK));
}

int main(int argc, char **argv)
{
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, sms);
    allow_bulk_smem<8, 16384>();
    allow_bulk_smem<6, 32768>();
    allow_bulk_smem<6, 16384>();
    const size_t sizes[] = {(size_t)32 << 20, (size_t)112 << 20}; /* 4096² and 4096 × 14336, bf16 */
    const size_t max_bytes = sizes[1];
    void *bufs[ROT];
    for (int i = 0; i < ROT; ++i) {
        CK(cudaMalloc(&bufs[i], max_bytes));
        CK(cudaMemset(bufs[i], i + 1, max_bytes));
    }
    unsigned *sink;
    CK(cudaMalloc(&sink, 1 << 20));
    CK(cudaMalloc(&g_dst, max_bytes));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));

    struct variant {
        const char *name;
        launch_fn fn;
        int blocks_per_sm, threads;
    } variants[] = {
        {"empty", launch_empty, 1, 32},
        {"ld U8", launch_ld<8, false, false>, 2, 256},
        {"ld-nc U8", launch_ld<8, true, false>, 1, 256},
        {"ld-nc U8", launch_ld<8, true, false>, 2, 256},
        {"ld-nc U8", launch_ld<8, true, false>, 4, 256},
        {"ld-nc U4", launch_ld<4, true, false>, 2, 512},
        {"ld-nc U4", launch_ld<4, true, false>, 4, 512},
        {"ld-nc U16", launch_ld<16, true, false>, 2, 256},
        {"ld-gs U8", launch_ld<8, true, true>, 2, 256},
        {"ld-gs U8", launch_ld<8, true, true>, 4, 256},
        {"bulk 8x16K", launch_bulk<8, 16384>, 1, 256},
        {"bulk 6x32K", launch_bulk<6, 32768>, 1, 256},
        {"bulk 6x16K", launch_bulk<6, 16384>, 2, 256},
        {"memcpy", launch_memcpy, 0, 0},
    };
    if (argc > 1 && strcmp(argv[1], "tile") == 0) {
        tile_patterns(bufs, sink, st, sms);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "blocks") == 0) {
        block_counts(bufs, sink, st, sms, (size_t)4096 * 7168 * 2);
        block_counts(bufs, sink, st, sms, (size_t)4096 * 4096 * 2);
        return 0;
    }
    const int nv = sizeof variants / sizeof variants[0];
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
        const size_t bytes = sizes[s];
        g_blocks = sms, g_threads = 32;
        const double copy_us = time_graph(launch_memcpy, bufs, bytes, sink, st);
        const double copy_gbs = 2.0 * bytes / (copy_us * 1e3);
        printf("\n== %zu MiB: copy %.1f GB/s (memcpy %.2f us); read floor at that rate %.2f us, 85%%: %.2f us\n",
               bytes >> 20, copy_gbs, copy_us, bytes / (copy_gbs * 1e3), bytes / (0.85 * copy_gbs * 1e3));
        for (int v = 0; v < nv; ++v) {
            g_blocks = variants[v].blocks_per_sm * sms, g_threads = variants[v].threads;
            const double us = time_graph(variants[v].fn, bufs, bytes, sink, st);
            const double gbs = (variants[v].fn == launch_memcpy ? 2.0 : 1.0) * bytes / (us * 1e3);
            printf("%-12s %2d/SM x %4d  %8.2f us  %7.1f GB/s  %5.1f%% of copy\n", variants[v].name,
                   variants[v].blocks_per_sm, variants[v].threads, us, gbs, 100.0 * gbs / copy_gbs);
        }
    }
    return 0;
}

/*
 * dev/cuda/decode_ld.cu — lab: the decode layer (M ≤ 16 tokens, bf16, r ≤ 16) with W streamed by
 * plain 16-byte loads from many warps, for issue 3's last point (≥ 85% of the copy bandwidth at
 * 1 and 16 × 4096 → 4096, i.e. ≤ ~13.2 µs).
 *
 * Why (dev/cuda/NOTES.md, "Read floor"): a launch that only reads 32 MiB takes 12.3–12.6 µs with
 * 16-byte ld.global.nc from ~1024 threads an SM, but 14.1 with a one-CTA TMA ring, and the library's
 * decode form (a TMA ring) sits at 14.0 / 14.7. Here a persistent grid of BPS blocks an SM (WARPS
 * warps each) owns 16-row tiles of W, each over all of K; warp w takes the tile's 32-wide K steps w, w + WARPS, ...
 * (so a block's warps walk K side by side and every SM stays in step along K), each lane holds D
 * steps of its two 16-byte W chunks (rows g and g + 8) in registers ahead of use, across tile ends,
 * and feeds them to mma.sync with the decode kernels' K permutation (mma_sync.cuh: decode_step);
 * x sits in shared memory once per block. At a tile's end the warps' partials meet in shared memory
 * (fixed order) and a quarter of the threads finish the tile (bias, beta·y, s·T·Bᵀ, one rounding),
 * their inputs loaded at the tile's start, while the loads already issued keep W streaming.
 * T = x·Aᵀ (t_mode): s·T given (what the stream costs without T); every block streams A's 16 rows
 * over all K first (the A tile); T workers (the lowest blocks) stream A's K slices and store them
 * tagged with the launch's epoch, the other blocks checking the tags at their tile's end; or the
 * same with a control warp per block waiting for them. (T shared over thread block clusters was
 * measured and dropped: NOTES.) The library's kernel (src/cuda/lora_stream.cu) came out of this
 * lab and is timed beside its variants as "library"; its many-adapter form (lf_stream_multi_launch,
 * 1–16 tokens, L adapters of ranks 1–16, each token's slot drawn at random) is checked against a
 * double reference on five shapes and timed as "library multi" beside cuBLAS's base GEMM.
 * PDL: W is loaded before griddepcontrol.wait. dev/cuda/NOTES.md, "Sixteenth session" and
 * "Seventeenth session", has the runs.
 *
 *   make -C dev/cuda decode-ld && dev/cuda/bin/decode_ld      (on the device)
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda/heuristics.h" /* the library kernel's rules */
#include "cuda/launch.cuh"
#include "cuda/lora_stream.cuh" /* the library's kernel, timed beside the lab's as "library" */
#include "cuda/mma_sync.cuh"
#include "lab_check.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef __nv_bfloat16 bf16;
enum { ROT = 8, LAUNCHES = 24, REPLAYS = 20, MAX_R = 16, X_PAD = 64, MAX_TW = 4 };

struct dl_params {
    int m, n, k, r;
    const bf16 *x, *w, *a, *b, *bias;
    bf16 *y;
    float scale, beta;
    const float *t_given; /* s·T [m][MAX_R] or NULL: the A tile */
    int t_workers;        /* > 0: blocks 0..t_workers-1 stream A's K slices into part, the rest wait on ctl */
    unsigned long long *part; /* [t_workers][8·NT][MAX_R] pairs (value bits, epoch tag) */
    unsigned *ctl;        /* the epoch word and the T workers' flags (epoch_of) */
    unsigned long long *trace; /* NULL, or per block: %globaltimer at 4 points (the lab's timeline) */
    int xs_stride;        /* bytes of a token's row of x in shared memory */
};

/* How a block gets s·T: given (p.t_given), its own A tile over all K, or from the T workers. */
enum t_mode { T_GIVEN, T_A_TILE, T_WORKERS, T_CONTROL };

template <int NT, int WARPS, int TM> struct dl_shape {
    enum {
        RED_FLOATS = 2 * WARPS * NT * 4 * 32,
        T_FLOATS = 8 * NT * MAX_R,
        PART_FLOATS = TM >= T_WORKERS ? MAX_TW * 8 * NT * MAX_R : 0, /* T workers' slices, copied in */
        B_BYTES = 2 * 16 * MAX_R * 2,
        FIXED_BYTES = (RED_FLOATS + T_FLOATS + PART_FLOATS) * 4 + B_BYTES
    };
};

static __device__ __forceinline__ void lab_cp_async16(void *smem, const void *gmem, uint32_t src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"((uint32_t)__cvta_generic_to_shared(smem)),
                 "l"(gmem), "r"(src_bytes)
                 : "memory");
}

/* The launch's epoch without a count at exit (T_WORKERS). ctl[0..1] is one 64-bit word: the epoch
 * above, this launch's arrivals below. Every block takes a ticket after its PDL wait (so after
 * every ticket of the launch before); the last to arrive rolls the word to (epoch + 1, 0). A T
 * worker stores each value of its slice with the tag epoch + 1 in one 8-byte store; a W block
 * reads each pair until its tag is its epoch + 1: one round trip, no flag, nothing reset, nothing
 * waiting at exit. */
static __device__ __forceinline__ unsigned long long take_ticket(unsigned *ctl)
{
    return atomicAdd((unsigned long long *)ctl, 1ull);
}
static __device__ __forceinline__ unsigned epoch_of(unsigned *ctl, unsigned long long ticket)
{
    if ((unsigned)ticket + 1u == gridDim.x)
        atomicAdd((unsigned long long *)ctl, (1ull << 32) - gridDim.x);
    return (unsigned)(ticket >> 32);
}

static __device__ __forceinline__ void stamp(const dl_params &p, int k)
{
#ifdef DL_TRACE
    if (p.trace && threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        p.trace[blockIdx.x * 4 + k] = t;
    }
#else
    (void)p, (void)k;
#endif
}

/* A T worker: s·T's partial over its tw-th of K (A's rows and x straight from global memory,
 * every load of a warp issued before its MMAs), its warps' parts summed in a fixed order. */
template <int NT, int WARPS>
__device__ void t_slice(const dl_params &p, float *red)
{
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const int steps = (p.k + 31) / 32, tw = p.t_workers, per = (steps + tw - 1) / tw;
    const int lo = min(steps, (int)blockIdx.x * per), cnt = min(steps, lo + per) - lo;
    stamp(p, 0);
    lf_pdl_wait();
    stamp(p, 1);
    unsigned long long ticket = 0;
    if (threadIdx.x == 0)
        ticket = take_ticket(p.ctl);
    float acc[1][NT][4] = {};
    for (int j = warp; j < cnt; j += WARPS) {
        const int kb = 32 * (lo + j) + 8 * q;
        const bool kin = kb < p.k;
        uint4 wv[1][2], xv[NT];
        wv[0][0] = kin && g < p.r ? ld_nc(p.a + (int64_t)g * p.k + kb) : make_uint4(0, 0, 0, 0);
        wv[0][1] = kin && g + 8 < p.r ? ld_nc(p.a + (int64_t)(g + 8) * p.k + kb) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
            xv[nt] = kin && nt * 8 + g < p.m ? *(const uint4 *)(p.x + (int64_t)(nt * 8 + g) * p.k + kb)
                                             : make_uint4(0, 0, 0, 0);
        decode_step<bf16, NT, 1>(acc, wv, xv);
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int c = 0; c < 4; c++)
            red[((warp * NT + nt) * 4 + c) * 32 + lane] = acc[0][nt][c];
    __syncthreads();
    const int rho = threadIdx.x % 16, tau = threadIdx.x / 16; /* rank rho, token tau */
    if (threadIdx.x < 16 * 8 * NT) {
        float s = 0.0f;
        for (int w = 0; w < WARPS; w++)
            s += red[((w * NT + tau / 8) * 4 + (rho / 8) * 2 + tau % 2) * 32 + (rho % 8) * 4 + (tau % 8) / 2];
        red[WARPS * NT * 4 * 32 + threadIdx.x] = s;
    }
    __shared__ unsigned tag;
    if (threadIdx.x == 0)
        tag = epoch_of(p.ctl, ticket) + 1u;
    __syncthreads();
    if (threadIdx.x < 16 * 8 * NT)
        *(volatile unsigned long long *)(p.part + ((int)blockIdx.x * 8 * NT + tau) * MAX_R + rho) =
            (unsigned long long)tag << 32 | __float_as_uint(red[WARPS * NT * 4 * 32 + threadIdx.x]);
    stamp(p, 2);
}

/* XR: x is not staged whole; each lane copies (cp.async) the x chunks of each item it loads into
 * its warp's ring of D slots in shared memory, beside its W loads, so x's reads spread over the
 * stream instead of a burst at the start, and no register holds them. */
template <int NT, int WARPS, int D, int BPS, int TM, bool XR>
__global__ void __launch_bounds__(WARPS * 32, BPS) decode_ld(dl_params p)
{
    using shape = dl_shape<NT, WARPS, TM>;
    extern __shared__ __align__(16) unsigned char smem[];
    float *red = (float *)smem;                                 /* [2][WARPS][NT][4][32] */
    float *t_s = red + shape::RED_FLOATS;                       /* s·T [8·NT][MAX_R] */
    float *t_part = t_s + shape::T_FLOATS;                      /* T_WORKERS: [tw][8·NT][MAX_R] */
    bf16 *b_s = (bf16 *)(t_part + shape::PART_FLOATS);          /* the tile's B rows, [2][16·r] by parity */
    unsigned char *x_s = (unsigned char *)b_s + shape::B_BYTES; /* [m][xs_stride] */
    lf_pdl_release();
    /* T_CONTROL: T workers as for T_WORKERS, and in every W block its last warp only takes the
     * ticket and waits for T's slices, while the other SW warps stream W */
    constexpr bool WORKERS = TM == T_WORKERS || TM == T_CONTROL;
    constexpr int SW = TM == T_CONTROL ? WARPS - 1 : WARPS; /* warps that stream W */
    const int tw = WORKERS ? p.t_workers : 0;
    if (WORKERS && (int)blockIdx.x < tw) {
        t_slice<NT, WARPS>(p, red);
        return;
    }

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const int steps = (p.k + 31) / 32, w_tiles = (p.n + 15) / 16;
    const int wb = (int)blockIdx.x - tw, wg = (int)gridDim.x - tw; /* this block among the W blocks */
    const int first = TM == T_A_TILE ? -1 : 0;                      /* tile −1: A's rows */
    const int last = wb < w_tiles ? (w_tiles - 1 - wb) / wg + 1 : 0; /* tiles [first, last) */
    const int spw = warp < min(steps, SW) ? (steps - 1 - warp) / SW + 1 : 0; /* this warp's K steps of a tile */

    int f_ti = first, f_j = 0; /* the next item to load */
    auto fetch = [&](uint4(&dst)[2]) {
        if (f_ti < last && spw > 0) {
            const int n0 = (wb + f_ti * wg) * 16;
            const bf16 *base = f_ti < 0 ? p.a : p.w + (int64_t)n0 * p.k;
            const int valid = f_ti < 0 ? p.r : p.n - n0;
            const int kb = 32 * (warp + f_j * SW) + 8 * q;
            const bool kin = kb < p.k;
            dst[0] = kin && g < valid ? ld_nc(base + (int64_t)g * p.k + kb) : make_uint4(0, 0, 0, 0);
            dst[1] = kin && g + 8 < valid ? ld_nc(base + (int64_t)(g + 8) * p.k + kb) : make_uint4(0, 0, 0, 0);
            if (++f_j == spw) {
                f_j = 0;
                f_ti++;
            }
        }
    };
    uint4 *x_ring = (uint4 *)x_s + (size_t)warp * D * NT * 32 + lane; /* XR: [warp][slot][nt][lane] */
    int xf_ti = first, xf_j = 0;
    auto fetch_x = [&](int slot) {
        if (XR && xf_ti < last && spw > 0) {
            const int kb = 32 * (warp + xf_j * SW) + 8 * q;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const int tok = nt * 8 + g;
                const bool ok = tok < p.m && kb < p.k;
                lab_cp_async16(x_ring + (slot * NT + nt) * 32, ok ? p.x + (int64_t)tok * p.k + kb : p.x, ok ? 16 : 0);
            }
            if (++xf_j == spw) {
                xf_j = 0;
                xf_ti++;
            }
        }
        if (XR)
            asm volatile("cp.async.commit_group;" ::: "memory");
    };
    uint4 wr[D][2];
    stamp(p, 0);
#pragma unroll
    for (int u = 0; u < D; u++)
        fetch(wr[u]);
    lf_pdl_wait(); /* x, y and (in a chain of layers) T come from the kernels before */
#pragma unroll
    for (int u = 0; u < D; u++)
        fetch_x(u);
    stamp(p, 1);
    __shared__ unsigned w_tag;
    unsigned long long ticket = 0; /* T_WORKERS: its round trip beside x's, its epoch kept in shared memory */
    if (TM == T_WORKERS && threadIdx.x == 0)
        ticket = take_ticket(p.ctl);

    const int kpad8 = steps * 4; /* 8-element chunks of a padded row */
    for (int i = threadIdx.x; !XR && i < p.m * kpad8; i += blockDim.x) {
        const int row = i / kpad8, k0 = i % kpad8 * 8;
        const uint4 v = k0 < p.k ? *(const uint4 *)(p.x + (int64_t)row * p.k + k0) : make_uint4(0, 0, 0, 0);
        *(uint4 *)(x_s + row * p.xs_stride + 2 * k0) = v;
    }
    if (TM == T_GIVEN)
        for (int i = threadIdx.x; i < 8 * NT * MAX_R; i += blockDim.x)
            t_s[i] = i / MAX_R < p.m ? p.t_given[i] : 0.0f;

    /* the finishing threads: output (row rho, token tau) of a tile; its inputs loaded at the tile's start */
    const int th = threadIdx.x, rho = th % 16, tau = th / 16;
    const bool finisher = th < 16 * 8 * NT;
    const int f_lane = (rho % 8) * 4 + (tau % 8) / 2, f_c = (rho / 8) * 2 + tau % 2, f_nt = tau / 8;
    float e_bias = 0.0f, e_old = 0.0f;
    /* B's rows of a W tile are 16·r contiguous elements (32·r bytes, 16-byte aligned): the first
     * warp copies them into b_s[ti & 1] asynchronously, waited for before the tile's barrier */
    auto load_epilogue = [&](int ti) {
        if (ti < 0 || ti >= last)
            return;
        const int n0 = (wb + ti * wg) * 16;
        if (warp == 0) {
            const int bytes = min(16, p.n - n0) * p.r * 2;
            for (int c = lane; c * 16 < bytes; c += 32)
                lab_cp_async16((char *)(b_s + (ti & 1) * 16 * MAX_R) + 16 * c, (const char *)(p.b + (int64_t)n0 * p.r) + 16 * c,
                           min(16, bytes - 16 * c));
            asm volatile("cp.async.commit_group;" ::: "memory");
        }
        const int n = n0 + rho;
        if (!finisher || n >= p.n || tau >= p.m)
            return;
        e_bias = p.bias ? __bfloat162float(p.bias[n]) : 0.0f;
        e_old = p.beta != 0.0f ? __bfloat162float(p.y[(int64_t)tau * p.n + n]) : 0.0f;
    };
    load_epilogue(first);
    if (TM == T_WORKERS && threadIdx.x == 0)
        w_tag = epoch_of(p.ctl, ticket) + 1u;
    __syncthreads();

    constexpr int STREAM_THREADS = SW * 32;
    if (TM == T_CONTROL && warp == SW) { /* the control warp: ticket, then T's slices into t_s */
        unsigned e = 0;
        if (lane == 0)
            e = epoch_of(p.ctl, take_ticket(p.ctl)) + 1u;
        e = __shfl_sync(0xffffffffu, e, 0);
        const int pairs = tw * 8 * NT * MAX_R;
        for (int i = lane; i < pairs && last > 0; i += 32) {
            unsigned long long pair = *(volatile const unsigned long long *)(p.part + i);
            while ((unsigned)(pair >> 32) != e) {
                __nanosleep(256);
                pair = *(volatile const unsigned long long *)(p.part + i);
            }
            t_part[i] = __uint_as_float((unsigned)pair);
        }
        __syncwarp();
        for (int i = lane; i < 8 * NT * MAX_R; i += 32) {
            float t = 0.0f;
            for (int c = 0; c < tw; c++)
                t += t_part[c * 8 * NT * MAX_R + i];
            t_s[i] = p.scale * t;
        }
        if (last > 0) /* t_s is ready for the first epilogue */
            asm volatile("bar.arrive 2, %0;" ::"n"(WARPS * 32) : "memory");
        return;
    }
    /* the streaming warps' barrier: all threads, or all but the control warp */
    auto stream_sync = [&]() {
        if (TM == T_CONTROL)
            asm volatile("bar.sync 1, %0;" ::"n"(STREAM_THREADS) : "memory");
        else
            __syncthreads();
    };

    /* T_WORKERS: this thread's pair of the slices, loaded two items before its first tile's end */
    const int pairs = tw * 8 * NT * MAX_R;
    unsigned long long pair = 0;
    float acc[1][NT][4] = {};
    auto tile_end = [&](int ti) {
        if (ti == 0)
            stamp(p, 2);
        float *buf = red + (ti & 1) * WARPS * NT * 4 * 32;
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                buf[((warp * NT + nt) * 4 + c) * 32 + lane] = acc[0][nt][c];
                acc[0][nt][c] = 0.0f;
            }
        if (warp == 0)
            asm volatile("cp.async.wait_all;" ::: "memory");
        if (TM == T_WORKERS && ti == 0 && spw < 2 && (int)threadIdx.x < pairs)
            pair = *(volatile const unsigned long long *)(p.part + threadIdx.x);
        stream_sync();
        if (TM == T_CONTROL && ti == 0) /* the control warp has put s·T in t_s */
            asm volatile("bar.sync 2, %0;" ::"n"(WARPS * 32) : "memory");
        if (ti == 0 && warp == 0)
            stamp(p, 3);
        if (TM == T_WORKERS && ti == 0) { /* the slices, summed in slice order */
            for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
                if (i != (int)threadIdx.x)
                    pair = *(volatile const unsigned long long *)(p.part + i);
                while ((unsigned)(pair >> 32) != w_tag)
                    pair = *(volatile const unsigned long long *)(p.part + i);
                t_part[i] = __uint_as_float((unsigned)pair);
            }
            __syncthreads();
            for (int i = threadIdx.x; i < 8 * NT * MAX_R; i += blockDim.x) {
                float t = 0.0f;
                for (int c = 0; c < tw; c++)
                    t += t_part[c * 8 * NT * MAX_R + i];
                t_s[i] = p.scale * t;
            }
            __syncthreads();
        }
        if (finisher) {
            float s = 0.0f;
            for (int w = 0; w < SW; w++)
                s += buf[((w * NT + f_nt) * 4 + f_c) * 32 + f_lane];
            if (ti < 0) {
                t_s[tau * MAX_R + rho] = p.scale * s; /* rho is the rank here; rows past r read 0 */
            } else {
                const int n = (wb + ti * wg) * 16 + rho;
                if (n < p.n && tau < p.m) {
                    const bf16 *brow = b_s + (ti & 1) * 16 * MAX_R + rho * p.r;
                    float l = 0.0f;
                    for (int j = 0; j < p.r; j++)
                        l = fmaf(__bfloat162float(brow[j]), t_s[tau * MAX_R + j], l);
                    p.y[(int64_t)tau * p.n + n] = __float2bfloat16_rn(s + l + e_bias + p.beta * e_old);
                }
            }
        }
        load_epilogue(ti + 1);
    };

    int c_ti = first, c_j = 0;
    while (c_ti < last) {
#pragma unroll
        for (int u = 0; u < D; u++) {
            if (c_ti < last) {
                if (c_j < spw) {
                    const int kb = 32 * (warp + c_j * SW) + 8 * q;
                    uint4 xv[NT];
                    if (XR)
                        asm volatile("cp.async.wait_group %0;" ::"n"(D - 1) : "memory");
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
                        xv[nt] = XR ? x_ring[(u * NT + nt) * 32]
                                 : nt * 8 + g < p.m ? *(const uint4 *)(x_s + (nt * 8 + g) * p.xs_stride + 2 * kb)
                                                    : make_uint4(0, 0, 0, 0);
                    const uint4 wv[1][2] = {{wr[u][0], wr[u][1]}};
                    decode_step<bf16, NT, 1>(acc, wv, xv);
                    fetch(wr[u]);
                    fetch_x(u);
                    if (TM == T_WORKERS && c_ti == 0 && c_j == spw - 2 && (int)threadIdx.x < pairs)
                        pair = *(volatile const unsigned long long *)(p.part + threadIdx.x);
                }
                if (++c_j >= spw) {
                    tile_end(c_ti);
                    c_j = 0;
                    c_ti++;
                }
            }
        }
    }

}

/* ---- host ------------------------------------------------------------------------------------ */

static float bf(bf16 v) { return __bfloat162float(v); }
static double frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return ((*s >> 8) / 16777216.0) * 2.0 - 1.0;
}

struct layer {
    int m, k, n, r;
    float scale, beta;
    bool bias;
    bf16 *x, *w[ROT], *a, *b, *bi, *y;
    bf16 *xr[ROT], *ar[ROT], *br[ROT], *yr[ROT]; /* cold sets: every operand rotates, as the bench does */
    float *t;     /* s·T on the device, [m][MAX_R] */
    bf16 *h_x, *h_w, *h_a, *h_b, *h_bi, *h_y0;
    float *h_t;
};

static void make_layer(layer *L, int m, int k, int n, int r, float scale, float beta, bool bias, int rot)
{
    *L = {};
    L->m = m, L->k = k, L->n = n, L->r = r, L->scale = scale, L->beta = beta, L->bias = bias;
    unsigned s = 12345u + m * 7 + k * 13 + n * 17 + r;
    auto fill = [&](bf16 **h, size_t cnt, double amp) {
        *h = (bf16 *)malloc(cnt * sizeof(bf16));
        for (size_t i = 0; i < cnt; i++)
            (*h)[i] = __float2bfloat16((float)(amp * frand(&s)));
    };
    fill(&L->h_x, (size_t)m * k, 1.0);
    fill(&L->h_w, (size_t)n * k, 0.05);
    fill(&L->h_a, (size_t)r * k, 0.05);
    fill(&L->h_b, (size_t)n * r, 0.5); /* nonzero B (PEFT starts it at zero: a test must not) */
    fill(&L->h_bi, (size_t)n, 1.0);
    fill(&L->h_y0, (size_t)m * n, 1.0);
    L->h_t = (float *)calloc((size_t)m * MAX_R, sizeof(float));
    for (int i = 0; i < m; i++)
        for (int j = 0; j < r; j++) {
            double t = 0;
            for (int kk = 0; kk < k; kk++)
                t += (double)bf(L->h_x[(size_t)i * k + kk]) * bf(L->h_a[(size_t)j * k + kk]);
            L->h_t[i * MAX_R + j] = (float)(scale * t);
        }
    auto up = [](void **d, const void *h, size_t bytes) {
        CK(cudaMalloc(d, bytes));
        CK(cudaMemcpy(*d, h, bytes, cudaMemcpyHostToDevice));
    };
    up((void **)&L->x, L->h_x, (size_t)m * k * 2);
    for (int i = 0; i < rot; i++)
        up((void **)&L->w[i], L->h_w, (size_t)n * k * 2);
    up((void **)&L->a, L->h_a, (size_t)r * k * 2);
    up((void **)&L->b, L->h_b, (size_t)n * r * 2);
    up((void **)&L->bi, L->h_bi, (size_t)n * 2);
    up((void **)&L->y, L->h_y0, (size_t)m * n * 2);
    up((void **)&L->t, L->h_t, (size_t)m * MAX_R * 4);
    for (int i = 0; i < rot; i++) {
        up((void **)&L->xr[i], L->h_x, (size_t)m * k * 2);
        up((void **)&L->ar[i], L->h_a, (size_t)r * k * 2);
        up((void **)&L->br[i], L->h_b, (size_t)n * r * 2);
        up((void **)&L->yr[i], L->h_y0, (size_t)m * n * 2);
    }
}

static int g_sms;

struct variant {
    const char *name;
    int nt, warps, d, bps, tm;
    bool pdl;
    int t_workers;
    bool xr;
};
static unsigned long long *g_part, *g_trace;
static unsigned *g_ctl;

template <int NT, int WARPS, int D, int BPS, int TM, bool XR>
static void launch_t(const dl_params &p, size_t smem, int grid, bool pdl, cudaStream_t st)
{
    static bool set = false;
    if (!set) {
        CK(cudaFuncSetAttribute(decode_ld<NT, WARPS, D, BPS, TM, XR>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                224 * 1024 / BPS));
        set = true;
    }
    CK(lf_cuda_launch(decode_ld<NT, WARPS, D, BPS, TM, XR>, dim3(grid), WARPS * 32, smem, pdl, st, p));
}

static size_t smem_of(const variant &v, const layer &L)
{
    return (2 * v.warps * v.nt * 4 * 32 + 8 * v.nt * MAX_R + (v.tm >= T_WORKERS ? MAX_TW * 8 * v.nt * MAX_R : 0)) * 4 +
           2 * 16 * MAX_R * 2 +
           (v.xr ? (size_t)v.warps * v.d * v.nt * 32 * 16 : (size_t)L.m * (((L.k + 31) / 32) * 64 + X_PAD));
}

/* false where the variant's shared memory (x staged whole) does not fit BPS blocks an SM */
static bool fits(const variant &v, const layer &L)
{
    if (v.warps == 0) /* the library's kernel: its limits (16-byte rows, one tile a block) */
        return L.m <= 8 && L.r <= 16 && L.r * 2 % 16 == 0 && L.k * 2 % 16 == 0 && (L.n + 15) / 16 <= 2 * g_sms - 2;
    return smem_of(v, L) <= (size_t)224 * 1024 / v.bps;
}

static bool g_cold; /* timed launches rotate every operand, not W alone */
static unsigned *g_lib_ctl;
static void launch(const variant &v, const layer &L, const bf16 *w, cudaStream_t st, int set = -1)
{
    if (v.warps == 0) { /* the library's lf_stream_launch */
        lf_lora_problem q = {};
        q.layout = LF_LAYOUT_PEFT, q.dtype = LF_BF16, q.m = L.m, q.k = L.k, q.n = L.n, q.rank = L.r;
        q.x = set >= 0 && g_cold ? L.xr[set] : L.x, q.ldx = L.k, q.w = w, q.ldw = L.k;
        q.bias = L.bias ? L.bi : nullptr, q.a = set >= 0 && g_cold ? L.ar[set] : L.a, q.lda = L.k;
        q.b = set >= 0 && g_cold ? L.br[set] : L.b, q.ldb = L.r, q.scale = L.scale, q.beta = L.beta;
        q.y = set >= 0 && g_cold ? L.yr[set] : L.y, q.ldy = L.n;
        CK(lf_stream_launch(&q, g_lib_ctl, g_sms, v.pdl, st));
        return;
    }
    dl_params p = {};
    p.m = L.m, p.n = L.n, p.k = L.k, p.r = L.r;
    p.x = L.x, p.w = w, p.a = L.a, p.b = L.b, p.bias = L.bias ? L.bi : nullptr, p.y = L.y;
    if (set >= 0 && g_cold)
        p.x = L.xr[set], p.a = L.ar[set], p.b = L.br[set], p.y = L.yr[set];
    p.scale = L.scale, p.beta = L.beta, p.t_given = v.tm == T_GIVEN ? L.t : nullptr;
    p.t_workers = v.tm == T_WORKERS || v.tm == T_CONTROL ? v.t_workers : 0, p.part = g_part, p.ctl = g_ctl;
    p.trace = g_trace;
    p.xs_stride = (L.k + 31) / 32 * 64 + X_PAD;
    const int tiles = (L.n + 15) / 16, slots = v.bps * g_sms - p.t_workers;
    const int grid = (tiles < slots ? tiles : slots) + p.t_workers; /* the T workers first: they wait for nothing */
#define DL(NT, W, D, BPS, TM, XR)                                                                \
    if (v.nt == NT && v.warps == W && v.d == D && v.bps == BPS && v.tm == TM && v.xr == XR)      \
        return launch_t<NT, W, D, BPS, TM, XR>(p, smem_of(v, L), grid, v.pdl, st);
    DL(1, 16, 3, 2, T_GIVEN, false) DL(1, 16, 3, 2, T_WORKERS, false) DL(1, 16, 5, 2, T_GIVEN, false)
    DL(1, 16, 4, 2, T_GIVEN, false) DL(1, 16, 4, 2, T_WORKERS, false) DL(1, 16, 4, 2, T_GIVEN, true)
    DL(1, 16, 4, 2, T_WORKERS, true) DL(1, 32, 4, 1, T_GIVEN, true) DL(1, 32, 4, 1, T_GIVEN, false)
    DL(2, 16, 3, 2, T_GIVEN, false) DL(2, 16, 3, 2, T_WORKERS, false) DL(2, 16, 5, 2, T_GIVEN, false)
    DL(2, 16, 4, 2, T_GIVEN, false) DL(2, 16, 4, 2, T_WORKERS, false) DL(2, 16, 4, 2, T_GIVEN, true)
    DL(2, 16, 4, 2, T_WORKERS, true) DL(2, 32, 4, 1, T_GIVEN, true) DL(2, 32, 4, 1, T_GIVEN, false)
#undef DL
    fprintf(stderr, "no such variant\n");
    exit(1);
}

/* One token's LoRA term as the reference reads it: rank rows of A (K apart) and B's element
 * (rank j, column c) at b[j·b_j + c·b_c], times scale. */
struct lora_ref {
    const bf16 *a, *b;
    size_t b_j, b_c;
    int rank;
    double scale;
};
/* y as the launch left it on the device against a double reference, every element; term(i) gives
 * token i's LoRA term. The worst error in units of the tolerance. */
template <typename F> static double worst_error(const layer &L, F term)
{
    bf16 *out = (bf16 *)malloc((size_t)L.m * L.n * 2);
    CK(cudaMemcpy(out, L.y, (size_t)L.m * L.n * 2, cudaMemcpyDeviceToHost));
    double worst = 0;
    for (int i = 0; i < L.m; i++) {
        const lora_ref lr = term(i);
        double t[MAX_R] = {};
        for (int j = 0; j < lr.rank; j++)
            for (int kk = 0; kk < L.k; kk++)
                t[j] += (double)bf(L.h_x[(size_t)i * L.k + kk]) * bf(lr.a[(size_t)j * L.k + kk]);
        for (int c = 0; c < L.n; c++) {
            double acc = 0;
            for (int kk = 0; kk < L.k; kk++)
                acc += (double)bf(L.h_x[(size_t)i * L.k + kk]) * bf(L.h_w[(size_t)c * L.k + kk]);
            for (int j = 0; j < lr.rank; j++)
                acc += lr.scale * t[j] * bf(lr.b[j * lr.b_j + c * lr.b_c]);
            if (L.bias)
                acc += bf(L.h_bi[c]);
            acc += L.beta * bf(L.h_y0[(size_t)i * L.n + c]);
            const double err = fabs(bf(out[(size_t)i * L.n + c]) - acc), tol = 1e-2 * fabs(acc) + 2e-3;
            if (!(err / tol <= worst))
                worst = err / tol; /* NaN sticks */
        }
    }
    free(out);
    return worst;
}

/* One variant on y reset to its initial values, checked (worst_error). */
static double check(const variant &v, layer &L, cudaStream_t st)
{
    CK(cudaMemcpy(L.y, L.h_y0, (size_t)L.m * L.n * 2, cudaMemcpyHostToDevice));
    launch(v, L, L.w[0], st);
    CK(cudaStreamSynchronize(st));
    return worst_error(L, [&](int) { return lora_ref{L.h_a, L.h_b, 1, (size_t)L.r, L.r, L.scale}; });
}

/* ---- the library's many-adapter form (lf_stream_multi_launch) --------------------------------- */

/* L adapters of ranks 1..16 (slot s: 16 − s % 16, scale 0.5 + s / 16) in the set's layout (A rows
 * of K, B transposed: rows of N rounded to 8), each token's slot drawn from −1 .. L − 1 (−1: none). */
struct mset {
    int adapters, m, k, n;
    int64_t ldb;
    bf16 *h_a, *h_b;
    lf_adapter_slot *h_slots;
    int32_t *h_ids, *ids;
    lf_adapter_set set;
};
static void make_mset(mset *S, const layer &L, int adapters)
{
    *S = {};
    S->adapters = adapters, S->m = L.m, S->k = L.k, S->n = L.n, S->ldb = (L.n + 7) / 8 * 8;
    unsigned s = 777u + adapters * 31 + L.m;
    const size_t a_el = (size_t)adapters * MAX_R * L.k, b_el = (size_t)adapters * MAX_R * S->ldb;
    S->h_a = (bf16 *)malloc(a_el * 2), S->h_b = (bf16 *)malloc(b_el * 2);
    for (size_t i = 0; i < a_el; i++)
        S->h_a[i] = __float2bfloat16((float)(0.05 * frand(&s)));
    for (size_t i = 0; i < b_el; i++)
        S->h_b[i] = __float2bfloat16((float)(0.5 * frand(&s))); /* nonzero B */
    S->h_slots = (lf_adapter_slot *)malloc(adapters * sizeof(lf_adapter_slot));
    for (int i = 0; i < adapters; i++)
        S->h_slots[i] = {16 - i % 16, 0.5f + i / 16.0f};
    S->h_ids = (int32_t *)malloc(L.m * sizeof(int32_t));
    for (int t = 0; t < L.m; t++)
        S->h_ids[t] = (int32_t)((frand(&s) * 0.5 + 0.5) * (adapters + 1)) - 1;
    S->set.dtype = LF_BF16, S->set.k = L.k, S->set.n = L.n, S->set.max_rank = MAX_R;
    S->set.capacity = adapters, S->set.lda = L.k, S->set.ldb = S->ldb;
    CK(cudaMalloc(&S->set.a, a_el * 2));
    CK(cudaMemcpy(S->set.a, S->h_a, a_el * 2, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&S->set.b, b_el * 2));
    CK(cudaMemcpy(S->set.b, S->h_b, b_el * 2, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&S->set.slots, adapters * sizeof(lf_adapter_slot)));
    CK(cudaMemcpy(S->set.slots, S->h_slots, adapters * sizeof(lf_adapter_slot), cudaMemcpyHostToDevice));
    CK(cudaMalloc(&S->ids, L.m * sizeof(int32_t)));
    CK(cudaMemcpy(S->ids, S->h_ids, L.m * sizeof(int32_t), cudaMemcpyHostToDevice));
}
static void launch_multi(const mset &S, const layer &L, const bf16 *w, bool pdl, cudaStream_t st)
{
    lf_multi_problem q = {};
    q.layout = LF_LAYOUT_PEFT, q.dtype = LF_BF16, q.m = L.m, q.k = L.k, q.n = L.n;
    q.x = L.x, q.ldx = L.k, q.w = w, q.ldw = L.k, q.bias = L.bias ? L.bi : nullptr, q.beta = L.beta;
    q.y = L.y, q.ldy = L.n, q.token_adapter = S.ids, q.set = &S.set;
    CK(lf_stream_multi_launch(&q, g_lib_ctl, g_sms, pdl, st));
}
/* The many-adapter launch on y reset to its initial values, checked (worst_error). */
static double check_multi(const mset &S, layer &L, cudaStream_t st)
{
    CK(cudaMemcpy(L.y, L.h_y0, (size_t)L.m * L.n * 2, cudaMemcpyHostToDevice));
    launch_multi(S, L, L.w[0], true, st);
    CK(cudaStreamSynchronize(st));
    return worst_error(L, [&](int i) {
        const int slot = S.h_ids[i];
        if (slot < 0)
            return lora_ref{S.h_a, S.h_b, 0, 0, 0, 0.0};
        return lora_ref{S.h_a + (size_t)slot * MAX_R * L.k, S.h_b + (size_t)slot * MAX_R * S.ldb, (size_t)S.ldb, 1,
                        S.h_slots[slot].rank, S.h_slots[slot].scale};
    });
}

static double time_graph(lab_record_fn fn, const void *ctx, cudaStream_t st)
{
    return lab_time_graph(fn, ctx, st, LAUNCHES, REPLAYS);
}

struct run_ctx {
    const variant *v;
    const layer *L;
    cublasHandle_t h;
    void *copy_dst;
    size_t copy_bytes;
};
static void run_variant(const void *c, int i, cudaStream_t st)
{
    const run_ctx *r = (const run_ctx *)c;
    launch(*r->v, *r->L, r->L->w[i % ROT], st, i % ROT);
}
struct multi_ctx {
    const mset *S;
    const layer *L;
};
static void run_multi(const void *c, int i, cudaStream_t st)
{
    const multi_ctx *r = (const multi_ctx *)c;
    launch_multi(*r->S, *r->L, r->L->w[i % ROT], true, st);
}
static void run_cublas(const void *c, int i, cudaStream_t)
{
    const run_ctx *r = (const run_ctx *)c;
    const float one = 1.0f, zero = 0.0f;
    const layer &L = *r->L;
    if (cublasGemmEx(r->h, CUBLAS_OP_T, CUBLAS_OP_N, L.n, L.m, L.k, &one, L.w[i % ROT], CUDA_R_16BF, L.k, L.x,
                     CUDA_R_16BF, L.k, &zero, L.y, CUDA_R_16BF, L.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) !=
        CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasGemmEx failed\n");
        exit(1);
    }
}
static void run_copy(const void *c, int i, cudaStream_t st)
{
    const run_ctx *r = (const run_ctx *)c;
    CK(cudaMemcpyAsync(r->copy_dst, r->L->w[i % ROT], r->copy_bytes, cudaMemcpyDeviceToDevice, st));
}

/* The timeline of one launch in the middle of 8 back-to-back ones (PDL on): per block, when it
 * started, passed its PDL wait, reached its first tile's end (T workers: stored their slice) and
 * had T; µs from the first block's start, min / median / max over the W blocks. */
static int cmp_u64(const void *a, const void *b)
{
    const unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}
static void timeline(const variant &v, const layer &L, cudaStream_t st)
{
    const int blocks = 2 * g_sms + 64;
    unsigned long long *d;
    CK(cudaMalloc(&d, blocks * 4 * sizeof(unsigned long long)));
    CK(cudaMemset(d, 0, blocks * 4 * sizeof(unsigned long long)));
    for (int i = 0; i < 8; i++) {
        g_trace = i == 5 ? d : nullptr;
        launch(v, L, L.w[i % ROT], st);
    }
    g_trace = nullptr;
    CK(cudaStreamSynchronize(st));
    unsigned long long h[(2 * 132 + 64) * 4];
    const int nb = blocks <= (int)(sizeof h / sizeof h[0] / 4) ? blocks : (int)(sizeof h / sizeof h[0] / 4);
    CK(cudaMemcpy(h, d, nb * 4 * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
    CK(cudaFree(d));
    unsigned long long t0 = ~0ull;
    int used = 0;
    for (int b = 0; b < nb; b++)
        if (h[b * 4]) {
            used = b + 1;
            t0 = h[b * 4] < t0 ? h[b * 4] : t0;
        }
    const int tw = v.warps == 0 ? 2 : v.tm == T_WORKERS || v.tm == T_CONTROL ? v.t_workers : 0;
    printf("  timeline %s, %d x %d -> %d (µs from the first block's start)\n", v.name, L.m, L.k, L.n);
    for (int b = 0; b < tw; b++)
        printf("    T worker %d: start %.2f, past wait %.2f, slice stored %.2f\n", b, (h[b * 4] - t0) / 1e3,
               (h[b * 4 + 1] - t0) / 1e3, (h[b * 4 + 2] - t0) / 1e3);
    const char *what[4] = {"start", "past wait", "first tile end", "T in hand"};
    for (int k = 0; k < 4; k++) {
        unsigned long long col[2 * 132 + 64];
        int n = 0;
        for (int b = tw; b < used; b++)
            if (h[b * 4 + k])
                col[n++] = h[b * 4 + k] - t0;
        if (!n)
            continue;
        qsort(col, n, sizeof col[0], cmp_u64);
        printf("    W blocks, %-15s %6.2f / %6.2f / %6.2f\n", what[k], col[0] / 1e3, col[n / 2] / 1e3, col[n - 1] / 1e3);
    }
}

int main(void)
{
    CK(cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, g_sms);
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    CK(cudaMalloc(&g_part, MAX_TW * 16 * MAX_R * sizeof(unsigned long long)));
    CK(cudaMemset(g_part, 0, MAX_TW * 16 * MAX_R * sizeof(unsigned long long)));
    CK(cudaMalloc(&g_ctl, 2 * sizeof(unsigned)));
    CK(cudaMalloc(&g_lib_ctl, LF_STREAM_CTL_WORDS * sizeof(unsigned)));
    CK(cudaMemset(g_lib_ctl, 0, LF_STREAM_CTL_WORDS * sizeof(unsigned)));
    if (!lf_stream_setup()) {
        fprintf(stderr, "lf_stream_setup failed\n");
        return 1;
    }
    CK(cudaMemset(g_ctl, 0, 2 * sizeof(unsigned)));
    const variant vars[] = {
        {"2x W16 D3 T", 0, 16, 3, 2, T_GIVEN, true, 0, false}, {"2x W16 D3 tw2", 0, 16, 3, 2, T_WORKERS, true, 2, false},
        {"library", 0, 0, 0, 2, 0, true, 0, false},     {"library no PDL", 0, 0, 0, 2, 0, false, 0, false},
        {"2x W16 D3 tw2 no PDL", 0, 16, 3, 2, T_WORKERS, false, 2, false},
    };
    const int nv = sizeof vars / sizeof vars[0];

    /* correctness: awkward shapes, every element, every variant */
    const struct { int m, k, n, r; float beta; bool bias; } shapes[] = {
        {1, 4096, 4096, 16, 0.0f, false}, {16, 4096, 4096, 16, 0.5f, true}, {5, 1000, 1000, 7, 1.0f, true},
        {13, 72, 24, 16, 0.0f, true},     {9, 4136, 130, 3, 0.0f, false},   {3, 8, 17, 1, -1.0f, true},
    };
    int bad = 0;
    for (const auto &s : shapes) {
        layer L;
        make_layer(&L, s.m, s.k, s.n, s.r, 2.0f, s.beta, s.bias, 1);
        for (int i = 0; i < nv; i++) {
            variant v = vars[i];
            v.nt = s.m <= 8 ? 1 : 2;
            if (!fits(v, L))
                continue;
            const double e = check(v, L, st);
            if (!(e <= 1.0)) {
                printf("FAIL %-16s NT%d %d x %d -> %d r %d: worst error %.2f x tolerance\n", v.name, v.nt, s.m, s.k,
                       s.n, s.r, e);
                bad++;
            }
        }
    }
    /* the library's many-adapter form: 1–8 tokens K whole, 9–16 K halves (empty tiles, K tails) */
    const struct { int m, k, n, adapters; float beta; bool bias; } mshapes[] = {
        {1, 4096, 4096, 8, 0.0f, false}, {8, 1000, 2120, 5, 1.0f, true}, {16, 4096, 4096, 8, 0.5f, true},
        {13, 520, 2210, 20, 0.0f, false}, {9, 8, 2112, 3, -1.0f, true},
    };
    for (const auto &ms : mshapes) {
        layer L;
        make_layer(&L, ms.m, ms.k, ms.n, 16, 1.0f, ms.beta, ms.bias, 1);
        mset S;
        make_mset(&S, L, ms.adapters);
        if (!lf_cuda_stream_multi_fits(LF_BF16, ms.m, ms.k, ms.n, MAX_R, g_sms))
            continue;
        const double e = check_multi(S, L, st);
        if (!(e <= 1.0)) {
            printf("FAIL library multi %d x %d -> %d, %d adapters: worst error %.2f x tolerance\n", ms.m, ms.k, ms.n,
                   ms.adapters, e);
            bad++;
        }
    }
    printf("check: %s\n", bad ? "FAILED" : "every variant, every shape passed");
    if (bad)
        return 1;

    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS)
        return 1;
    void *ws;
    CK(cudaMalloc(&ws, 32 << 20));
    cublasSetStream(h, st);
    cublasSetWorkspace(h, ws, 32 << 20);
    const size_t big = (size_t)256 << 20;
    void *copy_dst;
    CK(cudaMalloc(&copy_dst, big));
    {
        layer C; /* the copy bandwidth: device-to-device memcpy of 256 MiB, as bytes read + written */
        C = {};
        CK(cudaMalloc((void **)&C.w[0], big));
        for (int i = 1; i < ROT; i++)
            C.w[i] = C.w[0];
        run_ctx rc = {nullptr, &C, h, copy_dst, big};
        const double us = time_graph(run_copy, &rc, st);
        printf("copy bandwidth (256 MiB memcpy): %.1f GB/s\n", 2.0 * big / (us * 1e3));
        const double gbs = 2.0 * big / (us * 1e3);
        const struct { int m, k, n; } tshapes[] = {{1, 4096, 4096}, {8, 4096, 4096}, {1, 4096, 3072}};
        printf("%-18s %-18s %9s %9s %7s\n", "shape (r 16)", "variant", "us", "GB/s", "% copy");
        for (const auto &t : tshapes) {
            layer L;
            make_layer(&L, t.m, t.k, t.n, 16, 2.0f, 0.0f, false, ROT);
            const double bytes = 2.0 * ((double)t.n * t.k + (double)t.m * t.k + (double)t.m * t.n + 16.0 * (t.k + t.n));
            char shape[32];
            snprintf(shape, sizeof shape, "%d x %d -> %d", t.m, t.k, t.n);
            run_ctx r = {nullptr, &L, h, nullptr, 0};
            const double cb = time_graph(run_cublas, &r, st);
            printf("%-18s %-18s %9.2f %9.1f %6.1f%%\n", shape, "cuBLAS base GEMM", cb, bytes / (cb * 1e3),
                   100.0 * bytes / (cb * 1e3) / gbs);
            for (int i = 0; i < nv && t.m == 0; i++) {
                variant v = vars[i];
                v.nt = 1;
                timeline(v, L, st);
            }
            for (int i = 0; i < nv; i++) {
                variant v = vars[i];
                v.nt = t.m <= 8 ? 1 : 2;
                if (!fits(v, L))
                    continue;
                r.v = &v;
                for (int cold = 0; cold < 2; cold++) {
                    g_cold = cold;
                    const double us = time_graph(run_variant, &r, st);
                    char name[48];
                    snprintf(name, sizeof name, "%s%s", v.name, cold ? " cold" : "");
                    printf("%-18s %-18s %9.2f %9.1f %6.1f%%\n", shape, name, us, bytes / (us * 1e3),
                           100.0 * bytes / (us * 1e3) / gbs);
                }
                g_cold = false;
            }
        }
        /* the library's many-adapter form beside cuBLAS's base GEMM */
        const struct { int m, adapters; } mt[] = {{1, 8}, {8, 8}, {12, 8}, {16, 8}, {16, 64}};
        for (const auto &t : mt) {
            layer L;
            make_layer(&L, t.m, 4096, 4096, 16, 1.0f, 0.0f, false, ROT);
            mset S;
            make_mset(&S, L, t.adapters);
            const double bytes = 2.0 * (4096.0 * 4096 + 2.0 * t.m * 4096);
            char shape[40];
            snprintf(shape, sizeof shape, "%d x 4096 -> 4096 L%d", t.m, t.adapters);
            run_ctx r = {nullptr, &L, h, nullptr, 0};
            const double cb = time_graph(run_cublas, &r, st);
            multi_ctx mc = {&S, &L};
            const double us = time_graph(run_multi, &mc, st);
            printf("%-18s %-18s %9.2f %9.1f %6.1f%%\n", shape, "cuBLAS base GEMM", cb, bytes / (cb * 1e3),
                   100.0 * bytes / (cb * 1e3) / gbs);
            printf("%-18s %-18s %9.2f %9.1f %6.1f%%\n", shape, "library multi", us, bytes / (us * 1e3),
                   100.0 * bytes / (us * 1e3) / gbs);
        }
    }
    return 0;
}

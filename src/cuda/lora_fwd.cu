/*
 * lora_fwd.cu — lf_lora_forward on CUDA: y = beta·y + x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ.
 *
 * Kernels (heuristics.h picks one per plan key; dev/cuda/NOTES.md has the measurements):
 *   lora_delta_small_kernel  the delta for short K and rank ≤ 16 (the seed): every load issued at
 *                       once, T by warp reductions, expanded per column; one memory round trip.
 *   lora_delta_kernel   the delta alone in one launch otherwise: each block shrinks its rows (T =
 *                       x·Aᵀ into shared memory, fp32), then expands them over its slice of N. With
 *                       T given (p.t) it only expands: the second half of the two-kernel path.
 *   lora_shrink_kernel  T = x·Aᵀ into the workspace (fp32, [M, r]) for the two-kernel delta.
 *   lora_epilogue_kernel  adds s·T·Bᵀ (T from cuBLAS in K-slices), bias and beta·y to an fp32 base
 *                       (the GEMM path's x·Wᵀ; none for the delta) and rounds once.
 *   lora_tpart_kernel   decode's T = x·Aᵀ as K-slice partials, one memory round trip per block.
 *   lora_decode_kernel  the whole layer for M ≤ 32: a persistent grid streams W once through
 *                       per-lane cp.async rings into mma.sync (W rows on the 16-wide side, tokens on
 *                       the 8-wide side), reduces the K-split inside the block in a fixed order, and
 *                       adds bias, beta·y and the LoRA term (T from lora_tpart_kernel, waited for
 *                       with PDL) before its one rounding.
 *   Hopper path         lora_hopper.cu: the layer in one sm_90a launch (PEFT, 16-bit, r ≤ 64, enough
 *                       tiles to fill the GPU); this file only plans and dispatches it.
 *   Stream path         lora_stream.cu: the layer for 1-8 tokens with W by plain loads (PEFT,
 *                       16-bit, r ≤ 16, one 16-row tile a block); planned and dispatched here.
 *   GEMM path           cuBLAS writes T = x·Aᵀ (K-slice partials, one strided-batched call) and
 *                       x·Wᵀ in fp32 (into the workspace for 16-bit dtypes, into y for f32), then
 *                       lora_epilogue_kernel adds s·T·Bᵀ, bias and beta·y and rounds once: one read
 *                       of the fp32 result, one write of y. The delta alone at large K·r runs the
 *                       same way without x·Wᵀ (T-split delta).
 * Every sum has a fixed order: no atomics, results are bitwise identical run to run.
 * Nothing here allocates or synchronizes the host: calls can be captured in a CUDA graph.
 * On sm_90 every launch uses programmatic dependent launch (pdl_wait_and_release).
 */
#include "common.cuh"
#include "heuristics.h"
#include "launch.cuh"
#include "lora_hopper.cuh"
#include "lora_stream.cuh"
#include "mma_sync.cuh"
#include "token_map.cuh"

#include <limits.h>
#include <type_traits>

namespace {

/* Everything a kernel needs, by value. Sizes fit in int (the plan checks). */
struct lora_args {
    int m, k, n, r;
    const void *x;
    int64_t ldx;
    const void *w;
    int64_t ldw;
    const void *a;
    int64_t lda;
    const void *b;
    int64_t ldb;
    const void *bias;
    const float *t;    /* T = x·Aᵀ, [m, r] fp32, from the shrink kernel; NULL: the block computes it */
    const float *base; /* GEMM path: x·Wᵀ (+ beta·y for f32) from cuBLAS, fp32, row stride ldbase;
                        * NULL for the T-split delta */
    int64_t ldbase;
    int tsplit;        /* GEMM path: T comes as tsplit K-slice partials, tstride floats apart */
    int64_t tstride;
    float scale, beta;
    void *y;
    int64_t ldy;
    /* Many adapters (the decode kernels' MULTI form): a and b are the set's storage, [slot][rank]
     * rows (b's rows run along N), r is its max rank, and map says which slot each token uses. */
    lf_token_map map;
};

/* Shrink blocking, as the host computed it from heuristics.h. */
struct stage_cfg {
    int bm, rc, kc; /* rows, ranks, K chunk */
    int splits;     /* threads per output of the shrink (power of two ≤ 32) */
    int ld_s;       /* row stride of the staged chunks, floats */
    int bn;         /* output columns per block of the expand */
};

/* Adds the rest of the layer to an fp32 partial result and rounds once into y. */
template <typename T>
__device__ __forceinline__ void store_out(const lora_args &p, int row, int j, float acc)
{
    float v = acc;
    if (p.bias)
        v += lf_dt<T>::to_f32(((const T *)p.bias)[j]);
    T *y = (T *)p.y + (int64_t)row * p.ldy + j;
    if (p.beta != 0.0f) /* beta = 0 must not read y: it may hold NaN */
        v = fmaf(p.beta, lf_dt<T>::to_f32(*y), v);
    *y = lf_dt<T>::from_f32(v);
}

/* Programmatic dependent launch (launch.cuh; every launch here asks for it when the plan says so):
 * wait for the preceding grid in the stream (complete, its writes visible) before the first global
 * access, then let the next kernel launch, so that its launch and block setup overlap this one's
 * work instead of following it. */
__device__ __forceinline__ void pdl_wait_and_release()
{
    lf_pdl_wait();
    lf_pdl_release();
}

/* Stages rows of K chunk [k0, k0+kc) as fp32: x rows m0.. (bm of them) into x_s and, when a_rows,
 * A rows t0.. (PEFT: contiguous along K) into a_s; dst[i·ld_s + kk], rows past their valid count
 * read as 0. Each thread issues LF_STAGE_BATCH loads before it stores any, so the chunk costs one
 * memory latency, not one per loop trip. VEC: 16-byte loads (the plan saw aligned pointers and
 * strides, and k0 is a multiple of 32); a scalar pass takes the tail. */
#define LF_STAGE_BATCH 8
template <typename T, bool VEC>
__device__ void stage_rows(float *x_s, const T *x, int64_t ldx, int m0, int bm, int m_valid, float *a_s, const T *a,
                           int64_t lda, int t0, int a_rows, int r_valid, int ld_s, int k0, int kc)
{
    constexpr int V = VEC ? lf_dt<T>::vec : 1;
    using raw_t = typename std::conditional<VEC, uint4, T>::type;
    const int nv = kc / V, total = (bm + a_rows) * nv;
    for (int base = 0; base < total; base += LF_STAGE_BATCH * LF_CUDA_THREADS) {
        raw_t raw[LF_STAGE_BATCH];
#pragma unroll
        for (int u = 0; u < LF_STAGE_BATCH; u++) {
            const int idx = base + u * LF_CUDA_THREADS + threadIdx.x;
            const int i = idx / nv, v = idx % nv;
            const bool is_x = i < bm;
            const int row = is_x ? m0 + i : t0 + i - bm;
            if (idx < total && row < (is_x ? m_valid : r_valid))
                raw[u] = *(const raw_t *)((is_x ? x + (int64_t)row * ldx : a + (int64_t)row * lda) + k0 + v * V);
            else
                memset(&raw[u], 0, sizeof raw[u]);
        }
#pragma unroll
        for (int u = 0; u < LF_STAGE_BATCH; u++) {
            const int idx = base + u * LF_CUDA_THREADS + threadIdx.x;
            if (idx >= total)
                break;
            const int i = idx / nv, v = idx % nv;
            float *d = (i < bm ? x_s + i * ld_s : a_s + (i - bm) * ld_s) + v * V;
            const T *e = (const T *)&raw[u];
#pragma unroll
            for (int c = 0; c < V; c++)
                d[c] = lf_dt<T>::to_f32(e[c]);
        }
    }
    const int done = nv * V, rest = kc - done;
    for (int idx = threadIdx.x; idx < (bm + a_rows) * rest; idx += LF_CUDA_THREADS) {
        const int i = idx / rest, kk = done + idx % rest;
        const bool is_x = i < bm;
        const int row = is_x ? m0 + i : t0 + i - bm;
        float *d = is_x ? x_s + i * ld_s : a_s + (i - bm) * ld_s;
        d[kk] = row < (is_x ? m_valid : r_valid)
                    ? lf_dt<T>::load((is_x ? x + (int64_t)row * ldx : a + (int64_t)row * lda) + k0 + kk)
                    : 0.0f;
    }
}

/* KN layout: A is [K, r]; stage its chunk transposed, dst[t·ld_s + kk] = A[k0+kk][t0+t], so the
 * compute loop reads both operands along k. Global reads run along t (contiguous). */
template <typename T>
__device__ void stage_cols(float *dst, int ld_s, const T *src, int64_t ld, int t0, int rc, int r_valid, int k0, int kc)
{
    for (int idx = threadIdx.x; idx < kc * rc; idx += blockDim.x) {
        const int kk = idx / rc, t = idx % rc;
        dst[t * ld_s + kk] = t0 + t < r_valid ? lf_dt<T>::load(src + (int64_t)(k0 + kk) * ld + t0 + t) : 0.0f;
    }
}

/* t_s[i·rc + t] = Σ_k x[m0+i][k]·A[t0+t][k] for i < bm, t < rc (rows past M give 0).
 * `splits` consecutive threads share one output, each summing a strided part of the chunk; a fixed
 * xor-shuffle tree joins a warp's lanes and, past 32 splits, the warps' partials are added in warp
 * order through shared memory: the order never depends on timing. Ends synchronized. */
template <typename T, bool KN, bool VEC>
__device__ void shrink_block(const lora_args &p, const stage_cfg &c, int m0, int bm, int t0, int rc, float *t_s,
                             float *x_s, float *a_s)
{
    __shared__ float part[LF_CUDA_THREADS / 32];
    const int s = c.splits, groups = LF_CUDA_THREADS / s, wps = s / 32; /* warps per output */
    const int g = threadIdx.x / s, l = threadIdx.x % s;
    const int outs = bm * rc;
    for (int i = threadIdx.x; i < outs; i += blockDim.x)
        t_s[i] = 0.0f;
    for (int k0 = 0; k0 < p.k; k0 += c.kc) {
        const int kc = min(c.kc, p.k - k0);
        __syncthreads(); /* the previous chunk is consumed (and t_s zeroed) */
        /* PEFT A rows run along K like x: one batched pass stages both */
        stage_rows<T, VEC>(x_s, (const T *)p.x, p.ldx, m0, bm, p.m, a_s, (const T *)p.a, p.lda, t0, KN ? 0 : rc, p.r,
                           c.ld_s, k0, kc);
        if (KN)
            stage_cols<T>(a_s, c.ld_s, (const T *)p.a, p.lda, t0, rc, p.r, k0, kc);
        __syncthreads();
        for (int base = 0; base < outs; base += groups) { /* same trip count in every thread */
            const int o = base + g;
            float acc = 0.0f;
            if (o < outs) {
                const float *xr = x_s + (o / rc) * c.ld_s, *ar = a_s + (o % rc) * c.ld_s;
                for (int kk = l; kk < kc; kk += s)
                    acc = fmaf(xr[kk], ar[kk], acc);
            }
            for (int off = min(s, 32) / 2; off > 0; off /= 2)
                acc += __shfl_xor_sync(0xffffffffu, acc, off);
            if (wps <= 1) {
                if (o < outs && l == 0)
                    t_s[o] += acc;
            } else {
                if (l % 32 == 0)
                    part[threadIdx.x / 32] = acc;
                __syncthreads();
                if (o < outs && l == 0) {
                    float sum = 0.0f;
                    for (int w = 0; w < wps; w++)
                        sum += part[g * wps + w];
                    t_s[o] += sum;
                }
                __syncthreads();
            }
        }
    }
    __syncthreads();
}

/* Rank up to which the delta kernel loads a thread's B column before the shrink (PRE). */
#define LF_DELTA_PRE_R 16

/* y[m0+i][j] for the block's rows and columns j ∈ [n0, n0+bn): s·Σ_t T[i][t]·B[j][t] plus the rest
 * of the layer. One column per thread (coalesced y), RB rows per pass in registers; T is read from
 * shared memory as a broadcast. PRE: bn ≤ threads and r ≤ LF_DELTA_PRE_R, and bpre holds the
 * thread's B column, loaded before the shrink so that its latency hides behind it. */
template <typename T, bool KN, int BM, bool PRE>
__device__ void expand_block(const lora_args &p, int m0, int n0, int bn, const float *t_s,
                             const float (&bpre)[LF_DELTA_PRE_R])
{
    constexpr int RB = BM < 8 ? BM : 8;
    const T *B = (const T *)p.b;
    const int nend = min(n0 + bn, p.n);
    for (int j = n0 + threadIdx.x; j < nend; j += blockDim.x) {
#pragma unroll
        for (int i0 = 0; i0 < BM; i0 += RB) {
            if (m0 + i0 >= p.m)
                break;
            float acc[RB];
#pragma unroll
            for (int ii = 0; ii < RB; ii++)
                acc[ii] = 0.0f;
            if (PRE) {
#pragma unroll
                for (int t = 0; t < LF_DELTA_PRE_R; t++)
                    if (t < p.r)
#pragma unroll
                        for (int ii = 0; ii < RB; ii++)
                            acc[ii] = fmaf(t_s[(i0 + ii) * p.r + t], bpre[t], acc[ii]);
            } else {
#pragma unroll 4
                for (int t = 0; t < p.r; t++) {
                    const float bv = lf_dt<T>::load(KN ? B + (int64_t)t * p.ldb + j : B + (int64_t)j * p.ldb + t);
#pragma unroll
                    for (int ii = 0; ii < RB; ii++)
                        acc[ii] = fmaf(t_s[(i0 + ii) * p.r + t], bv, acc[ii]);
                }
            }
#pragma unroll
            for (int ii = 0; ii < RB; ii++)
                if (m0 + i0 + ii < p.m)
                    store_out<T>(p, m0 + i0 + ii, j, p.scale * acc[ii]);
        }
    }
}

/* The delta in one launch (p.t NULL), or the expand half of the two-kernel path (p.t set).
 * Grid: (row blocks of BM, column slices of c.bn). */
template <typename T, bool KN, bool VEC, int BM, bool PRE>
__global__ void __launch_bounds__(LF_CUDA_THREADS) lora_delta_kernel(lora_args p, stage_cfg c)
{
    extern __shared__ float smem[];
    float *t_s = smem; /* [BM][r] */
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * c.bn;
    pdl_wait_and_release();
    float bpre[LF_DELTA_PRE_R];
    if (PRE) {
        const T *B = (const T *)p.b;
        const int j = n0 + threadIdx.x;
        const bool col = (int)threadIdx.x < c.bn && j < p.n;
#pragma unroll
        for (int t = 0; t < LF_DELTA_PRE_R; t++)
            bpre[t] = col && t < p.r ? lf_dt<T>::load(KN ? B + (int64_t)t * p.ldb + j : B + (int64_t)j * p.ldb + t) : 0.0f;
    }
    if (p.t) {
        for (int idx = threadIdx.x; idx < BM * p.r; idx += blockDim.x) {
            const int i = idx / p.r;
            t_s[idx] = m0 + i < p.m ? p.t[(int64_t)(m0 + i) * p.r + idx % p.r] : 0.0f;
        }
        __syncthreads();
    } else {
        float *x_s = t_s + BM * p.r;
        shrink_block<T, KN, VEC>(p, c, m0, BM, 0, p.r, t_s, x_s, x_s + BM * c.ld_s);
    }
    expand_block<T, KN, BM, PRE>(p, m0, n0, c.bn, t_s, bpre);
}

/* The delta for short K and small rank in one round trip (the seed: f32, 128 × 512 → 512, r 8).
 * Block: SM_BM rows × SM_BN columns. Every global load of the block is issued before any is used:
 * warp w holds its ranks' A rows and the block's x rows (16-byte vectors, lane-strided along K;
 * the 8 warps re-read x from L1), and each thread the B row of its column. Warp w then sums
 * T[i][t] for t ≡ w (mod 8) with a fixed xor tree, T meets in shared memory, and each thread
 * expands its column over its rows. PEFT, 16-byte aligned, K a multiple of the vector width and at
 * most 32·SM_NJ vectors, r ≤ 2·8 (heuristics.h: lf_cuda_delta_small_fits). Also the f32 layer's
 * epilogue for such shapes: with beta = 1 it adds the delta and bias to cuBLAS's x·Wᵀ + beta·y. */
constexpr int SM_BM = 4, SM_BN = 128, SM_NJ = 4, SM_RPW = 2;

template <typename T>
__global__ void __launch_bounds__(LF_CUDA_THREADS) lora_delta_small_kernel(lora_args p)
{
    constexpr int V = lf_dt<T>::vec, WARPS = LF_CUDA_THREADS / 32;
    __shared__ float t_s[SM_BM][SM_RPW * WARPS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int m0 = blockIdx.x * SM_BM, n0 = blockIdx.y * SM_BN, nv = p.k / V;
    const int col = threadIdx.x % SM_BN, rg = threadIdx.x / SM_BN; /* rows rg, rg + 2 */
    const int j = n0 + col;
    pdl_wait_and_release();

    uint4 xv[SM_BM][SM_NJ], av[SM_RPW][SM_NJ];
#pragma unroll
    for (int i = 0; i < SM_BM; i++)
#pragma unroll
        for (int v = 0; v < SM_NJ; v++) {
            const int e = lane + 32 * v;
            xv[i][v] = e < nv && m0 + i < p.m ? *(const uint4 *)((const T *)p.x + (int64_t)(m0 + i) * p.ldx + e * V)
                                              : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
    for (int u = 0; u < SM_RPW; u++)
#pragma unroll
        for (int v = 0; v < SM_NJ; v++) {
            const int e = lane + 32 * v, t = warp + WARPS * u;
            av[u][v] = e < nv && t < p.r ? *(const uint4 *)((const T *)p.a + (int64_t)t * p.lda + e * V)
                                         : make_uint4(0, 0, 0, 0);
        }
    float bv[SM_RPW * WARPS];
#pragma unroll
    for (int t = 0; t < SM_RPW * WARPS; t++)
        bv[t] = t < p.r && j < p.n ? lf_dt<T>::load((const T *)p.b + (int64_t)j * p.ldb + t) : 0.0f;

#pragma unroll
    for (int u = 0; u < SM_RPW; u++) {
        if (warp + WARPS * u >= p.r)
            break;
#pragma unroll
        for (int i = 0; i < SM_BM; i++) {
            float acc = 0.0f;
#pragma unroll
            for (int v = 0; v < SM_NJ; v++) {
                const T *xe = (const T *)&xv[i][v], *ae = (const T *)&av[u][v];
#pragma unroll
                for (int c = 0; c < V; c++)
                    acc = fmaf(lf_dt<T>::to_f32(xe[c]), lf_dt<T>::to_f32(ae[c]), acc);
            }
#pragma unroll
            for (int off = 16; off > 0; off /= 2)
                acc += __shfl_xor_sync(0xffffffffu, acc, off);
            if (lane == 0)
                t_s[i][warp + WARPS * u] = acc;
        }
    }
    __syncthreads();
    if (j >= p.n)
        return;
#pragma unroll
    for (int ii = 0; ii < SM_BM / 2; ii++) {
        const int i = rg + 2 * ii;
        if (m0 + i >= p.m)
            break;
        float acc = 0.0f;
#pragma unroll
        for (int t = 0; t < SM_RPW * WARPS; t++)
            if (t < p.r)
                acc = fmaf(t_s[i][t], bv[t], acc);
        store_out<T>(p, m0 + i, j, p.scale * acc);
    }
}

/* T = x·Aᵀ into t_out ([m, r] fp32). Grid: (row blocks of c.bm, rank chunks of c.rc). */
template <typename T, bool KN, bool VEC>
__global__ void __launch_bounds__(LF_CUDA_THREADS) lora_shrink_kernel(lora_args p, stage_cfg c, float *t_out)
{
    pdl_wait_and_release();
    extern __shared__ float smem[];
    const int m0 = blockIdx.x * c.bm, t0 = blockIdx.y * c.rc;
    const int rc = min(c.rc, p.r - t0);
    float *t_s = smem, *x_s = smem + c.bm * c.rc;
    shrink_block<T, KN, VEC>(p, c, m0, c.bm, t0, rc, t_s, x_s, x_s + c.bm * c.ld_s);
    for (int idx = threadIdx.x; idx < c.bm * rc; idx += blockDim.x) {
        const int i = idx / rc;
        if (m0 + i < p.m)
            t_out[(int64_t)(m0 + i) * p.r + t0 + idx % rc] = t_s[idx];
    }
}

/* ---- GEMM-path epilogue ------------------------------------------------------------------------ */

/* y = round(base + s·T·Bᵀ + bias + beta·y) for the rows of a chunk, base = x·Wᵀ in fp32 from cuBLAS
 * (for f32, base is y itself, already holding x·Wᵀ + beta·y, and p.beta is 0), or 0 when p.base is
 * NULL (the T-split delta). Bandwidth-bound:
 * reads base once and writes y once; T ([m, r] fp32, from cuBLAS as K-slice partials that are
 * summed here) and B come through shared memory. Block: EPI_BN columns (4 consecutive per thread:
 * one 16-byte load of base) × 4·EPI_RR rows (EPI_RR per thread, strided by 4); the rank in chunks
 * of EPI_RC, summed in rank order. */
constexpr int EPI_BN = 256, EPI_RC = 16;

template <typename T, bool KN, bool VEC, int EPI_RR>
__global__ void __launch_bounds__(LF_CUDA_THREADS) lora_epilogue_kernel(lora_args p)
{
    constexpr int EPI_BM = 4 * EPI_RR;
    __shared__ __align__(16) float b_s[EPI_RC][EPI_BN + 4]; /* [rank][column]; +4 spreads the PEFT stores */
    __shared__ __align__(16) float t_s[EPI_BM][EPI_RC];
    const int cg = threadIdx.x % (EPI_BN / 4), rl = threadIdx.x / (EPI_BN / 4);
    const int n0 = blockIdx.x * EPI_BN, m0 = blockIdx.y * EPI_BM, j0 = n0 + 4 * cg;
    const bool vec = VEC && j0 + 3 < p.n;
    pdl_wait_and_release();

    /* The loads of base and bias first: their latency overlaps the staging and the T·Bᵀ sums. */
    float bias[4] = {}, base[EPI_RR][4] = {};
    if (p.bias)
#pragma unroll
        for (int c = 0; c < 4; c++)
            if (j0 + c < p.n)
                bias[c] = lf_dt<T>::load((const T *)p.bias + j0 + c);
#pragma unroll
    for (int rr = 0; rr < EPI_RR; rr++) {
        const int i = m0 + rl + 4 * rr;
        if (i >= p.m || !p.base)
            break;
        const float *br = p.base + (int64_t)i * p.ldbase + j0;
        if (vec) {
            const float4 b4 = *(const float4 *)br;
            base[rr][0] = b4.x, base[rr][1] = b4.y, base[rr][2] = b4.z, base[rr][3] = b4.w;
        } else {
#pragma unroll
            for (int c = 0; c < 4; c++)
                if (j0 + c < p.n)
                    base[rr][c] = br[c];
        }
    }

    const T *B = (const T *)p.b;
    float acc[EPI_RR][4] = {};
    for (int t0 = 0; t0 < p.r; t0 += EPI_RC) {
        const int rc = min(EPI_RC, p.r - t0);
        __syncthreads(); /* the previous chunk is consumed */
        for (int idx = threadIdx.x; idx < EPI_RC * EPI_BN; idx += LF_CUDA_THREADS) {
            /* global reads along B's contiguous dimension: n for KN, the rank for PEFT */
            const int t = KN ? idx / EPI_BN : idx % EPI_RC, c = KN ? idx % EPI_BN : idx / EPI_RC, j = n0 + c;
            b_s[t][c] = t < rc && j < p.n
                            ? lf_dt<T>::load(KN ? B + (int64_t)(t0 + t) * p.ldb + j : B + (int64_t)j * p.ldb + t0 + t)
                            : 0.0f;
        }
        for (int idx = threadIdx.x; idx < EPI_BM * EPI_RC; idx += LF_CUDA_THREADS) {
            const int i = idx / EPI_RC, t = idx % EPI_RC;
            float v = 0.0f; /* T = the sum of its K-slice partials, in slice order */
            if (t < rc && m0 + i < p.m)
                for (int z = 0; z < p.tsplit; z++)
                    v += p.t[z * p.tstride + (int64_t)(m0 + i) * p.r + t0 + t];
            t_s[i][t] = v;
        }
        __syncthreads();
#pragma unroll
        for (int t4 = 0; t4 < EPI_RC; t4 += 4) { /* zero past rc: adds exact zeros, t stays ascending */
            float4 tv[EPI_RR]; /* 16-byte shared loads: 4 ranks of T per row, 4 columns of B per rank */
#pragma unroll
            for (int rr = 0; rr < EPI_RR; rr++)
                tv[rr] = *(const float4 *)&t_s[rl + 4 * rr][t4];
#pragma unroll
            for (int tt = 0; tt < 4; tt++) {
                const float4 bv = *(const float4 *)&b_s[t4 + tt][4 * cg];
#pragma unroll
                for (int rr = 0; rr < EPI_RR; rr++) {
                    const float tf = tt == 0 ? tv[rr].x : tt == 1 ? tv[rr].y : tt == 2 ? tv[rr].z : tv[rr].w;
                    acc[rr][0] = fmaf(tf, bv.x, acc[rr][0]);
                    acc[rr][1] = fmaf(tf, bv.y, acc[rr][1]);
                    acc[rr][2] = fmaf(tf, bv.z, acc[rr][2]);
                    acc[rr][3] = fmaf(tf, bv.w, acc[rr][3]);
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < EPI_RR; rr++) {
        const int i = m0 + rl + 4 * rr;
        if (i >= p.m)
            break;
        T *yr = (T *)p.y + (int64_t)i * p.ldy + j0;
        union {
            T e[4];
            typename std::conditional<sizeof(T) == 4, uint4, uint2>::type v;
        } o;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            float v = fmaf(p.scale, acc[rr][c], base[rr][c]) + bias[c];
            if (p.beta != 0.0f && j0 + c < p.n) /* beta = 0 must not read y: it may hold NaN */
                v = fmaf(p.beta, lf_dt<T>::load(yr + c), v);
            o.e[c] = lf_dt<T>::from_f32(v);
        }
        if (vec)
            *(decltype(o.v) *)yr = o.v;
        else
#pragma unroll
            for (int c = 0; c < 4; c++)
                if (j0 + c < p.n)
                    yr[c] = o.e[c];
    }
}

/* ---- decode ------------------------------------------------------------------------------------ */

/* 8 elements from p (the row's element kbase), zeros at or past k: the K tail. */
template <typename T> __device__ __forceinline__ uint4 load8_masked(const T *p, int kbase, int k)
{
    union {
        uint4 v;
        T e[8];
    } u;
#pragma unroll
    for (int e = 0; e < 8; e++)
        u.e[e] = kbase + e < k ? p[e] : lf_dt<T>::from_f32(0.0f);
    return u.v;
}

/* The decode kernel's 16-byte asynchronous copies global → shared, cached in L2 only, with the
 * L2::128B prefetch-size hint: a lane group's 64-byte request of a row fetches the row's whole
 * 128-byte line from DRAM, so the next step's request for the other half hits L2 (v11: decode
 * 19.0 → 16.7 µs at M=1, 56.4 → 50.1 on the 14336-row MLP; 256 bytes was slower).
 * This one copies x (src_bytes 0: the 16 bytes are zero-filled and nothing is read). */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, uint32_t src_bytes = 16)
{
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(smem)),
                 "l"(gmem), "r"(src_bytes));
}
/* This one copies W, which is read once: L2 may evict its lines first, so that x,
 * B and T, which every block re-reads, stay resident (2–4% on every decode case, H100: M=1 4096²
 * 15.4 → 15.0 µs, M=16 4096 → 14336 48.8 → 47.3; dev/cuda/NOTES.md). policy: from
 * l2_evict_first_policy(). */
__device__ __forceinline__ void cp_async16_once(void *smem, const void *gmem, uint64_t policy)
{
    asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::128B [%0], [%1], 16, %2;" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(smem)),
                 "l"(gmem), "l"(policy));
}
__device__ __forceinline__ uint64_t l2_evict_first_policy()
{
    uint64_t policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    return policy;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
/* The memory clobber keeps the compiler from moving shared-memory reads of the ring above the wait. */
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

/* Decode's T = x·Aᵀ as K-slice partials, part[z][i][t] = Σ over slice z of x[i][k]·A[t][k] (16-bit
 * dtypes, 16-byte aligned rows). Block (t, z): each lane holds TP_NJ 16-byte vectors of A row t's
 * slice; block z' of the token groups takes TP_TOKENS tokens, its warp w tokens w, w + 8 (two per
 * warp keep the registers few enough for the decode kernel's blocks to share the SMs with these,
 * which is where PDL puts both); a lane issues all its loads before it uses
 * any, and each dot product ends in a fixed xor tree. One memory round trip on r × K/512 blocks,
 * where the generic shrink kernel ran a serial, instruction-bound K loop on a few. The decode
 * kernel sums the slices in slice order. */
constexpr int TP_NJ = 2, TP_SLICE = 32 * 8 * TP_NJ, TP_TOKENS = 16;
static_assert(TP_SLICE == 512, "lf_cuda_decode_t_slices assumes 512-element slices");

template <typename T> __device__ __forceinline__ uint4 load8_tail(const T *row, int kb, int k)
{
    return kb + 8 <= k ? *(const uint4 *)(row + kb) : load8_masked<T>(row + kb, kb, k);
}

template <typename T, bool MULTI>
__global__ void __launch_bounds__(LF_CUDA_THREADS) lora_tpart_kernel(lora_args p, float *part)
{
    constexpr int WARPS = LF_CUDA_THREADS / 32, TPW = TP_TOKENS / WARPS;
    const int t = blockIdx.x, z = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int i0 = blockIdx.z * TP_TOKENS;
    const int k0 = z * TP_SLICE;
    /* After the wait: the decode kernel, released here, streams x and W before it waits for T, so
     * whatever wrote them before this grid must be complete by then. */
    pdl_wait_and_release();
    /* One adapter: A row t, loaded once. MULTI: row t of each token's slot, found from the id while
     * x is in flight; the slot's rank is read beside that row (the set's storage holds max-rank rows
     * per slot), and a token whose slot has no row t, or that has none, gets T = 0 by selection
     * (the unused rows may hold anything). Everything here is warp-uniform per token. */
    const T *arow = (const T *)p.a + (int64_t)t * p.lda;
    uint4 av[MULTI ? TPW : 1][TP_NJ], xv[TPW][TP_NJ];
    bool live[TPW];
    int rank[MULTI ? TPW : 1];
    if (!MULTI)
#pragma unroll
        for (int v = 0; v < TP_NJ; v++)
            av[0][v] = load8_tail<T>(arow, k0 + (lane + 32 * v) * 8, p.k);
#pragma unroll
    for (int u = 0; u < TPW; u++) {
        const int i = i0 + warp + WARPS * u;
        live[u] = i < p.m;
        if (live[u])
#pragma unroll
            for (int v = 0; v < TP_NJ; v++)
                xv[u][v] = load8_tail<T>((const T *)p.x + (int64_t)i * p.ldx, k0 + (lane + 32 * v) * 8, p.k);
    }
    if (MULTI)
#pragma unroll
        for (int u = 0; u < TPW; u++) {
            const int i = i0 + warp + WARPS * u;
            if (!live[u])
                continue;
            const int id = lf_token_id(p.map, p.map.seg_starts, p.map.seg_adapter, i);
            live[u] = id >= 0 && id < p.map.capacity;
            if (!live[u])
                continue;
            rank[MULTI ? u : 0] = p.map.slots[id].rank;
            const T *ar = (const T *)p.a + ((int64_t)id * p.r + t) * p.lda;
#pragma unroll
            for (int v = 0; v < TP_NJ; v++)
                av[MULTI ? u : 0][v] = load8_tail<T>(ar, k0 + (lane + 32 * v) * 8, p.k);
        }
#pragma unroll
    for (int u = 0; u < TPW; u++) {
        const int i = i0 + warp + WARPS * u;
        if (i >= p.m)
            break;
        float acc = 0.0f;
        if (live[u]) {
#pragma unroll
            for (int v = 0; v < TP_NJ; v++) {
                const T *xe = (const T *)&xv[u][v], *ae = (const T *)&av[MULTI ? u : 0][v];
#pragma unroll
                for (int c = 0; c < 8; c++)
                    acc = fmaf(lf_dt<T>::to_f32(xe[c]), lf_dt<T>::to_f32(ae[c]), acc);
            }
#pragma unroll
            for (int off = 16; off > 0; off /= 2)
                acc += __shfl_xor_sync(0xffffffffu, acc, off);
            if (MULTI && t >= rank[MULTI ? u : 0])
                acc = 0.0f;
        }
        if (lane == 0)
            part[((int64_t)z * p.m + i) * p.r + t] = acc;
    }
}

/* Blocks per SM (lf_cuda_decode_per_sm): two for NT ≤ 2 (≤ 128 registers and ≤ ~95 KB of shared
 * memory each), so that one block's reduction and epilogue, during which it requests no W, overlap
 * the other's stream; one otherwise. Depth of each warp's copy ring: as many 32-wide K steps (at
 * most 8) as 144 KB (one block per SM) or 80 KB (two) of shared memory hold. Each step is 2·RT chunks of W
 * and NT chunks of x per lane (16 bytes each). */
template <int NT, int RT> struct decode_shape {
    static constexpr int PER_SM = NT <= 2 ? 2 : 1;
    static constexpr int RING_BUDGET = PER_SM == 2 ? 80 * 1024 : 144 * 1024;
    static constexpr int CHUNKS = 2 * RT + NT;
    static constexpr int STAGE_BYTES = CHUNKS * 16 * LF_CUDA_THREADS;
    static constexpr int STAGES = RING_BUDGET / STAGE_BYTES > 8 ? 8 : RING_BUDGET / STAGE_BYTES;
    static constexpr int RING = STAGES * STAGE_BYTES;
    static constexpr int T_BYTES = NT * 8 * LF_CUDA_DECODE_MAX_RANK * 4;
    static constexpr int SMEM = RING + T_BYTES + 16 * RT * (LF_CUDA_DECODE_MAX_RANK + 1) * 4; /* ring, T, B rows */
};

/* The whole layer for M ≤ 8·NT tokens, rank ≤ LF_CUDA_DECODE_MAX_RANK. Persistent: the grid is at
 * most PER_SM blocks per SM, and block b owns the 16·RT-row tiles b, b + gridDim.x, ... of W, each over
 * all of K (no split-K across blocks); its 8 warps take contiguous eighths of K. Each lane streams
 * the very 16-byte chunks it later feeds to the MMA through a private cp.async ring STAGES steps
 * deep that runs on across tile boundaries, so the stream does not drain and refill per tile, and no
 * lane waits for another inside the loop. The epilogue reads only shared memory: the tile's B rows
 * (loaded into registers before its K loop) and T (summed from its slices once per block, after
 * the wait for lora_tpart_kernel; read from global memory per output it cost a dependent L2 round
 * trip per rank, per tile).
 * Rows past N are clamped to valid memory, tokens past M zero-filled; neither is stored.
 * MULTI (many adapters, the per-token and segment forms): T comes per token from its own slot
 * (lora_tpart_kernel<T, true>), and the epilogue reads each token's B columns from the set, 8
 * features per 16-byte load: each thread prefetches its lines into L2 early in the tile's K loop
 * and loads them right after it, before the reduction. A
 * token's LoRA term is Σ over its slot's rank in rank order, as for one adapter, so the per-token
 * and the segment form give the same bits. */
template <typename T, int NT, int RT, bool MULTI>
__global__ void __launch_bounds__(LF_CUDA_THREADS, decode_shape<NT, RT>::PER_SM) lora_decode_kernel(lora_args p)
{
    using shape = decode_shape<NT, RT>;
    constexpr int ROWS = 16 * RT, WARPS = LF_CUDA_THREADS / 32, S = shape::STAGES, C = shape::CHUNKS;
    constexpr int BPT = ROWS * LF_CUDA_DECODE_MAX_RANK / LF_CUDA_THREADS; /* B values per thread */
    /* MULTI's epilogue: 8 features per thread, the first E_RANKS ranks' loads issued at once; 8
     * where two blocks of 32-row tiles share an SM's registers (16 spilled 96 bytes there) */
    constexpr int E_GROUPS = ROWS / 8, E_RANKS = shape::PER_SM == 2 && RT == 2 ? 8 : 16;
    static_assert(NT * 8 * E_GROUPS <= LF_CUDA_THREADS, "MULTI: one 8-feature group of one token per thread");
    __shared__ float red[WARPS / 2][RT][NT][4][32];        /* the fixed-order tree over warps */
    __shared__ float out_s[NT * 8][ROWS];                  /* x·Wᵀ of the tile, [token][feature] */
    extern __shared__ uint4 ring[]; /* [warp][stage][chunk][lane], then T and the B rows */
    float *t_sh = (float *)((char *)ring + shape::RING);        /* T, [token][rank], once per block */
    float *b_s = (float *)((char *)ring + shape::RING + shape::T_BYTES); /* tile's B, [feature][rank + 1] */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    /* Its primary is the shrink, released only after what preceded it completed: x and W are
     * final, so they stream now; T is waited for before the first epilogue. The next kernel waits
     * for all of this grid, so it may launch now. */
    lf_pdl_release();
#endif

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const T *W = (const T *)p.w, *X = (const T *)p.x, *B = (const T *)p.b;
    const int tiles = (p.n + ROWS - 1) / ROWS;
    const int my_tiles = (int)blockIdx.x < tiles ? (tiles - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    const int steps = p.k / 32, per = (steps + WARPS - 1) / WARPS;
    const int s0 = warp * per, n_my = max(0, min(s0 + per, steps) - s0);
    /* Token chunks of this lane at the warp's first step. Token columns past M are zero-filled, not
     * read: every tile re-reads x from L2, and clamped copies of the last token put up to 16 times
     * the requests on the same few lines (M=1 4096 → 14336 with 16 columns: 86.7 µs, zero-filled
     * 47.3; dev/cuda/NOTES.md). */
    const T *xsrc[NT];
    uint32_t xbytes[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        xsrc[nt] = X + (int64_t)min(nt * 8 + g, p.m - 1) * p.ldx + q * 8 + s0 * 32;
        xbytes[nt] = nt * 8 + g < p.m ? 16 : 0;
    }
    uint4 *my = ring + (size_t)warp * S * C * 32 + lane;
    const uint64_t w_policy = l2_evict_first_policy(); /* W is read once */

    /* Fetch cursor over this warp's (tile, step) sequence; past its end a fetch commits an empty
     * group, which keeps the group count uniform. */
    int f_tile = 0, f_i = 0, fetched = 0;
    const int total = my_tiles * n_my;
    auto fetch = [&](int slot) {
        if (fetched < total) {
            const int n0 = ((int)blockIdx.x + f_tile * (int)gridDim.x) * ROWS;
            uint4 *d = my + slot * C * 32;
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    cp_async16_once(d + (rt * 2 + h) * 32,
                                    W + (int64_t)min(n0 + rt * 16 + h * 8 + g, p.n - 1) * p.ldw + q * 8 + (s0 + f_i) * 32,
                                    w_policy);
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
                cp_async16(d + (2 * RT + nt) * 32, xsrc[nt] + f_i * 32, xbytes[nt]);
            fetched++;
            if (++f_i == n_my) {
                f_i = 0;
                f_tile++;
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < S - 1; i++)
        fetch(i);
    /* MULTI: each thread's share of every tile's epilogue is 8 features of one token, e_tok. Its
     * slot is looked up now (the mapping is an input, final before lora_tpart_kernel released this
     * grid) and not used before the K loop's third step, so the lookup's latency hides behind the
     * stream and no thread waits for another's. */
    const int e_tok = threadIdx.x / E_GROUPS, e_f = threadIdx.x % E_GROUPS * 8;
    int e_slot = -1;
    if (MULTI && e_tok < p.m)
        e_slot = lf_token_slot(p.map, e_tok);
    const int e_rank = e_slot >= 0 ? p.map.slots[e_slot].rank : 0;
    const float e_scale = e_slot >= 0 ? p.map.slots[e_slot].scale : 0.0f;
    /* its B columns: e_j < N ≤ the set's row stride, a multiple of 8, so 16 bytes lie inside a row */
    const T *e_b = B + (int64_t)max(e_slot, 0) * p.r * p.ldb + e_f;

    int L = 0; /* steps consumed */
    for (int tl = 0; tl < my_tiles; tl++) {
        const int n0 = ((int)blockIdx.x + tl * (int)gridDim.x) * ROWS;
        const int e_j = n0 + e_f;
        const bool e_live = MULTI && e_tok < p.m && e_j < p.n; /* rank 0: no adapter, y still written */
        /* One adapter: B rows of the tile, [feature][rank] flattened, in flight during the K loop. */
        float bpre[MULTI ? 1 : BPT];
        if (!MULTI)
#pragma unroll
            for (int u = 0; u < BPT; u++) {
                const int idx = threadIdx.x + u * LF_CUDA_THREADS, f = idx / p.r;
                bpre[u] = idx < ROWS * p.r && n0 + f < p.n ? lf_dt<T>::load(B + (int64_t)(n0 + f) * p.ldb + idx % p.r)
                                                            : 0.0f;
            }
        float acc[RT][NT][4];
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++)
                    acc[rt][nt][c] = 0.0f;
        for (int i = 0; i < n_my; i++, L++) {
            fetch((L + S - 1) % S); /* refills the slot this lane consumed in the previous step */
            cp_async_wait<S - 1>(); /* step L's group has landed (this lane's own copies) */
            /* MULTI: this thread's B lines of the tile into L2 (16 bytes of a 32- or 64-byte run at a
             * multiple of its size: one 128-byte line per rank), for the loads after the loop */
            if (MULTI && i == min(2, n_my - 1) && e_live) /* none when the token has no adapter */
                for (int t = 0; t < e_rank; t++)
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(e_b + (int64_t)t * p.ldb + n0));
            const uint4 *st = my + (L % S) * C * 32;
            uint4 wv[RT][2], xv[NT];
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    wv[rt][h] = st[(rt * 2 + h) * 32];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
                xv[nt] = st[(2 * RT + nt) * 32];
            decode_step<T, NT, RT>(acc, wv, xv);
        }
        if (warp == WARPS - 1 && p.k % 32) { /* K tail, zero-filled: the last warp has the least work */
            const int kb = steps * 32 + q * 8;
            uint4 wv[RT][2], xv[NT];
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    wv[rt][h] = load8_masked<T>(W + (int64_t)min(n0 + rt * 16 + h * 8 + g, p.n - 1) * p.ldw +
                                                    q * 8 + steps * 32,
                                                kb, p.k);
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
                xv[nt] = load8_masked<T>(X + (int64_t)min(nt * 8 + g, p.m - 1) * p.ldx + q * 8 + steps * 32, kb, p.k);
            decode_step<T, NT, RT>(acc, wv, xv);
        }
        /* MULTI: the B columns of this thread's first E_RANKS ranks, all loaded at once, so that
         * the reduction below covers their latency (L2 hits after the prefetch in the loop). */
        uint4 bv[MULTI ? E_RANKS : 1];
        if (MULTI && e_live)
#pragma unroll
            for (int t = 0; t < E_RANKS; t++)
                if (t < e_rank)
                    bv[t] = *(const uint4 *)(e_b + (int64_t)t * p.ldb + n0);

        /* Sum the 8 warps' partial products in a fixed tree: 4..7 onto 0..3, 2..3 onto 0..1, 1 onto 0. */
#pragma unroll
        for (int half = WARPS / 2; half >= 1; half /= 2) {
            if (warp >= half && warp < 2 * half)
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
#pragma unroll
                        for (int c = 0; c < 4; c++)
                            red[warp - half][rt][nt][c][lane] = acc[rt][nt][c];
            __syncthreads();
            if (warp < half)
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
#pragma unroll
                        for (int c = 0; c < 4; c++)
                            acc[rt][nt][c] += red[warp][rt][nt][c][lane];
            __syncthreads();
        }
        if (warp == 0)
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int c = 0; c < 4; c++) /* accumulator c: feature g (+8 for c ≥ 2), token 2q + (c & 1) */
                        out_s[nt * 8 + 2 * q + (c & 1)][rt * 16 + g + (c >> 1) * 8] = acc[rt][nt][c];
        if (!MULTI)
#pragma unroll
            for (int u = 0; u < BPT; u++) { /* rows padded by one: the epilogue's lanes read distinct banks */
                const int idx = threadIdx.x + u * LF_CUDA_THREADS;
                if (idx < ROWS * p.r)
                    b_s[idx + idx / p.r] = bpre[u];
            }
        if (tl == 0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            lf_pdl_wait(); /* T is complete and visible from here on */
#endif
            for (int idx = threadIdx.x; idx < p.m * p.r; idx += blockDim.x) {
                float v = 0.0f; /* T = the sum of its K-slice partials, in slice order */
                for (int z = 0; z < p.tsplit; z++)
                    v += p.t[z * p.tstride + idx];
                t_sh[idx] = v;
            }
        }
        __syncthreads();

        if constexpr (MULTI) {
            if (e_live) {
                const float *tr = t_sh + e_tok * p.r;
                float lora[8] = {};
                auto add_rank = [&](int t, const uint4 &v) {
                    const T *e = (const T *)&v;
#pragma unroll
                    for (int c = 0; c < 8; c++)
                        lora[c] = fmaf(tr[t], lf_dt<T>::to_f32(e[c]), lora[c]);
                };
#pragma unroll
                for (int t = 0; t < E_RANKS; t++)
                    if (t < e_rank)
                        add_rank(t, bv[t]);
#pragma unroll 4
                for (int t = E_RANKS; t < e_rank; t++)
                    add_rank(t, *(const uint4 *)(e_b + (int64_t)t * p.ldb + n0));
#pragma unroll
                for (int c = 0; c < 8; c++)
                    if (e_j + c < p.n)
                        store_out<T>(p, e_tok, e_j + c, fmaf(e_scale, lora[c], out_s[e_tok][e_f + c]));
            }
        } else {
            for (int idx = threadIdx.x; idx < p.m * ROWS; idx += blockDim.x) {
                const int tok = idx / ROWS, f = idx % ROWS, j = n0 + f;
                if (j >= p.n)
                    continue;
                const float *tr = t_sh + tok * p.r, *br = b_s + f * (p.r + 1);
                float lora = 0.0f;
                for (int t = 0; t < p.r; t++)
                    lora = fmaf(tr[t], br[t], lora);
                store_out<T>(p, tok, j, fmaf(p.scale, lora, out_s[tok][f]));
            }
        }
        __syncthreads(); /* out_s and b_s are rewritten by the next tile */
    }
}

/* ---- launchers ------------------------------------------------------------------------------- */

stage_cfg make_cfg(int bm, int rc, int kc, int bn)
{
    stage_cfg c;
    c.bm = bm;
    c.rc = rc;
    c.kc = kc;
    c.splits = lf_cuda_shrink_splits(bm, rc);
    c.ld_s = lf_cuda_stage_ld(kc, bm, rc);
    c.bn = bn;
    return c;
}

/* Launches kernel with LF_CUDA_THREADS threads, with programmatic dependent launch when pdl. */
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, size_t smem, bool pdl, cudaStream_t st, Args... args)
{
    return lf_cuda_launch(kernel, grid, LF_CUDA_THREADS, smem, pdl, st, args...);
}

template <typename T, bool KN, bool VEC, int BM>
void launch_delta_bm(const lora_args &p, const stage_cfg &c, dim3 grid, size_t smem, bool pdl, cudaStream_t st)
{
    if (c.bn <= LF_CUDA_THREADS && p.r <= LF_DELTA_PRE_R)
        launch(lora_delta_kernel<T, KN, VEC, BM, true>, grid, smem, pdl, st, p, c);
    else
        launch(lora_delta_kernel<T, KN, VEC, BM, false>, grid, smem, pdl, st, p, c);
}

template <typename T, bool KN, bool VEC>
void launch_delta_t(const lora_args &p, const stage_cfg &c, int bm, bool pdl, cudaStream_t st)
{
    dim3 grid((unsigned)((p.m + bm - 1) / bm), (unsigned)((p.n + c.bn - 1) / c.bn));
    size_t smem = (size_t)bm * p.r * 4;
    if (!p.t)
        smem = (size_t)lf_cuda_shrink_smem(bm, p.r, c.kc);
    switch (bm) {
    case 4:
        launch_delta_bm<T, KN, VEC, 4>(p, c, grid, smem, pdl, st);
        break;
    case 8:
        launch_delta_bm<T, KN, VEC, 8>(p, c, grid, smem, pdl, st);
        break;
    default:
        launch_delta_bm<T, KN, VEC, 16>(p, c, grid, smem, pdl, st);
        break;
    }
}

/* One instantiation of the decode kernel with its shape, for the launch and the setup alike. */
struct decode_kernel_ref {
    void (*fn)(lora_args);
    int per_sm, smem;
};
template <typename T, int NT, int RT, bool MULTI> decode_kernel_ref decode_ref()
{
    return {lora_decode_kernel<T, NT, RT, MULTI>, decode_shape<NT, RT>::PER_SM, decode_shape<NT, RT>::SMEM};
}
template <typename T, int RT, bool MULTI> decode_kernel_ref decode_ref_nt(int nt)
{
    if constexpr (MULTI) /* lf_cuda_multi_decode_wins: a few tokens, at most 16 columns */
        return nt == 1 ? decode_ref<T, 1, RT, true>() : decode_ref<T, 2, RT, true>();
    return nt == 1 ? decode_ref<T, 1, RT, false>() : nt == 2 ? decode_ref<T, 2, RT, false>() : decode_ref<T, 4, RT, false>();
}
template <typename T, bool MULTI> decode_kernel_ref decode_ref_rt(int rt, int nt)
{
    return rt == 2 ? decode_ref_nt<T, 2, MULTI>(nt) : decode_ref_nt<T, 1, MULTI>(nt);
}
/* dtype: bf16 or f16; rt: lf_cuda_decode_rt (1 or 2); nt: lf_cuda_decode_nt (1, 2 or 4; ≤ 2 when multi). */
decode_kernel_ref decode_ref(lf_dtype dtype, int rt, int nt, bool multi)
{
    if (dtype == LF_BF16)
        return multi ? decode_ref_rt<__nv_bfloat16, true>(rt, nt) : decode_ref_rt<__nv_bfloat16, false>(rt, nt);
    return multi ? decode_ref_rt<__half, true>(rt, nt) : decode_ref_rt<__half, false>(rt, nt);
}

/* The decode layer: lora_tpart_kernel writes T's K-slice partials into t_ws, and the decode kernel,
 * launched behind it with PDL, streams W meanwhile and waits for T before its first epilogue. */
cudaError_t launch_decode_layer(lf_dtype dtype, lora_args a, int rt, int nt, int slices, bool multi, float *t_ws,
                                int sm_count, bool pdl, cudaStream_t st)
{
    void (*tpart)(lora_args, float *) = dtype == LF_BF16 ? (multi ? lora_tpart_kernel<__nv_bfloat16, true>
                                                                   : lora_tpart_kernel<__nv_bfloat16, false>)
                                                         : (multi ? lora_tpart_kernel<__half, true>
                                                                  : lora_tpart_kernel<__half, false>);
    const cudaError_t e = launch(tpart, dim3((unsigned)a.r, (unsigned)slices, (unsigned)((a.m + TP_TOKENS - 1) / TP_TOKENS)),
                                 0, pdl, st, a, t_ws);
    if (e != cudaSuccess)
        return e;
    a.t = t_ws;
    a.tsplit = slices;
    a.tstride = (int64_t)a.m * a.r;
    const decode_kernel_ref k = decode_ref(dtype, rt, nt, multi);
    return launch(k.fn, dim3((unsigned)lf_cuda_decode_grid(a.n, rt, k.per_sm * sm_count)), (size_t)k.smem, pdl, st, a);
}

/* Dispatch over dtype, layout and vector loads for the delta and shrink launchers. */
template <template <typename, bool, bool> class F, typename... Args> void by_type(const lf_plan_key &key, Args &&...a)
{
    const bool kn = key.layout == LF_LAYOUT_KN, vec = (key.flags & LF_PLAN_ALIGNED16) != 0;
#define LF_BY_TYPE_CASE(T)                                                                           \
    if (kn && vec)                                                                                   \
        F<T, true, true>::run(a...);                                                                 \
    else if (kn)                                                                                     \
        F<T, true, false>::run(a...);                                                                \
    else if (vec)                                                                                    \
        F<T, false, true>::run(a...);                                                                \
    else                                                                                             \
        F<T, false, false>::run(a...);
    switch (key.dtype) {
    case LF_F32:
        LF_BY_TYPE_CASE(float);
        break;
    case LF_F16:
        LF_BY_TYPE_CASE(__half);
        break;
    case LF_BF16:
        LF_BY_TYPE_CASE(__nv_bfloat16);
        break;
    }
#undef LF_BY_TYPE_CASE
}

template <typename T, bool KN, bool VEC> struct delta_fn {
    static void run(const lora_args &p, const stage_cfg &c, int bm, bool pdl, cudaStream_t st)
    {
        launch_delta_t<T, KN, VEC>(p, c, bm, pdl, st);
    }
};
template <typename T, bool KN, bool VEC> struct epilogue_fn {
    template <int RR> static void run_rr(const lora_args &p, bool pdl, cudaStream_t st)
    {
        dim3 grid((unsigned)((p.n + EPI_BN - 1) / EPI_BN), (unsigned)((p.m + 4 * RR - 1) / (4 * RR)));
        if (VEC && p.ldbase % 4 == 0) /* 16-byte loads of base need its rows 16-byte aligned too */
            launch(lora_epilogue_kernel<T, KN, true, RR>, grid, 0, pdl, st, p);
        else
            launch(lora_epilogue_kernel<T, KN, false, RR>, grid, 0, pdl, st, p);
    }
    static void run(const lora_args &p, bool pdl, cudaStream_t st)
    {
        if (lf_cuda_epilogue_rows(p.m) == 8)
            run_rr<8>(p, pdl, st);
        else
            run_rr<4>(p, pdl, st);
    }
};
template <typename T, bool KN, bool VEC> struct shrink_fn {
    static void run(const lora_args &p, const stage_cfg &c, float *t_out, bool pdl, cudaStream_t st)
    {
        dim3 grid((unsigned)((p.m + c.bm - 1) / c.bm), (unsigned)((p.r + c.rc - 1) / c.rc));
        launch(lora_shrink_kernel<T, KN, VEC>, grid, (size_t)lf_cuda_shrink_smem(c.bm, c.rc, c.kc), pdl, st, p, c,
               t_out);
    }
};

lora_args args_of(const lf_lora_problem *p)
{
    lora_args a = {};
    a.m = (int)p->m;
    a.k = (int)p->k;
    a.n = (int)p->n;
    a.r = (int)p->rank;
    a.x = p->x;
    a.ldx = p->ldx;
    a.w = p->w;
    a.ldw = p->ldw;
    a.a = p->a;
    a.lda = p->lda;
    a.b = p->b;
    a.ldb = p->ldb;
    a.bias = p->bias;
    a.scale = p->scale;
    a.beta = p->beta;
    a.y = p->y;
    a.ldy = p->ldy;
    return a;
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

/* The delta plan params:
 *   small: {LF_CUDA_DELTA_SMALL, -, -, -, pdl}   T-split: {LF_CUDA_DELTA_TSPLIT, K-slices of T, -, -, pdl}
 *   fused: {LF_CUDA_DELTA_FUSED, bm, bn, kc, pdl}   two-kernel: {LF_CUDA_DELTA_TWO, shrink bm, rc, kc, pdl}
 * (the two-kernel expand takes bm = 8 and bn from heuristics.h). Returns the bytes of T it needs. */
size_t plan_delta(const lf_plan_key &key, const lf_cuda_state *cs, int64_t *param)
{
    const int64_t m = key.m, k = key.k, n = key.n, r = key.rank;
    param[4] = cs->cc_major >= 9;
    if (lf_cuda_delta_small_fits(key.dtype, key.layout, key.flags, k, r)) {
        param[0] = LF_CUDA_DELTA_SMALL;
        return 0;
    }
    if ((key.flags & LF_PLAN_STRIDES_INT) && lf_cuda_delta_tsplit_wins(k)) {
        param[0] = LF_CUDA_DELTA_TSPLIT;
        param[1] = lf_cuda_gemm_t_splits(m, k);
        return align256((size_t)param[1] * m * r * 4);
    }
    if (lf_cuda_delta_fused_fits(m, k, n, r)) {
        const int bm = lf_cuda_delta_bm(m);
        param[0] = LF_CUDA_DELTA_FUSED;
        param[1] = bm;
        param[2] = lf_cuda_delta_bn(n);
        param[3] = lf_cuda_pick_kc(k, bm, (int)r);
        return 0;
    }
    const lf_cuda_shrink_cfg s = lf_cuda_shrink_pick(m, k, r, cs->sm_count);
    param[0] = LF_CUDA_DELTA_TWO;
    param[1] = s.bm;
    param[2] = s.rc;
    param[3] = s.kc;
    return align256((size_t)m * r * 4);
}

/* T = x·Aᵀ by one strided-batched cuBLAS call over `splits` K-slices of a's problem: partial sums
 * [splits][m][r] in fp32 into t (a thin, deep product runs on `splits` times more blocks). */
lf_status t_slices(lf_context *ctx, const lf_plan_key &key, const lora_args &a, int splits, float *t)
{
    const int w_nk = key.layout == LF_LAYOUT_PEFT;
    const int64_t ks = a.k / splits, ldx = a.m == 1 ? a.k : a.ldx; /* cuBLAS: the smallest valid stride */
    return lf_cuda_gemm_xwt_ksplit(ctx, lf_cuda_data_type(key.dtype), w_nk, a.m, a.r, ks, splits, a.x, ldx, ks, a.a,
                                   a.lda, w_nk ? ks : ks * a.lda, t, a.r, (int64_t)a.m * a.r);
}

/* Runs the delta sub-plan; t_ws is the T buffer. */
lf_status run_delta(lf_context *ctx, const lf_plan_key &key, const int64_t *param, lora_args a, float *t_ws,
                    cudaStream_t st)
{
    const bool pdl = param[4] != 0;
    if (param[0] == LF_CUDA_DELTA_SMALL) {
        const dim3 grid((unsigned)((a.m + SM_BM - 1) / SM_BM), (unsigned)((a.n + SM_BN - 1) / SM_BN));
        if (key.dtype == LF_F32)
            launch(lora_delta_small_kernel<float>, grid, 0, pdl, st, a);
        else if (key.dtype == LF_F16)
            launch(lora_delta_small_kernel<__half>, grid, 0, pdl, st, a);
        else
            launch(lora_delta_small_kernel<__nv_bfloat16>, grid, 0, pdl, st, a);
    } else if (param[0] == LF_CUDA_DELTA_FUSED) {
        by_type<delta_fn>(key, a, make_cfg((int)param[1], a.r, (int)param[3], (int)param[2]), (int)param[1], pdl, st);
    } else if (param[0] == LF_CUDA_DELTA_TSPLIT) {
        const lf_status s = t_slices(ctx, key, a, (int)param[1], t_ws);
        if (s != LF_OK)
            return s;
        a.t = t_ws;
        a.tsplit = (int)param[1];
        a.tstride = (int64_t)a.m * a.r;
        by_type<epilogue_fn>(key, a, pdl, st);
    } else {
        by_type<shrink_fn>(key, a, make_cfg((int)param[1], (int)param[2], (int)param[3], 0), t_ws, pdl, st);
        a.t = t_ws;
        by_type<delta_fn>(key, a, make_cfg(8, a.r, 0, lf_cuda_delta_bn(a.n)), 8, pdl, st);
    }
    LF_CUDA_CHECK_LAUNCH(ctx);
    return LF_OK;
}

} /* namespace */

void lf_cuda_lora_fwd_setup(lf_cuda_state *state)
{
    /* The rings take up to ~200 KB: Hopper and A100 have it, sm_86/89 (99 KB) do not, and there the
     * plan takes the GEMM path instead. */
    cudaError_t e = cudaSuccess;
    for (lf_dtype dt : {LF_BF16, LF_F16})
        for (int rt = 1; rt <= 2; rt++)
            for (int nt = 1; nt <= 4; nt *= 2)
                for (bool multi : {false, true}) {
                    if (multi && nt > 2)
                        continue;
                    const decode_kernel_ref k = decode_ref(dt, rt, nt, multi);
                    if (e == cudaSuccess)
                        e = cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, k.smem);
                }
    if (e != cudaSuccess)
        cudaGetLastError();
    state->decode_ok = e == cudaSuccess;
    /* The Hopper kernel's control words must outlive every call and belong to no plan: the workspace
     * is shared by all plans of the context, and any of them may overwrite it between two Hopper
     * calls. They are carved off the end of the context's cuBLAS workspace (cuBLAS is bound to the
     * rest: cublas_bind) and zeroed once here, so the first launch finds a consistent generation. */
    static_assert(LF_CUDA_HOPPER_MAX_M == LF_HOPPER_MAX_M, "heuristics.h and lora_hopper.cuh agree on M");
    /* The plain-load stream's control words (its launches' epoch, its T workers' values) follow,
     * for the same reasons. */
    const size_t hopper_bytes = (LF_HOPPER_CTL_WORDS * sizeof(unsigned) + 255) / 256 * 256;
    const size_t ctl_bytes = hopper_bytes + (LF_STREAM_CTL_WORDS * sizeof(unsigned) + 255) / 256 * 256;
    state->hopper_ok = 0;
    state->stream_ok = 0;
    if (state->cublas_ws && state->cublas_ws_bytes >= 16 * ctl_bytes && lf_hopper_setup()) {
        unsigned *ctl = (unsigned *)((char *)state->cublas_ws + state->cublas_ws_bytes - ctl_bytes);
        if (cudaMemsetAsync(ctl, 0, ctl_bytes, state->own_stream) == cudaSuccess &&
            cudaStreamSynchronize(state->own_stream) == cudaSuccess) {
            state->cublas_ws_bytes -= ctl_bytes;
            state->hopper_ctl = ctl;
            state->hopper_ok = 1;
            state->stream_ctl = (unsigned *)((char *)ctl + hopper_bytes);
            state->stream_ok = lf_stream_setup();
            for (int split = 1; split <= 8; split++)
                state->hopper_mid_slots[split] = lf_hopper_mid_slots(split);
        } else {
            cudaGetLastError();
        }
    }
}

/* Plan params (PDL: launch with programmatic dependent launch, sm_90 and up):
 *   DELTA_*: see plan_delta
 *   DECODE: {rt, nt, K-slices of T, -, -, PDL}
 *   HOPPER: none (lora_hopper.cu sizes its grid per call)
 *   HOPPER_MID: {split, PDL, tile width}
 *   HOPPER_DECODE: none (PDL always: sm_90a)
 *   STREAM: none (PDL always: it runs where hopper_ok, compute capability 9.0)
 *   GEMM:   {chunk rows, PDL, K-slices of T, f32 with the small delta kernel as epilogue} */
lf_status lf_cuda_lora_plan(lf_context *ctx, const lf_lora_problem *p, lf_plan *plan)
{
    const lf_cuda_state *cs = lf_cuda_state_of(ctx);
    const lf_plan_key *key = &plan->key;
    if (p->m > INT_MAX / 2 || p->k > INT_MAX / 2 || p->n > INT_MAX / 2)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_lora_forward (cuda): sizes beyond 2^30 are not supported "
                       "(M %lld, K %lld, N %lld)", (long long)p->m, (long long)p->k, (long long)p->n);
    const int64_t m = p->m, k = p->k, n = p->n, r = p->rank;
    size_t ws = 0;
    int bn = 0;
    if (!(key->flags & LF_PLAN_HAS_W)) {
        ws = plan_delta(*key, cs, plan->param);
        plan->impl = (int)plan->param[0];
    } else if (cs->stream_ok && lf_cuda_stream_fits(key->dtype, key->layout, key->flags, m, k, n, r, cs->sm_count)) {
        plan->impl = LF_CUDA_STREAM;
    } else if (cs->hopper_ok && lf_cuda_hopper_decode_fits(key->dtype, key->layout, key->flags, m, n, r, cs->sm_count)) {
        plan->impl = LF_CUDA_HOPPER_DECODE;
    } else if (cs->decode_ok && lf_cuda_decode_fits(key->dtype, key->layout, key->flags, m, n, r, cs->sm_count)) {
        plan->impl = LF_CUDA_DECODE;
        plan->param[1] = lf_cuda_decode_nt(m);
        plan->param[0] = lf_cuda_decode_rt((int)plan->param[1], n, cs->sm_count);
        plan->param[2] = lf_cuda_decode_t_slices(k);
        plan->param[5] = cs->cc_major >= 9;
        ws = align256((size_t)plan->param[2] * m * r * 4);
    } else if (cs->hopper_ok && lf_cuda_hopper_fits(key->dtype, key->layout, key->flags, m, n, r, cs->sm_count)) {
        plan->impl = LF_CUDA_HOPPER;
        ws = lf_hopper_workspace_bytes(m, r);
    } else if (cs->hopper_ok && (plan->param[0] = lf_cuda_hopper_mid_split(key->dtype, key->layout, key->flags, m, k,
                                                                            n, r, cs->hopper_mid_slots, &bn)) > 0) {
        plan->impl = LF_CUDA_HOPPER_MID;
        plan->param[1] = cs->cc_major >= 9;
        plan->param[2] = bn;
    } else {
        if (!(key->flags & LF_PLAN_STRIDES_INT)) /* in the key: a cached plan never skips this */
            return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_lora_forward (cuda): row strides beyond 2^31 - 1 are not "
                           "supported for M = %lld (cuBLAS takes 32-bit leading dimensions)", (long long)m);
        plan->impl = LF_CUDA_GEMM;
        plan->param[0] = key->dtype == LF_F32 ? m : lf_cuda_gemm_chunk_rows(m, n);
        plan->param[1] = cs->cc_major >= 9;
        plan->param[2] = lf_cuda_gemm_t_splits(m, k);
        plan->param[3] = key->dtype == LF_F32 && lf_cuda_delta_small_fits(key->dtype, key->layout, key->flags, k, r);
        ws = plan->param[3] ? 0 : align256((size_t)plan->param[2] * m * r * 4);
        if (key->dtype != LF_F32)
            ws += (size_t)plan->param[0] * n * 4;
    }
    plan->workspace_bytes = ws;
    return LF_OK;
}

lf_status lf_cuda_lora_forward(lf_context *ctx, const lf_plan *plan, const lf_lora_problem *p)
{
    const cudaStream_t st = lf_cuda_stream(ctx);
    const lf_plan_key &key = plan->key;
    lora_args a = args_of(p);
    float *ws = (float *)ctx->workspace;
    switch (plan->impl) {
    case LF_CUDA_DELTA_SMALL:
    case LF_CUDA_DELTA_FUSED:
    case LF_CUDA_DELTA_TWO:
    case LF_CUDA_DELTA_TSPLIT:
        return run_delta(ctx, key, plan->param, a, ws, st);
    case LF_CUDA_DECODE:
        LF_CUDA_CHECK(ctx, launch_decode_layer(key.dtype, a, (int)plan->param[0], (int)plan->param[1],
                                               (int)plan->param[2], false, ws, lf_cuda_state_of(ctx)->sm_count,
                                               plan->param[5] != 0, st));
        return LF_OK;
    case LF_CUDA_HOPPER: {
        const lf_cuda_state *cs = lf_cuda_state_of(ctx);
        LF_CUDA_CHECK(ctx, lf_hopper_launch(p, ctx->workspace, cs->hopper_ctl, lf_cuda_compute_sms(cs), st));
        return LF_OK;
    }
    case LF_CUDA_HOPPER_MID:
        LF_CUDA_CHECK(ctx, lf_hopper_mid_launch(p, (int)plan->param[0], (int)plan->param[2], plan->param[1] != 0, st));
        return LF_OK;
    case LF_CUDA_STREAM: {
        const lf_cuda_state *cs = lf_cuda_state_of(ctx);
        LF_CUDA_CHECK(ctx, lf_stream_launch(p, cs->stream_ctl, cs->sm_count, true, st));
        return LF_OK;
    }
    case LF_CUDA_HOPPER_DECODE: /* PDL: its prologue overlaps the kernel before it (sm_90a) */
        LF_CUDA_CHECK(ctx, lf_hopper_decode_launch(p, lf_cuda_state_of(ctx)->sm_count, true, st));
        return LF_OK;
    case LF_CUDA_GEMM: {
        /* T = x·Aᵀ and x·Wᵀ through cuBLAS (fp32 out), then one bandwidth-bound epilogue adds
         * s·T·Bᵀ, bias and beta·y and rounds once. */
        const int w_nk = key.layout == LF_LAYOUT_PEFT;
        const cudaDataType_t in = lf_cuda_data_type(p->dtype);
        const int splits = (int)plan->param[2];
        /* A single row's stride is never used, and cuBLAS takes ints: pass the smallest valid one. */
        const int64_t ldx = p->m == 1 ? p->k : p->ldx, ldy = p->m == 1 ? p->n : p->ldy;
        if (plan->param[3]) { /* f32, short K: cuBLAS x·Wᵀ + beta·y into y, then the one-round-trip
                               * delta adds s·T·Bᵀ + bias to it (two launches; the seed's layer) */
            lf_status s = lf_cuda_gemm_xwt(ctx, in, CUDA_R_32F, w_nk, p->m, p->n, p->k, p->x, ldx, p->w, p->ldw,
                                           p->beta, p->y, ldy);
            if (s != LF_OK)
                return s;
            a.beta = 1.0f;
            const dim3 grid((unsigned)((a.m + SM_BM - 1) / SM_BM), (unsigned)((a.n + SM_BN - 1) / SM_BN));
            launch(lora_delta_small_kernel<float>, grid, 0, plan->param[1] != 0, st, a);
            LF_CUDA_CHECK_LAUNCH(ctx);
            return LF_OK;
        }
        lf_status s = t_slices(ctx, key, a, splits, ws);
        if (s != LF_OK)
            return s;
        a.t = ws;
        a.tsplit = splits;
        a.tstride = p->m * p->rank;
        if (key.dtype == LF_F32) { /* cuBLAS folds beta·y in; the epilogue adds the rest in place */
            s = lf_cuda_gemm_xwt(ctx, in, CUDA_R_32F, w_nk, p->m, p->n, p->k, p->x, ldx, p->w, p->ldw, p->beta, p->y,
                                 ldy);
            if (s != LF_OK)
                return s;
            a.base = (const float *)p->y;
            a.ldbase = p->ldy;
            a.beta = 0.0f;
            by_type<epilogue_fn>(key, a, plan->param[1] != 0, st);
            LF_CUDA_CHECK_LAUNCH(ctx);
            return LF_OK;
        }
        /* 16-bit: x·Wᵀ in fp32 into the workspace, in chunks of rows that bound its size
         * (heuristics.h: lf_cuda_gemm_chunk_rows). */
        float *base = (float *)((char *)ctx->workspace + align256((size_t)splits * p->m * p->rank * 4));
        const size_t es = lf_dtype_size(p->dtype);
        for (int64_t m0 = 0; m0 < p->m; m0 += plan->param[0]) {
            const int64_t rows = p->m - m0 < plan->param[0] ? p->m - m0 : plan->param[0];
            s = lf_cuda_gemm_xwt(ctx, in, CUDA_R_32F, w_nk, rows, p->n, p->k, (const char *)p->x + (size_t)(m0 * p->ldx) * es,
                                 ldx, p->w, p->ldw, 0.0f, base, p->n);
            if (s != LF_OK)
                return s;
            lora_args c = a;
            c.m = (int)rows;
            c.t = ws + m0 * p->rank;
            c.y = (char *)p->y + (size_t)(m0 * p->ldy) * es;
            c.base = base;
            c.ldbase = p->n;
            by_type<epilogue_fn>(key, c, plan->param[1] != 0, st);
            LF_CUDA_CHECK_LAUNCH(ctx);
        }
        return LF_OK;
    }
    }
    return lf_fail(ctx, LF_ERR_INTERNAL, "lf_lora_forward (cuda): plan has unknown implementation %d", plan->impl);
}

/* The bench's own base GEMM (lf_backend_ops.own_base_gemm): the Hopper kernel without its LoRA term,
 * y = beta·y + x·Wᵀ + bias, for a problem whose layer the plan sends to that kernel. */
lf_status lf_cuda_own_base_gemm(lf_context *ctx, const lf_lora_problem *p)
{
    const lf_plan *plan;
    const lf_status s = lf_plan_get(ctx, p, &plan);
    if (s != LF_OK)
        return s;
    if (plan->impl != LF_CUDA_HOPPER)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED,
                       "own base GEMM: the plan runs this layer without the Hopper kernel (it needs compute "
                       "capability 9.0, a 16-bit PEFT layer, rank ≤ 64 and tiles for the SMs)");
    lf_lora_problem q = *p;
    q.rank = 0;
    q.a = q.b = NULL;
    const lf_cuda_state *cs = lf_cuda_state_of(ctx);
    LF_CUDA_CHECK(ctx, lf_hopper_launch(&q, NULL, cs->hopper_ctl, cs->sm_count, lf_cuda_stream(ctx)));
    return LF_OK;
}

/* A many-adapter layer whose x, W and set rows the decode-size forms read in 16-byte chunks: the
 * set's storage is 16-byte aligned with 16-byte rows by construction; x and W must be too. */
static bool multi_layer_aligned16(const lf_multi_problem *q)
{
    const size_t es = lf_dtype_size(q->dtype);
    const lf_adapter_set *set = q->set;
    return q->w && (uintptr_t)q->x % 16 == 0 && (uintptr_t)q->w % 16 == 0 && (q->ldx * es) % 16 == 0 &&
           (q->ldw * es) % 16 == 0 && (uintptr_t)set->a % 16 == 0 && (uintptr_t)set->b % 16 == 0 &&
           (set->lda * es) % 16 == 0 && (set->ldb * es) % 16 == 0;
}

/* The many-adapter layer at decode sizes (lora_multi.cu): the decode kernels' MULTI form. */
bool lf_cuda_decode_multi_fits(lf_context *ctx, const lf_multi_problem *q)
{
    const lf_adapter_set *set = q->set;
    return multi_layer_aligned16(q) && lf_cuda_state_of(ctx)->decode_ok && lf_cuda_multi_decode_wins(q->m) &&
           lf_cuda_decode_fits(q->dtype, q->layout, LF_PLAN_ALIGNED16, q->m, q->n, set->max_rank,
                               lf_cuda_state_of(ctx)->sm_count);
}

bool lf_cuda_multi_stream_fits(lf_context *ctx, const lf_multi_problem *q)
{
    const lf_cuda_state *cs = lf_cuda_state_of(ctx);
    return multi_layer_aligned16(q) && q->layout == LF_LAYOUT_PEFT && cs->stream_ok &&
           lf_cuda_stream_multi_fits(q->dtype, q->m, q->k, q->n, q->set->max_rank, cs->sm_count);
}

lf_status lf_cuda_multi_stream(lf_context *ctx, const lf_multi_problem *q)
{
    const lf_cuda_state *cs = lf_cuda_state_of(ctx);
    LF_CUDA_CHECK(ctx, lf_stream_multi_launch(q, cs->stream_ctl, cs->sm_count, true, lf_cuda_stream(ctx)));
    return LF_OK;
}

size_t lf_cuda_decode_multi_workspace(const lf_multi_problem *q)
{
    return align256((size_t)lf_cuda_decode_t_slices(q->k) * q->m * q->set->max_rank * 4);
}

lf_status lf_cuda_decode_multi(lf_context *ctx, const lf_multi_problem *q, float *t_ws)
{
    const lf_cuda_state *cs = lf_cuda_state_of(ctx);
    const lf_adapter_set *set = q->set;
    lora_args a = {};
    a.m = (int)q->m, a.k = (int)q->k, a.n = (int)q->n, a.r = (int)set->max_rank;
    a.x = q->x, a.ldx = q->ldx, a.w = q->w, a.ldw = q->ldw;
    a.a = set->a, a.lda = set->lda, a.b = set->b, a.ldb = set->ldb;
    a.bias = q->bias, a.beta = q->beta, a.y = q->y, a.ldy = q->ldy;
    a.map.ids = q->token_adapter, a.map.seg_starts = q->seg_starts, a.map.seg_adapter = q->seg_adapter;
    a.map.segments = (int)q->segments, a.map.slots = set->slots, a.map.capacity = set->capacity;
    const int nt = lf_cuda_decode_nt(q->m);
    LF_CUDA_CHECK(ctx, launch_decode_layer(q->dtype, a, lf_cuda_decode_rt(nt, q->n, cs->sm_count), nt,
                                           (int)lf_cuda_decode_t_slices(q->k), true, t_ws, cs->sm_count,
                                           cs->cc_major >= 9, lf_cuda_stream(ctx)));
    return LF_OK;
}

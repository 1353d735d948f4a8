/*
 * lora_multi.cu — many adapters in one batch on CUDA (lf_lora_forward_multi / _segments), adapter
 * loads from device memory, and the unfused per-adapter loop the bench compares with.
 *
 * A call is two or three kernels, chained with programmatic dependent launch, and no host work that
 * needs device data (capture-safe, no synchronization, no allocation once the workspace is sized):
 *
 *   bucketing   each token's slot (per-token ids, or a binary search of the segment starts; an id
 *               out of range or naming an empty slot means none), tokens grouped by slot, and the
 *               groups cut into tiles of at most `tb` tokens: tile = (slot, start, count) over the
 *               permutation `perm`. M ≤ LF_MULTI_SMALL_M: every block of the two kernels below
 *               does it itself in shared memory (a stable sort, one token per thread, O(M) each);
 *               larger M: multi_bucket_kernel, one block, once, into the workspace.
 *   shrink      multi_shrink_kernel, blocks (K slice q, tile group g): for its tiles, stage
 *               A_slot[rank chunk][K slice] in shared memory once and compute the partial
 *               T[pos][j] = Σ_{k in slice} x[token]·A[j] for the tile's tokens (a warp per 4
 *               tokens, lanes along K, a fixed shuffle tree) into the workspace, [q][pos][j].
 *   expand      multi_expand_kernel, blocks (N slice, tile group g): for its tiles, T = scale·Σ_q
 *               partials (fixed order) into shared memory, then y[token][cols] = Σ_j T·B_slot[j]
 *               [+ bias] [+ base] [+ beta·y], rounded once. Its prologue (bucketing) runs before
 *               it waits for the shrink.
 *
 * Each adapter's A and B are read once per tile of tokens that use it (per K slice and per N slice
 * respectively), using the slot's own rank. Tokens without an adapter are in no shrink tile; the
 * expand visits them only when their y changes (beta ≠ 1, a bias, or the layer). Every sum has a
 * fixed order that does not depend on a token's position in its tile or on the other tokens: results
 * are bitwise reproducible, and identical between the per-token and the segment form.
 *
 * Layer: the bucketing and the shrink run on a side stream (fork and join by events, capture-safe)
 * beside the cuBLAS base GEMM x·Wᵀ into an fp32 buffer in the workspace; the expand then adds T·B,
 * bias and beta·y to it and rounds y once. At decode sizes the shrink hides behind the GEMM and
 * the expand is the only cost on top of it; at large M the fp32 buffer costs a write and a read
 * of M × N floats (the next step there: the expand inside the GEMM's epilogue).
 */
#include "common.cuh"
#include "launch.cuh"
#include "lora_multi.cuh"

#include <algorithm>
#include <limits.h>
#include <stdlib.h>

#define LF_MULTI_THREADS 256
#define LF_MULTI_SMALL_M 64   /* in-block bucketing: one token per thread, O(M) per thread */
#define LF_MULTI_RC 16        /* ranks per pass of shrink and expand (registers) */
#define LF_MULTI_KS_MAX 512   /* K slice of the shrink: RC × KS fp32 of A in shared memory */
#define LF_MULTI_TS_FLOATS 8192 /* T of one tile in the expand's shared memory: tb × max_rank */
#define LF_MULTI_BUCKET_THREADS 1024

namespace {

struct multi_args {
    int m, k, n;
    const void *x;
    int64_t ldx;
    void *y;
    int64_t ldy;
    const void *bias;
    const float *base; /* layer, small M: x·Wᵀ in fp32, [m][n] dense; NULL otherwise */
    float beta;
    const int32_t *ids; /* per-token form, or NULL */
    const int32_t *seg_starts, *seg_adapter;
    int segments;
    const void *a, *b; /* the set's storage */
    int64_t lda, ldb;
    int max_rank, capacity;
    const lf_adapter_slot *slots;
    int tb, ks, kslices, bn;
    int none_tiles;  /* the expand visits tokens without an adapter */
    float *tpart;    /* [kslices][m][max_rank] */
    int32_t *perm;   /* global bucketing: [m]; NULL: in-block */
    int4 *tiles;     /* global bucketing: tiles, and ntiles */
    int *ntiles;
    int32_t *bins;   /* global bucketing: each token's bin, [m] */
};

/* The slot token t uses, or -1 (none). */
__device__ int token_slot(const multi_args &p, int t)
{
    int id = -1;
    if (p.ids) {
        id = p.ids[t];
    } else if (p.segments > 0) {
        int lo = -1, hi = p.segments - 1; /* the last run whose start is <= t */
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (p.seg_starts[mid] <= t)
                lo = mid;
            else
                hi = mid - 1;
        }
        if (lo >= 0 && t < p.seg_starts[lo + 1])
            id = p.seg_adapter[lo];
    }
    if (id < 0 || id >= p.capacity || p.slots[id].rank <= 0)
        return -1;
    return id;
}

/* ---- bucketing ------------------------------------------------------------------------------- */

/* In-block result for M ≤ LF_MULTI_SMALL_M (every block computes the same, deterministically). */
struct small_buckets {
    int bin[LF_MULTI_THREADS];  /* token's slot, capacity for none, INT_MAX past M */
    int eqb[LF_MULTI_THREADS];  /* tokens of the same bin before it */
    int perm[LF_MULTI_THREADS]; /* sorted position -> token */
    int4 tiles[LF_MULTI_THREADS];
};

/* Stable sort of the tokens by bin (none last) and their tiles; returns the number of tiles. */
__device__ int bucket_in_block(const multi_args &p, small_buckets &sb)
{
    const int t = threadIdx.x;
    int s = INT_MAX;
    if (t < p.m) {
        const int slot = token_slot(p, t);
        s = slot < 0 ? p.capacity : slot;
    }
    sb.bin[t] = s;
    __syncthreads();
    int less = 0, eqb = 0, total = 0;
    if (t < p.m)
        for (int u = 0; u < p.m; u++) {
            const int v = sb.bin[u];
            less += v < s;
            eqb += v == s && u < t;
            total += v == s;
        }
    if (t < p.m) {
        sb.perm[less + eqb] = t;
        sb.eqb[t] = eqb;
    }
    __syncthreads();
    const bool starts = t < p.m && eqb % p.tb == 0;
    if (starts) {
        int idx = eqb / p.tb; /* tiles of smaller bins come first */
        for (int u = 0; u < p.m; u++)
            idx += sb.bin[u] < s && sb.eqb[u] % p.tb == 0;
        sb.tiles[idx] = make_int4(s == p.capacity ? -1 : s, less + eqb, min(p.tb, total - eqb), 0);
    }
    return __syncthreads_count(starts);
}

/* Block-wide exclusive scan of one int per thread (blockDim.x a multiple of 32); *total gets the sum. */
__device__ int block_exclusive_scan(int v, int *warp_sums, int *total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int inc = v;
    for (int o = 1; o < 32; o <<= 1) {
        const int u = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o)
            inc += u;
    }
    if (lane == 31)
        warp_sums[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        int w = lane < warps ? warp_sums[lane] : 0;
        for (int o = 1; o < 32; o <<= 1) {
            const int u = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o)
                w += u;
        }
        if (lane < warps)
            warp_sums[lane] = w; /* inclusive */
    }
    __syncthreads();
    const int before = (warp > 0 ? warp_sums[warp - 1] : 0) + inc - v;
    *total = warp_sums[warps - 1];
    __syncthreads(); /* warp_sums may be reused */
    return before;
}

/* M > LF_MULTI_SMALL_M: one block groups the tokens by bin (counting sort; the order inside a bin
 * may vary run to run, the results do not: no sum depends on a token's position) into p.perm and
 * writes the tiles. Bins: 0..capacity-1 the slots, capacity the tokens without an adapter. */
__global__ void __launch_bounds__(LF_MULTI_BUCKET_THREADS) multi_bucket_kernel(multi_args p)
{
    __shared__ int count[LF_MAX_ADAPTERS + 1], offset[LF_MAX_ADAPTERS + 1], toffset[LF_MAX_ADAPTERS + 1];
    __shared__ int warp_sums[32];
    lf_pdl_wait();
    lf_pdl_release();
    const int bins = p.capacity + 1;
    for (int b = threadIdx.x; b < bins; b += blockDim.x)
        count[b] = 0;
    __syncthreads();
    for (int t = threadIdx.x; t < p.m; t += blockDim.x) {
        const int slot = token_slot(p, t);
        const int b = slot < 0 ? p.capacity : slot;
        p.bins[t] = b;
        atomicAdd(&count[b], 1);
    }
    __syncthreads();
    /* Each thread scans a run of consecutive bins. */
    const int per = (bins + blockDim.x - 1) / blockDim.x, b0 = threadIdx.x * per;
    int tok = 0, til = 0;
    for (int b = b0; b < min(bins, b0 + per); b++) {
        tok += count[b];
        til += (count[b] + p.tb - 1) / p.tb;
    }
    int total_tok, total_tiles;
    int tok_before = block_exclusive_scan(tok, warp_sums, &total_tok);
    int til_before = block_exclusive_scan(til, warp_sums, &total_tiles);
    for (int b = b0; b < min(bins, b0 + per); b++) {
        offset[b] = tok_before;
        toffset[b] = til_before;
        tok_before += count[b];
        til_before += (count[b] + p.tb - 1) / p.tb;
    }
    __syncthreads();
    for (int b = threadIdx.x; b < bins; b += blockDim.x)
        for (int j = 0; j * p.tb < count[b]; j++)
            p.tiles[toffset[b] + j] =
                make_int4(b == p.capacity ? -1 : b, offset[b] + j * p.tb, min(p.tb, count[b] - j * p.tb), 0);
    if (threadIdx.x == 0)
        *p.ntiles = total_tiles;
    __syncthreads();
    for (int t = threadIdx.x; t < p.m; t += blockDim.x)
        p.perm[atomicAdd(&offset[p.bins[t]], 1)] = t;
}

/* The tile list of a block: from the in-block bucketing, or the global one (after the wait). */
struct tile_list {
    const int4 *tiles;
    const int *perm;
    int count;
};

/* ---- element access ------------------------------------------------------------------------ */

/* 4 consecutive elements as fp32; VEC: one aligned 8- or 16-byte load, else up to `valid` scalars. */
template <typename T, bool VEC> __device__ __forceinline__ float4 load4(const T *p, int valid)
{
    float4 r = make_float4(0.f, 0.f, 0.f, 0.f);
    if (VEC) {
        if (sizeof(T) == 4) {
            r = *(const float4 *)p;
        } else {
            const uint2 raw = *(const uint2 *)p;
            const T *e = (const T *)&raw;
            r = make_float4(lf_dt<T>::to_f32(e[0]), lf_dt<T>::to_f32(e[1]), lf_dt<T>::to_f32(e[2]),
                            lf_dt<T>::to_f32(e[3]));
        }
    } else {
        float *f = &r.x;
        for (int e = 0; e < 4 && e < valid; e++)
            f[e] = lf_dt<T>::load(p + e);
    }
    return r;
}

template <typename T, bool VEC> __device__ __forceinline__ void store4(T *p, float4 v, int valid)
{
    if (VEC) {
        if (sizeof(T) == 4) {
            *(float4 *)p = v;
        } else {
            uint2 raw;
            T *e = (T *)&raw;
            e[0] = lf_dt<T>::from_f32(v.x), e[1] = lf_dt<T>::from_f32(v.y);
            e[2] = lf_dt<T>::from_f32(v.z), e[3] = lf_dt<T>::from_f32(v.w);
            *(uint2 *)p = raw;
        }
    } else {
        const float *f = &v.x;
        for (int e = 0; e < 4 && e < valid; e++)
            p[e] = lf_dt<T>::from_f32(f[e]);
    }
}

/* ---- shrink ----------------------------------------------------------------------------------- */

/* Reduce-scatter of 64 values over a warp by a fixed butterfly: afterwards lane l holds the warp
 * sums of values 2l and 2l+1 in v[0], v[1]. 62 shuffles instead of 64 × 5; every value goes through
 * the same tree of additions, so none depends on its index. */
__device__ __forceinline__ void warp_reduce_scatter64(float (&v)[64])
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int step = 0; step < 5; step++) {
        const int o = 16 >> step, c = 32 >> step;
        const bool upper = (lane & o) != 0;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            if (i < c) {
                const float send = upper ? v[i] : v[i + c];
                const float keep = upper ? v[i + c] : v[i];
                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
            }
        }
    }
}

/* a_s[j·ld_s + kk] = A row j, elements [0, kspan) as fp32, for j < RC (rows >= rows_valid: 0).
 * Rows of the set start 16-byte aligned and the slice at a multiple of 8 elements: 16-byte loads,
 * LF_STAGE_LOADS of them issued before any is stored, so a stage costs one memory latency or two,
 * not one per element. A kspan that is not a multiple of the vector takes scalar loads. */
#define LF_STAGE_LOADS 4
template <typename T>
__device__ void stage_a(float *a_s, int ld_s, const T *a, int64_t lda, int rows_valid, int kspan)
{
    constexpr int VE = 16 / sizeof(T);
    if (kspan % VE == 0) {
        const int nv = kspan / VE, total = LF_MULTI_RC * nv;
        for (int base = threadIdx.x; base < total; base += LF_STAGE_LOADS * LF_MULTI_THREADS) {
            uint4 raw[LF_STAGE_LOADS];
#pragma unroll
            for (int u = 0; u < LF_STAGE_LOADS; u++) {
                const int idx = base + u * LF_MULTI_THREADS, j = idx / nv;
                raw[u] = idx < total && j < rows_valid ? *(const uint4 *)(a + (int64_t)j * lda + (idx % nv) * VE)
                                                       : make_uint4(0u, 0u, 0u, 0u);
            }
#pragma unroll
            for (int u = 0; u < LF_STAGE_LOADS; u++) {
                const int idx = base + u * LF_MULTI_THREADS;
                if (idx >= total)
                    break;
                const T *e = (const T *)&raw[u];
                float *d = a_s + (idx / nv) * ld_s + (idx % nv) * VE;
#pragma unroll
                for (int c = 0; c < VE; c++)
                    d[c] = lf_dt<T>::to_f32(e[c]);
            }
        }
    } else {
        for (int idx = threadIdx.x; idx < LF_MULTI_RC * kspan; idx += LF_MULTI_THREADS) {
            const int j = idx / kspan, kk = idx % kspan;
            a_s[j * ld_s + kk] = j < rows_valid ? lf_dt<T>::load(a + (int64_t)j * lda + kk) : 0.0f;
        }
    }
}

/* Partial T over K slice blockIdx.x for the tiles g, g + G, ... (g = blockIdx.y). */
template <typename T, bool VECX, bool GLOBAL>
__global__ void __launch_bounds__(LF_MULTI_THREADS, 2) multi_shrink_kernel(multi_args p)
{
    __shared__ small_buckets sb;
    extern __shared__ float4 a_s4[]; /* [RC][ks] fp32 */
    float *a_s = (float *)a_s4;
    lf_pdl_wait();
    lf_pdl_release();
    tile_list tl;
    if (GLOBAL) {
        tl.tiles = p.tiles, tl.perm = p.perm, tl.count = *p.ntiles;
    } else {
        tl.count = bucket_in_block(p, sb);
        tl.tiles = sb.tiles, tl.perm = sb.perm;
    }
    const int q = blockIdx.x, k0 = q * p.ks, kspan = min(p.ks, p.k - k0);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = LF_MULTI_THREADS / 32;
    constexpr int V = VECX ? 4 : 1; /* elements per lane step */
    const T *x = (const T *)p.x;
    for (int ti = blockIdx.y; ti < tl.count; ti += gridDim.y) {
        const int4 tile = tl.tiles[ti];
        if (tile.x < 0)
            break; /* tiles without an adapter come last */
        const int slot = tile.x, rank = p.slots[slot].rank;
        const T *a = (const T *)p.a + ((int64_t)slot * p.max_rank) * p.lda + k0;
        for (int j0 = 0; j0 < rank; j0 += LF_MULTI_RC) {
            __syncthreads(); /* a_s is free */
            stage_a<T>(a_s, p.ks, a + (int64_t)j0 * p.lda, p.lda, rank - j0, kspan);
            __syncthreads();
            for (int g0 = warp * 4; g0 < tile.z; g0 += warps * 4) {
                int tok[4];
#pragma unroll
                for (int u = 0; u < 4; u++)
                    tok[u] = g0 + u < tile.z ? tl.perm[tile.y + g0 + u] : -1;
                float acc[64];
#pragma unroll
                for (int i = 0; i < 64; i++)
                    acc[i] = 0.0f;
                for (int kk = lane * V; kk < kspan; kk += 32 * V) {
                    float4 xv[4];
#pragma unroll
                    for (int u = 0; u < 4; u++)
                        xv[u] = tok[u] >= 0 ? load4<T, VECX>(x + (int64_t)tok[u] * p.ldx + k0 + kk, 1)
                                            : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
                    for (int j = 0; j < LF_MULTI_RC; j++) {
                        float4 av;
                        if (VECX)
                            av = *(const float4 *)(a_s + j * p.ks + kk);
                        else
                            av = make_float4(a_s[j * p.ks + kk], 0.f, 0.f, 0.f);
#pragma unroll
                        for (int u = 0; u < 4; u++) {
                            float s = acc[u * 16 + j];
                            s = fmaf(xv[u].x, av.x, s);
                            if (VECX) {
                                s = fmaf(xv[u].y, av.y, s);
                                s = fmaf(xv[u].z, av.z, s);
                                s = fmaf(xv[u].w, av.w, s);
                            }
                            acc[u * 16 + j] = s;
                        }
                    }
                }
                warp_reduce_scatter64(acc);
                const int u = lane >> 3, j = (2 * lane) & 15; /* values 2·lane, 2·lane + 1 */
                if (tok[u] >= 0) {
                    float *dst = p.tpart + ((int64_t)q * p.m + tile.y + g0 + u) * p.max_rank + j0 + j;
                    if (j0 + j < rank)
                        dst[0] = acc[0];
                    if (j0 + j + 1 < rank)
                        dst[1] = acc[1];
                }
            }
        }
    }
}

/* ---- expand ----------------------------------------------------------------------------------- */

__device__ __forceinline__ void fma4(float t, const float4 &b, float4 &acc)
{
    acc.x = fmaf(t, b.x, acc.x);
    acc.y = fmaf(t, b.y, acc.y);
    acc.z = fmaf(t, b.z, acc.z);
    acc.w = fmaf(t, b.w, acc.w);
}

/* y[token][N slice] for the tiles g, g + G, ... (g = blockIdx.y); RSMALL: max_rank ≤ RC, B in
 * registers once per tile. */
template <typename T, bool VECY, bool GLOBAL, bool RSMALL>
__global__ void __launch_bounds__(LF_MULTI_THREADS) multi_expand_kernel(multi_args p)
{
    __shared__ small_buckets sb;
    extern __shared__ float ts[]; /* T of one tile: [tb][rank] */
    tile_list tl = {NULL, NULL, 0};
    if (!GLOBAL) { /* the ids and the slot table come from before the shrink: no wait needed */
        tl.count = bucket_in_block(p, sb);
        tl.tiles = sb.tiles, tl.perm = sb.perm;
    }
    lf_pdl_wait();
    lf_pdl_release();
    if (GLOBAL)
        tl.tiles = p.tiles, tl.perm = p.perm, tl.count = *p.ntiles;
    const int tpr = p.bn / 4, rpp = LF_MULTI_THREADS / tpr; /* threads per row, rows per pass */
    const int row = threadIdx.x / tpr, col = blockIdx.x * p.bn + (threadIdx.x % tpr) * 4;
    const int valid = p.n - col; /* columns this thread may touch, when > 0 */
    const T *bias = (const T *)p.bias;
    T *y = (T *)p.y;
    for (int ti = blockIdx.y; ti < tl.count; ti += gridDim.y) {
        const int4 tile = tl.tiles[ti];
        if (tile.x < 0 && !p.none_tiles)
            break;
        const int rank = tile.x < 0 ? 0 : p.slots[tile.x].rank;
        const float scale = tile.x < 0 ? 0.0f : p.slots[tile.x].scale;
        __syncthreads(); /* ts is free */
        for (int idx = threadIdx.x; idx < tile.z * rank; idx += LF_MULTI_THREADS) {
            const int u = idx / rank, j = idx % rank;
            const float *src = p.tpart + (int64_t)(tile.y + u) * p.max_rank + j;
            float s = 0.0f;
#pragma unroll 8
            for (int q = 0; q < p.kslices; q++) /* loads issued ahead, added in q order */
                s += src[(int64_t)q * p.m * p.max_rank];
            ts[idx] = scale * s;
        }
        __syncthreads();
        if (valid <= 0)
            continue;
        const T *b = tile.x < 0 ? NULL : (const T *)p.b + ((int64_t)tile.x * p.max_rank) * p.ldb + col;
        float4 breg[RSMALL ? LF_MULTI_RC : 1];
        if (RSMALL)
#pragma unroll
            for (int j = 0; j < LF_MULTI_RC; j++)
                breg[j] = j < rank ? load4<T, VECY>(b + (int64_t)j * p.ldb, valid) : make_float4(0.f, 0.f, 0.f, 0.f);
        for (int u = row; u < tile.z; u += rpp) {
            const int token = tl.perm[tile.y + u];
            const float *t = ts + u * rank;
            float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
            if (RSMALL) {
#pragma unroll
                for (int j = 0; j < LF_MULTI_RC; j++)
                    if (j < rank)
                        fma4(t[j], breg[RSMALL ? j : 0], acc);
            } else {
                for (int j = 0; j < rank; j++)
                    fma4(t[j], load4<T, VECY>(b + (int64_t)j * p.ldb, valid), acc);
            }
            if (bias) {
                const float4 bb = load4<T, VECY>(bias + col, valid);
                acc.x += bb.x, acc.y += bb.y, acc.z += bb.z, acc.w += bb.w;
            }
            if (p.base) {
                const float *g = p.base + (int64_t)token * p.n + col;
                const float4 gb = VECY ? *(const float4 *)g
                                       : make_float4(g[0], valid > 1 ? g[1] : 0.f, valid > 2 ? g[2] : 0.f,
                                                     valid > 3 ? g[3] : 0.f);
                acc.x += gb.x, acc.y += gb.y, acc.z += gb.z, acc.w += gb.w;
            }
            T *yr = y + (int64_t)token * p.ldy + col;
            if (p.beta != 0.0f) { /* beta = 0 must not read y */
                const float4 old = load4<T, VECY>(yr, valid);
                acc.x = fmaf(p.beta, old.x, acc.x);
                acc.y = fmaf(p.beta, old.y, acc.y);
                acc.z = fmaf(p.beta, old.z, acc.z);
                acc.w = fmaf(p.beta, old.w, acc.w);
            }
            store4<T, VECY>(yr, acc, valid);
        }
    }
}

/* ---- adapter loads from device memory ------------------------------------------------------- */

/* Rank rows of A and B into the slot (A row t = A[t, :], B row t = B[:, t]); block (0, 0) then
 * writes the slot's entry. Grid: (row chunks, rank). */
template <typename T>
__global__ void adapter_load_kernel(const lf_adapter_source src, T *a_dst, int64_t lda_dst, T *b_dst,
                                    int64_t ldb_dst, int64_t k, int64_t n, lf_adapter_slot *entry)
{
    const int64_t t = blockIdx.y;
    const bool peft = src.layout == LF_LAYOUT_PEFT;
    const T *a = (const T *)src.a, *b = (const T *)src.b;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < k + n; i += (int64_t)gridDim.x * blockDim.x) {
        if (i < k)
            a_dst[t * lda_dst + i] = a[peft ? t * src.lda + i : i * src.lda + t];
        else
            b_dst[t * ldb_dst + (i - k)] = b[peft ? (i - k) * src.ldb + t : t * src.ldb + (i - k)];
    }
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0)
        *entry = lf_adapter_slot{(int32_t)src.rank, src.scale};
}

/* ---- the unfused per-adapter loop (bench) ----------------------------------------------------- */

template <typename T> __global__ void gather_rows_kernel(T *dst, const T *src, int64_t lds, const int32_t *rows,
                                                         int64_t count, int64_t cols)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count * cols; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = src[rows[i / cols] * lds + i % cols];
}

template <typename T> __global__ void scale_rows_kernel(T *u, int64_t count, float s)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        u[i] = lf_dt<T>::from_f32(lf_dt<T>::to_f32(u[i]) * s);
}

template <typename T> __global__ void index_add_rows_kernel(T *y, int64_t ldy, const T *u, const int32_t *rows,
                                                            int64_t count, int64_t cols)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count * cols; i += (int64_t)gridDim.x * blockDim.x) {
        T *yi = y + rows[i / cols] * ldy + i % cols;
        *yi = lf_dt<T>::from_f32(lf_dt<T>::to_f32(*yi) + lf_dt<T>::to_f32(u[i]));
    }
}

unsigned elementwise_blocks(int64_t count)
{
    const int64_t b = (count + 255) / 256;
    return (unsigned)(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

template <typename T>
void launch_unfused_steps(const lf_multi_problem *p, cudaStream_t st, int step, const int32_t *rows, int64_t count,
                          void *xg, void *u, float scale)
{
    const unsigned blocks = elementwise_blocks(count * (step == 0 ? p->k : p->n));
    if (step == 0)
        gather_rows_kernel<T><<<blocks, 256, 0, st>>>((T *)xg, (const T *)p->x, p->ldx, rows, count, p->k);
    else if (step == 1)
        scale_rows_kernel<T><<<blocks, 256, 0, st>>>((T *)u, count * p->n, scale);
    else
        index_add_rows_kernel<T><<<blocks, 256, 0, st>>>((T *)p->y, p->ldy, (const T *)u, rows, count, p->n);
}

void unfused_step(const lf_multi_problem *p, cudaStream_t st, int step, const int32_t *rows, int64_t count, void *xg,
                  void *u, float scale)
{
    if (p->dtype == LF_F32)
        launch_unfused_steps<float>(p, st, step, rows, count, xg, u, scale);
    else if (p->dtype == LF_F16)
        launch_unfused_steps<__half>(p, st, step, rows, count, xg, u, scale);
    else
        launch_unfused_steps<__nv_bfloat16>(p, st, step, rows, count, xg, u, scale);
}

/* ---- host side ---------------------------------------------------------------------------------- */

size_t align256(size_t v) { return (v + 255) / 256 * 256; }

/* The CUDA part of a set: the side stream and events of the layer's fork. */
struct cuda_set_state {
    cudaStream_t side;
    cudaEvent_t fork, join;
};

/* Blocking and workspace of one call. */
struct multi_plan {
    bool global;  /* bucketing by multi_bucket_kernel */
    int max_tiles;
    dim3 shrink_grid, expand_grid;
    size_t shrink_smem, expand_smem;
    size_t tpart, perm, bins, tiles, ntiles, base, total; /* workspace offsets (bytes) */
};

multi_plan plan_of(const lf_multi_problem *q, const multi_args &a, int sms, bool with_base)
{
    multi_plan pl;
    pl.global = a.m > LF_MULTI_SMALL_M;
    pl.max_tiles = (int)std::min<int64_t>(a.m, (a.m + a.tb - 1) / a.tb + std::min(a.capacity + 1, a.m));
    const int nslices = (a.n + a.bn - 1) / a.bn;
    /* Up to 8 blocks per SM: a block's tiles run one after another, each a chain of memory
     * latencies, so many small blocks beat few long ones. */
    pl.shrink_grid = dim3((unsigned)a.kslices, (unsigned)std::max(1, std::min(pl.max_tiles, 8 * sms / a.kslices)));
    pl.expand_grid = dim3((unsigned)nslices, (unsigned)std::max(1, std::min(pl.max_tiles, 8 * sms / nslices)));
    pl.shrink_smem = (size_t)LF_MULTI_RC * a.ks * sizeof(float);
    pl.expand_smem = (size_t)a.tb * a.max_rank * sizeof(float);
    size_t at = 0;
    pl.tpart = at, at += align256((size_t)a.kslices * a.m * a.max_rank * sizeof(float));
    pl.perm = at, at += align256((size_t)a.m * sizeof(int32_t));
    pl.bins = at, at += align256((size_t)a.m * sizeof(int32_t));
    pl.tiles = at, at += align256((size_t)pl.max_tiles * sizeof(int4));
    pl.ntiles = at, at += 256;
    pl.base = at, at += with_base ? align256((size_t)a.m * a.n * sizeof(float)) : 0;
    pl.total = at;
    (void)q;
    return pl;
}

template <typename T, bool GLOBAL>
cudaError_t launch_shrink_t(const multi_args &a, const multi_plan &pl, bool vecx, bool pdl, cudaStream_t st)
{
    return vecx ? lf_cuda_launch(multi_shrink_kernel<T, true, GLOBAL>, pl.shrink_grid, LF_MULTI_THREADS,
                                 pl.shrink_smem, pdl, st, a)
                : lf_cuda_launch(multi_shrink_kernel<T, false, GLOBAL>, pl.shrink_grid, LF_MULTI_THREADS,
                                 pl.shrink_smem, pdl, st, a);
}

template <typename T, bool GLOBAL, bool RSMALL>
cudaError_t launch_expand_r(const multi_args &a, const multi_plan &pl, bool vecy, bool pdl, cudaStream_t st)
{
    return vecy ? lf_cuda_launch(multi_expand_kernel<T, true, GLOBAL, RSMALL>, pl.expand_grid, LF_MULTI_THREADS,
                                 pl.expand_smem, pdl, st, a)
                : lf_cuda_launch(multi_expand_kernel<T, false, GLOBAL, RSMALL>, pl.expand_grid, LF_MULTI_THREADS,
                                 pl.expand_smem, pdl, st, a);
}

template <typename T>
cudaError_t launch_kernels_t(const multi_args &a, const multi_plan &pl, bool vecx, bool vecy, bool pdl, int which,
                             cudaStream_t st)
{
    const bool small_rank = a.max_rank <= LF_MULTI_RC;
    if (which == 0)
        return pl.global ? launch_shrink_t<T, true>(a, pl, vecx, pdl, st) : launch_shrink_t<T, false>(a, pl, vecx, pdl, st);
    if (pl.global)
        return small_rank ? launch_expand_r<T, true, true>(a, pl, vecy, pdl, st)
                          : launch_expand_r<T, true, false>(a, pl, vecy, pdl, st);
    return small_rank ? launch_expand_r<T, false, true>(a, pl, vecy, pdl, st)
                      : launch_expand_r<T, false, false>(a, pl, vecy, pdl, st);
}

/* which: 0 the shrink, 1 the expand. */
cudaError_t launch_kernel(lf_dtype dt, const multi_args &a, const multi_plan &pl, bool vecx, bool vecy, bool pdl,
                          int which, cudaStream_t st)
{
    if (dt == LF_F32)
        return launch_kernels_t<float>(a, pl, vecx, vecy, pdl, which, st);
    if (dt == LF_F16)
        return launch_kernels_t<__half>(a, pl, vecx, vecy, pdl, which, st);
    return launch_kernels_t<__nv_bfloat16>(a, pl, vecx, vecy, pdl, which, st);
}

bool aligned(const void *p, size_t to) { return ((uintptr_t)p % to) == 0; }

} /* namespace */

extern "C" lf_status lf_cuda_adapter_set_init(lf_context *ctx, lf_adapter_set *set)
{
    cuda_set_state *s = (cuda_set_state *)calloc(1, sizeof *s);
    if (!s)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_adapter_set_create: out of host memory");
    set->backend = s;
    LF_CUDA_CHECK(ctx, cudaStreamCreateWithFlags(&s->side, cudaStreamNonBlocking));
    LF_CUDA_CHECK(ctx, cudaEventCreateWithFlags(&s->fork, cudaEventDisableTiming));
    LF_CUDA_CHECK(ctx, cudaEventCreateWithFlags(&s->join, cudaEventDisableTiming));
    return LF_OK;
}

extern "C" void lf_cuda_adapter_set_destroy(lf_context *ctx, lf_adapter_set *set)
{
    (void)ctx;
    cuda_set_state *s = (cuda_set_state *)set->backend;
    if (s->side)
        cudaStreamDestroy(s->side);
    if (s->fork)
        cudaEventDestroy(s->fork);
    if (s->join)
        cudaEventDestroy(s->join);
    free(s);
    set->backend = NULL;
}

extern "C" lf_status lf_cuda_adapter_load_device(lf_context *ctx, lf_adapter_set *set, int slot,
                                                 const lf_adapter_source *src)
{
    const size_t es = lf_dtype_size(set->dtype);
    char *a = (char *)set->a + (size_t)slot * set->max_rank * set->lda * es;
    char *b = (char *)set->b + (size_t)slot * set->max_rank * set->ldb * es;
    const int64_t len = set->k + set->n;
    const dim3 grid((unsigned)std::min<int64_t>((len + 255) / 256, 1024), (unsigned)src->rank);
    const cudaStream_t st = lf_cuda_stream(ctx);
    if (set->dtype == LF_F32)
        adapter_load_kernel<float><<<grid, 256, 0, st>>>(*src, (float *)a, set->lda, (float *)b, set->ldb, set->k,
                                                         set->n, set->slots + slot);
    else if (set->dtype == LF_F16)
        adapter_load_kernel<__half><<<grid, 256, 0, st>>>(*src, (__half *)a, set->lda, (__half *)b, set->ldb, set->k,
                                                          set->n, set->slots + slot);
    else
        adapter_load_kernel<__nv_bfloat16><<<grid, 256, 0, st>>>(*src, (__nv_bfloat16 *)a, set->lda,
                                                                 (__nv_bfloat16 *)b, set->ldb, set->k, set->n,
                                                                 set->slots + slot);
    LF_CUDA_CHECK_LAUNCH(ctx);
    return LF_OK;
}

extern "C" lf_status lf_cuda_lora_multi(lf_context *ctx, const lf_multi_problem *q)
{
    const lf_adapter_set *set = q->set;
    if (q->m > INT_MAX / 2 || q->k > INT_MAX / 2 || q->n > INT_MAX / 2 || q->segments > INT_MAX / 2 ||
        (q->w && (q->ldx > INT_MAX || q->ldy > INT_MAX || q->ldw > INT_MAX)))
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_lora_forward_multi (cuda): sizes and strides beyond 2^30 are "
                       "not supported (M %lld, K %lld, N %lld)", (long long)q->m, (long long)q->k, (long long)q->n);
    lf_cuda_state *cs = lf_cuda_state_of(ctx);
    const cuda_set_state *ss = (const cuda_set_state *)set->backend;
    const cudaStream_t st = lf_cuda_stream(ctx);
    const size_t es = lf_dtype_size(q->dtype);
    const bool pdl = cs->cc_major >= 9;

    multi_args a = {};
    a.m = (int)q->m, a.k = (int)q->k, a.n = (int)q->n;
    a.x = q->x, a.ldx = q->ldx, a.y = q->y, a.ldy = q->ldy, a.bias = q->bias, a.beta = q->beta;
    a.ids = q->token_adapter, a.seg_starts = q->seg_starts, a.seg_adapter = q->seg_adapter;
    a.segments = (int)q->segments;
    a.a = set->a, a.b = set->b, a.lda = set->lda, a.ldb = set->ldb;
    a.max_rank = (int)set->max_rank, a.capacity = set->capacity, a.slots = set->slots;
    a.tb = (int)std::max<int64_t>(1, std::min<int64_t>(64, LF_MULTI_TS_FLOATS / set->max_rank));
    a.ks = q->m <= 64 ? 256 : LF_MULTI_KS_MAX;
    a.kslices = (a.k + a.ks - 1) / a.ks;
    a.bn = 256;
    multi_plan pl = plan_of(q, a, cs->sm_count, q->w != NULL);
    lf_status s = lf_workspace_reserve(ctx, pl.total);
    if (s != LF_OK)
        return s;
    char *ws = (char *)ctx->workspace;
    a.tpart = (float *)(ws + pl.tpart);
    a.perm = (int32_t *)(ws + pl.perm);
    a.bins = (int32_t *)(ws + pl.bins);
    a.tiles = (int4 *)(ws + pl.tiles);
    a.ntiles = (int *)(ws + pl.ntiles);
    a.base = q->w ? (const float *)(ws + pl.base) : NULL;
    a.none_tiles = q->w || q->beta != 1.0f || q->bias;

    const bool vecx = q->k % 4 == 0 && q->ldx % 4 == 0 && aligned(q->x, 4 * es);
    const bool vecy = q->n % 4 == 0 && q->ldy % 4 == 0 && aligned(q->y, 4 * es) && (!q->bias || aligned(q->bias, 4 * es));
    const cudaDataType_t in = lf_cuda_data_type(q->dtype);
    const int w_nk = q->layout == LF_LAYOUT_PEFT;
    /* cuBLAS takes ints, and a single row's stride is never used: pass the smallest valid one. */
    const int64_t ldx = q->m == 1 ? q->k : q->ldx;

    if (!q->w) {
        if (pl.global)
            LF_CUDA_CHECK(ctx, lf_cuda_launch(multi_bucket_kernel, dim3(1), LF_MULTI_BUCKET_THREADS, 0, pdl, st, a));
        LF_CUDA_CHECK(ctx, launch_kernel(q->dtype, a, pl, vecx, vecy, pdl, 0, st));
        LF_CUDA_CHECK(ctx, launch_kernel(q->dtype, a, pl, vecx, vecy, pdl, 1, st));
        return LF_OK;
    }
    /* Layer: bucketing and shrink on the side stream beside the base GEMM (fp32, into the
     * workspace); the expand is the GEMM's epilogue and rounds y once. */
    LF_CUDA_CHECK(ctx, cudaEventRecord(ss->fork, st));
    LF_CUDA_CHECK(ctx, cudaStreamWaitEvent(ss->side, ss->fork, 0));
    if (pl.global)
        LF_CUDA_CHECK(ctx, lf_cuda_launch(multi_bucket_kernel, dim3(1), LF_MULTI_BUCKET_THREADS, 0, false, ss->side, a));
    LF_CUDA_CHECK(ctx, launch_kernel(q->dtype, a, pl, vecx, vecy, pl.global && pdl, 0, ss->side));
    LF_CUDA_CHECK(ctx, cudaEventRecord(ss->join, ss->side));
    s = lf_cuda_gemm_xwt(ctx, in, CUDA_R_32F, w_nk, q->m, q->n, q->k, q->x, ldx, q->w, q->ldw, 0.0f, (void *)a.base,
                         q->n);
    const cudaError_t joined = cudaStreamWaitEvent(st, ss->join, 0); /* never leave the side stream forked */
    if (s != LF_OK)
        return s;
    LF_CUDA_CHECK(ctx, joined);
    LF_CUDA_CHECK(ctx, launch_kernel(q->dtype, a, pl, vecx, vecy, pdl, 1, st));
    return LF_OK;
}

extern "C" size_t lf_cuda_multi_unfused_workspace_bytes(const lf_multi_problem *q)
{
    const size_t es = lf_dtype_size(q->dtype);
    return align256((size_t)q->m * q->k * es) + align256((size_t)q->m * q->set->max_rank * es) +
           align256((size_t)q->m * q->n * es);
}

/* What a framework without a multi-adapter kernel runs (PEFT's mixed-batch forward): the base layer
 * (or a zeroed y for the delta, beta = 0), then for each adapter used: gather its tokens' rows of x,
 * T = x_i·A_iᵀ and U = T·B_iᵀ through cuBLAS, U *= s_i, y[rows] += U. Its grouping is given (PEFT
 * finds it on the host, with a synchronization, before these launches). */
extern "C" lf_status lf_cuda_multi_unfused(lf_context *ctx, const lf_multi_problem *q, const int32_t *perm,
                                           const int64_t *group, void *ws)
{
    const lf_adapter_set *set = q->set;
    const size_t es = lf_dtype_size(q->dtype);
    const cudaStream_t st = lf_cuda_stream(ctx);
    const cudaDataType_t in = lf_cuda_data_type(q->dtype);
    char *xg = (char *)ws, *t = xg + align256((size_t)q->m * q->k * es);
    char *u = t + align256((size_t)q->m * set->max_rank * es);
    const int64_t ldx = q->m == 1 ? q->k : q->ldx, ldy = q->m == 1 ? q->n : q->ldy;
    lf_status s;
    if (q->w) {
        if ((s = lf_cuda_gemm_xwt(ctx, in, in, q->layout == LF_LAYOUT_PEFT, q->m, q->n, q->k, q->x, ldx, q->w, q->ldw,
                                  q->beta, q->y, ldy)) != LF_OK)
            return s;
    } else if (q->beta == 0.0f) {
        LF_CUDA_CHECK(ctx, cudaMemset2DAsync(q->y, (size_t)q->ldy * es, 0, (size_t)q->n * es, (size_t)q->m, st));
    }
    for (int i = 0; i < set->capacity; i++) {
        const int64_t count = group[i + 1] - group[i], rank = set->host_slots[i].rank;
        if (count == 0 || rank == 0)
            continue;
        const int32_t *rows = perm + group[i];
        const char *ai = (const char *)set->a + (size_t)i * set->max_rank * set->lda * es;
        const char *bi = (const char *)set->b + (size_t)i * set->max_rank * set->ldb * es;
        unfused_step(q, st, 0, rows, count, xg, u, 0.0f);
        LF_CUDA_CHECK_LAUNCH(ctx);
        if ((s = lf_cuda_gemm_xwt(ctx, in, in, 1, count, rank, q->k, xg, q->k, ai, set->lda, 0.0f, t, rank)) != LF_OK ||
            (s = lf_cuda_gemm_xwt(ctx, in, in, 0, count, q->n, rank, t, rank, bi, set->ldb, 0.0f, u, q->n)) != LF_OK)
            return s;
        unfused_step(q, st, 1, rows, count, xg, u, set->host_slots[i].scale);
        unfused_step(q, st, 2, rows, count, xg, u, 0.0f);
        LF_CUDA_CHECK_LAUNCH(ctx);
    }
    return LF_OK;
}

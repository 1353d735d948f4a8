/*
 * lora_multi.cu — many adapters in one batch on CUDA (lf_lora_forward_multi / _segments), adapter
 * loads from device memory, and the unfused per-adapter loop the bench compares with.
 *
 * No host work that needs device data (capture-safe, no synchronization, no allocation once the
 * workspace is sized). A layer of 1–16 tokens where N fills the GPU with 16-row tiles
 * (heuristics.h: lf_cuda_stream_multi_fits; 16-bit, PEFT, aligned, max rank ≤ 16) is the
 * plain-load stream of lora_stream.cu in its many-adapter form; else a layer of a few tokens
 * (lf_cuda_multi_decode_wins) is the decode kernels of lora_fwd.cu in their MULTI form: one stream
 * of W, each token's LoRA term in the epilogue. On sm_90 with M ≤ LF_FUSED_SMALL_M a delta is one
 * launch, multi_fused_kernel (thread block clusters; see its comment; a delta of one loaded slot
 * that the ordered kernels take, only up to LF_FUSED_ONE_SLOT_M tokens), and a layer is the
 * cuBLAS base GEMM beside that kernel on a side stream (it writes the LoRA term in fp32) and
 * multi_finish_kernel, which adds both and rounds y once. Otherwise a call is two kernels,
 * chained with programmatic dependent launch:
 *
 *   bucketing   each token's slot (per-token ids, or a binary search of the segment starts; an id
 *               out of range or naming an empty slot means none), tokens grouped by slot (stable
 *               in token order) and the groups cut into tiles of up to 64 tokens: tile = (slot,
 *               first position, count). Every block of the two kernels below does it itself
 *               (bucket_layout, bucket_tile): no kernel and no workspace between them.
 *   shrink      multi_shrink_kernel, blocks (K slice q, tile group g): for its tiles, stage the
 *               tile's x rows and A_slot's [rank chunk][K slice] in shared memory (cp.async) and
 *               compute the partial T[pos][j] = Σ_{k in slice} x[token]·A[j] (tensor cores for
 *               16-bit types, shrink_slice) into the workspace, [q][pos][j]. Where at most 8
 *               adapters are loaded (one in the layer), multi_shrink_ordered_kernel instead:
 *               tokens in order, no bucketing, partial T [q][token][j] (t_by_token); on sm_90
 *               with 1–2 loaded, x's rows (and one slot's A rows) staged by bulk copies.
 *   expand      blocks (N slice, tile group g): for its tiles, T = scale·Σ_q partials (fixed
 *               order) into shared memory, then y[token][cols] = Σ_j T·B_slot[j] [+ bias] [+ base]
 *               [+ beta·y], rounded once: multi_expand_mma_kernel (16-bit, rows of 16-byte
 *               accesses; tensor cores, T and an f16 B as two bf16 terms each) or
 *               multi_expand_kernel (CUDA cores). Its prologue (bucketing) runs before it waits
 *               for the shrink. After the ordered shrink, where y's rows take 16-byte accesses,
 *               multi_expand_ordered_kernel instead: blocks (N slice, 64 consecutive tokens with
 *               one adapter loaded, 128 with more), the tile grouped by slot in its prologue, with
 *               more slots their B rows staged there.
 *
 * Each adapter's A and B are read once per tile of tokens that use it (per K slice and per N slice
 * respectively), using the slot's own rank (the fused kernel's items by slot: once per item, where
 * every slot holds an adapter of the set's max rank). Tokens without an adapter are in no shrink
 * tile; the expand visits them only when their y changes (beta ≠ 1, a bias, or the layer). Every sum has a
 * fixed order that does not depend on a token's position in its tile or on the other tokens: results
 * are bitwise reproducible, and identical between the per-token and the segment form (for one M:
 * the K slices and the fused/two-kernel choice follow M).
 *
 * Layer (two-kernel form): the shrink runs on a side stream (fork and join by events,
 * capture-safe) beside the cuBLAS base GEMM x·Wᵀ into an fp32 buffer in the workspace; the expand
 * then adds T·B, bias and beta·y to it and rounds y once. At decode sizes the shrink hides behind the GEMM and
 * the expand is the only cost on top of it; at large M the fp32 buffer costs a write and a read
 * of M × N floats (the next step there: the expand inside the GEMM's epilogue).
 */
#include "common.cuh"
#include "launch.cuh"
#include "lora_multi.cuh"
#include "mma_sync.cuh"
#include "token_map.cuh"

#include <algorithm>
#include <limits.h>
#include <stdlib.h>
#include <type_traits>

#define LF_MULTI_THREADS 256
#define LF_MULTI_WARPS (LF_MULTI_THREADS / 32)
#define LF_MULTI_TB 16        /* tokens per tile of the fused kernel, per sub-tile of the others: the mma's 16 rows */
#define LF_MULTI_TB_MAX 64    /* tokens per tile of the shrink and the expand (a multiple of LF_MULTI_TB) */
#define LF_MULTI_RC 16        /* ranks per pass of the shrink */
#define LF_MULTI_PAD 8        /* elements after each staged row of x and A: fragment rows in other banks */
static_assert(LF_MULTI_THREADS == LF_MULTI_TB * LF_MULTI_RC, "the shrinks add their shares one (token, rank) per thread");

namespace {

struct multi_args : lf_token_map {
    int m, k, n;
    const void *x;
    int64_t ldx;
    void *y;
    int64_t ldy;
    const void *bias;
    const float *base; /* layer, small M: x·Wᵀ in fp32, [m][n] dense; NULL otherwise */
    float beta;
    const void *a, *b; /* the set's storage */
    int64_t lda, ldb;
    int max_rank;
    int tb, ks, kslices, bn;
    int none_tiles;  /* the expand visits tokens without an adapter */
    float *tpart;    /* [kslices][position or token][max_rank] */
    bool t_by_token; /* tpart's rows are tokens (multi_shrink_ordered_kernel), else positions */
    int nchunks;     /* fused: N chunks per tile (a cluster each) */
    bool by_slot;    /* fused: a work item per slot (and one for tokens without an adapter), not per
                      * tile (asked by the caller where by_slot_fits, kept by plan_of if fused) */
    bool stage_x;    /* the ordered shrink copies x's rows into shared memory (few slots loaded) */
    int only_slot;   /* the set's one loaded slot where it has exactly one, else -1: the ordered
                      * shrink then stages its A rows beside x and prefetches its B for the expand */
    bool vec_x, vec_a, vec_b; /* 16-byte copies of x, A and B rows (loads: the ordered shrink) */
    float *dout;     /* fused, layer at small M: the LoRA term in fp32, [m][n] dense */
    int expand_rows; /* multi_expand_mma_kernel: T rows a pass holds in shared memory (16 or 64) */
    int b_stages;    /* multi_expand_ordered_kernel: slots whose B rows of the N slice it stages (0:
                      * B's fragments from memory, one slot loaded) */
    /* M past one bucketing round, where a kernel buckets: [chunks][capacity + 1] tokens of each bin
     * in each round's span of the token order (multi_count_kernel); NULL otherwise */
    const int *chunk_counts;
    int chunks;
};

/* ---- bucketing ------------------------------------------------------------------------------- */

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

/* Every block of the shrink and the expand groups the tokens itself, the same way, so that no
 * kernel and no workspace carries the grouping from one to the other: tokens sorted by bin (bin =
 * slot, or the capacity for tokens without an adapter, last), stable in token order, cut into
 * tiles of p.tb; tile ti = (slot or -1, first position, count). bucket_layout counts the bins
 * (one shared atomic per bin and warp) and lays them out (two block scans); bucket_tile finds a
 * tile's bin by a binary search over the bins' first tiles and its tokens by block scans over the
 * token order, a round of 2048 tokens at a time, stopping past the tile. Positions are the same in
 * every block, so the shrink's partial T [q][pos][j] meets the expand's reads. Past one round,
 * multi_count_kernel counts each round's bins once for all blocks: a block then sums those counts
 * instead of scanning all M tokens, and starts a tile's scan at the round that holds its first
 * token (at 8192–16384 tokens the scans from the start cost more than the kernels' work). */
#define LF_BUCKET_TPT 8 /* consecutive tokens a thread takes in a bucketing round: their id loads at once */
#define LF_BUCKET_SPAN (LF_BUCKET_TPT * LF_MULTI_THREADS) /* tokens a round: every block that buckets
                                                           * has LF_MULTI_THREADS threads */

struct bucket_tables {
    int count[LF_MAX_ADAPTERS + 1]; /* tokens a bin */
    int off[LF_MAX_ADAPTERS + 1];   /* its first position */
    int toff[LF_MAX_ADAPTERS + 1];  /* its first tile (bins without tokens share the next one's) */
    unsigned char live[LF_MAX_ADAPTERS]; /* the slot holds an adapter (rank > 0) */
    int warp_sums[32];
};

/* Token t's bin (lf_token_slot's rule, with the slots' ranks read from bt.live). */
__device__ __forceinline__ int token_bin(const multi_args &p, const bucket_tables &bt, int t)
{
    const int id = lf_token_id(p, p.seg_starts, p.seg_adapter, t);
    return id >= 0 && id < p.capacity && bt.live[id] ? id : p.capacity;
}

/* Every thread of the block (LF_MULTI_THREADS): bt.count[bin] += the bin's tokens in [t_begin,
 * t_end), after bt.count was zeroed and bt.live filled (bucket_init) and a barrier. */
__device__ void bucket_count(const multi_args &p, bucket_tables &bt, int t_begin, int t_end)
{
    const unsigned below = (1u << (threadIdx.x & 31)) - 1u;
    for (int t0 = t_begin; t0 < t_end; t0 += LF_BUCKET_SPAN) {
        const int mine = t0 + LF_BUCKET_TPT * threadIdx.x;
        int bin[LF_BUCKET_TPT];
#pragma unroll
        for (int e = 0; e < LF_BUCKET_TPT; e++)
            bin[e] = mine + e < t_end ? token_bin(p, bt, mine + e) : -1;
#pragma unroll
        for (int e = 0; e < LF_BUCKET_TPT; e++) {
            const unsigned peers = __match_any_sync(0xffffffffu, bin[e]);
            if (bin[e] >= 0 && (peers & below) == 0) /* one atomic a bin and warp, not a token: one adapter's
                                                      * tokens would queue on one address */
                atomicAdd(&bt.count[bin[e]], __popc(peers));
        }
    }
}

/* bt.count zeroed and bt.live filled from the slot table; a barrier follows in the caller. */
__device__ void bucket_init(const multi_args &p, bucket_tables &bt)
{
    for (int b = threadIdx.x; b <= p.capacity; b += blockDim.x)
        bt.count[b] = 0;
    for (int s = threadIdx.x; s < p.capacity; s += blockDim.x)
        bt.live[s] = p.slots[s].rank > 0;
}

/* Every thread of the block: returns the number of tiles. */
__device__ int bucket_layout(const multi_args &p, bucket_tables &bt)
{
    const int bins = p.capacity + 1;
    bucket_init(p, bt);
    __syncthreads();
    if (p.chunk_counts) /* the rounds' counts, summed in round order */
        for (int b = threadIdx.x; b < bins; b += blockDim.x) {
            int c = 0;
            for (int g = 0; g < p.chunks; g++)
                c += p.chunk_counts[(int64_t)g * bins + b];
            bt.count[b] = c;
        }
    else
        bucket_count(p, bt, 0, p.m);
    __syncthreads();
    /* Each thread lays out a run of consecutive bins. */
    const int per = (bins + blockDim.x - 1) / blockDim.x, b0 = threadIdx.x * per, b1 = min(bins, b0 + per);
    int tok = 0, til = 0;
    for (int b = b0; b < b1; b++) {
        tok += bt.count[b];
        til += (bt.count[b] + p.tb - 1) / p.tb;
    }
    int total_tok, total_tiles; /* total_tok is M */
    int tok_before = block_exclusive_scan(tok, bt.warp_sums, &total_tok);
    int til_before = block_exclusive_scan(til, bt.warp_sums, &total_tiles);
    for (int b = b0; b < b1; b++) {
        bt.off[b] = tok_before;
        bt.toff[b] = til_before;
        tok_before += bt.count[b];
        til_before += (bt.count[b] + p.tb - 1) / p.tb;
    }
    __syncthreads();
    return total_tiles;
}

/* Every thread of the block, ti the same in all and below bucket_layout's count: tile ti, its
 * tokens into tok[0, count) in position order. A round takes LF_BUCKET_TPT consecutive tokens a
 * thread (2048 a block), so thread order is token order. */
__device__ int4 bucket_tile(const multi_args &p, bucket_tables &bt, int ti, int *tok)
{
    int lo = 0, hi = p.capacity; /* the last bin whose first tile is at or before ti */
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (bt.toff[mid] <= ti)
            lo = mid;
        else
            hi = mid - 1;
    }
    const int first = (ti - bt.toff[lo]) * p.tb, count = min(p.tb, bt.count[lo] - first);
    int rank = 0, t0 = 0; /* tokens of the bin in the rounds before round t0 */
    if (p.chunk_counts) /* skip the rounds before the one that holds the tile's first token */
        for (int g = 0; g < p.chunks; g++) {
            const int c = p.chunk_counts[(int64_t)g * (p.capacity + 1) + lo];
            if (rank + c > first)
                break;
            rank += c;
            t0 += LF_BUCKET_SPAN;
        }
    for (; t0 < p.m && rank < first + count; t0 += LF_BUCKET_SPAN) {
        const int mine = t0 + LF_BUCKET_TPT * threadIdx.x;
        unsigned in = 0; /* bit e: token mine + e is in the bin */
#pragma unroll
        for (int e = 0; e < LF_BUCKET_TPT; e++)
            in |= (unsigned)(mine + e < p.m && token_bin(p, bt, mine + e) == lo) << e;
        int round;
        int r = rank + block_exclusive_scan(__popc(in), bt.warp_sums, &round);
#pragma unroll
        for (int e = 0; e < LF_BUCKET_TPT; e++)
            if ((in >> e) & 1) {
                if (r >= first && r < first + count)
                    tok[r - first] = mine + e;
                r++;
            }
        rank += round; /* the same in every thread: the loop ends in all at once */
    }
    __syncthreads();
    return make_int4(lo == p.capacity ? -1 : lo, bt.off[lo] + first, count, 0);
}

/* M past one round: block g counts the bins of round g's tokens into counts[g][bin] (the
 * chunk_counts of the shrink and the expand that follow). */
__global__ void __launch_bounds__(LF_MULTI_THREADS) multi_count_kernel(multi_args p, int *counts)
{
    __shared__ bucket_tables bt;
    lf_pdl_wait(); /* the ids and the slot table may come from the kernel before */
    lf_pdl_release();
    const int t0 = (int)blockIdx.x * LF_BUCKET_SPAN;
    bucket_init(p, bt);
    __syncthreads();
    bucket_count(p, bt, t0, min(p.m, t0 + LF_BUCKET_SPAN));
    __syncthreads();
    for (int b = threadIdx.x; b <= p.capacity; b += blockDim.x)
        counts[(int64_t)blockIdx.x * (p.capacity + 1) + b] = bt.count[b];
}

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

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

/* Until at most N of this thread's committed groups are in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

__device__ __forceinline__ void cp_async_wait_all()
{
    cp_async_commit();
    cp_async_wait<0>();
}

/* dst[r·ld + c] = row r of src (row rowidx[r], or r) from element 0 on, for r < rows and c < width
 * (a multiple of 8); columns ≥ cols_valid read as 0, so that a K tail adds nothing. Rows ≥ rows
 * (tokens past the tile's count, ranks past the adapter's) and columns ≥ width are not written:
 * an MMA row or column of them only feeds outputs that are never read. vec: 16-byte cp.async for
 * whole chunks (src, its stride and its column offset 16-byte aligned), scalars for the rest. */
template <typename T>
__device__ void stage_rows(T *dst, int ld, int width, const T *src, int64_t ld_src, const int *rowidx, int rows,
                           int cols_valid, bool vec)
{
    constexpr int VE = 16 / sizeof(T);
    const int chunks = width / VE;
    for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
        const int r = i / chunks, c = (i - r * chunks) * VE;
        T *d = dst + r * ld + c;
        if (c >= cols_valid) {
            *(uint4 *)d = make_uint4(0u, 0u, 0u, 0u); /* ld, width and c are multiples of 16 bytes */
            continue;
        }
        const T *s = src + (int64_t)(rowidx ? rowidx[r] : r) * ld_src + c;
        if (vec && c + VE <= cols_valid) {
            cp_async16(d, s);
        } else {
#pragma unroll
            for (int e = 0; e < VE; e++)
                d[e] = c + e < cols_valid ? s[e] : lf_dt<T>::from_f32(0.0f);
        }
    }
}

/* The partial T of one block's K slice (ks elements, a multiple of 16, zero past K) for the tile's
 * 16 tokens and 16 ranks: red[w][u][j] = warp w's share; returns the number of shares, added in
 * order by the caller. Every token goes through the same steps whatever its tile-mates.
 * 16-bit types: tensor cores (mma m16n8k16, fp32 accumulation; products exact), warp w taking the
 * k-steps w, w + 8, ... */
template <typename T>
__device__ __forceinline__ int shrink_slice(const T *xs, const T *as, int lds, int ks, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if constexpr (sizeof(T) == 2) {
        const int g = lane >> 2, c2 = 2 * (lane & 3);
        float acc[2][4] = {};
        for (int k = warp * 16; k < ks; k += LF_MULTI_WARPS * 16) {
            const T *x0 = xs + g * lds + k + c2, *x1 = x0 + 8 * lds;
            const uint32_t fa[4] = {*(const uint32_t *)x0, *(const uint32_t *)x1, *(const uint32_t *)(x0 + 8),
                                    *(const uint32_t *)(x1 + 8)};
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const T *a0 = as + (nt * 8 + g) * lds + k + c2;
                const uint32_t fb[2] = {*(const uint32_t *)a0, *(const uint32_t *)(a0 + 8)};
                mma16816<T>(acc[nt], fa[0], fa[1], fa[2], fa[3], fb[0], fb[1]);
            }
        }
        float *r = red + warp * LF_MULTI_TB * LF_MULTI_RC;
#pragma unroll
        for (int nt = 0; nt < 2; nt++) {
            r[g * LF_MULTI_RC + nt * 8 + c2] = acc[nt][0];
            r[g * LF_MULTI_RC + nt * 8 + c2 + 1] = acc[nt][1];
            r[(g + 8) * LF_MULTI_RC + nt * 8 + c2] = acc[nt][2];
            r[(g + 8) * LF_MULTI_RC + nt * 8 + c2 + 1] = acc[nt][3];
        }
        return LF_MULTI_WARPS;
    } else {
        /* fp32: CUDA cores, a warp per 4 tokens and K half, lanes along K, the fixed butterfly. */
        const int tg = warp >> 1, half = ks / 2, kb = (warp & 1) * half;
        float acc[64];
#pragma unroll
        for (int i = 0; i < 64; i++)
            acc[i] = 0.0f;
        for (int kk = kb + lane * 4; kk < kb + half; kk += 128) {
            float4 xv[4];
#pragma unroll
            for (int u = 0; u < 4; u++)
                xv[u] = load4<T, true>(xs + (tg * 4 + u) * lds + kk, 4);
#pragma unroll
            for (int j = 0; j < LF_MULTI_RC; j++) {
                const float4 av = load4<T, true>(as + j * lds + kk, 4);
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    float s = acc[u * 16 + j];
                    s = fmaf(xv[u].x, av.x, s);
                    s = fmaf(xv[u].y, av.y, s);
                    s = fmaf(xv[u].z, av.z, s);
                    s = fmaf(xv[u].w, av.w, s);
                    acc[u * 16 + j] = s;
                }
            }
        }
        warp_reduce_scatter64(acc);
        const int u = tg * 4 + (lane >> 3), j = (2 * lane) & 15; /* values 2·lane, 2·lane + 1 */
        float *r = red + ((warp & 1) * LF_MULTI_TB + u) * LF_MULTI_RC + j;
        r[0] = acc[0], r[1] = acc[1];
        return 2;
    }
}

/* Partial T over K slice blockIdx.x for the tiles g, g + G, ... (g = blockIdx.y). A tile (up to
 * p.tb ≤ LF_MULTI_TB_MAX tokens of one slot) runs as sub-tiles of 16 tokens (the mma's rows): A's
 * rank chunk of the slice is staged once per chunk, and x's rows of the next sub-tile stream in
 * (cp.async, two buffers) while shrink_slice multiplies the current one; the warps' shares are
 * added in order and written as partial T [q][pos][j]. Shared memory: x [2][16][ks + PAD] and A
 * [RC][ks + PAD] in T, the shares [WARPS][16][RC] in fp32 (shrink_smem_bytes). */
template <typename T>
__global__ void __launch_bounds__(LF_MULTI_THREADS) multi_shrink_kernel(multi_args p)
{
    __shared__ bucket_tables bt;
    __shared__ int tok[LF_MULTI_TB_MAX];
    extern __shared__ float4 shrink_smem4[];
    const int lds = p.ks + LF_MULTI_PAD;
    T *xs = (T *)shrink_smem4, *as = xs + 2 * LF_MULTI_TB * lds;
    float *red = (float *)(as + LF_MULTI_RC * lds); /* 16-byte aligned: lds is a multiple of 8 */
    /* The ids may come from the kernel before. Waiting before releasing is also what lets the
     * expand read them before its own wait (expand_prologue): it cannot start before every
     * shrink block has passed this wait. */
    lf_pdl_wait();
    lf_pdl_release();
    const int ntiles = bucket_layout(p, bt);
    const int q = blockIdx.x, k0 = q * p.ks, kspan = min(p.ks, p.k - k0);
    const T *x = (const T *)p.x + k0;
    for (int ti = blockIdx.y; ti < ntiles; ti += gridDim.y) {
        __syncthreads(); /* tok, xs, as and red are free */
        const int4 tile = bucket_tile(p, bt, ti, tok);
        if (tile.x < 0)
            break; /* tiles without an adapter come last */
        const int slot = tile.x, rank = p.slots[slot].rank, subs = (tile.z + LF_MULTI_TB - 1) / LF_MULTI_TB;
        const T *a = (const T *)p.a + ((int64_t)slot * p.max_rank) * p.lda + k0;
        for (int j0 = 0; j0 < rank; j0 += LF_MULTI_RC) {
            /* A's chunk and the first sub-tile in one group */
            stage_rows<T>(as, lds, p.ks, a + (int64_t)j0 * p.lda, p.lda, NULL, min(LF_MULTI_RC, rank - j0), kspan,
                          p.vec_a);
            stage_rows<T>(xs, lds, p.ks, x, p.ldx, tok, min(LF_MULTI_TB, tile.z), kspan, p.vec_x);
            cp_async_commit();
            for (int sub = 0; sub < subs; sub++) {
                const int u0 = sub * LF_MULTI_TB;
                if (sub + 1 < subs) { /* its buffer was last read before the barrier after the shares */
                    stage_rows<T>(xs + ((sub + 1) & 1) * LF_MULTI_TB * lds, lds, p.ks, x, p.ldx, tok + u0 + LF_MULTI_TB,
                                  min(LF_MULTI_TB, tile.z - u0 - LF_MULTI_TB), kspan, p.vec_x);
                    cp_async_commit();
                    cp_async_wait<1>();
                } else {
                    cp_async_wait<0>();
                }
                __syncthreads();
                const int nparts = shrink_slice<T>(xs + (sub & 1) * LF_MULTI_TB * lds, as, lds, p.ks, red);
                __syncthreads(); /* red complete; this sub-tile's x buffer free */
                const int u = threadIdx.x / LF_MULTI_RC, j = threadIdx.x % LF_MULTI_RC; /* 256 = 16 × RC */
                float s = 0.0f;
                for (int w = 0; w < nparts; w++)
                    s += red[(w * LF_MULTI_TB + u) * LF_MULTI_RC + j];
                if (u0 + u < tile.z && j0 + j < rank)
                    p.tpart[((int64_t)q * p.m + tile.y + u0 + u) * p.max_rank + j0 + j] = s;
            }
            __syncthreads(); /* the shares are read before the next chunk's shrink_slice writes them */
        }
    }
}

/* ---- mbarriers that count bytes: the ordered shrink's rows of x (bulk copies) and the fused
 * kernel's partials from its cluster (st.async). Asynchronous copies exist from sm_90 on; the
 * helpers assemble to nothing for sm_80, where plan_of takes neither kernel. ---- */

/* Thread 0: an mbarrier expecting `count` arrivals (each may announce bytes with recv_expect). */
__device__ __forceinline__ void recv_init(unsigned long long *bar, unsigned count)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n\tfence.mbarrier_init.release.cluster;" ::"r"(
                     (unsigned)__cvta_generic_to_shared(bar)),
                 "r"(count)
                 : "memory");
#else
    (void)bar, (void)count;
#endif
}

/* One arrival, announcing `bytes` the barrier's phase waits for besides the arrivals. */
__device__ __forceinline__ void recv_expect(unsigned long long *bar, unsigned bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("{\n\t.reg .b64 st;\n\tmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n\t}" ::"r"(
                     (unsigned)__cvta_generic_to_shared(bar)),
                 "r"(bytes)
                 : "memory");
#else
    (void)bar, (void)bytes;
#endif
}

/* Until the barrier's first phase has completed (every arrival and every announced byte), after
 * which the bytes are visible to the caller. */
__device__ __forceinline__ void recv_wait(unsigned long long *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned b = (unsigned)__cvta_generic_to_shared(bar);
    unsigned done;
    do {
        asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], 0;\n\t"
                     "selp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done)
                     : "r"(b)
                     : "memory");
    } while (!done);
#else
    (void)bar;
#endif
}

/* `bytes` (a multiple of 16; both addresses 16-byte aligned) from global memory into this block's
 * shared memory by the copy engine, counted on bar (announced by recv_expect first). */
__device__ __forceinline__ void bulk_copy(void *dst, const void *src, unsigned bytes, unsigned long long *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     (unsigned)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(bytes), "r"((unsigned)__cvta_generic_to_shared(bar))
                 : "memory");
#else
    (void)dst, (void)src, (void)bytes, (void)bar;
#endif
}

/* The line holding p into L2, nothing returned: safe before lf_pdl_wait on data the kernels
 * before may still write (L2 is where their writes land). */
__device__ __forceinline__ void prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

/* ---- token order: a tile's tokens grouped in shared memory (the ordered shrink and expand) ---- */

/* Where few adapters are loaded, the shrink and the expand take LF_ORDERED_TOKENS consecutive
 * tokens a block and group them by slot there (ordered_group), instead of bucketing the whole
 * batch in every block: stable, one thread a token counting the tokens that sort before it, each
 * group cut into sub-tiles of up to 16 tokens (the mma's rows). Tokens without an adapter sort
 * last, as the "slot" p.capacity, and are grouped only where the kernel must visit them (the
 * expand with none_tiles); tokens past m never. */
#define LF_ORDERED_TOKENS 64 /* tokens a tile (the multi-slot ordered expand: 128) */
template <int TT> struct ordered_groups_t {
    int key[TT];   /* a token's slot, p.capacity without one, INT_MAX when left out */
    int order[TT]; /* position in slot order -> token offset in the tile */
    int sub_pos[TT], sub_slot[TT], sub_cnt[TT]; /* sub-tiles: first position, key, tokens */
    int heads[TT / 32];                         /* sub-tiles headed in each of the first TT / 32 warps */
};
using ordered_groups = ordered_groups_t<LF_ORDERED_TOKENS>;

/* Groups the tile of tokens t0 .. t0 + TT - 1 (every thread of the block calls it; at least TT of
 * them). Returns the sub-tiles; *ngrouped gets the tokens grouped (positions [0, *ngrouped)).
 * with_none: tokens without an adapter are grouped too. Thread t < TT calls on_slot(its token's
 * slot, -1 for none) as soon as it has read it, where the token is within m, so that work for the
 * token can start before the grouping. */
template <int TT, typename OnSlot>
__device__ int ordered_group(const multi_args &p, int t0, bool with_none, ordered_groups_t<TT> &og, int *ngrouped,
                             OnSlot on_slot)
{
    constexpr int LEFT_OUT = INT_MAX, WARPS = TT / 32;
    static_assert(TT % 32 == 0, "a thread a token, whole warps of them");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int mine = LEFT_OUT; /* thread t < TT: token t's key */
    if (threadIdx.x < TT && t0 + (int)threadIdx.x < p.m) {
        const int s = lf_token_slot(p, t0 + (int)threadIdx.x);
        on_slot(s);
        mine = s >= 0 ? s : with_none ? p.capacity : LEFT_OUT;
    }
    if (threadIdx.x < TT)
        og.key[threadIdx.x] = mine;
    *ngrouped = __syncthreads_count(mine != LEFT_OUT);
    /* thread t < TT: token t's position in key order (stable); a sub-tile starts at every 16th
     * token of a key's group */
    int cnt = 0, pos = -1;
    if (mine != LEFT_OUT) {
        const int me = (int)threadIdx.x;
        int before = 0, same_before = 0, same = 0;
        for (int u = 0; u < TT; u++) {
            const int ku = og.key[u];
            before += ku < mine;
            same_before += ku == mine && u < me;
            same += ku == mine;
        }
        pos = before + same_before;
        og.order[pos] = me;
        if (same_before % LF_MULTI_TB == 0)
            cnt = min(LF_MULTI_TB, same - same_before);
    }
    /* the heads numbered in token order (any fixed order would do: a sub-tile's tokens are its own) */
    const unsigned ball = __ballot_sync(0xffffffffu, cnt > 0);
    if (lane == 0 && warp < WARPS)
        og.heads[warp] = __popc(ball);
    __syncthreads();
    if (cnt > 0) {
        int idx = __popc(ball & ((1u << lane) - 1u));
#pragma unroll
        for (int w = 0; w < WARPS; w++)
            idx += w < warp ? og.heads[w] : 0;
        og.sub_pos[idx] = pos, og.sub_slot[idx] = mine, og.sub_cnt[idx] = cnt;
    }
    __syncthreads();
    int nsub = 0;
#pragma unroll
    for (int w = 0; w < WARPS; w++)
        nsub += og.heads[w];
    return nsub;
}

/* The shrink in token order, where few adapters are loaded (plan_of: ordered_shrink_fits): no
 * bucketing before x's stream starts. Block (K slice q of p.ks, tile of LF_ORDERED_TOKENS
 * consecutive tokens, grouped by slot: ordered_group). Its time is a chain (per-block timestamps,
 * dev/cuda/NOTES.md, twentieth session): the wait for the kernel before, the ids and the slot
 * table, x's rows, the items. So the ids' and the slot table's lines are prefetched into L2
 * before the wait. Where one or two slots are loaded (p.stage_x), the thread that reads a token's
 * id starts the copy of its row of the slice into shared memory (one bulk copy, if the token has
 * an adapter) before the grouping, the tile's whole x in flight at once; with one (p.only_slot),
 * that slot's A rows of the slice come the same way. With more, x and A stream through registers
 * instead, D K-steps in flight: their items' A loads, a chain from L2, then overlap x's stream
 * rather than follow it (8 adapters × 8192 tokens: 121 µs streamed, 130 staged). The warps take
 * (sub-tile, K half) items in turn, so that a tile of one adapter (4 sub-tiles) keeps all 8 warps
 * busy and one of several adapters (5–10) a few rounds of half the steps. An item reads x's rows
 * (two tokens a lane) and the slot's A rows (ranks g, g + 8), 16 bytes a lane and step, and
 * leaves its accumulators in shared memory; the two halves are added in order and stored as the
 * token's partial T [q][token][j]. A token's sums never depend on its tile-mates (the mma's rows
 * are independent). 16-bit types, max_rank ≤ 16, x and A rows 16-byte aligned, K a multiple of
 * 8, ks a multiple of 64; stage_x only on sm_90 (bulk copies). With one slot staged, only that
 * slot's items read A from shared memory: a graph replayed after other slots were loaded has
 * tokens of those too. */
#define LF_ORDERED_WARPS 8
#define LF_ORDERED_D 4     /* K steps of 32 a lane holds in flight (8 measured no faster) */
#define LF_ORDERED_XPAD 32 /* elements after each staged row: with ks a multiple of 64, row r starts
                            * 64·r bytes into the 128-byte bank cycle, so the 8 lanes of a 16-byte
                            * read (two rows, four chunks) hit distinct banks where the rows differ
                            * in parity (consecutive tokens; otherwise two ways) */
/* The ordered shrink's shared state. */
struct ordered_shrink_shared {
    ordered_groups og;
    alignas(16) float2 red[2][LF_ORDERED_TOKENS][8]; /* the K halves' sums: [half][position][rank
                                                      * pair]; 16-byte rows */
    unsigned long long staged_bar;       /* every token's arrival and its row's bytes, A's rows' */
};

/* Block (K slice blockIdx.x, tile blockIdx.y) up to its partial T: the grouping, x's and A's rows,
 * the items into sh.red, and the block barrier after them. Returns the sub-tiles; *nvalid gets
 * the tokens grouped (those with an adapter). */
template <typename T>
__device__ __forceinline__ int ordered_shrink_block(const multi_args &p, ordered_shrink_shared &sh,
                                                    unsigned char *ordered_staged, int *nvalid)
{
    constexpr int TT = LF_ORDERED_TOKENS, THREADS = 32 * LF_ORDERED_WARPS;
    static_assert(THREADS >= TT + LF_MULTI_RC, "ordered_group: a thread a token; then A's rows");
    ordered_groups &og = sh.og;
    auto &red = sh.red;
    unsigned long long &staged_bar = sh.staged_bar;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int t0 = (int)blockIdx.y * TT;
    const int k0 = (int)blockIdx.x * p.ks, kn = min(p.ks, p.k - k0), ldxs = p.ks + LF_ORDERED_XPAD;
    const unsigned row_bytes = (unsigned)(kn * sizeof(T));
    /* only_slot is the host's view at the call, fixed in a captured graph: a replay after other
     * slots were loaded has tokens of those too, whose items read their A from global memory */
    const bool a_staged = p.stage_x && p.only_slot >= 0;
    T *xs = (T *)ordered_staged, *as = xs + TT * ldxs;
    if (p.stage_x && threadIdx.x == 0)
        recv_init(&staged_bar, (unsigned)(min(TT, p.m - t0) + (a_staged ? p.max_rank : 0)));
    __syncthreads();
    /* into L2 before the wait: the tile's ids and the slot table (cold in every call: other
     * layers' traffic evicts them), so that the chain ids -> slot -> x starts from there */
    if (p.ids && (int)threadIdx.x * 32 < min(TT, p.m - t0))
        prefetch_l2(p.ids + t0 + 32 * threadIdx.x);
    if ((int)threadIdx.x * 128 < p.capacity * (int)sizeof(lf_adapter_slot))
        prefetch_l2((const char *)p.slots + 128 * threadIdx.x);
    if (p.only_slot >= 0) { /* a share of the slot's B rows, for the expand: its blocks start when
                             * this kernel's leave, their prologue (B's fragments) then on the
                             * critical path (3.2 µs a block, timestamps) */
        const int row_lines = (p.n * (int)sizeof(T) + 127) / 128, lines = p.max_rank * row_lines;
        const int blocks = (int)(gridDim.x * gridDim.y), b = (int)(blockIdx.y * gridDim.x + blockIdx.x);
        const T *b_rows = (const T *)p.b + (int64_t)p.only_slot * p.max_rank * p.ldb;
        for (int l = b + blocks * (int)threadIdx.x; l < lines; l += blocks * THREADS)
            prefetch_l2((const char *)(b_rows + (int64_t)(l / row_lines) * p.ldb) + 128 * (l % row_lines));
    }
    lf_pdl_wait(); /* x and the ids come from before; releasing after it lets the expand's prologue
                    * read the ids before its own wait, as after multi_shrink_kernel */
    lf_pdl_release();
    if (a_staged && threadIdx.x >= TT && (int)threadIdx.x < TT + p.max_rank) { /* after the wait: A
                                                                                 * may come from an
                                                                                 * adapter load */
        const int j = (int)threadIdx.x - TT;
        recv_expect(&staged_bar, row_bytes);
        bulk_copy(as + j * ldxs, (const T *)p.a + ((int64_t)p.only_slot * p.max_rank + j) * p.lda + k0, row_bytes,
                  &staged_bar);
    }
    const int nsub = ordered_group(p, t0, false, og, nvalid, [&](int slot) {
        if (!p.stage_x)
            return;
        recv_expect(&staged_bar, slot >= 0 ? row_bytes : 0);
        if (slot >= 0)
            bulk_copy(xs + threadIdx.x * ldxs, (const T *)p.x + (int64_t)(t0 + (int)threadIdx.x) * p.ldx + k0,
                      row_bytes, &staged_bar);
    });

    const int steps = (kn + 31) / 32, per = (steps + 1) / 2;
    for (int it = warp; it < 2 * nsub; it += LF_ORDERED_WARPS) {
        const int sb = it >> 1, h = it & 1, lo = min(steps, h * per), n_steps = min(steps, lo + per) - lo;
        const int slot = og.sub_slot[sb], n_tok = og.sub_cnt[sb], rank = p.slots[slot].rank;
        const int pos0 = og.sub_pos[sb] + g, pos1 = pos0 + 8;
        const bool has0 = g < n_tok, has1 = g + 8 < n_tok;
        const int r0 = has0 ? og.order[pos0] : 0, r1 = has1 ? og.order[pos1] : 0; /* rows of the tile */
        const T *x0 = p.stage_x ? xs + r0 * ldxs + 32 * lo : (const T *)p.x + (int64_t)(t0 + r0) * p.ldx + k0 + 32 * lo;
        const T *x1 = p.stage_x ? xs + r1 * ldxs + 32 * lo : (const T *)p.x + (int64_t)(t0 + r1) * p.ldx + k0 + 32 * lo;
        const bool a_smem = a_staged && slot == p.only_slot; /* uniform in the warp */
        const T *a0 = a_smem ? as + g * ldxs + 32 * lo
                             : (const T *)p.a + ((int64_t)slot * p.max_rank + g) * p.lda + k0 + 32 * lo;
        const T *a1 = a0 + 8 * (a_smem ? (int64_t)ldxs : p.lda);
        /* step j's operands: x rows (tokens g, g + 8: the mma's A operand), A rows g and g + 8 (its
         * B operand, one n8 each), chunk q of the 32-wide step; zeros past K, the tokens and the rank */
        int a_j = 0, x_j = 0;
        auto fetch_a = [&](uint4 (&av)[2]) {
            if (a_j < n_steps) {
                const int kl = 32 * a_j + 8 * q;
                const bool kin = 32 * lo + kl < kn;
                av[0] = kin && g < rank ? *(const uint4 *)(a0 + kl) : make_uint4(0, 0, 0, 0);
                av[1] = kin && g + 8 < rank ? *(const uint4 *)(a1 + kl) : make_uint4(0, 0, 0, 0);
                a_j++;
            }
        };
        auto fetch_x = [&](uint4 (&xv)[1][2]) {
            if (x_j < n_steps) {
                const int kl = 32 * x_j + 8 * q;
                const bool kin = 32 * lo + kl < kn;
                const uint4 zero = make_uint4(0, 0, 0, 0);
                if (p.stage_x) {
                    xv[0][0] = kin && has0 ? *(const uint4 *)(x0 + kl) : zero;
                    xv[0][1] = kin && has1 ? *(const uint4 *)(x1 + kl) : zero;
                } else {
                    xv[0][0] = kin && has0 ? ld_stream(x0 + kl) : zero;
                    xv[0][1] = kin && has1 ? ld_stream(x1 + kl) : zero;
                }
                x_j++;
            }
        };
        uint4 xr[LF_ORDERED_D][1][2], ar[LF_ORDERED_D][2];
        if (!a_smem) /* A's first steps from L2 while x lands */
#pragma unroll
            for (int u = 0; u < LF_ORDERED_D; u++)
                fetch_a(ar[u]);
        if (p.stage_x)
            recv_wait(&staged_bar); /* the tile's rows have landed (at once after the warp's first item) */
#pragma unroll
        for (int u = 0; u < LF_ORDERED_D; u++) {
            if (a_smem)
                fetch_a(ar[u]);
            fetch_x(xr[u]);
        }
        float acc[1][2][4] = {};
        for (int j0 = 0; j0 < n_steps; j0 += LF_ORDERED_D) {
#pragma unroll
            for (int u = 0; u < LF_ORDERED_D; u++)
                if (j0 + u < n_steps) {
                    decode_step<T, 2, 1>(acc, xr[u], ar[u]);
                    fetch_a(ar[u]);
                    fetch_x(xr[u]);
                }
        }
        /* acc[0][nt][c]: token row g + 8·(c / 2), ranks 8·nt + 2q + {0, 1} (zero past the rank) */
#pragma unroll
        for (int nt = 0; nt < 2; nt++) {
            if (has0)
                red[h][pos0][4 * nt + q] = make_float2(acc[0][nt][0], acc[0][nt][1]);
            if (has1)
                red[h][pos1][4 * nt + q] = make_float2(acc[0][nt][2], acc[0][nt][3]);
        }
    }
    if (p.stage_x)
        recv_wait(&staged_bar); /* no block leaves with copies in flight (A's rows come even to a tile
                                 * whose tokens have no adapter, which no item waits for) */
    __syncthreads();
    return nsub;
}

template <typename T>
__global__ void __launch_bounds__(32 * LF_ORDERED_WARPS) multi_shrink_ordered_kernel(multi_args p)
{
    extern __shared__ __align__(16) unsigned char ordered_staged[]; /* p.stage_x: [TT][ks + XPAD] elements,
                                                                     * the rows of the tile's tokens that
                                                                     * have an adapter; then, with
                                                                     * p.only_slot, its A rows */
    __shared__ ordered_shrink_shared sh;
    int nvalid;
    ordered_shrink_block<T>(p, sh, ordered_staged, &nvalid);
    const int t0 = (int)blockIdx.y * LF_ORDERED_TOKENS;
    for (int i = threadIdx.x; i < nvalid * 16; i += 32 * LF_ORDERED_WARPS) { /* a position's 16 ranks */
        const int pr = i >> 4, j = i & 15;
        if (j < p.max_rank) {
            const float *h0 = (const float *)sh.red[0][pr], *h1 = (const float *)sh.red[1][pr];
            p.tpart[((int64_t)blockIdx.x * p.m + t0 + sh.og.order[pr]) * p.max_rank + j] = h0[j] + h1[j];
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

/* 4 columns of a y row (yr, from column col on, `valid` of them in the matrix): y = round(lora +
 * bias + base + beta·y), in that order, on every path (bias, base: NULL for none; base an fp32
 * row at col). beta = 0 must not read y. */
template <typename T, bool VECY>
__device__ __forceinline__ void finish4(float4 acc, const T *bias, const float *base, float beta, T *yr, int col,
                                        int valid)
{
    if (bias) {
        const float4 bb = load4<T, VECY>(bias + col, valid);
        acc.x += bb.x, acc.y += bb.y, acc.z += bb.z, acc.w += bb.w;
    }
    if (base) {
        const float4 gb = VECY ? *(const float4 *)base : load4<float, false>(base, valid);
        acc.x += gb.x, acc.y += gb.y, acc.z += gb.z, acc.w += gb.w;
    }
    if (beta != 0.0f) {
        const float4 old = load4<T, VECY>(yr, valid);
        acc.x = fmaf(beta, old.x, acc.x);
        acc.y = fmaf(beta, old.y, acc.y);
        acc.z = fmaf(beta, old.z, acc.z);
        acc.w = fmaf(beta, old.w, acc.w);
    }
    store4<T, VECY>(yr, acc, valid);
}

/* finish4 for 8 columns of a row whose accesses are 16 bytes wide: bias from col on, base its
 * fp32 row at col, old the row's y there (read only when beta ≠ 0). */
template <typename T>
__device__ __forceinline__ void finish8(float (&v)[8], const T *bias, const float *base, float beta, uint4 old, T *yr)
{
    if (bias) {
        const uint4 raw = *(const uint4 *)bias;
        const T *e = (const T *)&raw;
#pragma unroll
        for (int c = 0; c < 8; c++)
            v[c] += lf_dt<T>::to_f32(e[c]);
    }
    if (base) {
        const float4 b0 = *(const float4 *)base, b1 = *(const float4 *)(base + 4);
        v[0] += b0.x, v[1] += b0.y, v[2] += b0.z, v[3] += b0.w;
        v[4] += b1.x, v[5] += b1.y, v[6] += b1.z, v[7] += b1.w;
    }
    if (beta != 0.0f) {
        const T *e = (const T *)&old;
#pragma unroll
        for (int c = 0; c < 8; c++)
            v[c] = fmaf(beta, lf_dt<T>::to_f32(e[c]), v[c]);
    }
    uint4 out;
    T *d = (T *)&out;
#pragma unroll
    for (int c = 0; c < 8; c++)
        d[c] = lf_dt<T>::from_f32(v[c]);
    *(uint4 *)yr = out;
}

/* T[row][j] before the scale: the shrink's K-slice partials added in slice order (the loads issued
 * ahead); row: the token's position in the grouping, or the token (t_by_token). */
__device__ __forceinline__ float t_partials(const multi_args &p, int row, int j)
{
    const float *src = p.tpart + (int64_t)row * p.max_rank + j;
    float s = 0.0f;
#pragma unroll 8
    for (int q = 0; q < p.kslices; q++)
        s += src[(int64_t)q * p.m * p.max_rank];
    return s;
}

/* An expand's bucketing and its wait for the shrink: the ids and the slot table come from before
 * the shrink (which waits for the kernel that wrote them before it releases this one), so the
 * layout and the block's first tile are found before the wait, beside the shrink's work. Returns the number of tiles; *first gets tile blockIdx.y (if there is one) with
 * its tokens in tok. */
__device__ int expand_prologue(const multi_args &p, bucket_tables &bt, int *tok, int4 *first)
{
    const int ntiles = bucket_layout(p, bt);
    *first = (int)blockIdx.y < ntiles ? bucket_tile(p, bt, blockIdx.y, tok) : make_int4(-1, 0, 0, 0);
    lf_pdl_wait();
    lf_pdl_release();
    return ntiles;
}

/* Tile ti of an expand's loop: the first came with the prologue; a later one is bucketed once every
 * warp is done with the previous tile's tokens. */
__device__ int4 expand_tile(const multi_args &p, bucket_tables &bt, int ti, int *tok, int4 first)
{
    if (ti == (int)blockIdx.y)
        return first;
    __syncthreads();
    return bucket_tile(p, bt, ti, tok);
}

/* y[token][N slice] for the tiles g, g + G, ... (g = blockIdx.y); RSMALL: max_rank ≤ RC, B in
 * registers once per tile. */
template <typename T, bool VECY, bool RSMALL>
__global__ void __launch_bounds__(LF_MULTI_THREADS) multi_expand_kernel(multi_args p)
{
    __shared__ bucket_tables bt;
    __shared__ int tok[LF_MULTI_TB_MAX];
    extern __shared__ float ts[]; /* T of one tile: [tb][rank] */
    int4 first;
    const int ntiles = expand_prologue(p, bt, tok, &first);
    const int tpr = p.bn / 4, rpp = LF_MULTI_THREADS / tpr; /* threads per row, rows per pass */
    const int row = threadIdx.x / tpr, col = blockIdx.x * p.bn + (threadIdx.x % tpr) * 4;
    const int valid = p.n - col; /* columns this thread may touch, when > 0 */
    const T *bias = (const T *)p.bias;
    T *y = (T *)p.y;
    for (int ti = blockIdx.y; ti < ntiles; ti += gridDim.y) {
        const int4 tile = expand_tile(p, bt, ti, tok, first);
        if (tile.x < 0 && !p.none_tiles)
            break;
        const int rank = tile.x < 0 ? 0 : p.slots[tile.x].rank;
        const float scale = tile.x < 0 ? 0.0f : p.slots[tile.x].scale;
        __syncthreads(); /* ts is free */
        for (int idx = threadIdx.x; idx < tile.z * rank; idx += LF_MULTI_THREADS) {
            const int u = idx / rank, j = idx % rank;
            ts[idx] = scale * t_partials(p, p.t_by_token ? tok[u] : tile.y + u, j);
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
            const int token = tok[u];
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
            finish4<T, VECY>(acc, bias, p.base ? p.base + (int64_t)token * p.n + col : NULL, p.beta,
                             y + (int64_t)token * p.ldy + col, col, valid);
        }
    }
}

/* The expand on tensor cores for 16-bit types where y's rows take 16-byte accesses (n, ldy
 * multiples of 8; y and bias 16-byte aligned). Block: tiles g, g + G, ... (g = blockIdx.y) × bn =
 * WARPS · EXPAND_GROUPS · 32 columns. Per tile: B's fragments for the warp's columns (held for the
 * whole tile where the rank is one chunk of 16), then passes of p.expand_rows tokens: T =
 * scale·Σ_q partials into shared memory [rows][ldt] (fp32, zero past the slot's rank), and each
 * warp runs mma m16n8k16 over the pass's sub-tiles of 16 tokens (rows) and its 32-column groups.
 * T enters as two bf16 terms (hi + lo: ~17 bits of its fp32 value, an error near 2^-17 of each
 * product, well inside the 2^-24·(K + r) scale of the references' tolerance for 16-bit outputs)
 * and so does an f16 B (its 11 bits split exactly in two bf16; the lo·lo product is left out);
 * every mma is bf16. Within a group, the mma's column n of n8 step s is group column 8·(n >> 1) + 2s +
 * (n & 1): lane (g, q)'s accumulators of one row are the 8 consecutive columns 8q .. 8q + 7, one
 * 16-byte load and store a row. A token's sums never depend on its row in the tile. */
#define LF_EXPAND_GROUPS 2

__device__ __forceinline__ uint32_t bf16_pair(float lo, float hi)
{
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(const uint32_t *)&v;
}

/* v = hi + lo, both bf16 pairs (lo is the rounding remainder). */
__device__ __forceinline__ void split_bf16(float v0, float v1, uint32_t &hi, uint32_t &lo)
{
    hi = bf16_pair(v0, v1);
    const __nv_bfloat162 h = *(const __nv_bfloat162 *)&hi;
    lo = bf16_pair(v0 - __low2float(h), v1 - __high2float(h));
}

/* B of rank chunk c for the warp's G column groups as bf16 fragments, hi and lo terms (lo is zero
 * for a bf16 B): fragment [i][st] holds B[16c + 2q + {0, 1}] and B[16c + 2q + {8, 9}] at lane
 * (g, q)'s column of n8 step st in group i (0 past the rank or N). */
template <typename T, int G>
__device__ __forceinline__ void load_b_chunk(uint32_t (&bh)[G][4][2], uint32_t (&bl)[G][4][2], const T *b, int64_t ldb,
                                             int c, int rank, int cw, int n, int g, int q)
{
    float v[G][4][4];
#pragma unroll
    for (int i = 0; i < G; i++)
#pragma unroll
        for (int st = 0; st < 4; st++) {
            const int col = cw + i * 32 + 8 * (g >> 1) + 2 * st + (g & 1);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int j = 16 * c + 2 * q + (e & 1) + 8 * (e >> 1);
                v[i][st][e] = j < rank && col < n ? lf_dt<T>::load(b + (int64_t)j * ldb + col) : 0.0f;
            }
        }
#pragma unroll
    for (int i = 0; i < G; i++)
#pragma unroll
        for (int st = 0; st < 4; st++) {
            split_bf16(v[i][st][0], v[i][st][1], bh[i][st][0], bl[i][st][0]);
            split_bf16(v[i][st][2], v[i][st][3], bh[i][st][1], bl[i][st][1]);
        }
}

/* Row stride of the expand's T in shared memory: + 8 floats puts the 8 rows of a fragment's float2
 * reads in distinct bank pairs. */
__host__ __device__ inline int expand_ldt(int max_rank) { return (max_rank + 15) / 16 * 16 + 8; }

/* A sub-tile's steps in multi_expand_ordered_kernel (multi_expand_mma_kernel writes the same out).
 * T's fragment of one rank chunk as hi and lo bf16 terms: rows g (row_g) and g + 8 (row_g8), each
 * pointing at the chunk's first rank in shared memory; ranks 2q + {0, 1, 8, 9}. */
__device__ __forceinline__ void t_fragment(const float *row_g, const float *row_g8, int q, uint32_t (&ah)[4],
                                           uint32_t (&al)[4])
{
#pragma unroll
    for (int h = 0; h < 4; h++) {
        const float2 v = *(const float2 *)&((h & 1) ? row_g8 : row_g)[2 * q + 8 * (h >> 1)];
        split_bf16(v.x, v.y, ah[h], al[h]);
    }
}

/* acc += T·B over one rank chunk, all bf16 mmas: T's hi and lo terms times B's hi term, and for an
 * f16 B its lo term times T's hi term. */
template <typename T, int G>
__device__ __forceinline__ void mma_t_b(float (&acc)[G][4][4], const uint32_t (&ah)[4], const uint32_t (&al)[4],
                                        const uint32_t (&bh)[G][4][2], const uint32_t (&bl)[G][4][2])
{
#pragma unroll
    for (int i = 0; i < G; i++)
#pragma unroll
        for (int st = 0; st < 4; st++) {
            mma16816<__nv_bfloat16>(acc[i][st], ah[0], ah[1], ah[2], ah[3], bh[i][st][0], bh[i][st][1]);
            mma16816<__nv_bfloat16>(acc[i][st], al[0], al[1], al[2], al[3], bh[i][st][0], bh[i][st][1]);
            if (std::is_same<T, __half>::value) /* bf16's B is one bf16 term */
                mma16816<__nv_bfloat16>(acc[i][st], ah[0], ah[1], ah[2], ah[3], bl[i][st][0], bl[i][st][1]);
        }
}

/* The old y a sub-tile's rows need (beta ≠ 0): rows row_tok (-1: none), lane q's 8 columns of
 * each of the warp's G groups from cw on. */
template <typename T, int G>
__device__ __forceinline__ void load_old_y(uint4 (&yv)[2][G], const multi_args &p, const int (&row_tok)[2], int cw,
                                           int q)
{
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int i = 0; i < G; i++) {
            const int col = cw + i * 32 + 8 * q;
            yv[r][i] = row_tok[r] >= 0 && col < p.n && p.beta != 0.0f
                           ? *(const uint4 *)((const T *)p.y + (int64_t)row_tok[r] * p.ldy + col)
                           : make_uint4(0u, 0u, 0u, 0u);
        }
}

/* y of a sub-tile's rows row_tok from the accumulators (finish8: bias, base, beta·y, rounded once).
 * Lane (g, q)'s accumulators of one row are the 8 consecutive columns 8q .. 8q + 7 of a group. */
template <typename T, int G>
__device__ __forceinline__ void store_rows(const float (&acc)[G][4][4], const multi_args &p, const int (&row_tok)[2],
                                           const uint4 (&yv)[2][G], int cw, int q)
{
    const T *bias = (const T *)p.bias;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (row_tok[r] < 0)
            continue;
#pragma unroll
        for (int i = 0; i < G; i++) {
            const int col = cw + i * 32 + 8 * q;
            if (col >= p.n)
                continue;
            float v[8];
#pragma unroll
            for (int e = 0; e < 8; e++)
                v[e] = acc[i][e >> 1][2 * r + (e & 1)];
            finish8<T>(v, bias ? bias + col : NULL, p.base ? p.base + (int64_t)row_tok[r] * p.n + col : NULL, p.beta,
                       yv[r][i], (T *)p.y + (int64_t)row_tok[r] * p.ldy + col);
        }
    }
}

/* The steps of a sub-tile (T's fragment, the mma, old y, finish8) are the helpers above written
 * out: through them ptxas scheduled this kernel ~1 µs slower at 64 adapters × 2048 tokens (58.0 →
 * 59.1 µs, three device calls; dev/cuda/NOTES.md, nineteenth session), so only
 * multi_expand_ordered_kernel calls them. */
template <typename T>
__global__ void __launch_bounds__(LF_MULTI_THREADS, 2) multi_expand_mma_kernel(multi_args p)
{
    constexpr bool SPLIT_B = std::is_same<T, __half>::value; /* bf16's B is one bf16 term */
    constexpr int G = LF_EXPAND_GROUPS;
    __shared__ bucket_tables bt;
    __shared__ int tok[LF_MULTI_TB_MAX];
    extern __shared__ float ts[]; /* [p.expand_rows][ldt] */
    int4 first;
    const int ntiles = expand_prologue(p, bt, tok, &first);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int ldt = expand_ldt(p.max_rank);
    const int cw = blockIdx.x * p.bn + warp * G * 32; /* the warp's first column */
    const T *bias = (const T *)p.bias;
    T *y = (T *)p.y;
    for (int ti = blockIdx.y; ti < ntiles; ti += gridDim.y) {
        const int4 tile = expand_tile(p, bt, ti, tok, first);
        if (tile.x < 0 && !p.none_tiles)
            break;
        const int rank = tile.x < 0 ? 0 : p.slots[tile.x].rank, kc = (rank + 15) / 16;
        const float scale = tile.x < 0 ? 0.0f : p.slots[tile.x].scale;
        const T *b = tile.x < 0 ? NULL : (const T *)p.b + ((int64_t)tile.x * p.max_rank) * p.ldb;
        /* B's fragments as bf16 hi and lo terms; one rank chunk (r ≤ 16) is held for the whole
         * tile, more are loaded per sub-tile and chunk */
        uint32_t bh[G][4][2], bl[G][4][2];
        if (kc == 1)
            load_b_chunk<T, G>(bh, bl, b, p.ldb, 0, rank, cw, p.n, g, q);
        for (int p0 = 0; p0 < tile.z; p0 += p.expand_rows) {
            const int prows = min(p.expand_rows, tile.z - p0);
            __syncthreads(); /* ts is free */
            for (int idx = threadIdx.x; idx < prows * kc * 16; idx += LF_MULTI_THREADS) {
                const int u = idx / (kc * 16), j = idx - u * kc * 16;
                ts[u * ldt + j] =
                    j < rank ? scale * t_partials(p, p.t_by_token ? tok[p0 + u] : tile.y + p0 + u, j) : 0.0f;
            }
            __syncthreads();
            if (cw >= p.n)
                continue;
            for (int u0 = 0; u0 < prows; u0 += LF_MULTI_TB) {
                /* rows g and g + 8 of the sub-tile; rows past the tile read ts's stale rows and are
                 * not stored */
                const int row_tok[2] = {u0 + g < prows ? tok[p0 + u0 + g] : -1,
                                        u0 + g + 8 < prows ? tok[p0 + u0 + g + 8] : -1};
                uint4 yv[2][G];
#pragma unroll
                for (int r = 0; r < 2; r++)
#pragma unroll
                    for (int i = 0; i < G; i++) {
                        const int col = cw + i * 32 + 8 * q;
                        yv[r][i] = row_tok[r] >= 0 && col < p.n && p.beta != 0.0f
                                       ? *(const uint4 *)(y + (int64_t)row_tok[r] * p.ldy + col)
                                       : make_uint4(0u, 0u, 0u, 0u);
                    }
                float acc[G][4][4] = {};
                for (int c = 0; c < kc; c++) {
                    /* T's fragment (rows g, g + 8; ranks 16c + 2q + {0, 1, 8, 9}) as hi and lo terms */
                    uint32_t ah[4], al[4];
#pragma unroll
                    for (int h = 0; h < 4; h++) {
                        const float2 v =
                            *(const float2 *)&ts[(u0 + g + 8 * (h & 1)) * ldt + 16 * c + 2 * q + 8 * (h >> 1)];
                        split_bf16(v.x, v.y, ah[h], al[h]);
                    }
                    if (kc > 1)
                        load_b_chunk<T, G>(bh, bl, b, p.ldb, c, rank, cw, p.n, g, q);
#pragma unroll
                    for (int i = 0; i < G; i++)
#pragma unroll
                        for (int st = 0; st < 4; st++) {
                            mma16816<__nv_bfloat16>(acc[i][st], ah[0], ah[1], ah[2], ah[3], bh[i][st][0], bh[i][st][1]);
                            mma16816<__nv_bfloat16>(acc[i][st], al[0], al[1], al[2], al[3], bh[i][st][0], bh[i][st][1]);
                            if (SPLIT_B)
                                mma16816<__nv_bfloat16>(acc[i][st], ah[0], ah[1], ah[2], ah[3], bl[i][st][0],
                                                        bl[i][st][1]);
                        }
                }
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    if (row_tok[r] < 0)
                        continue;
#pragma unroll
                    for (int i = 0; i < G; i++) {
                        const int col = cw + i * 32 + 8 * q;
                        if (col >= p.n)
                            continue;
                        float v[8];
#pragma unroll
                        for (int e = 0; e < 8; e++)
                            v[e] = acc[i][e >> 1][2 * r + (e & 1)];
                        finish8<T>(v, bias ? bias + col : NULL, p.base ? p.base + (int64_t)row_tok[r] * p.n + col : NULL,
                                   p.beta, yv[r][i], y + (int64_t)row_tok[r] * p.ldy + col);
                    }
                }
            }
        }
    }
}

/* Row stride, in elements, of a slot's B rows staged by the multi-slot ordered expand: + 8 puts
 * the rows 2q of a fragment's 16-byte reads (q = 0..3) 32 bytes apart in the bank cycle (bn a
 * multiple of 32). */
__host__ __device__ inline int ordered_b_ld(int bn) { return bn + 8; }

/* The 16-bit element h of a staged B word as fp32. */
template <typename T> __device__ __forceinline__ float bits_to_f32(uint32_t h)
{
    if constexpr (std::is_same<T, __half>::value)
        return __half2float(__ushort_as_half((unsigned short)h));
    else
        return __uint_as_float(h << 16);
}

/* load_b_chunk's fragments (rank chunk 0) from a slot's rows staged in shared memory, row j at
 * bs + j·ld, the warp's G groups from column cl of the slice on: lane (g, q) reads the 16 bytes of
 * columns 8·(g >> 1) .. + 7 of rows 2q, 2q + 1, 2q + 8, 2q + 9 (every column of its n8 steps: step
 * st is element 2st + (g & 1)). Rows past the rank are zero (what they hold is another adapter's,
 * or nothing). */
template <typename T, int G>
__device__ __forceinline__ void staged_b_chunk(uint32_t (&bh)[G][4][2], uint32_t (&bl)[G][4][2], const T *bs, int ld,
                                               int rank, int cl, int g, int q)
{
    const int odd = g & 1;
#pragma unroll
    for (int i = 0; i < G; i++) {
        uint4 r[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int j = 2 * q + (e & 1) + 8 * (e >> 1);
            r[e] = j < rank ? *(const uint4 *)(bs + (int64_t)j * ld + cl + i * 32 + 8 * (g >> 1))
                            : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int st = 0; st < 4; st++) {
            float v[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const uint32_t w = st == 0 ? r[e].x : st == 1 ? r[e].y : st == 2 ? r[e].z : r[e].w;
                v[e] = bits_to_f32<T>(odd ? w >> 16 : w & 0xffffu);
            }
            split_bf16(v[0], v[1], bh[i][st][0], bl[i][st][0]);
            split_bf16(v[2], v[3], bh[i][st][1], bl[i][st][1]);
        }
    }
}

/* The ordered expand's T row stride in shared memory (+ 8: see expand_ldt). */
#define LF_ORDERED_LDT (16 + 8)

/* B's fragments of one slot for the warp's columns from cw on, from memory (load_b_chunk). */
template <typename T, int G>
__device__ __forceinline__ void slot_b_frags(uint32_t (&bh)[G][4][2], uint32_t (&bl)[G][4][2], const multi_args &p,
                                             int slot, int rank, int cw, int g, int q)
{
    load_b_chunk<T, G>(bh, bl, (const T *)p.b + (int64_t)slot * p.max_rank * p.ldb, p.ldb, 0, rank, cw, p.n, g, q);
}

/* Tokens a tile of multi_expand_ordered_kernel: 64 where one slot is loaded (two column groups a
 * warp, B's fragments from memory once a block), 128 where more are (one group a warp, the tile's
 * slots' B rows staged), so that a slot's staged rows and T's partial slices serve twice the
 * tokens and the grid (16 slices × 16 tiles at 2048 tokens, 4096 columns) is one wave of two
 * blocks an SM. */
__host__ __device__ constexpr int ordered_expand_tokens(bool staged) { return staged ? 128 : LF_ORDERED_TOKENS; }
__host__ __device__ constexpr int ordered_expand_groups(bool staged) { return staged ? 1 : LF_EXPAND_GROUPS; }

/* The expand in token order, after multi_shrink_ordered_kernel where y's rows take 16-byte
 * accesses (16-bit; plan_of). Block (N slice of bn = WARPS · G · 32 columns, tile of TT
 * consecutive tokens): the prologue, before the wait for the shrink, groups the tile's tokens by
 * slot (ordered_group; the ids come from before the shrink, which waits before it releases) and
 * gets B (no kernel's output) under way, so that neither bucketing nor B's latency stands between
 * the two kernels: with one slot loaded (!STAGED) the first sub-tile's fragments into registers;
 * with several (STAGED) the B rows of the tile's slots (up to p.b_stages of them, in key order)
 * for the block's columns into shared memory by cp.async. After the wait, T = scale·Σ_q partials
 * (by token, fixed order) for the tile's positions into shared memory; then warp w takes every
 * sub-tile for its columns, as multi_expand_mma_kernel does (two bf16 terms, finish8's 16-byte
 * stores), building B's fragments where the slot changes: from memory (!STAGED: with one adapter
 * once a block), or from the staged rows, the sub-tiles visited in slot order so that a warp
 * builds each slot's once. A slot the plan did not count (a graph replayed after more adapters
 * were loaded than at its capture) is read from memory in either form. Tokens without an adapter
 * are visited where y changes (none_tiles), with no LoRA term. max_rank ≤ 16 (one rank chunk). */
template <typename T, bool STAGED>
__global__ void __launch_bounds__(LF_MULTI_THREADS, 2) multi_expand_ordered_kernel(multi_args p)
{
    constexpr int G = ordered_expand_groups(STAGED), TT = ordered_expand_tokens(STAGED);
    constexpr int PER_THREAD = TT * 16 / LF_MULTI_THREADS; /* T values a thread sums */
    static_assert(LF_MULTI_THREADS >= TT && TT * 16 % LF_MULTI_THREADS == 0, "ordered_group; T's staging");
    extern __shared__ __align__(16) unsigned char ordered_b[]; /* STAGED: [stage][LF_MULTI_RC rows][ordered_b_ld] */
    __shared__ ordered_groups_t<TT> og;
    __shared__ __align__(16) float ts[TT][LF_ORDERED_LDT]; /* T of the tile's positions, scaled; zero
                                                            * past the slot's rank (read as float2) */
    /* STAGED: the tile's slots in key order ("stages"), and the sub-tiles in slot order */
    __shared__ int pos_stage[STAGED ? TT : 1]; /* a position's stage */
    __shared__ int stage_slot[STAGED ? TT : 1], stage_heads[STAGED ? TT / 32 : 1];
    __shared__ int sub_order[STAGED ? TT : 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int t0 = (int)blockIdx.y * TT, n0 = (int)blockIdx.x * p.bn;
    const int cw = n0 + warp * G * 32; /* the warp's first column */
    const int ldbs = ordered_b_ld(p.bn);
    const T *bs = (const T *)ordered_b;
    int ngrouped;
    const int nsub = ordered_group(p, t0, p.none_tiles, og, &ngrouped, [](int) {});
    uint32_t bh[G][4][2], bl[G][4][2];
    int held = -1; /* !STAGED: the slot whose fragments bh, bl hold; STAGED: the stage */
    int nstaged = 0;
    if constexpr (!STAGED) {
        const int slot = ngrouped > 0 ? og.key[og.order[0]] : p.capacity; /* position 0 has the
                                                                            * smallest key */
        if (slot < p.capacity && cw < p.n)
            slot_b_frags<T, G>(bh, bl, p, slot, p.slots[slot].rank, cw, g, q), held = slot;
    } else {
        /* position pr heads a stage where its key differs from the one before */
        const int pr = (int)threadIdx.x;
        const int key = pr < ngrouped ? og.key[og.order[pr]] : INT_MAX;
        const bool head = pr < ngrouped && key < p.capacity && (pr == 0 || og.key[og.order[pr - 1]] != key);
        const unsigned ball = __ballot_sync(0xffffffffu, head);
        if (lane == 0 && warp < TT / 32)
            stage_heads[warp] = __popc(ball);
        __syncthreads();
        if (pr < TT) {
            int d = __popc(ball & ((2u << lane) - 1u)) - 1;
#pragma unroll
            for (int w = 0; w < TT / 32; w++)
                d += w < warp ? stage_heads[w] : 0;
            pos_stage[pr] = d;
            if (head)
                stage_slot[d] = key;
        }
        if (pr < nsub) { /* ordered_group numbers the sub-tiles by their first token */
            const int mine = og.sub_pos[pr];
            int before = 0;
            for (int u = 0; u < nsub; u++)
                before += og.sub_pos[u] < mine;
            sub_order[before] = pr;
        }
        __syncthreads();
#pragma unroll
        for (int w = 0; w < TT / 32; w++)
            nstaged += stage_heads[w];
        nstaged = min(nstaged, p.b_stages);
        /* 16-byte chunks a row: those past n (the last slice; n a multiple of 8) zero, as
         * load_b_chunk's fragments are there */
        const int chunks = p.bn / 8, live = min(p.bn, p.n - n0) / 8;
        for (int idx = threadIdx.x; idx < nstaged * LF_MULTI_RC * chunks; idx += LF_MULTI_THREADS) {
            const int row = idx / chunks, c = idx - row * chunks, d = row / LF_MULTI_RC, j = row - d * LF_MULTI_RC;
            T *dst = (T *)ordered_b + (int64_t)row * ldbs + 8 * c;
            if (c >= live)
                *(uint4 *)dst = make_uint4(0u, 0u, 0u, 0u);
            else if (j < p.slots[stage_slot[d]].rank)
                cp_async16(dst, (const T *)p.b + ((int64_t)stage_slot[d] * p.max_rank + j) * p.ldb + n0 + 8 * c);
        }
        cp_async_commit();
    }
    lf_pdl_wait();
    lf_pdl_release();

    /* T: thread i sums rank i % 16 of positions i / 16, i / 16 + 16, ...; the partials of the
     * positions it holds are loaded together, slice by slice */
    float tv[PER_THREAD] = {};
    const int j = threadIdx.x & 15;
    int ranks[PER_THREAD];
    const float *src[PER_THREAD];
#pragma unroll
    for (int r = 0; r < PER_THREAD; r++) {
        const int pr = (int)threadIdx.x / 16 + r * (LF_MULTI_THREADS / 16);
        const int key = pr < ngrouped ? og.key[og.order[pr]] : p.capacity;
        ranks[r] = key < p.capacity ? p.slots[key].rank : 0;
        src[r] = p.tpart + (int64_t)(t0 + (pr < ngrouped ? og.order[pr] : 0)) * p.max_rank + j;
    }
    const int64_t slice = (int64_t)p.m * p.max_rank;
    if (j < p.max_rank) /* every position's loads at once (rows of tokens without an adapter, and
                         * ranks past a slot's, too: in bounds, masked below) */
#pragma unroll 4
        for (int qs = 0; qs < p.kslices; qs++)
#pragma unroll
            for (int r = 0; r < PER_THREAD; r++)
                tv[r] += src[r][qs * slice];
#pragma unroll
    for (int r = 0; r < PER_THREAD; r++) {
        const int pr = (int)threadIdx.x / 16 + r * (LF_MULTI_THREADS / 16);
        ts[pr][j] = j < ranks[r] ? p.slots[og.key[og.order[pr]]].scale * tv[r] : 0.0f;
    }
    if constexpr (STAGED)
        cp_async_wait_all();
    __syncthreads();
    if (cw >= p.n)
        return;
    for (int i = 0; i < nsub; i++) {
        const int sb = STAGED ? sub_order[i] : i;
        const int slot = og.sub_slot[sb], n_tok = og.sub_cnt[sb], pos0 = og.sub_pos[sb] + g;
        const int row_tok[2] = {g < n_tok ? t0 + og.order[pos0] : -1, g + 8 < n_tok ? t0 + og.order[pos0 + 8] : -1};
        uint4 yv[2][G];
        load_old_y<T, G>(yv, p, row_tok, cw, q);
        float acc[G][4][4] = {};
        if (slot < p.capacity) {
            const int want = STAGED ? pos_stage[og.sub_pos[sb]] : slot;
            if (want != held) {
                if (STAGED && want < nstaged)
                    staged_b_chunk<T, G>(bh, bl, bs + (int64_t)want * LF_MULTI_RC * ldbs, ldbs,
                                         p.slots[slot].rank, cw - n0, g, q);
                else
                    slot_b_frags<T, G>(bh, bl, p, slot, p.slots[slot].rank, cw, g, q);
                held = want;
            }
            /* rows past the sub-tile belong to the next one (or to no token) and are not stored */
            uint32_t ah[4], al[4];
            t_fragment(ts[min(pos0, TT - 1)], ts[min(pos0 + 8, TT - 1)], q, ah, al);
            mma_t_b<T, G>(acc, ah, al, bh, bl);
        }
        store_rows<T, G>(acc, p, row_tok, yv, cw, q);
    }
}

/* ---- fused: shrink and expand in one kernel, a thread block cluster per tile (sm_90) ---------- */

/* One launch does the whole delta, for M ≤ LF_FUSED_SMALL_M. Work item = (tile, N chunk), one
 * cluster of LF_FUSED_CLUSTER blocks each. Block c of a cluster stages its K slice c of x (the
 * tile's tokens) and of A_slot in shared memory (cp.async: one memory latency for x, A and the
 * block's columns of B together), computes the partial T over that slice (tensor cores for 16-bit
 * types), and pushes it into every block of the cluster (st.async on the receiver's mbarrier),
 * which adds the partials in the fixed order c = 0, 1, ...; then every block expands its own N
 * columns with the full T. A is read once per tile and N chunk (fused_spread_chunks: more chunks
 * where the tiles are few), B once per tile. Bucketing in every block: up to 32 tokens by warp
 * votes; beyond, counting by bin, a scan over the bins to find the cluster's tile, a ballot for
 * the stable order of its tokens (O(1) per token). Up to 16 tokens with fewer slots than tokens
 * (by_slot) the work item is (slot, N chunk) instead, plus one for the tokens without an adapter:
 * a block stages its slot's A and B and every token's x before it reads the ids, so that the
 * bucketing's memory latency and the staging's overlap; it computes T for every token (the 16
 * rows of the mma) and the expand keeps its slot's. It stages max_rank rows of A and B, before
 * it knows the slot's rank, so the plan takes it only where every slot holds an adapter of that
 * rank (by_slot_fits: no padded reads, no empty slot staged); a graph captured so and replayed
 * after a slot was cleared or loaded at a lower rank stays correct and reads those rows anyway.
 * A token's sums never depend on its tile-mates: the K steps, warps and cluster order are the same
 * for every token. Larger M (measured slower fused at M = 2048: 59–68 µs against 45–64) takes the
 * shrink and the expand above. */
#define LF_FUSED_CLUSTER 8
#define LF_FUSED_SMALL_M 256    /* in-block bucketing: one token per thread */
#define LF_FUSED_SMEM_MAX (160 * 1024)
/* With one slot loaded, a delta of more tokens that the ordered kernels take (16-bit, rank ≤ 16,
 * 16-byte rows) runs them instead (plan_of).
 * Measured (H100, bf16 4096 → 4096, r 16, delta µs, fused → ordered): 64 tokens 10.0 → 10.8, 96
 * 10.7 → 10.8, 128 10.9 → 10.8, 192 12.8 → 11.2, 256 13.9 → 11.4; the layer (fused beside the
 * base GEMM) keeps the fused kernel: 256 tokens 34.4 against 37.2. With 8 slots the fused kernel
 * wins by 7 µs at 256 tokens. */
#define LF_FUSED_ONE_SLOT_M 128
/* At least this much dynamic shared memory per block: at most three blocks per SM. A fourth (the
 * 16-bit kernels need ~55 KB at 4096², r 16, and 56 registers; fp32's registers allow two) spread
 * the clusters over fewer SMs and was slower where the grid is 200–400 blocks (H100, host loop,
 * µs: 8 adapters × 16 tokens 8.08 against 7.51, 1 × 64 11.8 against 10.4), faster only at 1 × 16
 * (6.03 against 6.9); dev/cuda/NOTES.md. */
#define LF_FUSED_SMEM_MIN (72 * 1024)

/* The set's slots and the tokens per bin, sized by the set's capacity (up to LF_MAX_ADAPTERS: at
 * their largest in static shared memory they cost a block per SM at 64 adapters), at the start of
 * the dynamic shared memory. */
struct fused_tables {
    lf_adapter_slot *slots; /* [capacity] */
    int *count;             /* [capacity + 1], the last bin: tokens without an adapter */
};

__host__ __device__ size_t fused_tables_bytes(int capacity)
{
    return ((size_t)capacity * sizeof(lf_adapter_slot) + (size_t)(capacity + 1) * sizeof(int) + 15) / 16 * 16;
}

struct fused_shared {
    int seg[2 * LF_FUSED_SMALL_M + 1]; /* segment form, segments ≤ LF_FUSED_SMALL_M: starts, adapters */
    int warp_sums[32];
    int tok[LF_MULTI_TB];  /* the tile's tokens */
    int tile[3];           /* slot (-1: none), tokens, and whether the cluster has work (1) */
    unsigned long long recv_bar; /* the cluster's partial T landed (push_to) */
};

/* The fused kernel's exchange of partial T between the blocks of a cluster: each block pushes its
 * values into every block's receive area with st.async, which counts the bytes on the receiver's
 * mbarrier; a block waits on its own mbarrier, locally, for all of them. No cluster barrier sits
 * between the shrink and the expand (a release barrier, then remote loads, then a second barrier
 * before any block may leave, cost the kernel ~15% of its time at one token, ncu). The barrier that
 * makes every block's mbarrier initialized before the first push is arrived at when the kernel
 * starts and waited for after the shrink, off the critical path. Every block of a cluster must
 * see the same tile (the mapping and the set do not change during a call): a block expecting more
 * bytes than the others push would wait forever. The receive area holds 8 partials per (token,
 * rank): past rank ~160 (16-bit, K = 4096) it outgrows LF_FUSED_SMEM_MAX and the call takes the
 * shrink and the expand instead. */
__device__ __forceinline__ void cluster_arrive_relaxed()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void cluster_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

/* v into block `rank`'s copy of *dst (the same shared-memory address there), counted on its bar. */
__device__ __forceinline__ void push_to(float *dst, unsigned long long *bar, int rank, float v)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned d, b;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(d) : "r"((unsigned)__cvta_generic_to_shared(dst)), "r"(rank));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(b) : "r"((unsigned)__cvta_generic_to_shared(bar)), "r"(rank));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(d),
                 "r"(__float_as_uint(v)), "r"(b)
                 : "memory");
#else
    (void)dst, (void)bar, (void)rank, (void)v;
#endif
}

/* The bucketing's first step, for every block thread: the set's slots (a token's bin needs its
 * rank) and the segment form's runs into shared memory, and each thread's token's bin (its slot,
 * p.capacity for none; t < p.m). The per-token ids load beside the staging, before the barrier. */
__device__ int fused_stage_bins(const multi_args &p, fused_shared &sh, const fused_tables &tb)
{
    const int t = threadIdx.x;
    const bool staged_segs = !p.ids && p.segments <= LF_FUSED_SMALL_M;
    for (int b = t; b < p.capacity; b += blockDim.x)
        tb.slots[b] = p.slots[b];
    if (staged_segs)
        for (int i = t; i < 2 * p.segments + 1; i += blockDim.x)
            sh.seg[i] = i <= p.segments ? p.seg_starts[i] : p.seg_adapter[i - p.segments - 1];
    int id = -1;
    if (p.ids && t < p.m)
        id = p.ids[t];
    __syncthreads();
    if (!p.ids && t < p.m)
        id = staged_segs ? lf_token_id(p, sh.seg, sh.seg + p.segments + 1, t)
                         : lf_token_id(p, p.seg_starts, p.seg_adapter, t);
    return id < 0 || id >= p.capacity || tb.slots[id].rank <= 0 ? p.capacity : id;
}

/* M ≤ 32: the tiles of fused_bucket_in_block (a bin's tokens in chunks of LF_MULTI_TB, in token
 * order), found by warp 0 alone, one token per lane, with warp votes: two block barriers where the
 * general form needs seven to ten, each a wait on the slowest warp in a kernel whose time is its
 * chain of latencies (ncu at M = 1: barrier stalls ~15% of its samples). The bins' tiles are
 * numbered in the order of their first tokens, not of the bins as there: every block of the launch
 * numbers them alike, which is all the tiles need, and the offsets are then a warp scan (5
 * dependent shuffles) instead of a sum over the smaller bins (64 shuffles). */
__device__ void fused_bucket_in_warp(const multi_args &p, fused_shared &sh, const fused_tables &tb, int ti)
{
    const int t = threadIdx.x;
    const int bin = fused_stage_bins(p, sh, tb);
    if (t < 32) {
        const int key = t < p.m ? bin : INT_MAX; /* lanes past M: a group of their own, no tiles */
        const unsigned peers = __match_any_sync(0xffffffffu, key), below = (1u << t) - 1u;
        const int tiles = t < p.m && (peers & below) == 0 ? (__popc(peers) + LF_MULTI_TB - 1) / LF_MULTI_TB : 0;
        int upto = tiles; /* then the leaders' tiles over lanes 0 .. t (inclusive scan) */
#pragma unroll
        for (int d = 1; d < 32; d *= 2) {
            const int v = __shfl_up_sync(0xffffffffu, upto, d);
            upto += t >= d ? v : 0;
        }
        const int before = upto - tiles;
        const unsigned owner = __ballot_sync(0xffffffffu, ti >= before && ti < before + tiles);
        if (t == 0)
            sh.tile[2] = 0; /* past the last tile */
        if (owner) {
            const int src = __ffs(owner) - 1, mine = __shfl_sync(0xffffffffu, key, src);
            const int first = (ti - __shfl_sync(0xffffffffu, before, src)) * LF_MULTI_TB;
            const unsigned members = __ballot_sync(0xffffffffu, key == mine);
            const int pos = __popc(members & below);
            if (key == mine && pos >= first && pos < first + LF_MULTI_TB)
                sh.tok[pos - first] = t;
            if (t == 0) {
                sh.tile[0] = mine == p.capacity ? -1 : mine;
                sh.tile[1] = min(LF_MULTI_TB, __popc(members) - first);
                sh.tile[2] = 1;
            }
        }
    }
    __syncthreads();
}

/* In-block bucketing for the cluster's tile index ti: fills sh.tile and sh.tok. */
__device__ void fused_bucket_in_block(const multi_args &p, fused_shared &sh, const fused_tables &tb, int ti)
{
    const int t = threadIdx.x, bins = p.capacity + 1;
    for (int b = t; b < bins; b += blockDim.x)
        tb.count[b] = 0;
    const int bin = fused_stage_bins(p, sh, tb);
    /* Counts only (the order comes from the ballot below); one atomic per bin and warp: a batch
     * of one adapter would otherwise serialize 32 lanes on one address. */
    const unsigned valid = __ballot_sync(0xffffffffu, t < p.m);
    if (t < p.m) {
        const unsigned peers = __match_any_sync(valid, bin);
        if ((peers & ((1u << (t & 31)) - 1u)) == 0)
            atomicAdd(&tb.count[bin], __popc(peers));
    }
    __syncthreads();
    /* Tiles are numbered by bin, then chunk of LF_MULTI_TB tokens: each thread scans a run of bins. */
    const int per = (bins + blockDim.x - 1) / blockDim.x, b0 = t * per, b1 = min(bins, b0 + per);
    int tiles = 0;
    for (int b = b0; b < b1; b++)
        tiles += (tb.count[b] + LF_MULTI_TB - 1) / LF_MULTI_TB;
    int total, before = block_exclusive_scan(tiles, sh.warp_sums, &total);
    if (t == 0)
        sh.tile[2] = 0;
    __syncthreads();
    for (int b = b0; b < b1; b++) {
        const int nt = (tb.count[b] + LF_MULTI_TB - 1) / LF_MULTI_TB;
        if (ti >= before && ti < before + nt) {
            const int chunk = ti - before;
            sh.tile[0] = b == p.capacity ? -1 : b;
            sh.tile[1] = min(LF_MULTI_TB, tb.count[b] - chunk * LF_MULTI_TB);
            sh.tile[2] = 1 + chunk; /* chunk + 1 until the ballot below */
        }
        before += nt;
    }
    __syncthreads();
    if (sh.tile[2] == 0)
        return; /* past the last tile */
    const int mine = sh.tile[0] < 0 ? p.capacity : sh.tile[0], first = (sh.tile[2] - 1) * LF_MULTI_TB;
    const bool in = t < p.m && bin == mine;
    const unsigned ball = __ballot_sync(0xffffffffu, in);
    const int lane = t & 31, warp = t >> 5;
    if (lane == 0)
        sh.warp_sums[warp] = __popc(ball);
    __syncthreads();
    int pos = __popc(ball & ((1u << lane) - 1u));
    for (int w = 0; w < warp; w++)
        pos += sh.warp_sums[w];
    if (in && pos >= first && pos < first + LF_MULTI_TB)
        sh.tok[pos - first] = t;
    __syncthreads();
    if (t == 0)
        sh.tile[2] = 1;
    __syncthreads();
}

/* by_slot: the tokens of item ti's bin (slot ti; ti = p.capacity: the tokens without an adapter),
 * in token order, by one ballot: M ≤ 16, so an item is one tile. */
__device__ void fused_bucket_by_slot(const multi_args &p, fused_shared &sh, const fused_tables &tb, int ti)
{
    const int t = threadIdx.x;
    const int bin = fused_stage_bins(p, sh, tb);
    if (t < 32) {
        const bool in = t < p.m && bin == ti;
        const unsigned members = __ballot_sync(0xffffffffu, in);
        if (in)
            sh.tok[__popc(members & ((1u << t) - 1u))] = t;
        if (t == 0) {
            sh.tile[0] = ti == p.capacity ? -1 : ti;
            sh.tile[1] = __popc(members);
            sh.tile[2] = members != 0u;
        }
    }
    __syncthreads();
}

/* Delta (dout NULL: y, with bias, base and beta; else dout[token][col] = the LoRA term in fp32)
 * for work item blockIdx.x / LF_FUSED_CLUSTER. Dynamic shared memory: the slot table and bin
 * counts (fused_tables), x slice [TB][ks + 8], A slice [RC][ks + 8] (8 elements of padding: the
 * mma fragments' rows fall in different banks), B columns [max_rank][bn] in T; per-warp partial T
 * [8][TB][RC], the cluster's partials as pushed [CLUSTER][TB][rp] and the full T [TB][rp] in fp32
 * (rp = max_rank rounded up to RC). */
template <typename T, bool VECY>
__global__ void __launch_bounds__(LF_MULTI_THREADS, 2) multi_fused_kernel(multi_args p)
{
    __shared__ fused_shared sh;
    extern __shared__ float4 fused_smem4[];
    lf_pdl_wait();
    lf_pdl_release();
    const fused_tables tb = {(lf_adapter_slot *)fused_smem4,
                             (int *)((lf_adapter_slot *)fused_smem4 + p.capacity)};
    if (threadIdx.x == 0)
        recv_init(&sh.recv_bar, 1); /* one local arrival: recv_expect's */
    cluster_arrive_relaxed(); /* waited for before the first push (or before leaving) */
    const int cid = blockIdx.x / LF_FUSED_CLUSTER, crank = blockIdx.x % LF_FUSED_CLUSTER;
    const int ti = cid / p.nchunks, chunk = cid % p.nchunks;
    const int rp = (p.max_rank + LF_MULTI_RC - 1) / LF_MULTI_RC * LF_MULTI_RC;
    const int lds = p.ks + LF_MULTI_PAD;
    T *xs = (T *)((char *)fused_smem4 + fused_tables_bytes(p.capacity)), *as = xs + LF_MULTI_TB * lds;
    T *bs = as + LF_MULTI_RC * lds;
    float *red = (float *)(bs + p.max_rank * p.bn); /* 16-byte aligned: lds and bn are multiples of 8 */
    /* recv[c][u][j]: block c's partial T for token u (by_slot: token u of the batch), rank j; then the full T */
    float *recv = red + LF_MULTI_WARPS * LF_MULTI_TB * LF_MULTI_RC, *tfull = recv + LF_FUSED_CLUSTER * LF_MULTI_TB * rp;
    const int k0 = crank * p.ks, kspan = max(0, min(p.ks, p.k - k0));
    const int col0 = (chunk * LF_FUSED_CLUSTER + crank) * p.bn, ncols = max(0, min(p.bn, p.n - col0));
    auto a_rows = [&](int s) { return (const T *)p.a + ((int64_t)s * p.max_rank) * p.lda + k0; };
    /* x's rows (tok, or the first `rows` tokens), slot s's B rows of the block's columns and its first
     * chunk of A's ranks, in flight together (one memory latency for all three) */
    auto stage = [&](int s, const int *tok, int rows, int ranks) {
        stage_rows<T>(xs, lds, p.ks, (const T *)p.x + k0, p.ldx, tok, rows, kspan, p.vec_x);
        stage_rows<T>(bs, p.bn, p.bn, (const T *)p.b + ((int64_t)s * p.max_rank) * p.ldb + col0, p.ldb, NULL, ranks,
                      ncols, p.vec_b);
        stage_rows<T>(as, lds, p.ks, a_rows(s), p.lda, NULL, min(LF_MULTI_RC, ranks), kspan, p.vec_a);
    };
    /* by_slot: the item's slot is known before the mapping, so its operands (every token's row of x,
     * all max_rank ranks) are in flight while the ids are read and bucketed, and the block computes
     * T for every token, pushing it all: the receivers' byte count does not depend on the mapping. */
    const int early = p.by_slot && ti < p.capacity ? ti : -1;
    if (early >= 0)
        stage(early, NULL, p.m, p.max_rank);
    if (p.by_slot)
        fused_bucket_by_slot(p, sh, tb, ti);
    else if (p.m <= 32)
        fused_bucket_in_warp(p, sh, tb, ti);
    else
        fused_bucket_in_block(p, sh, tb, ti);
    const int slot = sh.tile[0], count = sh.tile[1];
    if (!sh.tile[2] || (slot < 0 && !p.none_tiles)) {
        if (early >= 0)
            cp_async_wait_all(); /* no copy may land in this block's shared memory after it left */
        cluster_wait(); /* the same for every block of the cluster: all leave here */
        return;
    }
    const lf_adapter_slot entry = slot < 0 ? lf_adapter_slot{0, 0.0f} : tb.slots[slot];
    const int rank = entry.rank;
    /* the rows and ranks of T each block pushes */
    const int prows = early >= 0 ? p.m : count, pranks = early >= 0 ? p.max_rank : rank;
    if (threadIdx.x == 0)
        recv_expect(&sh.recv_bar, (unsigned)(LF_FUSED_CLUSTER * prows * pranks * sizeof(float)));
    if (early < 0 && rank > 0)
        stage(slot, sh.tok, count, rank);
    for (int j0 = 0; j0 < pranks; j0 += LF_MULTI_RC) {
        if (j0 > 0) /* ranks past 16: not by_slot */
            stage_rows<T>(as, lds, p.ks, a_rows(slot) + (int64_t)j0 * p.lda, p.lda, NULL, min(LF_MULTI_RC, rank - j0),
                          kspan, p.vec_a);
        cp_async_wait_all();
        __syncthreads();
        /* red[w][u][j]: warp w's share of the slice for token u, rank j0 + j */
        const int nparts = shrink_slice<T>(xs, as, lds, p.ks, red);
        __syncthreads(); /* red complete; as free */
        const int u = threadIdx.x / LF_MULTI_RC, j = threadIdx.x % LF_MULTI_RC; /* 256 = TB × RC */
        float s = 0.0f;
        for (int w = 0; w < nparts; w++)
            s += red[(w * LF_MULTI_TB + u) * LF_MULTI_RC + j];
        if (j0 == 0)
            cluster_wait(); /* every block's recv_bar is initialized */
        if (u < prows && j0 + j < pranks) /* this block's share of T, into slot crank of every block */
            for (int c = 0; c < LF_FUSED_CLUSTER; c++)
                push_to(recv + (crank * LF_MULTI_TB + u) * rp + j0 + j, &sh.recv_bar, c, s);
    }
    if (pranks == 0)
        cluster_wait(); /* not waited for in the loop */
    /* T = scale · Σ_c recv[c], c in order: every block of the cluster gets the same bits */
    recv_wait(&sh.recv_bar);
    for (int idx = threadIdx.x; idx < count * rank; idx += blockDim.x) {
        const int u = idx / rank, j = idx - u * rank, row = early >= 0 ? sh.tok[u] : u;
        float s = 0.0f;
        for (int c = 0; c < LF_FUSED_CLUSTER; c++)
            s += recv[(c * LF_MULTI_TB + row) * rp + j];
        tfull[u * rp + j] = entry.scale * s;
    }
    __syncthreads();

    /* Expand: 4 columns per thread, tpr threads per token. */
    const int tpr = p.bn / 4, rpp = LF_MULTI_THREADS / tpr, cl = (threadIdx.x % tpr) * 4;
    const int valid = ncols - cl, col = col0 + cl;
    if (threadIdx.x < rpp * tpr && valid > 0) {
        const T *bias = (const T *)p.bias;
        T *y = (T *)p.y;
        for (int u = threadIdx.x / tpr; u < count; u += rpp) {
            const int token = sh.tok[u];
            const float *t = tfull + u * rp;
            float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int j = 0; j < rank; j++)
                fma4(t[j], load4<T, true>(bs + j * p.bn + cl, 4), acc);
            if (p.dout) {
                float *d = p.dout + (int64_t)token * p.n + col;
                if (VECY) {
                    *(float4 *)d = acc;
                } else {
                    const float *f = &acc.x;
                    for (int e = 0; e < 4 && e < valid; e++)
                        d[e] = f[e];
                }
                continue;
            }
            finish4<T, VECY>(acc, bias, NULL, p.beta, y + (int64_t)token * p.ldy + col, col, valid);
        }
    }
}

/* Layer at small M: y = round(lora + bias + base + beta·y), lora = dout's row for tokens with an
 * adapter (the fused kernel wrote it beside the base GEMM), 0 for the others. Block: 1024 columns
 * of one row. */
template <typename T, bool VECY> __global__ void __launch_bounds__(LF_MULTI_THREADS) multi_finish_kernel(multi_args p)
{
    lf_pdl_wait();
    lf_pdl_release();
    const int token = blockIdx.y, col = (blockIdx.x * LF_MULTI_THREADS + threadIdx.x) * 4, valid = p.n - col;
    if (valid <= 0)
        return;
    const float *d = p.dout + (int64_t)token * p.n + col;
    float4 acc = VECY ? *(const float4 *)d : load4<float, false>(d, valid); /* read before the id is known */
    if (lf_token_slot(p, token) < 0)
        acc = make_float4(0.f, 0.f, 0.f, 0.f);
    finish4<T, VECY>(acc, (const T *)p.bias, p.base + (int64_t)token * p.n + col, p.beta,
                     (T *)p.y + (int64_t)token * p.ldy + col, col, valid);
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
    /* blocks an SM holds at once at this set's dtype and max_rank (set_occupancy): the shrink at
     * its short and long K slices, the CUDA-core and the tensor-core expand */
    int shrink_per_sm[2], expand_per_sm[2];
};

/* Blocking and workspace of one call. */
struct multi_plan {
    bool fused;   /* multi_fused_kernel (else the shrink and the expand) */
    bool ordered; /* the shrink is multi_shrink_ordered_kernel */
    bool expand_mma; /* multi_expand_mma_kernel (else multi_expand_kernel) */
    bool expand_ordered; /* multi_expand_ordered_kernel (after the ordered shrink, in expand_mma's place) */
    int max_tiles;
    dim3 shrink_grid, expand_grid, fused_grid;
    size_t shrink_smem, expand_smem, fused_smem;
    size_t tpart, base, dout, counts, total; /* workspace offsets (bytes) */
};

size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

/* The fused kernel's shared memory for a's ks, bn and max_rank (see multi_fused_kernel). */
size_t fused_smem_bytes(const multi_args &a, size_t es)
{
    const size_t rp = round_up((size_t)a.max_rank, LF_MULTI_RC);
    const size_t lds = (size_t)a.ks + LF_MULTI_PAD;
    return fused_tables_bytes(a.capacity) +
           ((size_t)LF_MULTI_TB * lds + (size_t)LF_MULTI_RC * lds + (size_t)a.max_rank * a.bn) * es +
           (LF_MULTI_WARPS * LF_MULTI_TB * LF_MULTI_RC + (LF_FUSED_CLUSTER + 1) * LF_MULTI_TB * rp) * sizeof(float);
}

/* The fused kernel's N chunks where they spread (a delta alone on the GPU): as many as keep the
 * grid, max_tiles × chunks clusters, within LF_FUSED_GRID_PER_SM_X4 / 4 blocks an SM (grids past
 * that were slower in every cell swept, while fewer blocks an SM by padding shared memory never
 * helped: the grid counts, not the blocks an SM; dev/cuda/NOTES.md, twenty-fourth session, item
 * 1), but at least so many that a block's CUDA-core expand keeps
 * LF_FUSED_SPREAD_TOKEN_COLS tokens × columns or fewer (tokens: m / max_tiles rounded up, a tile's
 * mean over the grid's tiles), while the grid stays within LF_FUSED_SPREAD_MAX_PER_SM blocks an SM
 * (past it every chunk repeats the bucketing and the staging of x and A for many tiles). Measured
 * (H100, bf16 4096 → 4096, r 16, delta µs, one round; dev/cuda/NOTES.md, twenty-fourth session),
 * adapters × tokens (plan tiles): chunks µs: 1 × 64 (6): 1 9.9, 2 7.9, 3 7.9, 6 9.9; 8 × 16 (10):
 * 1 6.1, 2 5.7, 3 7.2; 8 × 64 (13): 1 9.1, 2 9.6; 64 × 16 (16): 1 6.1, 2 7.5; 8 × 256 (25): 1
 * 16.5, 2 13.7. */
#define LF_FUSED_GRID_PER_SM_X4 5 /* 165 blocks at 132 SMs: 8 × 16's 2 chunks are 160 */
#define LF_FUSED_SPREAD_TOKEN_COLS 4096 /* 16 tokens × 256 columns */
#define LF_FUSED_SPREAD_MAX_PER_SM 4
int fused_spread_chunks(const multi_args &a, int max_tiles, int sms)
{
    const int per_chunk = LF_FUSED_CLUSTER * max_tiles; /* blocks */
    const int by_grid = sms * LF_FUSED_GRID_PER_SM_X4 / 4 / per_chunk;
    const int64_t tile_tokens = std::min<int64_t>(LF_MULTI_TB, (a.m + max_tiles - 1) / max_tiles);
    const int64_t chunk_work = (int64_t)LF_FUSED_CLUSTER * LF_FUSED_SPREAD_TOKEN_COLS;
    const int by_work = (int)std::min<int64_t>((a.n * tile_tokens + chunk_work - 1) / chunk_work,
                                               std::max(1, LF_FUSED_SPREAD_MAX_PER_SM * sms / per_chunk));
    return std::max(1, std::min(std::max(by_grid, by_work), a.n / (LF_FUSED_CLUSTER * 64)));
}

/* Sets a's blocking for the fused kernel (K slice per cluster block, N chunks and columns per
 * block) and says whether its shared memory fits. spread: N chunks by fused_spread_chunks (not
 * beside the layer's GEMM, which needs the SMs: one chunk there); B's columns of a block stay
 * within 32 KiB. */
bool fused_blocking(multi_args &a, int max_tiles, int sms, size_t es, bool spread)
{
    a.tb = LF_MULTI_TB;
    a.ks = (int)round_up((size_t)(a.k + LF_FUSED_CLUSTER - 1) / LF_FUSED_CLUSTER, 16); /* mma k-steps */
    const int bn_cap = std::max(8, std::min(1024, (int)(32768 / ((size_t)a.max_rank * es)) / 8 * 8));
    max_tiles = std::max(1, max_tiles);
    int chunks = spread ? fused_spread_chunks(a, max_tiles, sms) : 1;
    chunks = std::max(chunks, (a.n + LF_FUSED_CLUSTER * bn_cap - 1) / (LF_FUSED_CLUSTER * bn_cap));
    a.bn = (int)round_up((size_t)(a.n + chunks * LF_FUSED_CLUSTER - 1) / (chunks * LF_FUSED_CLUSTER), 8);
    /* bn's rounding up to 8 can leave whole chunks past N (4096 → 14336 at 20 chunks: bn 96, the
     * 20th chunk from column 14592), which would bucket, stage and shrink for nothing */
    a.nchunks = (int)((a.n + LF_FUSED_CLUSTER * a.bn - 1) / (LF_FUSED_CLUSTER * a.bn));
    return fused_smem_bytes(a, es) <= LF_FUSED_SMEM_MAX;
}

/* K slice of the shrink: 512 elements (16-bit; 256 at M ≤ 64, for more blocks) or 240 (fp32). */
int shrink_ks(size_t es, int m) { return es == 4 ? 240 : m > 64 ? 512 : 256; }

/* The ordered shrink's shared memory: with stage_x its tile's rows of x at K slice ks and, where
 * one slot is loaded (only_slot), that slot's LF_MULTI_RC rows of A (87 KB at 512: two blocks an
 * SM); none otherwise. */
size_t ordered_shrink_smem_bytes(int ks, bool stage_x, bool stage_a)
{
    return stage_x ? (size_t)(LF_ORDERED_TOKENS + (stage_a ? LF_MULTI_RC : 0)) * (ks + LF_ORDERED_XPAD) * 2 : 0;
}

/* The shrink's shared memory: two x sub-tiles and A's chunk in T, the warps' shares in fp32
 * (58 KB at most: three blocks an SM). */
size_t shrink_smem_bytes(int ks, size_t es)
{
    return (size_t)(2 * LF_MULTI_TB + LF_MULTI_RC) * (ks + LF_MULTI_PAD) * es +
           (size_t)LF_MULTI_WARPS * LF_MULTI_TB * LF_MULTI_RC * sizeof(float);
}

/* Tokens per tile of the shrink and the expand: 64, or fewer (a multiple of 16) where
 * multi_expand_kernel's T of a tile, tb × max_rank fp32, would pass 40 KB. */
int tile_tokens(int max_rank, bool expand_mma)
{
    const int fit = 10240 / max_rank / LF_MULTI_TB * LF_MULTI_TB;
    return expand_mma ? LF_MULTI_TB_MAX : std::max(LF_MULTI_TB, std::min(LF_MULTI_TB_MAX, fit));
}

/* multi_expand_mma_kernel's T rows a pass: the whole 64-token tile up to rank 144 (40 KB), else 16. */
int expand_rows(int max_rank) { return 64 * expand_ldt(max_rank) * sizeof(float) <= 40960 ? 64 : 16; }

/* The expand's T in shared memory, fp32. */
size_t expand_smem_bytes(int max_rank, bool mma)
{
    return mma ? (size_t)expand_rows(max_rank) * expand_ldt(max_rank) * sizeof(float)
               : (size_t)tile_tokens(max_rank, false) * max_rank * sizeof(float);
}

/* The token-ordered shrink reads a slot's A once per sub-tile of up to 16 tokens, so it is taken
 * where few adapters are loaded (LF_ORDERED_MAX_LOADED; dev/cuda/NOTES.md, eighteenth session)
 * and its loads fit: 16-bit, max_rank ≤ 16, x's and A's rows in 16-byte vectors, K a multiple of 8.
 * The loaded slots, not the adapters a call may use: both forms of one call (per-token ids,
 * segments) must take the same kernels, so that their results agree bitwise. */
#define LF_ORDERED_MAX_LOADED 8
/* x's rows staged in shared memory (multi_shrink_ordered_kernel's stage_x; sm_90) up to 2 loaded
 * slots: 1 adapter × 2048 tokens 23.3 → 22.5 µs, 2 × 2048 32.6 → 31.6; 8 × 8192 lost 121 → 130 */
#define LF_ORDERED_STAGE_MAX_LOADED 2
#define LF_ORDERED_MAX_LOADED_LAYER 1 /* beside the layer's GEMM: 8 adapters × 8192 tokens lost 3% */
bool ordered_shrink_fits(const multi_args &a, size_t es, const lf_adapter_set *set, bool with_base)
{
    return es == 2 && a.max_rank <= 16 && a.vec_x && a.vec_a && a.k % 8 == 0 &&
           set->loaded <= (with_base ? LF_ORDERED_MAX_LOADED_LAYER : LF_ORDERED_MAX_LOADED) &&
           a.m <= 65535 * LF_ORDERED_TOKENS; /* a block a tile: grid rows stay within CUDA's limit */
}

/* The token-ordered expand (after the ordered shrink, where y takes multi_expand_mma_kernel's
 * 16-byte rows and B's rows 16-byte copies): with one slot loaded B's fragments come from memory
 * once a block (1 adapter × 2048 tokens gained 5 µs over the bucketed expand); with more, each
 * sub-tile's from memory cost more than the bucketing saved (8 × 2048 41.4 → 47.0 µs; nineteenth
 * session), so those stage the tile's slots' B rows in shared memory, on tiles of 128 tokens (the
 * twenty-second session, dev/cuda/NOTES.md). */
#define LF_ORDERED_EXPAND_MAX_LOADED 8
/* A block stages the rows of every slot its tile's tokens use (with mixed batches, most loaded
 * slots at 128 tokens), so B's reads grow with tiles × slots, where the bucketed expand's stay
 * near one slot's a 64-token tile; the plan, which cannot see the mapping, counts loaded slots.
 * Measured (H100, 4096 → 4096, r 16, delta µs, bucketed → staged): at 128 tile-slot pairs a
 * slice 2 × 8192 117.3 → 107.8, 4 × 4096 63.7 → 60.8, 8 × 2048 40.4 → 36.4; at 256, 4 × 8192
 * 115.9 → 117.0 and 8 × 4096 66.2 → 68.2; at 512, 8 × 8192 120.1 → 130.7. */
#define LF_ORDERED_EXPAND_MAX_PAIRS 128
bool ordered_expand_fits(const multi_args &a, const lf_adapter_set *set)
{
    const int64_t tiles = (a.m + ordered_expand_tokens(true) - 1) / ordered_expand_tokens(true);
    return set->loaded <= 1 || (a.vec_b && set->loaded <= LF_ORDERED_EXPAND_MAX_LOADED &&
                                tiles * set->loaded <= LF_ORDERED_EXPAND_MAX_PAIRS);
}
/* Shared memory of multi_expand_ordered_kernel<T, true> (16-bit T; bn = 256, plan_of) staging
 * `stages` slots' B rows: 8 slots, 67.6 KB (of 512 columns they would hold an SM to one block; on
 * an A100, 164 KB an SM, this form runs one block an SM). */
size_t ordered_expand_smem_bytes(int stages)
{
    return (size_t)stages * LF_MULTI_RC * ordered_b_ld(LF_MULTI_WARPS * ordered_expand_groups(true) * 32) * 2;
}

/* vec16_y: y's rows (and the bias) take 16-byte accesses, for multi_expand_mma_kernel.
 * live: at most this many adapters are used (adapters_at_most), for the tile estimate; loaded: the
 * set's loaded slots. ordered_ok: ordered_shrink_fits; ordered_expand_ok: ordered_expand_fits. */
multi_plan plan_of(multi_args &a, int sms, int grid_cap, const cuda_set_state &ss, int live, int loaded,
                   bool fused_ok, bool with_base, size_t es, bool vec16_y, bool ordered_ok, bool ordered_expand_ok)
{
    multi_plan pl = {};
    a.tb = LF_MULTI_TB;
    pl.max_tiles = (int)std::min<int64_t>(a.m, (a.m + a.tb - 1) / a.tb + std::min(a.capacity + 1, a.m));
    /* One slot loaded, a delta past LF_FUSED_ONE_SLOT_M tokens: the ordered shrink and expand
     * (their two launches cost less there than the fused kernel's growth with the tokens). */
    const bool ordered_wins =
        ordered_ok && ordered_expand_ok && vec16_y && loaded <= 1 && !with_base && a.m > LF_FUSED_ONE_SLOT_M;
    /* by_slot (asked by the caller): the fused kernel's work items are the slots and the tokens
     * without an adapter, no more than the tiles the plan reckons with otherwise */
    if (a.by_slot)
        pl.max_tiles = a.capacity + 1;
    pl.fused = fused_ok && a.m <= LF_FUSED_SMALL_M && !ordered_wins &&
               fused_blocking(a, pl.max_tiles, sms, es, !with_base);
    a.by_slot = a.by_slot && pl.fused;
    pl.expand_mma = !pl.fused && es == 2 && vec16_y;
    if (!pl.fused) {
        a.tb = tile_tokens(a.max_rank, pl.expand_mma);
        pl.max_tiles = (int)std::min<int64_t>(a.m, (a.m + a.tb - 1) / a.tb + std::min(a.capacity + 1, a.m));
        pl.ordered = ordered_ok;
        /* the ordered shrink's K slices: 512 (16 steps a warp), 256 where its blocks would not
         * cover half the SMs (1 adapter: 512 tokens gained 3 µs with 256; 1024 tokens lost 1.2
         * with it, the expand then adding 16 partials a value) */
        const int ordered_tiles = (a.m + LF_ORDERED_TOKENS - 1) / LF_ORDERED_TOKENS;
        a.ks = !pl.ordered ? shrink_ks(es, a.m) : 2 * ordered_tiles * ((a.k + 511) / 512) >= sms ? 512 : 256;
        a.kslices = (a.k + a.ks - 1) / a.ks;
        if (pl.ordered) /* a block a (K slice, tile) */
            pl.shrink_grid = dim3((unsigned)a.kslices, (unsigned)ordered_tiles);
        pl.expand_ordered = pl.ordered && pl.expand_mma && ordered_expand_ok;
        /* a call stages the slots loaded at its plan; a graph replayed after more were loaded
         * reads the rest from memory */
        a.b_stages = pl.expand_ordered && loaded > 1 ? loaded : 0;
        a.bn = pl.expand_mma ? LF_MULTI_WARPS * ordered_expand_groups(a.b_stages > 0) * 32 : 256;
        a.expand_rows = expand_rows(a.max_rank);
    }
    const bool with_dout = pl.fused && with_base; /* the layer's LoRA term beside its GEMM */
    if (pl.fused) {
        pl.fused_grid = dim3((unsigned)(pl.max_tiles * a.nchunks * LF_FUSED_CLUSTER));
        pl.fused_smem = std::max(fused_smem_bytes(a, es), (size_t)LF_FUSED_SMEM_MIN);
    } else {
        const int nslices = (a.n + a.bn - 1) / a.bn;
        /* Tile groups (grid rows): a block's tiles run one after another, each a chain of memory
         * latencies, so a block a tile where the tiles are few. Up to one bucketing round (2048
         * tokens) every block also lays out the bins over the whole batch first (bucket_layout),
         * so blocks past one wave pay that again: where the tiles (estimate: the tokens' tiles
         * plus half a tile a loaded slot) pass one wave of both kernels by a quarter and fit two
         * a block, the rows are one wave. Measured at 2048 tokens, 4096 → 4096, r 16, bf16 (H100,
         * LF_CUDA_MULTI_GRID_Y as the cap; dev/cuda/NOTES.md): 64 adapters 71.7 µs with 97 rows,
         * 66.7 with 64, 58.4 with 33 (one wave), 67.5 with 24; 8 adapters 42.4 with 41, 47.3 with
         * 33. Otherwise a block a tile, up to 8 blocks an SM (the rule before; rounds past 2048 tokens
         * lay out from the round counts, cheaply). */
        const int shrink_wave = ss.shrink_per_sm[a.ks > 256] * sms / a.kslices;
        const int expand_wave = ss.expand_per_sm[pl.expand_mma] * sms / nslices;
        /* 0: the occupancy is not known; the ordered shrink does no bucketing */
        const int wave = pl.ordered ? expand_wave : std::min(shrink_wave, expand_wave);
        const int tiles_est = (a.m + a.tb - 1) / a.tb + (std::min(live, a.m) + 1) / 2;
        const bool one_wave =
            wave > 0 && a.m <= LF_BUCKET_SPAN && tiles_est > wave + wave / 4 && tiles_est <= 2 * wave;
        const int cap = grid_cap > 0 ? grid_cap : INT_MAX;
        const int shrink_groups = one_wave ? wave : std::min(pl.max_tiles, 8 * sms / a.kslices);
        const int expand_groups = one_wave ? wave : std::min(pl.max_tiles, 8 * sms / nslices);
        if (!pl.ordered)
            pl.shrink_grid = dim3((unsigned)a.kslices, (unsigned)std::max(1, std::min(shrink_groups, cap)));
        const int expand_tt = ordered_expand_tokens(a.b_stages > 0);
        pl.expand_grid = pl.expand_ordered /* a block a (N slice, tile) */
                             ? dim3((unsigned)nslices, (unsigned)((a.m + expand_tt - 1) / expand_tt))
                             : dim3((unsigned)nslices, (unsigned)std::max(1, std::min(expand_groups, cap)));
        pl.shrink_smem = pl.ordered ? ordered_shrink_smem_bytes(a.ks, a.stage_x, a.only_slot >= 0)
                                    : shrink_smem_bytes(a.ks, es);
        pl.expand_smem = !pl.expand_ordered ? expand_smem_bytes(a.max_rank, pl.expand_mma)
                         : a.b_stages > 0   ? ordered_expand_smem_bytes(a.b_stages)
                                            : 0;
    }
    size_t at = 0; /* the fused kernel needs no partials */
    pl.tpart = at, at += pl.fused ? 0 : align256((size_t)a.kslices * a.m * a.max_rank * sizeof(float));
    pl.base = at, at += with_base ? align256((size_t)a.m * a.n * sizeof(float)) : 0;
    pl.dout = at, at += with_dout ? align256((size_t)a.m * a.n * sizeof(float)) : 0;
    /* round counts for the kernels that bucket past one round */
    const bool buckets = !pl.fused && !pl.expand_ordered;
    a.chunks = !buckets || a.m <= LF_BUCKET_SPAN ? 0 : (a.m + LF_BUCKET_SPAN - 1) / LF_BUCKET_SPAN;
    pl.counts = at, at += align256((size_t)a.chunks * (a.capacity + 1) * sizeof(int));
    pl.total = at;
    return pl;
}

template <typename T, bool RSMALL>
cudaError_t launch_expand_r(const multi_args &a, const multi_plan &pl, bool vecy, bool pdl, cudaStream_t st)
{
    return vecy ? lf_cuda_launch(multi_expand_kernel<T, true, RSMALL>, pl.expand_grid, LF_MULTI_THREADS,
                                 pl.expand_smem, pdl, st, a)
                : lf_cuda_launch(multi_expand_kernel<T, false, RSMALL>, pl.expand_grid, LF_MULTI_THREADS,
                                 pl.expand_smem, pdl, st, a);
}

template <typename T>
cudaError_t launch_kernels_t(const multi_args &a, const multi_plan &pl, bool vecy, bool pdl, int which, cudaStream_t st)
{
    if constexpr (sizeof(T) == 2)
        if (which == 0 && pl.ordered)
            return lf_cuda_launch(multi_shrink_ordered_kernel<T>, pl.shrink_grid, 32 * LF_ORDERED_WARPS, pl.shrink_smem,
                                  pdl, st, a);
    if (which == 0)
        return lf_cuda_launch(multi_shrink_kernel<T>, pl.shrink_grid, LF_MULTI_THREADS, pl.shrink_smem, pdl, st, a);
    if constexpr (sizeof(T) == 2)
        if (pl.expand_ordered)
            return a.b_stages > 0 ? lf_cuda_launch(multi_expand_ordered_kernel<T, true>, pl.expand_grid,
                                                   LF_MULTI_THREADS, pl.expand_smem, pdl, st, a)
                                  : lf_cuda_launch(multi_expand_ordered_kernel<T, false>, pl.expand_grid,
                                                   LF_MULTI_THREADS, 0, pdl, st, a);
    if constexpr (sizeof(T) == 2)
        if (pl.expand_mma)
            return lf_cuda_launch(multi_expand_mma_kernel<T>, pl.expand_grid, LF_MULTI_THREADS, pl.expand_smem, pdl, st,
                                  a);
    return a.max_rank <= LF_MULTI_RC ? launch_expand_r<T, true>(a, pl, vecy, pdl, st)
                                     : launch_expand_r<T, false>(a, pl, vecy, pdl, st);
}

/* which: 0 the shrink (after multi_count_kernel where a has chunks), 1 the expand. */
cudaError_t launch_kernel(lf_dtype dt, const multi_args &a, const multi_plan &pl, bool vecy, bool pdl, int which,
                          cudaStream_t st)
{
    if (which == 0 && a.chunks > 0) {
        const cudaError_t e = lf_cuda_launch(multi_count_kernel, dim3((unsigned)a.chunks), LF_MULTI_THREADS, 0, pdl,
                                             st, a, (int *)a.chunk_counts);
        if (e != cudaSuccess)
            return e;
    }
    if (dt == LF_F32)
        return launch_kernels_t<float>(a, pl, vecy, pdl, which, st);
    if (dt == LF_F16)
        return launch_kernels_t<__half>(a, pl, vecy, pdl, which, st);
    return launch_kernels_t<__nv_bfloat16>(a, pl, vecy, pdl, which, st);
}

template <typename T>
cudaError_t launch_fused_t(const multi_args &a, const multi_plan &pl, bool vecy, bool pdl, cudaStream_t st)
{
    return vecy ? lf_cuda_launch_clustered(multi_fused_kernel<T, true>, pl.fused_grid, LF_MULTI_THREADS,
                                           pl.fused_smem, pdl, LF_FUSED_CLUSTER, st, a)
                : lf_cuda_launch_clustered(multi_fused_kernel<T, false>, pl.fused_grid, LF_MULTI_THREADS,
                                           pl.fused_smem, pdl, LF_FUSED_CLUSTER, st, a);
}

template <typename T>
cudaError_t launch_finish_t(const multi_args &a, bool vecy, bool pdl, cudaStream_t st)
{
    const dim3 grid((unsigned)((a.n + 4 * LF_MULTI_THREADS - 1) / (4 * LF_MULTI_THREADS)), (unsigned)a.m);
    return vecy ? lf_cuda_launch(multi_finish_kernel<T, true>, grid, LF_MULTI_THREADS, 0, pdl, st, a)
                : lf_cuda_launch(multi_finish_kernel<T, false>, grid, LF_MULTI_THREADS, 0, pdl, st, a);
}

/* which: 0 the fused kernel, 1 the layer's finish. */
cudaError_t launch_fused(lf_dtype dt, const multi_args &a, const multi_plan &pl, bool vecy, bool pdl, int which,
                         cudaStream_t st)
{
    if (dt == LF_F32)
        return which == 0 ? launch_fused_t<float>(a, pl, vecy, pdl, st) : launch_finish_t<float>(a, vecy, pdl, st);
    if (dt == LF_F16)
        return which == 0 ? launch_fused_t<__half>(a, pl, vecy, pdl, st) : launch_finish_t<__half>(a, vecy, pdl, st);
    return which == 0 ? launch_fused_t<__nv_bfloat16>(a, pl, vecy, pdl, st)
                      : launch_finish_t<__nv_bfloat16>(a, vecy, pdl, st);
}

cudaError_t allow_smem(const void *kernel, size_t bytes)
{
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

/* Shared memory (static and dynamic) past 48 KiB a block needs an opt-in, set when a set is created,
 * outside any capture, to the most any call can ask for: the fused kernels LF_FUSED_SMEM_MAX
 * (sm_90), the shrink its two x sub-tiles at the largest K slice, the ordered shrink (sm_90) its
 * tile's rows of x at K slice 512 (plan_of's largest), the expands one tile's (or pass's) T at
 * LF_MAX_RANK, the multi-slot ordered expand the B rows of LF_ORDERED_EXPAND_MAX_LOADED slots —
 * a kernel's limit holds for the process, so it must not follow one set's max_rank (a later set
 * with a smaller one would lower it under an earlier set's calls). */
template <typename T> cudaError_t allow_smem_t(bool sm90)
{
    cudaError_t e = cudaSuccess;
    if (sm90)
        for (const void *k : {(const void *)multi_fused_kernel<T, true>, (const void *)multi_fused_kernel<T, false>})
            if (e == cudaSuccess)
                e = allow_smem(k, LF_FUSED_SMEM_MAX);
    if (e == cudaSuccess)
        e = allow_smem((const void *)multi_shrink_kernel<T>, shrink_smem_bytes(shrink_ks(sizeof(T), INT_MAX), sizeof(T)));
    const size_t plain = expand_smem_bytes(LF_MAX_RANK, false);
    for (const void *k : {(const void *)multi_expand_kernel<T, true, false>, (const void *)multi_expand_kernel<T, false, false>,
                          (const void *)multi_expand_kernel<T, true, true>, (const void *)multi_expand_kernel<T, false, true>})
        if (e == cudaSuccess)
            e = allow_smem(k, plain);
    if constexpr (sizeof(T) == 2) {
        if (e == cudaSuccess)
            e = allow_smem((const void *)multi_expand_mma_kernel<T>, expand_smem_bytes(LF_MAX_RANK, true));
        if (e == cudaSuccess && sm90)
            e = allow_smem((const void *)multi_shrink_ordered_kernel<T>, ordered_shrink_smem_bytes(512, true, true));
        if (e == cudaSuccess)
            e = allow_smem((const void *)multi_expand_ordered_kernel<T, true>,
                           ordered_expand_smem_bytes(LF_ORDERED_EXPAND_MAX_LOADED));
    }
    return e;
}

cudaError_t allow_set_smem(lf_dtype dt, bool sm90)
{
    return dt == LF_F32   ? allow_smem_t<float>(sm90)
           : dt == LF_F16 ? allow_smem_t<__half>(sm90)
                          : allow_smem_t<__nv_bfloat16>(sm90);
}

bool aligned(const void *p, size_t to) { return ((uintptr_t)p % to) == 0; }

/* The set's one loaded slot where it has exactly one (host mirror), else -1. */
int only_loaded_slot(const lf_adapter_set *set)
{
    if (set->loaded != 1)
        return -1;
    for (int s = 0; s < set->capacity; s++)
        if (set->host_slots[s].rank > 0)
            return s;
    return -1;
}

/* The fused kernel's items by slot (multi_fused_kernel): up to 16 tokens, more than the set's
 * slots, every slot holding an adapter of the set's max rank ≤ 16 (the host's view, as
 * only_loaded_slot's). Measured (H200, bf16 4096 → 4096, r 16, delta µs; dev/cuda/NOTES.md,
 * thirty-first session): 1 adapter × 16 tokens 5.91 → 4.86, 8 × 16 5.60 → 5.37, 4 × 8 5.30 → 5.00. */
bool by_slot_fits(const lf_adapter_set *set, int64_t m)
{
    if (m > LF_MULTI_TB || set->capacity >= m || set->max_rank > LF_MULTI_RC || set->loaded != set->capacity)
        return false;
    for (int s = 0; s < set->capacity; s++)
        if (set->host_slots[s].rank != set->max_rank)
            return false;
    return true;
}

/* What the host knows of the adapters a call uses, without reading the ids: at most the loaded
 * slots, and in the segment form at most one a segment. */
int adapters_at_most(const lf_adapter_set *set, const lf_multi_problem *q)
{
    return q->token_adapter ? set->loaded : (int)std::min<int64_t>(set->loaded, q->segments);
}

/* Blocks of kernel k an SM holds at once with `smem` bytes of dynamic shared memory; 0 where the
 * query fails (the heuristic then keeps its old sizes; a kernel that cannot run fails at launch). */
int blocks_per_sm(const void *k, size_t smem)
{
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, LF_MULTI_THREADS, smem) != cudaSuccess) {
        (void)cudaGetLastError(); /* not sticky: clear it for the calls after */
        return 0;
    }
    return n;
}

/* ss's blocks per SM of the shrink (short and long K slices) and of the expands at the shared
 * memory plan_of gives them for this dtype and max_rank: the CUDA-core expand's variant for this
 * max_rank (RSMALL), the fewer of its two y paths (VECY, chosen per call); the tensor-core expand
 * 16-bit only. 0: not known (plan_of then sizes the grids as for few tiles). */
template <typename T> void set_occupancy_t(cuda_set_state *ss, int max_rank)
{
    const size_t es = sizeof(T);
    for (int long_slice = 0; long_slice < 2; long_slice++)
        ss->shrink_per_sm[long_slice] = blocks_per_sm((const void *)multi_shrink_kernel<T>,
                                                      shrink_smem_bytes(shrink_ks(es, long_slice ? INT_MAX : 1), es));
    const size_t plain = expand_smem_bytes(max_rank, false);
    const bool rsmall = max_rank <= LF_MULTI_RC; /* launch_expand's choice */
    ss->expand_per_sm[0] =
        std::min(blocks_per_sm(rsmall ? (const void *)multi_expand_kernel<T, true, true>
                                      : (const void *)multi_expand_kernel<T, true, false>, plain),
                 blocks_per_sm(rsmall ? (const void *)multi_expand_kernel<T, false, true>
                                      : (const void *)multi_expand_kernel<T, false, false>, plain));
    ss->expand_per_sm[1] = 0;
    if constexpr (sizeof(T) == 2)
        ss->expand_per_sm[1] =
            blocks_per_sm((const void *)multi_expand_mma_kernel<T>, expand_smem_bytes(max_rank, true));
}

void set_occupancy(cuda_set_state *ss, lf_dtype dt, int max_rank)
{
    if (dt == LF_F32)
        set_occupancy_t<float>(ss, max_rank);
    else if (dt == LF_F16)
        set_occupancy_t<__half>(ss, max_rank);
    else
        set_occupancy_t<__nv_bfloat16>(ss, max_rank);
}

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
    LF_CUDA_CHECK(ctx, allow_set_smem(set->dtype, lf_cuda_state_of(ctx)->cc_major >= 9));
    set_occupancy(s, set->dtype, (int)set->max_rank);
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
    /* Layer at decode sizes: one stream of W with every token's LoRA term in its epilogue. */
    if (lf_cuda_multi_stream_fits(ctx, q))
        return lf_cuda_multi_stream(ctx, q);
    if (lf_cuda_decode_multi_fits(ctx, q)) {
        const lf_status s = lf_workspace_reserve(ctx, lf_cuda_decode_multi_workspace(q));
        return s != LF_OK ? s : lf_cuda_decode_multi(ctx, q, (float *)ctx->workspace);
    }
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
    a.stage_x = cs->cc_major >= 9 && set->loaded <= LF_ORDERED_STAGE_MAX_LOADED; /* bulk copies */
    a.only_slot = a.stage_x ? only_loaded_slot(set) : -1;
    a.by_slot = by_slot_fits(set, q->m);
    /* The fused kernel: sm_90 (clusters), and shared memory for its slices (plan_of). */
    const bool vec16_y = (q->n * es) % 16 == 0 && (q->m == 1 || (q->ldy * es) % 16 == 0) && aligned(q->y, 16) &&
                         (!q->bias || aligned(q->bias, 16));
    a.vec_x = aligned(q->x, 16) && (q->ldx * es) % 16 == 0;
    a.vec_a = aligned(set->a, 16) && (set->lda * es) % 16 == 0;
    a.vec_b = aligned(set->b, 16) && (set->ldb * es) % 16 == 0;
    multi_plan pl =
        plan_of(a, cs->sm_count, cs->multi_grid_cap, *ss, adapters_at_most(set, q), set->loaded, cs->cc_major >= 9,
                q->w != NULL, es, vec16_y, ordered_shrink_fits(a, es, set, q->w != NULL), ordered_expand_fits(a, set));
    lf_status s = lf_workspace_reserve(ctx, pl.total);
    if (s != LF_OK)
        return s;
    char *ws = (char *)ctx->workspace;
    a.tpart = (float *)(ws + pl.tpart);
    a.t_by_token = pl.ordered;
    a.chunk_counts = a.chunks > 0 ? (const int *)(ws + pl.counts) : NULL;
    a.base = q->w ? (const float *)(ws + pl.base) : NULL;
    a.none_tiles = q->w || q->beta != 1.0f || q->bias;

    const bool vecy = q->n % 4 == 0 && q->ldy % 4 == 0 && aligned(q->y, 4 * es) && (!q->bias || aligned(q->bias, 4 * es));
    const cudaDataType_t in = lf_cuda_data_type(q->dtype);
    const int w_nk = q->layout == LF_LAYOUT_PEFT;
    /* cuBLAS takes ints, and a single row's stride is never used: pass the smallest valid one. */
    const int64_t ldx = q->m == 1 ? q->k : q->ldx;

    if (!q->w) {
        if (pl.fused) {
            LF_CUDA_CHECK(ctx, launch_fused(q->dtype, a, pl, vecy, pdl, 0, st));
            return LF_OK;
        }
        LF_CUDA_CHECK(ctx, launch_kernel(q->dtype, a, pl, vecy, pdl, 0, st));
        LF_CUDA_CHECK(ctx, launch_kernel(q->dtype, a, pl, vecy, pdl, 1, st));
        return LF_OK;
    }
    /* Layer: the LoRA work on the side stream (fork and join by events, capture-safe) beside the
     * base GEMM (fp32, into the workspace); then one kernel rounds y once. Fused: the side stream
     * writes the whole LoRA term (fp32) and multi_finish_kernel adds it; else the shrink runs
     * there and the expand, after the join, adds T·B to the GEMM's result. */
    LF_CUDA_CHECK(ctx, cudaEventRecord(ss->fork, st));
    LF_CUDA_CHECK(ctx, cudaStreamWaitEvent(ss->side, ss->fork, 0));
    /* The side stream is forked from here: every path joins it before returning, or the next call
     * (or a graph capture's end) would race with what it still runs. */
    cudaError_t e;
    if (pl.fused) {
        multi_args side = a;
        side.dout = (float *)(ws + pl.dout), side.base = NULL, side.none_tiles = 0;
        a.dout = side.dout;
        e = launch_fused(q->dtype, side, pl, q->n % 4 == 0, false, 0, ss->side);
    } else {
        e = launch_kernel(q->dtype, a, pl, vecy, false, 0, ss->side);
    }
    const cudaError_t recorded = cudaEventRecord(ss->join, ss->side);
    if (e == cudaSuccess && recorded == cudaSuccess)
        s = lf_cuda_gemm_xwt(ctx, in, CUDA_R_32F, w_nk, q->m, q->n, q->k, q->x, ldx, q->w, q->ldw, 0.0f,
                             (void *)a.base, q->n);
    const cudaError_t joined = recorded == cudaSuccess ? cudaStreamWaitEvent(st, ss->join, 0) : recorded;
    LF_CUDA_CHECK(ctx, e);
    if (s != LF_OK)
        return s;
    LF_CUDA_CHECK(ctx, joined);
    if (pl.fused)
        LF_CUDA_CHECK(ctx, launch_fused(q->dtype, a, pl, vecy, pdl, 1, st));
    else
        LF_CUDA_CHECK(ctx, launch_kernel(q->dtype, a, pl, vecy, pdl, 1, st));
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

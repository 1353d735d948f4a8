/*
 * lora_stream.cu — the whole LoRA layer for 1–8 tokens with one adapter, 1–16 with one a token, in
 * one launch, PEFT layout, bf16 or f16, W streamed by plain 16-byte loads from 32 warps an SM:
 *
 *   y = beta·y + x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ        x [M,K], W [N,K], A [r,K], B [N,r], r ≤ 16
 *
 * Why plain loads (dev/cuda/NOTES.md, "Read floor" and "Sixteenth session"): a launch that only
 * reads W runs at ~92% of the copy bandwidth with 16-byte ld.global.nc from ~1024 threads an SM,
 * where a one-CTA TMA ring (the decode form of lora_hopper.cu) stays near 85%. `lorafuse bench`
 * on an H100 against the decode form in the same call (bench/results/cuda-h100-2026-11-26-stream-
 * ab.json): 1 × 4096 → 4096 13.9–14.0 → 12.3–12.4 µs (91% of the copy bandwidth), 8 × 4096 → 4096
 * 14.3 → 13.4. The kernel came out of the lab dev/cuda/decode_ld.cu, which times it beside its
 * variants.
 *
 * Grid: two blocks of 16 warps an SM. The first blocks are T workers (two; many adapters: one a
 * token, up to 8); every other block streams one 16-row tile's worth of W (the plan keeps N to that):
 *  - K split S = 1 (up to 8 tokens): a W block owns one tile over all of K. S = 2 (9–16 tokens,
 *    many adapters): consecutive W blocks pair up in a two-CTA cluster that owns two tiles; each
 *    block streams both over its half of K (warps 0–7 the first tile, 8–15 the second), so it
 *    stages only its half of x — x whole at 16 tokens would not fit two blocks an SM. Each block
 *    finishes one of the two tiles: it sends its sums of the other into its partner's shared memory
 *    and, one cluster barrier later, adds the two halves in K order.
 *  - The warps of a tile take its 32-wide K steps in turn (the block's warps walk K side by side,
 *    and every SM stays in step along K, which is how HBM serves W fastest); each lane keeps the
 *    next D steps of its two 16-byte chunks (rows g and g + 8) in registers and feeds them to
 *    mma.sync with the decode kernels' K permutation (mma_sync.cuh), one m16n8k16 per 8 tokens; x
 *    sits in shared memory, staged once. The first D steps of W are loaded before the PDL wait (W
 *    is no kernel's output). A slot past the warp's last step is not written at all: a fetch that
 *    always assigned its slot (zeros past the end) ran 14.2 µs against 12.3 at 1 × 4096 → 4096 in
 *    the lab, and gained nothing from PDL; why is not known. At the end the warps' partial sums
 *    meet in shared memory in a fixed order, and one thread an output finishes the tile: s·T·Bᵀ
 *    over the rank in order, bias, beta·y, one rounding. B's rows come by cp.async at the start,
 *    bias and y by loads issued as the block meets (held through the loop they would spill).
 *  - T worker b: s·T's partial over its half of K (A's rows and x from global memory), stored as
 *    values tagged with the launch's epoch, each value and its tag in one 8-byte store, so that a
 *    reader sees both or neither. A W block loads these pairs two steps before its last and sums
 *    them in worker order (checking the tags, reloading any that were not yet stored): T costs
 *    the stream nothing.
 * Many adapters (lf_lora_forward_multi, MULTI): token t's term s_t·(x_t·A_tᵀ)·B_tᵀ comes from the
 * slot its id names (token_map.cuh), none without one. T worker b takes tokens b and b + 8, each
 * over all of K against its own slot's A (the token in the MMA's first column); a W block stages
 * every token's B rows of its tile from the set's storage (B kept transposed there: rows along N),
 * zero past each slot's rank, and scales each token's T by its slot's scale. 1 × 4096 → 4096 with
 * 1, 8 or 64 adapters: 17.1 → 13.4–13.5 µs against the decode kernels' MULTI form in the same call
 * (bench/results/cuda-h100-2026-11-26-multi-stream-ab.json; cuBLAS's base GEMM alone 15.4–15.6);
 * 16 tokens, 8 adapters: 19.1 → 16.9 against cuBLAS beside the fused delta (-multi-stream-16tok-
 * ab.json, -multi-stream-tworker-ab.json). With one adapter the K halves lose to the decode form
 * at 16 tokens (15.1–15.7 against 14.6; NOTES, seventeenth session), so the one-adapter plan stops
 * at 8 tokens.
 * The epoch without a count at exit: ctl's first 64-bit word holds the epoch above and this
 * launch's arrivals below. Every block takes a ticket after its PDL wait — after every ticket of
 * the launch before — and the last to arrive rolls the word to (epoch + 1, 0). Nothing is reset,
 * nothing waits at exit, and graph replay needs no host value. The tags are 32 bits: a stale pair
 * could match only after 2^32 launches of this context, and every launch overwrites all pairs.
 * Progress: W blocks wait only for the T workers, which have the lowest block indices and wait for
 * nothing, and for their cluster partner, which runs beside them; the grid need not be resident at
 * once.
 * Every sum has a fixed order: no float atomics, results are bitwise identical run to run.
 */
#include "common.cuh"
#include "heuristics.h"
#include "launch.cuh"
#include "lora_stream.cuh"
#include "mma_sync.cuh"
#include "token_map.cuh"

#include <limits.h>

namespace {

enum {
    WARPS = 16,
    THREADS = 32 * WARPS,
    D = 3,      /* K steps a lane holds in flight: 3 keeps the loop at 64 registers without spills */
    TW = LF_CUDA_STREAM_T_WORKERS,
    MAX_R = LF_CUDA_STREAM_MAX_RANK, /* A's rows in one 16-row MMA tile */
    CTL_PAIRS = 64 /* ctl[0..1]: the epoch word; the pairs from ctl[64], off the epoch word's line,
                    * which every block's ticket hits with an atomic */
};

/* The sizes that follow from NT groups of 8 token columns, a K split of S and the adapter form. */
template <int NT, int S, bool MULTI> struct shape {
    enum {
        M = 8 * NT,                  /* token columns */
        OUT = 16 * M,                /* a tile's outputs, one finishing thread each */
        PAIRS = MULTI ? M * MAX_R : TW * OUT, /* the T workers' values: [token][rank] or [worker][token][rank] */
        RED = WARPS * NT * 4 * 32,   /* the warps' accumulators */
        HALVES = S > 1 ? S * OUT : 0, /* the finishing tile's sums a K half */
        B_ROWS = (MULTI ? M : 1) * 16 * MAX_R, /* B's elements of the tile: every token's with MULTI */
        TILE_WARPS = WARPS / S,      /* the warps that stream one tile */
        FIXED_SMEM = (RED + M * MAX_R + PAIRS + HALVES) * 4 + B_ROWS * 2
    };
    static_assert(CTL_PAIRS + 2 * PAIRS <= LF_STREAM_CTL_WORDS, "control words");
    static_assert(OUT <= THREADS && S * OUT <= THREADS && (!MULTI || 2 * M * MAX_R <= THREADS), "a thread each");
    static_assert(TW % S == 0, "the W blocks' clusters start after the T workers");
    static_assert(LF_CUDA_STREAM_MAX_M <= 8 && LF_CUDA_STREAM_MULTI_MAX_M <= 16, "token columns: NT ≤ 2");
    static_assert(FIXED_SMEM == LF_CUDA_STREAM_FIXED_SMEM(NT, S, MULTI) && MAX_R == 16,
                  "heuristics.h's shared-memory rule");
};

struct sparams {
    int m, n, k, r;
    const void *x, *w, *a, *b, *bias;
    void *y;
    long long ldx, ldw, lda, ldb, ldy;
    float scale, beta;
    int xs_stride;    /* bytes of a token's row of x in shared memory */
    unsigned *ctl;
    int workers;      /* T-worker blocks: TW, or one a token (up to 8) with many adapters */
    lf_token_map map; /* many adapters: each token's slot; a and b are the set's storage */
    int max_rank;     /* many adapters: rows a slot in a and b */
};

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, uint32_t src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"((uint32_t)__cvta_generic_to_shared(smem)),
                 "l"(gmem), "r"(src_bytes)
                 : "memory");
}

/* Thread block clusters of two (the K split; sm_90, where the plan takes this kernel): `v` into
 * `dst` of CTA `rank`, and the cluster barrier in its two halves — every thread of both CTAs
 * arrives, then waits until all have; shared-memory stores before a release arrival are seen
 * after an acquire wait. */
__device__ __forceinline__ void st_cluster_f32(float *dst, unsigned rank, float v)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t a;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(a) : "r"((uint32_t)__cvta_generic_to_shared(dst)), "r"(rank));
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(a), "f"(v) : "memory");
#else
    (void)dst, (void)rank, (void)v;
    __trap();
#endif
}
__device__ __forceinline__ void cluster_arrive(bool release)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (release)
        asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
    else
        asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#else
    (void)release;
    __trap();
#endif
}
__device__ __forceinline__ void cluster_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ unsigned long long take_ticket(unsigned *ctl)
{
    return atomicAdd((unsigned long long *)ctl, 1ull);
}
/* The ticket's epoch; the launch's last arrival rolls the word to the next epoch. */
__device__ __forceinline__ unsigned epoch_of(unsigned *ctl, unsigned long long ticket)
{
    if ((unsigned)ticket + 1u == gridDim.x)
        atomicAdd((unsigned long long *)ctl, (1ull << 32) - gridDim.x);
    return (unsigned)(ticket >> 32);
}
__device__ __forceinline__ unsigned long long *pairs_of(unsigned *ctl)
{
    return (unsigned long long *)(ctl + CTL_PAIRS);
}

/* Output (row rho, token tau) of a 16 × 8·NT tile in the m16n8k16 accumulators of warp w, as
 * store_acc lays them out in `red` ([WARPS][NT][4][32]). */
template <int NT> __device__ __forceinline__ int red_index(int w, int rho, int tau)
{
    const int t8 = tau % 8;
    return ((w * NT + tau / 8) * 4 + (rho / 8) * 2 + t8 % 2) * 32 + (rho % 8) * 4 + t8 / 2;
}
template <int NT> __device__ __forceinline__ void store_acc(float *red, const float (&acc)[1][NT][4], int warp, int lane)
{
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int c = 0; c < 4; c++)
            red[((warp * NT + nt) * 4 + c) * 32 + lane] = acc[0][nt][c];
}

/* A T worker: s·T's partial over its half of K, A's rows (zero past r) against x's tokens (zero
 * past m), every load of a step issued before its MMA; the warps' partials summed in warp order. */
template <typename T> __device__ void t_worker(const sparams &p, float *red)
{
    using Sh = shape<1, 1, false>;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const int steps = (p.k + 31) / 32, per = (steps + TW - 1) / TW;
    const int lo = min(steps, (int)blockIdx.x * per), cnt = min(steps, lo + per) - lo;
    const T *A = (const T *)p.a, *X = (const T *)p.x;
    lf_pdl_wait(); /* x comes from the kernels before */
    unsigned long long ticket = 0;
    if (threadIdx.x == 0)
        ticket = take_ticket(p.ctl);
    float acc[1][1][4] = {};
    for (int j = warp; j < cnt; j += WARPS) {
        const int kb = 32 * (lo + j) + 8 * q;
        const bool kin = kb < p.k;
        uint4 wv[1][2], xv[1];
        wv[0][0] = kin && g < p.r ? ld_stream(A + (int64_t)g * p.lda + kb) : make_uint4(0, 0, 0, 0);
        wv[0][1] = kin && g + 8 < p.r ? ld_stream(A + (int64_t)(g + 8) * p.lda + kb) : make_uint4(0, 0, 0, 0);
        xv[0] = kin && g < p.m ? *(const uint4 *)(X + (int64_t)g * p.ldx + kb) : make_uint4(0, 0, 0, 0);
        decode_step<T, 1, 1>(acc, wv, xv);
    }
    store_acc<1>(red, acc, warp, lane);
    __shared__ unsigned tag;
    if (threadIdx.x == 0)
        tag = epoch_of(p.ctl, ticket) + 1u;
    __syncthreads();
    if (threadIdx.x < Sh::OUT) {
        const int rho = threadIdx.x % 16, tau = threadIdx.x / 16; /* rank rho, token tau */
        float s = 0.0f;
        for (int w = 0; w < WARPS; w++)
            s += red[red_index<1>(w, rho, tau)];
        *(volatile unsigned long long *)(pairs_of(p.ctl) + blockIdx.x * Sh::OUT + threadIdx.x) =
            (unsigned long long)tag << 32 | __float_as_uint(s);
    }
}

/* Many adapters: T worker b computes the T of tokens b, b + 8, ... (< m) over all of K, each against
 * its own slot's A (the token in the MMA's first column, zeros in the others), unscaled; no
 * adapter: zeros. The tokens share one loop, so that all their loads of a step are in flight
 * together; token i's accumulators go to red's i-th [WARPS][4][32]. */
template <typename T, int NT> __device__ void t_worker_multi(const sparams &p, float *red)
{
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    lf_pdl_wait(); /* x, the ids and the set's slots come from the kernels before */
    unsigned long long ticket = 0;
    if (threadIdx.x == 0)
        ticket = take_ticket(p.ctl);
    int rank[NT], arow[NT]; /* token i's rank and its slot's first row in the set's A */
    bool any = false;
#pragma unroll
    for (int i = 0; i < NT; i++) {
        const int tok = (int)blockIdx.x + 8 * i; /* token 0: b < m, the grid's workers */
        const int slot = i == 0 || tok < p.m ? lf_token_slot(p.map, tok) : -1;
        rank[i] = slot < 0 ? 0 : p.map.slots[slot].rank;
        arow[i] = max(slot, 0) * p.max_rank;
        any = any || rank[i] > 0;
    }
    const int steps = any ? (p.k + 31) / 32 : 0;
    float acc[NT][1][1][4] = {};
    for (int j = warp; j < steps; j += WARPS) {
        const int kb = 32 * j + 8 * q;
        const bool kin = kb < p.k;
        uint4 wv[NT][1][2], xv[NT][1];
#pragma unroll
        for (int i = 0; i < NT; i++) {
            const T *a = (const T *)p.a + (int64_t)(arow[i] + g) * p.lda + kb; /* rows g and g + 8 */
            wv[i][0][0] = kin && g < rank[i] ? ld_stream(a) : make_uint4(0, 0, 0, 0);
            wv[i][0][1] = kin && g + 8 < rank[i] ? ld_stream(a + 8 * p.lda) : make_uint4(0, 0, 0, 0);
            xv[i][0] = kin && g == 0 && rank[i] > 0 /* x read only for a token with an adapter */
                           ? *(const uint4 *)((const T *)p.x + (int64_t)((int)blockIdx.x + 8 * i) * p.ldx + kb)
                           : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int i = 0; i < NT; i++)
            decode_step<T, 1, 1>(acc[i], wv[i], xv[i]);
    }
#pragma unroll
    for (int i = 0; i < NT; i++)
        store_acc<1>(red + i * WARPS * 4 * 32, acc[i], warp, lane);
    __shared__ unsigned tag;
    if (threadIdx.x == 0)
        tag = epoch_of(p.ctl, ticket) + 1u;
    __syncthreads();
    if (threadIdx.x < MAX_R) {
        const int rho = threadIdx.x; /* rank rho of each pass's token, column 0 */
#pragma unroll
        for (int pass = 0; pass < NT; pass++) {
            const int tok = (int)blockIdx.x + 8 * pass;
            if (pass == 0 || tok < p.m) {
                float s = 0.0f;
                for (int w = 0; w < WARPS; w++)
                    s += red[pass * WARPS * 4 * 32 + red_index<1>(w, rho, 0)];
                *(volatile unsigned long long *)(pairs_of(p.ctl) + tok * MAX_R + rho) =
                    (unsigned long long)tag << 32 | __float_as_uint(s);
            }
        }
    }
}

template <typename T, int NT, int S, bool MULTI> __global__ void __launch_bounds__(THREADS, 2) lora_stream_kernel(sparams p)
{
    using Sh = shape<NT, S, MULTI>;
    extern __shared__ __align__(16) unsigned char smem[];
    float *red = (float *)smem;          /* [WARPS][NT][4][32]: the warps' partial sums */
    float *t_s = red + Sh::RED;          /* s·T [M][MAX_R] */
    float *t_part = t_s + Sh::M * MAX_R; /* the T workers' values, as the pairs */
    float *halves = t_part + Sh::PAIRS;  /* S > 1: the finishing tile's sums a K half, [S][OUT] */
    T *b_s = (T *)(halves + Sh::HALVES); /* the finishing tile's B rows, [16][MAX_R]; MULTI: [M][MAX_R][16] */
    unsigned char *x_s = (unsigned char *)(b_s + Sh::B_ROWS); /* [m][xs_stride]: the block's K range */
    __shared__ float tok_scale[Sh::M];   /* MULTI: each token's slot scale, 0 without an adapter */
    lf_pdl_release(); /* the next kernel may start: before its own wait it reads only W */
    if ((int)blockIdx.x < p.workers) {
        if (MULTI)
            t_worker_multi<T, NT>(p, red);
        else
            t_worker<T>(p, red);
        return;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    /* The block's K range: steps [lo, lo + cnt) of 32; its tiles: S from tile `first` on, of which
     * it finishes first + half (half = its rank in the cluster). */
    const int wb = (int)blockIdx.x - p.workers, half = wb % S, first = wb - half;
    const int steps = (p.k + 31) / 32, per = (steps + S - 1) / S;
    const int lo = min(steps, half * per), cnt = min(steps, lo + per) - lo;
    /* This warp: tile first + wt, its steps wi, wi + TILE_WARPS, ... of the block's range. */
    const int wt = S > 1 ? warp / Sh::TILE_WARPS : 0, wi = S > 1 ? warp % Sh::TILE_WARPS : warp;
    const int spw = wi < cnt ? (cnt - 1 - wi) / Sh::TILE_WARPS + 1 : 0;
    const int n0 = (first + wt) * 16, valid = p.n - n0;
    /* rows past N (a cluster's empty second tile) are never read; clamping n0 here instead cost
     * 0.7 µs at 1 × 4096 → 4096 (lab, H100) */
    const T *W = (const T *)p.w + (int64_t)n0 * p.ldw + 32 * lo;

    /* The next item this warp loads: step wi + TILE_WARPS·f_j of the range, rows g and g + 8 of the
     * tile; past the warp's last item nothing is loaded (a slot not refilled is never read again). */
    int f_j = 0;
    auto fetch = [&](uint4(&dst)[2]) {
        if (f_j < spw) {
            const int kl = 32 * (wi + f_j * Sh::TILE_WARPS) + 8 * q;
            const bool kin = 32 * lo + kl < p.k;
            dst[0] = kin && g < valid ? ld_stream(W + (int64_t)g * p.ldw + kl) : make_uint4(0, 0, 0, 0);
            dst[1] = kin && g + 8 < valid ? ld_stream(W + (int64_t)(g + 8) * p.ldw + kl) : make_uint4(0, 0, 0, 0);
            f_j++;
        }
    };
    uint4 wr[D][2];
#pragma unroll
    for (int u = 0; u < D; u++)
        fetch(wr[u]);
    if (S > 1) /* "this CTA has started": its partner stores into its shared memory only after the wait */
        cluster_arrive(false);
    lf_pdl_wait(); /* x, y (and in a chain of layers B's neighbours) come from the kernels before */

    __shared__ unsigned w_tag;
    unsigned long long ticket = 0; /* its round trip beside x's loads; its epoch kept in shared memory */
    if (threadIdx.x == 0)
        ticket = take_ticket(p.ctl);
    const T *X = (const T *)p.x + 32 * lo;
    const int kpad8 = cnt * 4; /* 8-element chunks of the range, padded to whole steps (zeros) */
    for (int i = threadIdx.x; i < p.m * kpad8; i += THREADS) {
        const int row = i / kpad8, k0 = i % kpad8 * 8;
        const uint4 v = 32 * lo + k0 < p.k ? *(const uint4 *)(X + (int64_t)row * p.ldx + k0) : make_uint4(0, 0, 0, 0);
        *(uint4 *)(x_s + row * p.xs_stride + 2 * k0) = v;
    }
    const int fin0 = (first + half) * 16; /* the tile this block finishes */
    if (MULTI) {
        /* every token's B rows of the tile from its slot (the set keeps B transposed: rank j's row
         * runs along N), two 16-byte chunks a (token, rank), zero past the slot's rank, past N and
         * without an adapter; the set's rows are N rounded up to 16 bytes */
        if (threadIdx.x < p.m * 2 * MAX_R) {
            const int tau = threadIdx.x / (2 * MAX_R), j = threadIdx.x / 2 % MAX_R, h = threadIdx.x % 2;
            const int slot = lf_token_slot(p.map, tau), rank = slot < 0 ? 0 : p.map.slots[slot].rank;
            const bool in = j < rank && fin0 + 8 * h < p.n;
            cp_async16(b_s + (tau * MAX_R + j) * 16 + 8 * h,
                       in ? (const T *)p.b + ((int64_t)slot * p.max_rank + j) * p.ldb + fin0 + 8 * h : p.b,
                       in ? 16u : 0u);
            if (j == 0 && h == 0)
                tok_scale[tau] = slot < 0 ? 0.0f : p.map.slots[slot].scale;
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    } else if (warp == 0) { /* B's rows of the tile: ceil(r / 8) 16-byte chunks each, the bytes past r
                             * and the rows past N zero-filled (nothing read outside B's r columns);
                             * a lane a chunk: 16 rows of at most two chunks */
        const int part = p.r > 8 ? lane & 1 : 0, row = p.r > 8 ? lane >> 1 : lane;
        if (row < 16) {
            const int left = 2 * (p.r - 8 * part); /* bytes of the row from this chunk on */
            const bool in = fin0 + row < p.n && left > 0;
            cp_async16(b_s + row * MAX_R + 8 * part, in ? (const T *)p.b + (int64_t)(fin0 + row) * p.ldb + 8 * part : p.b,
                       in ? (uint32_t)min(16, left) : 0u);
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    }
    if (threadIdx.x == 0)
        w_tag = epoch_of(p.ctl, ticket) + 1u;
    __syncthreads();

    const unsigned long long *pairs = pairs_of(p.ctl);
    const bool pair_thread = threadIdx.x < (MULTI ? p.m * MAX_R : Sh::PAIRS);
    unsigned long long pair = 0; /* this thread's value of T, loaded two steps before the end */
    float acc[1][NT][4] = {};
    for (int j0 = 0; j0 < spw; j0 += D) {
#pragma unroll
        for (int u = 0; u < D; u++) {
            const int j = j0 + u;
            if (j < spw) {
                const int kl = 32 * (wi + j * Sh::TILE_WARPS) + 8 * q;
                uint4 xv[NT]; /* tokens g + 8·nt, zero past m */
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    xv[nt] = g + 8 * nt < p.m ? *(const uint4 *)(x_s + (g + 8 * nt) * p.xs_stride + 2 * kl)
                                              : make_uint4(0, 0, 0, 0);
                const uint4 wv[1][2] = {{wr[u][0], wr[u][1]}};
                decode_step<T, NT, 1>(acc, wv, xv);
                fetch(wr[u]);
                if (j == spw - 2 && pair_thread)
                    pair = *(volatile const unsigned long long *)(pairs + threadIdx.x);
            }
        }
    }
    /* this thread's output when it is one of the finishing threads: its bias and old y, loaded
     * while the block meets (registers held through the loop would spill) */
    const int rho = threadIdx.x % 16, tau = threadIdx.x / 16, n = fin0 + rho;
    const bool live_out = threadIdx.x < Sh::OUT && n < p.n && tau < p.m;
    float e_bias = 0.0f, e_old = 0.0f;
    if (live_out) {
        if (p.bias)
            e_bias = lf_dt<T>::load((const T *)p.bias + n);
        if (p.beta != 0.0f) /* beta = 0 must not read y: it may hold NaN */
            e_old = lf_dt<T>::load((const T *)p.y + (int64_t)tau * p.ldy + n);
    }
    store_acc<NT>(red, acc, warp, lane);
    if (spw < 2 && pair_thread) /* no step two before the end: load it now */
        pair = *(volatile const unsigned long long *)(pairs + threadIdx.x);
    if (MULTI || warp == 0)
        asm volatile("cp.async.wait_all;" ::: "memory");
    if (pair_thread) { /* a value stored before this launch's worker stored it: reload */
        while ((unsigned)(pair >> 32) != w_tag)
            pair = *(volatile const unsigned long long *)(pairs + threadIdx.x);
        t_part[threadIdx.x] = __uint_as_float((unsigned)pair);
    }
    if (S > 1)
        cluster_wait(); /* the partner has started (it arrived before its loop) */
    __syncthreads();
    if (S > 1 && threadIdx.x < S * Sh::OUT) { /* this half's sums of tile u, into the CTA that finishes it */
        const int u = threadIdx.x / Sh::OUT, o = threadIdx.x % Sh::OUT;
        float s = 0.0f;
        for (int w = u * Sh::TILE_WARPS; w < (u + 1) * Sh::TILE_WARPS; w++)
            s += red[red_index<NT>(w, o % 16, o / 16)];
        st_cluster_f32(halves + half * Sh::OUT + o, (unsigned)u, s);
    }
    if (MULTI && threadIdx.x < Sh::OUT) { /* token tau's T, from its worker, by its slot's scale */
        const int t_tok = threadIdx.x / MAX_R;
        t_s[threadIdx.x] = t_tok < p.m ? tok_scale[t_tok] * t_part[threadIdx.x] : 0.0f;
    } else if (threadIdx.x < Sh::OUT) { /* the workers' values in worker order */
        float t = 0.0f;
#pragma unroll
        for (int c = 0; c < TW; c++)
            t += t_part[c * Sh::OUT + threadIdx.x];
        t_s[threadIdx.x] = p.scale * t;
    }
    if (S > 1) { /* also this CTA's barrier: t_s and both halves' sums are in place */
        cluster_arrive(true);
        cluster_wait();
    } else {
        __syncthreads();
    }
    if (live_out) {
        float s = 0.0f;
        if (S > 1) /* the halves in K order */
            for (int h = 0; h < S; h++)
                s += halves[h * Sh::OUT + threadIdx.x];
        else
            for (int w = 0; w < WARPS; w++)
                s += red[red_index<NT>(w, rho, tau)];
        float l = 0.0f;
        if (MULTI) /* zeros past the slot's rank */
            for (int j = 0; j < MAX_R; j++)
                l = fmaf(lf_dt<T>::to_f32(b_s[(tau * MAX_R + j) * 16 + rho]), t_s[tau * MAX_R + j], l);
        else
            for (int j = 0; j < p.r; j++)
                l = fmaf(lf_dt<T>::to_f32(b_s[rho * MAX_R + j]), t_s[tau * MAX_R + j], l);
        ((T *)p.y)[(int64_t)tau * p.ldy + n] = lf_dt<T>::from_f32(s + l + e_bias + p.beta * e_old);
    }
}

/* One launch: the grid is the workers, then the tiles (rounded up to whole clusters of S). */
template <typename T, int NT, int S, bool MULTI> cudaError_t launch_typed(sparams s, int sm_count, bool pdl, cudaStream_t st)
{
    s.xs_stride = (int)lf_cuda_stream_x_row(s.k, S);
    const int tiles = (s.n + 15) / 16, w_blocks = (tiles + S - 1) / S * S;
    if (s.workers + w_blocks > 2 * sm_count)
        return cudaErrorInvalidValue; /* one tile's worth a block: the plan's rule */
    return lf_cuda_launch_clustered(lora_stream_kernel<T, NT, S, MULTI>, dim3(s.workers + w_blocks), THREADS,
                                    (size_t)lf_cuda_stream_smem(s.m, s.k, MULTI), pdl, (unsigned)S, st, s);
}

template <typename T, int NT, int S, bool MULTI> cudaError_t set_smem_limit()
{
    return cudaFuncSetAttribute(lora_stream_kernel<T, NT, S, MULTI>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                LF_CUDA_STREAM_BLOCK_SMEM);
}
template <typename T> cudaError_t set_smem_limits()
{
    cudaError_t e = set_smem_limit<T, 1, 1, false>();
    if (e == cudaSuccess)
        e = set_smem_limit<T, 1, 1, true>();
    if (e == cudaSuccess)
        e = set_smem_limit<T, 2, 2, true>();
    return e;
}

} /* namespace */

int lf_stream_setup(void)
{
    int dev = 0, major = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e == cudaSuccess && major >= 9)
        e = set_smem_limits<__nv_bfloat16>();
    if (e == cudaSuccess && major >= 9)
        e = set_smem_limits<__half>();
    if (e != cudaSuccess)
        cudaGetLastError();
    return e == cudaSuccess && major >= 9;
}

cudaError_t lf_stream_launch(const lf_lora_problem *p, unsigned *ctl, int sm_count, bool pdl, cudaStream_t st)
{
    if (p->m < 1 || p->m > LF_CUDA_STREAM_MAX_M || p->n < 1 || p->n >= INT_MAX || p->k < 1 || p->k % 8 ||
        p->k >= INT_MAX / 2 || p->rank < 1 || p->rank > MAX_R || (p->dtype != LF_BF16 && p->dtype != LF_F16) ||
        p->layout != LF_LAYOUT_PEFT || !p->x || !p->w || !p->a || !p->b || !p->y || !ctl || sm_count < 1 ||
        lf_cuda_stream_smem(p->m, p->k, 0) > LF_CUDA_STREAM_BLOCK_SMEM)
        return cudaErrorInvalidValue;
    sparams s = {};
    s.m = (int)p->m, s.n = (int)p->n, s.k = (int)p->k, s.r = (int)p->rank;
    s.x = p->x, s.w = p->w, s.a = p->a, s.b = p->b, s.bias = p->bias, s.y = p->y;
    s.ldx = p->ldx, s.ldw = p->ldw, s.lda = p->lda, s.ldb = p->ldb, s.ldy = p->ldy;
    s.scale = p->scale, s.beta = p->beta;
    s.ctl = ctl, s.workers = TW;
    return p->dtype == LF_F16 ? launch_typed<__half, 1, 1, false>(s, sm_count, pdl, st)
                              : launch_typed<__nv_bfloat16, 1, 1, false>(s, sm_count, pdl, st);
}

cudaError_t lf_stream_multi_launch(const lf_multi_problem *q, unsigned *ctl, int sm_count, bool pdl, cudaStream_t st)
{
    const lf_adapter_set *set = q->set;
    if (q->m < 1 || q->m > LF_CUDA_STREAM_MULTI_MAX_M || q->n < 1 || q->n >= INT_MAX || q->k < 1 || q->k % 8 ||
        q->k >= INT_MAX / 2 || !set || set->max_rank < 1 || set->max_rank > MAX_R ||
        (q->dtype != LF_BF16 && q->dtype != LF_F16) || q->layout != LF_LAYOUT_PEFT || !q->x || !q->w || !q->y ||
        !ctl || sm_count < 1 || lf_cuda_stream_smem(q->m, q->k, 1) > LF_CUDA_STREAM_BLOCK_SMEM)
        return cudaErrorInvalidValue;
    sparams s = {};
    s.m = (int)q->m, s.n = (int)q->n, s.k = (int)q->k, s.r = (int)set->max_rank;
    s.x = q->x, s.w = q->w, s.a = set->a, s.b = set->b, s.bias = q->bias, s.y = q->y;
    s.ldx = q->ldx, s.ldw = q->ldw, s.lda = set->lda, s.ldb = set->ldb, s.ldy = q->ldy;
    s.beta = q->beta;
    s.ctl = ctl, s.workers = lf_cuda_stream_multi_workers(q->m);
    s.map.ids = q->token_adapter, s.map.seg_starts = q->seg_starts, s.map.seg_adapter = q->seg_adapter;
    s.map.segments = (int)q->segments, s.map.slots = set->slots, s.map.capacity = set->capacity;
    s.max_rank = (int)set->max_rank;
    const int split = lf_cuda_stream_split(q->m);
    /* the kernel's assumptions: a worker for each of the first min(m, 8) tokens, token b + 8 being
     * worker b's, and the W blocks' clusters starting after the workers (a W block's rank in its
     * cluster = its K half) */
    if (s.workers < (q->m < 8 ? q->m : 8) || (q->m > 8 && s.workers != 8) || s.workers % split)
        return cudaErrorInvalidValue;
    if (split == 2) /* 16 token columns, K halves */
        return q->dtype == LF_F16 ? launch_typed<__half, 2, 2, true>(s, sm_count, pdl, st)
                                  : launch_typed<__nv_bfloat16, 2, 2, true>(s, sm_count, pdl, st);
    return q->dtype == LF_F16 ? launch_typed<__half, 1, 1, true>(s, sm_count, pdl, st)
                              : launch_typed<__nv_bfloat16, 1, 1, true>(s, sm_count, pdl, st);
}

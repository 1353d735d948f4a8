/*
 * lora_hopper.cu — the whole LoRA layer in one launch on Hopper (sm_90a), PEFT layout, bf16 or f16:
 *
 *   y = beta·y + x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ        x [M,K], W [N,K], A [r,K], B [N,r], r ≤ 64
 *
 * The kernel lab's v8 (dev/cuda/hopper_gemm.cu, dev/cuda/NOTES.md "Hopper GEMM lab"): a persistent
 * grid of 384-thread CTAs, one per SM. Tile CTAs compute 128 × BN tiles of y (BN 256, or 224, 192
 * or 128 where those fill the SMs' rounds better: wide_shape): one producer warpgroup (one thread)
 * streams 64-wide K slabs of x and W by TMA (128-byte swizzle) into a ring of full/empty mbarriers
 * (4 stages, 6 at 128 columns); two consumer warpgroups each accumulate 64 × BN in fp32 registers with wgmma
 * m64nBNk16 from shared-memory descriptors, one group kept in flight; the producer
 * warpgroup's other three warps store finished tiles to y from a shared-memory staging while the
 * consumers go on (store_staged). The first CTAs of the grid (blockIdx 0..workers-1, dispatched
 * first) are T workers: each streams x's row blocks and A through the same shared memory
 * (ring and staging) cut into stages of their own size (x's box and A's: 12 stages at r ≤ 16, 9
 * at r ≤ 64 with 256-column tiles, so that 216 KB is in flight, not the tile ring's 72 KB of them;
 * 11 / 8 at 224 columns, 10 / 7 at 192, 11 / 8 at 128),
 * computes T = x·Aᵀ (m64n16 or m64n64 wgmma), and stores s·T as two 16-bit
 * parts [hi | lo] (hi = rn(s·T), lo = rn(s·T − hi): twice the mantissa, so T is not rounded
 * before the output's one rounding) into t2 [M][2·TW] in the workspace (TW = 16 for r ≤ 16, else 64,
 * zero past r), then raises the row block's ready flag (release). Workers take no tiles, or, where
 * few column tiles share a row block and T would outlast them, a few tiles after T in their own
 * last row block (lf_cuda_hopper_schedule; the T ring's barriers are initialized again for the tile
 * ring). The other CTAs take the rest from the top of the grid down (cta_tile). A tile's producer
 * waits for the flag (acquire) before its LoRA slab: one more K stage (TW = 16: T's [hi | lo] box
 * against B's first 16 columns, two k16 steps on the same B) or two (TW = 64: hi, then lo, B loaded
 * for each), landing in the same accumulators; the epilogue adds bias and beta·y and rounds once.
 * Edges: TMA zero-fills what lies outside x, W, A, B and t2 (M, N, K tails, columns of A and B past
 * r); both epilogues mask their stores; beta = 0 never reads y. Every sum has a fixed order: no
 * float atomics, results are bitwise identical run to run. One limit the GEMM path does not have:
 * in f16, T's parts are f16 too (wgmma takes one operand type), so |s·T| past 65504 overflows; bf16
 * has fp32's range.
 *
 * Flags without host state (CUDA-graph replay carries no per-call host value): the context's control
 * words hold a generation g. Every CTA reads g at its start; this launch's flags are g + 1 (those of
 * the launch before are g, so none is mistaken for this one's). Each CTA counts itself done with
 * one integer atomicAdd when it leaves; the last resets the count and stores g + 1, which the next
 * launch (stream-ordered after this one) reads. After 2^32 − 1 launches (days of serving) g + 1
 * would wrap to 0, the value every flag holds from its zeroing, and a row block that no launch
 * flagged since would read as ready: the last CTA of the launch with flags 2^32 − 1 clears every
 * flag and stores g = 0, so that the next launch flags with 1 again. The control words are the
 * context's own, not the workspace: other plans reuse the workspace between calls and would
 * overwrite them.
 *
 * Progress: workers wait for no other CTA (their tiles lie in a row block whose T they computed
 * themselves), the other CTAs wait only for workers' flags, and the workers have the lowest block
 * indices, so they are dispatched first: a waiting CTA's worker is running or done, even where
 * other grids hold SMs beside this one. The grid is at most one CTA per SM (185–225 KB of shared
 * memory, 384 threads).
 *
 * Where it applies (heuristics.h: lf_cuda_hopper_fits): compute capability 9.0 with this file's
 * sm_90a code, PEFT layout (W rows are K-major, as the wgmma descriptors read them; the KN layout
 * keeps the GEMM path), 16-byte aligned operands and strides (TMA), r ≤ 64.
 *
 * Two more forms of the layer follow, with the same building blocks: "few tiles" (each tile's K
 * split over a thread block cluster, for 17 to a few hundred tokens where the decode kernels do
 * not take them; lf_cuda_hopper_mid_split) and "few tokens" (W streamed as the wgmma A operand,
 * for up to 64; lf_cuda_hopper_decode_fits).
 */
#include "common.cuh"
#include "heuristics.h"
#include "hopper_ptx.cuh"
#include "launch.cuh"
#include "lora_hopper.cuh"

#include <cudaTypedefs.h> /* PFN_cuTensorMapEncodeTiled: the encoder comes through the runtime */
#include <limits.h>

using namespace lf_hopper;

namespace {

enum {
    BM = 128, /* rows of x per tile: two consumer warpgroups of 64 */
    BK = 64,  /* K per stage: 128-byte rows, the 128-byte swizzle */
    CONSUMERS = 2,
    THREADS = 128 * (1 + CONSUMERS),
    A_BYTES = BM * BK * 2,
    /* the store warps' staging: 1/OUT_PARTS of a tile (128 rows × its columns / OUT_PARTS, 16-bit),
     * see store_staged */
    OUT_PARTS = 2,
    STORE_THREADS = 96, /* the producer warpgroup's warps 1–3 */
    PRODUCER_REGS = 40,
    CONSUMER_REGS = 232, /* 128·40 + 256·232 = 64512 ≤ 65536 registers */
    CTL_GEN = 0,
    CTL_DONE = 1,
    CTL_FLAGS = 64 /* the flags start on their own 256 bytes */
};

/* The sizes that follow from the tile's width BN: the rows of W a tile takes, one m64nBNk16 per
 * consumer and k16 step — 256, or 224, 192 or 128 where those fill the SMs' rounds better
 * (lf_cuda_hopper_tile_cols: M = 1024, N = 14336 takes 512 tiles of 224 in 4 rounds of 128 CTAs,
 * not 448 of 256 in 3.5; M = 256, N = 7168 takes 112 tiles of 128 in one round, not 56 of 256 on
 * half the SMs). */
template <int BN> struct wide_shape {
    static_assert(BN == 256 || BN == 224 || BN == 192 || BN == 128, "tile widths: 256, 224, 192, 128");
    enum {
        /* 3 stages with a whole-tile staging (no wait in the epilogue) ran 1.25–1.30× slower than 4
         * with half a tile (NOTES.md, "store warps"); 4 is what 227 KB hold at 224 and 256 columns
         * (5 would fit at 192: not tried). A 128-column stage feeds the tensor cores half as long,
         * so its ring is 6 deep: as much time in flight as 3 of 256 columns. */
        STAGES = BN == 128 ? 6 : 4,
        B_BYTES = BN * BK * 2,
        RING_BYTES = STAGES * (A_BYTES + B_BYTES),
        OUT_COLS = BN / OUT_PARTS,
        OUT_BYTES = BM * OUT_COLS * 2,
        /* T workers store nothing through the staging: they cut the ring and the staging together
         * into stages of x's box and A's (16 or 64 rows) */
        T_RING_BYTES = RING_BYTES + OUT_BYTES,
        MAX_T_STAGES = T_RING_BYTES / (A_BYTES + 16 * BK * 2),
        BARRIERS = MAX_T_STAGES > STAGES ? MAX_T_STAGES : STAGES,
        /* the ring, the staging, 1024 bytes to align the ring (the swizzle atom), the ring's full
         * and empty barriers and the staging's two: at 256 columns 230 608 of the 232 448 bytes a
         * block may have */
        SMEM_BYTES = RING_BYTES + OUT_BYTES + 1024 + 8 * (2 * BARRIERS + 2)
    };
    static_assert(B_BYTES % 1024 == 0 && SMEM_BYTES <= 232448, "the ring's alignment, a block's shared memory");
};

struct kparams {
    int m, n, r;
    int tiles_m, tiles_n, k_tiles;
    int workers;      /* CTAs [0, workers) compute T first (LW > 0), row blocks w, w + workers, … */
    int worker_tiles; /* then this many tiles each, the last columns of their last row block */
    int y_pairs;   /* y and ldy allow 4-byte two-element stores */
    int staged;    /* beta = 0 and y, ldy allow 16-byte stores: the epilogue goes through the store warps */
    const void *bias;
    void *y;
    long long ldy;
    float beta, scale;
    void *t2; /* s·T as [hi | lo], [m][2·TW] */
    unsigned *ctl;
};

/* The kernel's helpers exist in its sm_90a code alone (other targets compile an empty kernel). */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* Two adjacent outputs as one 4-byte access (scalars: common.cuh's lf_dt). */
template <typename T> struct io;
template <> struct io<__nv_bfloat16> {
    using pair = __nv_bfloat162;
    static __device__ __forceinline__ float2 f32x2(pair v) { return __bfloat1622float2(v); }
    static __device__ __forceinline__ pair round2(float a, float b) { return __floats2bfloat162_rn(a, b); }
};
template <> struct io<__half> {
    using pair = __half2;
    static __device__ __forceinline__ float2 f32x2(pair v) { return __half22float2(v); }
    static __device__ __forceinline__ pair round2(float a, float b) { return __floats2half2_rn(a, b); }
};

/* This CTA's k-th tile (heuristics.h: the order, checked on the CPU by test_plan). */
__device__ __forceinline__ bool cta_tile(const kparams &p, int k, int *mb, int *nb)
{
    return lf_cuda_hopper_cta_tile(p.tiles_m, p.tiles_n, p.workers, p.worker_tiles, (int)gridDim.x, (int)blockIdx.x,
                                   k, mb, nb) != 0;
}

/* The register epilogue, for beta ≠ 0 (y read before the one rounding) or a y that takes no 16-byte
 * stores: adds bias and beta·y to a consumer's 64×BN accumulator fragment and rounds once into y:
 * warp w holds rows 16w + lane/4 (+8), and per 8-column chunk j the columns 8j + 2·(lane%4) (+1). */
template <typename T, int BN>
__device__ __forceinline__ void epilogue(const kparams &p, const float *d, int row0, int col0, int lane)
{
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const int col = col0 + 8 * j + 2 * (lane % 4);
        if (col >= p.n)
            continue;
        const bool two = col + 1 < p.n;
        float b0 = 0.0f, b1 = 0.0f;
        if (p.bias) {
            b0 = lf_dt<T>::to_f32(((const T *)p.bias)[col]);
            if (two)
                b1 = lf_dt<T>::to_f32(((const T *)p.bias)[col + 1]);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = row0 + 8 * h;
            if (row >= p.m)
                continue;
            T *out = (T *)p.y + (long long)row * p.ldy + col;
            float v0 = d[4 * j + 2 * h] + b0, v1 = d[4 * j + 2 * h + 1] + b1;
            if (two && p.y_pairs) {
                if (p.beta != 0.0f) { /* beta = 0 must not read y: it may hold NaN */
                    const float2 old = io<T>::f32x2(*(const typename io<T>::pair *)out);
                    v0 = fmaf(p.beta, old.x, v0);
                    v1 = fmaf(p.beta, old.y, v1);
                }
                *(typename io<T>::pair *)out = io<T>::round2(v0, v1);
            } else {
                if (p.beta != 0.0f) {
                    v0 = fmaf(p.beta, lf_dt<T>::to_f32(out[0]), v0);
                    if (two)
                        v1 = fmaf(p.beta, lf_dt<T>::to_f32(out[1]), v1);
                }
                out[0] = lf_dt<T>::from_f32(v0);
                if (two)
                    out[1] = lf_dt<T>::from_f32(v1);
            }
        }
    }
}

/* The staged epilogue. Both consumer warpgroups finish a tile at the same moment, and storing
 * their fragments straight to y (epilogue above) kept the tensor pipe idle for ~20% of their time
 * (NOTES.md, "ncu source-level"). Instead each consumer rounds half its fragment (BN / 2 columns) into
 * shared memory, the staging, and goes on; the producer warpgroup's three idle warps (the store
 * warps) copy the staging to y in coalesced 16-byte pieces while the next tile's MMAs run. The
 * staging holds half a tile because the ring keeps its stages (4 at 192–256 columns; 3 starve the
 * MMAs): a consumer waits once per tile, for the store warps to have read the first half.
 * Layout (256 columns): tile row r at byte 256·r, its 16-byte chunk c (columns 8c..8c+7 of the
 * half) at chunk c ^ (r % 8): a warp's fragment store (8 rows × 4 words) and a store warp's read
 * (2 rows × 16 chunks) both touch every bank once per 128 bytes. With 224 or 192 columns a row
 * holds 14 or 12 chunks (rows of 56 or 48 words, so the fragment store's rows r and r + 4, or r
 * and r + 2, start in the same bank), and an XOR by r % 8 would carry chunks past the row: there
 * chunk c sits at c ^ ((r / 4) % 2), or c ^ ((r / 2) % 4), which stays in the row and puts the 8
 * rows' words in distinct banks again. With 128 columns a row is 8 chunks, 128 bytes: c ^ (r % 8)
 * stays in the row, and a store warp reads 4 whole rows. */
template <int BN> __device__ __forceinline__ uint32_t staged_chunk(int row, int chunk)
{
    constexpr int COLS = wide_shape<BN>::OUT_COLS, CHUNKS = COLS / 8;
    const int x = CHUNKS == 16 || CHUNKS == 8 ? row % 8 : CHUNKS == 14 ? (row >> 2) & 1 : (row >> 1) & 3;
    return 2 * COLS * row + 16 * (chunk ^ x);
}

/* Consumer side: half `half` (compile-time after unrolling) of the fragment, bias added, rounded
 * once, into the staging. trow: the tile row of d's first row (64c + 16·warp + lane/4). */
template <typename T, int BN>
__device__ __forceinline__ void stage_half(const kparams &p, const float *d, unsigned char *out, int half, int trow,
                                           int col0, int lane)
{
    constexpr int OUT_COLS = wide_shape<BN>::OUT_COLS;
#pragma unroll
    for (int jj = 0; jj < OUT_COLS / 8; jj++) {
        const int j = OUT_COLS / 8 * half + jj, col = col0 + 8 * j + 2 * (lane % 4);
        float b0 = 0.0f, b1 = 0.0f;
        if (p.bias) { /* columns past N are never stored, but must not be read */
            if (col < p.n)
                b0 = lf_dt<T>::to_f32(((const T *)p.bias)[col]);
            if (col + 1 < p.n)
                b1 = lf_dt<T>::to_f32(((const T *)p.bias)[col + 1]);
        }
#pragma unroll
        for (int h = 0; h < 2; h++)
            *(typename io<T>::pair *)(out + staged_chunk<BN>(trow + 8 * h, jj) + 4 * (lane % 4)) =
                io<T>::round2(d[4 * j + 2 * h] + b0, d[4 * j + 2 * h + 1] + b1);
    }
}

/* Store-warp side: every half tile of this CTA's tiles, in the consumers' order, from the staging
 * to y; rows past M and columns past N are not stored. i: this thread's index among the store
 * threads. */
template <typename T, int BN>
__device__ __forceinline__ void store_staged(const kparams &p, const unsigned char *out, uint32_t full, uint32_t empty,
                                             int i)
{
    constexpr int OUT_COLS = wide_shape<BN>::OUT_COLS;
    uint32_t phase = 0;
    int mb, nb;
    for (int k = 0; cta_tile(p, k, &mb, &nb); k++) {
        for (int half = 0; half < OUT_PARTS; half++) {
            mbar_wait(full, phase);
            for (int q = i; q < BM * OUT_COLS / 8; q += STORE_THREADS) {
                const int row = q / (OUT_COLS / 8), chunk = q % (OUT_COLS / 8), grow = mb * BM + row;
                const int gcol = nb * BN + OUT_COLS * half + 8 * chunk;
                const unsigned char *src = out + staged_chunk<BN>(row, chunk);
                if (grow >= p.m || gcol >= p.n)
                    continue;
                T *dst = (T *)p.y + (long long)grow * p.ldy + gcol;
                if (gcol + 8 <= p.n)
                    *(uint4 *)dst = *(const uint4 *)src;
                else /* N's tail: element by element */
                    for (int e = 0; e < p.n - gcol; e++)
                        dst[e] = ((const T *)src)[e];
            }
            mbar_arrive(empty); /* this thread has read the half: the consumers may overwrite it */
            phase ^= 1;
        }
    }
}

/* The full and empty barriers of an n-stage ring (barrier s at full0 + 8s, empty0 + 8s). */
__device__ __forceinline__ void ring_barriers_init(uint32_t full0, uint32_t empty0, int n)
{
    for (int s = 0; s < n; s++) {
        mbar_init(full0 + 8 * s, 1);              /* the producer's arrive.expect_tx */
        mbar_init(empty0 + 8 * s, 4 * CONSUMERS); /* one arrival per consumer warp */
    }
}

/* A consumer has issued one stage's wgmmas: commit them, wait for the stage before (one group stays
 * in flight) and hand that stage back to the producer, then move on. */
template <int NS>
__device__ __forceinline__ void consumer_next(uint32_t empty0, int &prev, int &stage, uint32_t &phase, int lane)
{
    wgmma_commit();
    wgmma_wait<1>();
    if (prev >= 0 && lane == 0)
        mbar_arrive(empty0 + 8 * prev);
    prev = stage;
    ring_next<NS>(stage, phase);
}
/* After a tile's (or a row block's) last stage: drain the wgmmas, hand the last stage back. */
__device__ __forceinline__ void consumer_drain(uint32_t empty0, int prev, int lane)
{
    wgmma_wait<0>();
    if (prev >= 0 && lane == 0)
        mbar_arrive(empty0 + 8 * prev);
}
#endif /* __CUDA_ARCH_FEAT_SM90_ALL */

/* LW: the LoRA term's width, 16 (r ≤ 16) or 64 (r ≤ 64); 0: no LoRA term, the base GEMM alone
 * (lorafuse's own base, which the bench times beside cuBLAS's: no T workers, no LoRA stage). BN: the
 * tile's columns (wide_shape). */
template <typename T, int LW, int BN>
__global__ void __launch_bounds__(THREADS, 1)
    lora_hopper_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
                       const __grid_constant__ CUtensorMap tm_a, const __grid_constant__ CUtensorMap tm_b,
                       const __grid_constant__ CUtensorMap tm_t2, const kparams p)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int TW = LW > 0 ? LW : 16; /* T's width in the workers (LW = 0 has none) */
    constexpr int K16 = BK / 16, ROW_BYTES = 2 * BK, A_TILE_BYTES = TW * BK * 2;
    constexpr int LORA_STAGES = LW == 0 ? 0 : LW == 16 ? 1 : 2;
    /* a worker's stage: x's box, then A's; a multiple of 1024 bytes, as the swizzle needs */
    using S = wide_shape<BN>;
    constexpr int STAGES = S::STAGES;
    constexpr int T_STAGE_BYTES = A_BYTES + A_TILE_BYTES, T_STAGES = S::T_RING_BYTES / T_STAGE_BYTES;
    constexpr int B_BYTES = S::B_BYTES, BARRIERS = S::BARRIERS;
    static_assert(T_STAGE_BYTES % 1024 == 0 && T_STAGES <= BARRIERS, "T worker ring");
    extern __shared__ unsigned char smem_raw[];
    const uint32_t ring = (smem_addr(smem_raw) + 1023) & ~1023u;
    const uint32_t ring_a = ring, ring_b = ring + STAGES * A_BYTES, bars = ring + S::RING_BYTES + S::OUT_BYTES;
    unsigned char *const out = smem_raw + (ring + S::RING_BYTES - smem_addr(smem_raw)); /* the staging */
#define FULL(s) (bars + 8 * (s))
#define EMPTY(s) (bars + 8 * (BARRIERS + (s)))
    const uint32_t out_full = bars + 8 * 2 * BARRIERS, out_empty = out_full + 8;
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    const int workers = p.workers;
    const bool t_worker = LW > 0 && (int)blockIdx.x < workers;
    /* this launch's flag value (see the head comment); the count of finished CTAs includes this
     * one only after every thread has read it */
    const unsigned ready = *(volatile const unsigned *)(p.ctl + CTL_GEN) + 1u;
    unsigned *const t_ready = p.ctl + CTL_FLAGS;
    if (threadIdx.x == 0) {
        ring_barriers_init(FULL(0), EMPTY(0), t_worker ? T_STAGES : STAGES);
        mbar_init(out_full, 128 * CONSUMERS); /* every consumer thread has staged its part */
        mbar_init(out_empty, STORE_THREADS);  /* every store thread has read its part */
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();
    const int steps = p.k_tiles + LORA_STAGES;

    /* T phase (workers): x's row blocks and A's TW rows (zero past r), over K, through the T ring */
    if (wg == 0) { /* producer warpgroup: one thread issues every copy */
        if (tid == 0 && t_worker) {
            int stage = 0;
            uint32_t phase = 0;
            for (int mb = blockIdx.x; mb < p.tiles_m; mb += workers)
                for (int ks = 0; ks < p.k_tiles; ks++) {
                    const uint32_t slot = ring + stage * T_STAGE_BYTES;
                    mbar_wait(EMPTY(stage), phase ^ 1);
                    mbar_arrive_expect_tx(FULL(stage), T_STAGE_BYTES);
                    tma_load_2d(slot, &tm_x, FULL(stage), ks * BK, mb * BM);
                    tma_load_2d(slot + A_BYTES, &tm_a, FULL(stage), ks * BK, 0);
                    ring_next<T_STAGES>(stage, phase);
                }
        }
        __syncwarp();
    } else { /* consumer warpgroup c owns rows 64c..64c+63 of the row block, then of each tile */
        if (t_worker) {
            const int c = wg - 1, warp = tid / 32, lane = tid % 32;
            int stage = 0;
            uint32_t phase = 0;
            float t_acc[TW / 2];
            uint32_t t_hi[TW / 4], t_lo[TW / 4];
            for (int mb = blockIdx.x; mb < p.tiles_m; mb += workers) {
#pragma unroll
                for (int i = 0; i < TW / 2; i++)
                    t_acc[i] = 0.0f;
                int prev = -1;
                for (int ks = 0; ks < p.k_tiles; ks++) {
                    mbar_wait(FULL(stage), phase);
                    const uint32_t slot = ring + stage * T_STAGE_BYTES, a = slot + c * 64 * ROW_BYTES, at = slot + A_BYTES;
                    wgmma_fence();
#pragma unroll
                    for (int k = 0; k < K16; k++)
                        wgmma_m64nXk16<TW, T>(t_acc, smem_desc<BK>(a + 32 * k), smem_desc<BK>(at + 32 * k));
                    consumer_next<T_STAGES>(EMPTY(0), prev, stage, phase, lane);
                }
                consumer_drain(EMPTY(0), prev, lane);
                fence_acc<TW / 2>(t_acc);
                split_hi_lo<TW / 4, T>(t_acc, p.scale, t_hi, t_lo);
                /* pair i of the fragment: row 16w + lane/4 + 8·(i%2), columns 8·(i/2) + 2·(lane%4) (+1);
                 * hi at that column of t2's row, lo TW columns further */
                const int row0 = mb * BM + c * 64 + warp * 16 + lane / 4;
#pragma unroll
                for (int i = 0; i < TW / 4; i++) {
                    const int row = row0 + 8 * (i % 2), col = 8 * (i / 2) + 2 * (lane % 4);
                    if (row < p.m) {
                        uint32_t *dst = (uint32_t *)((T *)p.t2 + (long long)row * 2 * TW + col);
                        dst[0] = t_hi[i];
                        dst[TW / 2] = t_lo[i];
                    }
                }
                /* both consumers stored (generic proxy) before the flag lets TMA read t2 */
                asm volatile("fence.proxy.async.global;\n\tbar.sync 1, 256;" ::: "memory");
                if (c == 0 && tid == 0)
                    publish_flag(t_ready + mb, ready);
            }
        }
    }
    /* A worker with tiles: every T stage is consumed and handed back; the T ring's barriers become
     * the tile ring's */
    if (t_worker && p.worker_tiles > 0) {
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int s = 0; s < T_STAGES; s++) {
                mbar_inval(FULL(s));
                mbar_inval(EMPTY(s));
            }
            ring_barriers_init(FULL(0), EMPTY(0), STAGES);
            asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        }
        __syncthreads();
    }
    /* tile phase: the producer warpgroup's registers go to the consumers (not before: ptxas keeps the
     * launch's count where code after the split is reached from both sides) */
    if (wg == 0) {
        regs_dealloc<PRODUCER_REGS>();
        if (tid == 0) {
            int stage = 0;
            uint32_t phase = 0;
            int mb, nb;
            for (int k = 0; cta_tile(p, k, &mb, &nb); k++) {
                for (int ks = 0; ks < steps; ks++) {
                    mbar_wait(EMPTY(stage), phase ^ 1);
                    const uint32_t a = ring_a + stage * A_BYTES, b = ring_b + stage * B_BYTES;
                    const bool lora = ks >= p.k_tiles;
                    if (ks == p.k_tiles) /* this row block's s·T is in t2 */
                        wait_flag(t_ready + mb, ready);
                    mbar_arrive_expect_tx(FULL(stage), A_BYTES + B_BYTES);
                    /* full boxes, the parts outside each tensor zero-filled: the LoRA slab is T's
                     * [hi | lo] (stage ks − k_tiles of its 64-wide columns) against B's first 64
                     * columns, loaded again for each LoRA stage (B is never copied per call) */
                    tma_load_2d(a, lora ? &tm_t2 : &tm_x, FULL(stage), (lora ? ks - p.k_tiles : ks) * BK, mb * BM);
                    tma_load_2d(b, lora ? &tm_b : &tm_w, FULL(stage), lora ? 0 : ks * BK, nb * BN);
                    ring_next<STAGES>(stage, phase);
                }
            }
        } else if (tid >= 32 && p.staged) {
            store_staged<T, BN>(p, out, out_full, out_empty, tid - 32);
        }
        __syncwarp();
    } else {
        regs_alloc<CONSUMER_REGS>();
        const int c = wg - 1, warp = tid / 32, lane = tid % 32;
        int stage = 0;
        uint32_t phase = 0;
        uint32_t out_phase = 0;
        float d[BN / 2];
        int mb, nb;
        for (int k = 0; cta_tile(p, k, &mb, &nb); k++) {
#pragma unroll
            for (int i = 0; i < BN / 2; i++)
                d[i] = 0.0f;
            int prev = -1;
            /* the K loop and the LoRA stages apart: a branch between two wgmmas of one loop costs
             * an injected fence (ptxas C7519) in every K step */
            for (int ks = 0; ks < p.k_tiles; ks++) {
                mbar_wait(FULL(stage), phase);
                const uint32_t a = ring_a + stage * A_BYTES + c * 64 * ROW_BYTES, b = ring_b + stage * B_BYTES;
                wgmma_fence();
                wgmma_k16_steps<BK, K16, T, BN>(d, a, b);
                consumer_next<STAGES>(EMPTY(0), prev, stage, phase, lane);
            }
            for (int ls = 0; ls < LORA_STAGES; ls++) {
                mbar_wait(FULL(stage), phase);
                const uint32_t a = ring_a + stage * A_BYTES + c * 64 * ROW_BYTES, b = ring_b + stage * B_BYTES;
                wgmma_fence();
                if constexpr (TW == 16) { /* T's [hi | lo] (columns 0–15 | 16–31) against B's 0–15 */
                    wgmma_wide<BN, T>(d, smem_desc<BK>(a), smem_desc<BK>(b));
                    wgmma_wide<BN, T>(d, smem_desc<BK>(a + 32), smem_desc<BK>(b));
                } else /* hi or lo: the k16 steps that hold rank (zeros past r) */
                    wgmma_stage<BK, K16, T, BN>(d, a, b, (p.r + 15) / 16);
                consumer_next<STAGES>(EMPTY(0), prev, stage, phase, lane);
            }
            consumer_drain(EMPTY(0), prev, lane);
            fence_acc<BN / 2>(d);
            const int trow = c * 64 + warp * 16 + lane / 4;
            if (p.staged) {
#pragma unroll
                for (int half = 0; half < OUT_PARTS; half++) {
                    mbar_wait(out_empty, out_phase ^ 1); /* the store warps have read the last half */
                    stage_half<T, BN>(p, d, out, half, trow, nb * BN, lane);
                    mbar_arrive(out_full);
                    out_phase ^= 1;
                }
            } else {
                epilogue<T, BN>(p, d, mb * BM + trow, nb * BN, lane);
            }
        }
    }
#undef FULL
#undef EMPTY
    __syncthreads();
    if (threadIdx.x == 0) { /* the generation (head comment): integer atomics only */
        __threadfence();
        if (atomicAdd(p.ctl + CTL_DONE, 1u) == gridDim.x - 1) {
            __threadfence(); /* after every CTA's count: their flag stores come before the clearing */
            *(volatile unsigned *)(p.ctl + CTL_DONE) = 0;
            const bool wrap = ready == 0xffffffffu; /* every CTA is past its waits: clear (head comment) */
            for (int i = 0; wrap && i < LF_HOPPER_MAX_M / 128; i++)
                *(volatile unsigned *)(t_ready + i) = 0;
            __threadfence();
            *(volatile unsigned *)(p.ctl + CTL_GEN) = wrap ? 0u : ready;
        }
    }
#endif
}

/* ---- few tiles: the K loop split over a thread block cluster ---------------------------------
 *
 * Below ~¾ of a round of 128×256 tiles (M up to a few hundred tokens at N = 4096) the kernel above
 * leaves most SMs idle, and the GEMM path pays three launches and an fp32 round trip. Here the
 * tiles are 128 × BN (BN 128, or 64 where those take a split of 2 or more on as many CTAs:
 * heuristics.h, lf_cuda_hopper_mid_split) and each
 * tile's K range is split over the `split` CTAs of a cluster (1..8), so that tiles × split CTAs
 * run in one wave. Each CTA streams its K slice of x, W and A through a 6- or 8-stage TMA ring,
 * accumulating its part of x·Wᵀ (m64nBNk16) and of T = x·Aᵀ (m64n16k16 on the
 * same x slab) in registers, while the producer warpgroup's idle warps stage the tile's rows of B
 * and the bias in shared memory. Then every CTA writes both parts into its shared memory (the ring
 * is free by then), the cluster synchronizes, and CTA j finishes rows [j·live/split,
 * (j+1)·live/split) of the tile's live rows: it sums the parts of T and of the base from every CTA's shared
 * memory (distributed shared memory, in cluster order), adds s·T·Bᵀ in fp32 (T never rounded),
 * bias and beta·y, and rounds once into y. One launch, no workspace, no flags; every sum in a fixed
 * order: bitwise reproducible. r ≤ 16. Launched with PDL: it releases the next kernel at its start
 * and loads its first stages' W before its wait, like the decode form below. */
enum {
    MID_MAX_SPLIT = 8,
    MID_TW = 16, /* T's width: r ≤ 16 */
};

/* The form's sizes for tiles of BM × BN. 128 columns, not 256: the finish moves a CTA's whole part
 * (BM × BN fp32) through distributed shared memory, ~25 GB/s per SM, so half the columns halve it;
 * 64 columns give twice the tiles again, so that a row of tiles at N = 4096 fills the GPU at split
 * 2 (16 KB of remote parts a CTA instead of 43 KB at split 3 with 128 columns), for x read from L2
 * twice as often (NOTES.md, "Few tiles"). */
template <int BN> struct mid_shape {
    static_assert(BN == 64 || BN == 128, "tile widths: 64, 128");
    enum : int {
        PLD = BN + 8, /* row stride (floats) of a CTA's base part in shared memory */
        STAGE_BYTES = A_BYTES + BN * BK * 2 + MID_TW * BK * 2,
        STAGES = BN == 64 ? 8 : 6, /* as deep as 227 KB allow */
        /* B's rows of the tile's columns ([MID_TW][BN]) and the bias, in fp32, after the barriers */
        LORA_BYTES = BN * MID_TW * 4 + BN * 4,
        SMEM = STAGES * STAGE_BYTES + 1024 + 8 * 2 * STAGES + LORA_BYTES,
        /* the finish: 4 columns a thread, so BN / 4 threads a row and 256 · 4 / BN rows a pass */
        ROW_THREADS = BN / 4,
        PASS_ROWS = 256 / ROW_THREADS,
    };
};

struct mid_params {
    int m, n, r, k_tiles, tiles_m, split;
    int y_vec; /* y and ldy allow 8-byte stores of 4 outputs */
    int b_vec; /* r = 16 and B, ldb allow 16-byte loads of a column's 16 values */
    const void *bias, *b;
    long long ldb;
    void *y;
    long long ldy;
    float beta, scale;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* Four consecutive outputs: bias (or zero) in, rounded once out. */
template <typename T> struct quad {
    static __device__ __forceinline__ void load(const T *src, int valid, float (&v)[4])
    {
#pragma unroll
        for (int e = 0; e < 4; e++)
            v[e] = e < valid ? lf_dt<T>::to_f32(src[e]) : 0.0f;
    }
    static __device__ __forceinline__ void store(T *dst, int valid, bool vec, const float (&v)[4])
    {
        if (vec && valid == 4) {
            const typename io<T>::pair lo = io<T>::round2(v[0], v[1]), hi = io<T>::round2(v[2], v[3]);
            uint2 w;
            w.x = *(const uint32_t *)&lo;
            w.y = *(const uint32_t *)&hi;
            *(uint2 *)dst = w;
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (e < valid)
                    dst[e] = lf_dt<T>::from_f32(v[e]);
        }
    }
};

/* The split parts of a row's 4 columns (16 bytes from each CTA of the cluster). */
__device__ __forceinline__ void load_parts4(float4 (&part)[MID_MAX_SPLIT], uint32_t at, int split)
{
#pragma unroll
    for (int s = 0; s < MID_MAX_SPLIT; s++)
        if (s < split)
            part[s] = ld_cluster_f32x4(cluster_map(at, s));
}

/* B's rows of the tile's columns, as bs[rank][BN] (zero past r and N: a finishing thread reads
 * four consecutive columns of one rank, lanes side by side, no bank conflicts), and the bias (zero
 * without one), in fp32 for the finish: loaded by the producer warpgroup's idle warps (thread t of
 * STORE_THREADS) while the K loop runs. Loaded by the consumers after it, B's 64 scalar loads a
 * thread ran one after another and cost ~8 µs, a third of the kernel (NOTES.md, "Few tiles"). */
template <typename T, int BN>
__device__ __forceinline__ void mid_stage_lora(const mid_params &p, int nb, float *bs, float *bias_s, int t)
{
    const int col0 = nb * BN;
    const T *b = (const T *)p.b;
    if (p.b_vec) {
        for (int i = t; i < 2 * BN; i += STORE_THREADS) { /* half a column (8 values) each */
            const int col = col0 + i / 2;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (col < p.n)
                v = *(const uint4 *)(b + (long long)col * p.ldb + 8 * (i % 2));
            const T *h = (const T *)&v;
            float *dst = bs + 8 * (i % 2) * BN + i / 2;
#pragma unroll
            for (int e = 0; e < 8; e++)
                dst[e * BN] = lf_dt<T>::to_f32(h[e]);
        }
    } else {
        for (int i = t; i < BN * MID_TW; i += STORE_THREADS) {
            const int col = col0 + i / MID_TW, rr = i % MID_TW;
            bs[rr * BN + i / MID_TW] =
                col < p.n && rr < p.r ? lf_dt<T>::to_f32(b[(long long)col * p.ldb + rr]) : 0.0f;
        }
    }
    for (int i = t; i < BN; i += STORE_THREADS)
        bias_s[i] = p.bias && col0 + i < p.n ? lf_dt<T>::to_f32(((const T *)p.bias)[col0 + i]) : 0.0f;
}

/* Rows [row0, row0 + rows) of the tile at (mb, nb), finished by this CTA's 256 consumer threads:
 * thread c owns columns 4·(c % ROW_THREADS) .. +3 of the tile and rows c / ROW_THREADS +
 * PASS_ROWS·i (mid_shape). bv, bias: its columns'
 * rows of B and bias (from mid_stage_lora). base, tp: the parts' shared addresses
 * (the same in every CTA), tl: this CTA's shared memory for the finished T rows. */
template <typename T, int BN>
__device__ __forceinline__ void mid_finish(const mid_params &p, uint32_t base, uint32_t tp, float *tl, int mb, int nb,
                                           int row0, int rows, int c, const float (&bv)[4][MID_TW],
                                           const float (&bias)[4])
{
    /* T = scale · Σ_s T_s of the rows, s in cluster order: rows·16 values, ≤ 8 a thread */
    {
        float part[8][MID_MAX_SPLIT];
#pragma unroll
        for (int g = 0; g < 8; g++)
            if (c + 256 * g < rows * MID_TW) {
                const int i = c + 256 * g;
#pragma unroll
                for (int s = 0; s < MID_MAX_SPLIT; s++)
                    if (s < p.split)
                        part[g][s] = ld_cluster_f32(cluster_map(tp + 4 * ((row0 + i / MID_TW) * MID_TW + i % MID_TW), s));
            }
#pragma unroll
        for (int g = 0; g < 8; g++)
            if (c + 256 * g < rows * MID_TW) {
                float v = part[g][0];
#pragma unroll
                for (int s = 1; s < MID_MAX_SPLIT; s++)
                    if (s < p.split)
                        v += part[g][s];
                tl[c + 256 * g] = p.scale * v;
            }
    }
    asm volatile("bar.sync 1, 256;" ::: "memory");
    using S = mid_shape<BN>;
    const int cq = 4 * (c % S::ROW_THREADS), col = nb * BN + cq, valid = min(4, p.n - col);
    const int live = min(rows, p.m - (mb * BM + row0)); /* rows of this slice inside M */
    if (valid <= 0)
        return;
    /* two rows at a time: the second row's loads are in flight while the first is summed */
    for (int i = c / S::ROW_THREADS; i < live; i += 2 * S::PASS_ROWS) {
        float4 part[2][MID_MAX_SPLIT];
        load_parts4(part[0], base + 4 * ((row0 + i) * S::PLD + cq), p.split);
        if (i + S::PASS_ROWS < live)
            load_parts4(part[1], base + 4 * ((row0 + i + S::PASS_ROWS) * S::PLD + cq), p.split);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int ii = i + S::PASS_ROWS * h;
            if (ii >= live)
                break;
            float4 b4 = part[h][0];
#pragma unroll
            for (int s = 1; s < MID_MAX_SPLIT; s++)
                if (s < p.split) {
                    b4.x += part[h][s].x;
                    b4.y += part[h][s].y;
                    b4.z += part[h][s].z;
                    b4.w += part[h][s].w;
                }
            float v[4] = {b4.x, b4.y, b4.z, b4.w}, lora[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int t4 = 0; t4 < MID_TW; t4 += 4) {
                const float4 t = *(const float4 *)&tl[ii * MID_TW + t4];
#pragma unroll
                for (int e = 0; e < 4; e++)
                    lora[e] = fmaf(t.w, bv[e][t4 + 3],
                                   fmaf(t.z, bv[e][t4 + 2], fmaf(t.y, bv[e][t4 + 1], fmaf(t.x, bv[e][t4], lora[e]))));
            }
            T *out = (T *)p.y + (long long)(mb * BM + row0 + ii) * p.ldy + col;
            float old[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (p.beta != 0.0f) /* beta = 0 must not read y: it may hold NaN */
                quad<T>::load(out, valid, old);
#pragma unroll
            for (int e = 0; e < 4; e++)
                v[e] = fmaf(p.beta, old[e], v[e] + lora[e] + bias[e]);
            quad<T>::store(out, valid, p.y_vec, v);
        }
    }
}
#endif

/* Grid: split CTAs per tile, in clusters of split. */
template <typename T, int BN>
__global__ void __launch_bounds__(THREADS, 1)
    lora_hopper_mid_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
                           const __grid_constant__ CUtensorMap tm_a, const mid_params p)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using S = mid_shape<BN>;
    constexpr int K16 = BK / 16, ROW_BYTES = 2 * BK, STAGES = S::STAGES, STAGE_BYTES = S::STAGE_BYTES;
    static_assert(STAGE_BYTES % 1024 == 0, "stages keep the swizzle's 1024-byte alignment");
    static_assert(BM * S::PLD * 4 + 2 * BM * MID_TW * 4 <= STAGES * STAGE_BYTES, "parts fit the ring");
    extern __shared__ unsigned char smem_raw[];
    const uint32_t ring = (smem_addr(smem_raw) + 1023) & ~1023u, bars = ring + STAGES * STAGE_BYTES;
#define FULL(s) (bars + 8 * (s))
#define EMPTY(s) (bars + 8 * (STAGES + (s)))
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    const int j = (int)cluster_rank(), tile = (int)blockIdx.x / p.split;
    const int mb = tile % p.tiles_m, nb = tile / p.tiles_m;
    const int ks0 = j * p.k_tiles / p.split, ks1 = (j + 1) * p.k_tiles / p.split;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(FULL(s), 1);
            mbar_init(EMPTY(s), 4 * CONSUMERS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();
    /* Launched with PDL, and the next kernel waits for all of this grid: it may launch now. */
    lf_pdl_release();
    /* the parts, after the K loop: the base [BM][S::PLD] and T [BM][MID_TW], then the finished T rows */
    const uint32_t base = ring, tp = ring + BM * S::PLD * 4;
    float *const tl = (float *)(smem_raw + (tp + BM * MID_TW * 4 - smem_addr(smem_raw)));
    float *const bs = (float *)(smem_raw + (bars + 8 * 2 * STAGES - smem_addr(smem_raw))),
                *const bias_s = bs + BN * MID_TW;
    if (wg == 0) {
        regs_dealloc<PRODUCER_REGS>();
        if (tid == 0) {
            /* Before the wait only W is read (launch.cuh): the first stages' W boxes fill the empty
             * ring while the kernel before may still run; x, A, B, bias and y follow the wait. */
            const int pre = min(STAGES, ks1 - ks0);
            for (int i = 0; i < pre; i++) {
                mbar_arrive_expect_tx(FULL(i), STAGE_BYTES);
                tma_load_2d(ring + i * STAGE_BYTES + A_BYTES, &tm_w, FULL(i), (ks0 + i) * BK, nb * BN);
            }
            lf_pdl_wait();
            int stage = 0;
            uint32_t phase = 0;
            for (int ks = ks0; ks < ks1; ks++) {
                const uint32_t slot = ring + stage * STAGE_BYTES;
                if (ks >= ks0 + pre) { /* the first `pre` stages hold their W already */
                    mbar_wait(EMPTY(stage), phase ^ 1);
                    mbar_arrive_expect_tx(FULL(stage), STAGE_BYTES);
                    tma_load_2d(slot + A_BYTES, &tm_w, FULL(stage), ks * BK, nb * BN);
                }
                tma_load_2d(slot, &tm_x, FULL(stage), ks * BK, mb * BM);
                tma_load_2d(slot + A_BYTES + BN * BK * 2, &tm_a, FULL(stage), ks * BK, 0);
                ring_next<STAGES>(stage, phase);
            }
        } else if (tid >= 32) {
            lf_pdl_wait(); /* every role but the producer's waits first: x, A, B, bias and y */
            mid_stage_lora<T, BN>(p, nb, bs, bias_s, tid - 32);
            asm volatile("bar.arrive 2, 352;" ::: "memory"); /* to the consumers' bar.sync 2 */
        }
        __syncwarp();
        cluster_sync(); /* the parts are written */
        cluster_sync_relaxed(); /* every CTA has read them */
    } else {
        regs_alloc<CONSUMER_REGS>();
        lf_pdl_wait();
        const int c = wg - 1, warp = tid / 32, lane = tid % 32, fc = tid + 128 * c;
        float d[BN / 2], t_acc[MID_TW / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++)
            d[i] = 0.0f;
#pragma unroll
        for (int i = 0; i < MID_TW / 2; i++)
            t_acc[i] = 0.0f;
        int stage = 0, prev = -1;
        uint32_t phase = 0;
        for (int ks = ks0; ks < ks1; ks++) {
            mbar_wait(FULL(stage), phase);
            const uint32_t slot = ring + stage * STAGE_BYTES, a = slot + c * 64 * ROW_BYTES;
            const uint32_t b = slot + A_BYTES, at = b + BN * BK * 2;
            wgmma_fence();
#pragma unroll
            for (int k = 0; k < K16; k++) {
                wgmma_m64nXk16<BN, T>(d, smem_desc_k<BK>(a, k), smem_desc_k<BK>(b, k));
                wgmma_m64nXk16<MID_TW, T>(t_acc, smem_desc_k<BK>(a, k), smem_desc_k<BK>(at, k));
            }
            consumer_next<STAGES>(EMPTY(0), prev, stage, phase, lane);
        }
        consumer_drain(EMPTY(0), prev, lane);
        fence_acc<BN / 2>(d);
        fence_acc<MID_TW / 2>(t_acc);
        /* both consumers' MMAs have read the ring before either overwrites it with its parts */
        asm volatile("bar.sync 1, 256;" ::: "memory");
        const int row = c * 64 + warp * 16 + lane / 4; /* the fragments' layout: see epilogue above */
        float *const bp = (float *)(smem_raw + (base - smem_addr(smem_raw)));
        float *const tpp = (float *)(smem_raw + (tp - smem_addr(smem_raw)));
#pragma unroll
        for (int jj = 0; jj < BN / 8; jj++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                *(float2 *)&bp[(row + 8 * h) * S::PLD + 8 * jj + 2 * (lane % 4)] =
                    make_float2(d[4 * jj + 2 * h], d[4 * jj + 2 * h + 1]);
#pragma unroll
        for (int i = 0; i < MID_TW / 4; i++)
            *(float2 *)&tpp[(row + 8 * (i % 2)) * MID_TW + 8 * (i / 2) + 2 * (lane % 4)] =
                make_float2(t_acc[2 * i], t_acc[2 * i + 1]);
        /* B and the bias staged (mid_stage_lora): this thread's columns into registers while the
         * other CTAs of the cluster write their parts */
        asm volatile("bar.sync 2, 352;" ::: "memory");
        float bv[4][MID_TW], bias[4];
        const int cq = 4 * (fc % S::ROW_THREADS);
#pragma unroll
        for (int t = 0; t < MID_TW; t++) {
            const float4 v = *(const float4 *)&bs[t * BN + cq];
            bv[0][t] = v.x;
            bv[1][t] = v.y;
            bv[2][t] = v.z;
            bv[3][t] = v.w;
        }
        const float4 b4 = *(const float4 *)&bias_s[cq];
        bias[0] = b4.x;
        bias[1] = b4.y;
        bias[2] = b4.z;
        bias[3] = b4.w;
        cluster_sync(); /* the parts are written */
        /* CTA j finishes its share of the tile's live rows (rows past M have nothing to finish):
         * with fixed slices of 128 / split rows, a part-empty last row of tiles left all its
         * rows to the first CTAs of the cluster */
        const int live_rows = min(BM, p.m - mb * BM);
        const int r0 = j * live_rows / p.split, r1 = (j + 1) * live_rows / p.split;
        mid_finish<T, BN>(p, base, tp, tl, mb, nb, r0, r1 - r0, fc, bv, bias);
        __syncwarp(); /* the barrier is .aligned: the warp's lanes together again */
        cluster_sync_relaxed(); /* every CTA has read them */
    }
#undef FULL
#undef EMPTY
#endif
}

/* ---- few tokens: W streamed as the wgmma A operand ----------------------------------------------
 *
 * For M ≤ 64 tokens the layer is a stream of W (memory-bound). Here it runs the way cuBLAS's own
 * decode GEMMs do (ncu: TMA boxes, wgmma, a deep ring): one CTA per SM, each owning tiles of
 * p.rows rows of W (up to 16 tokens 64, or 32 or 48 where 64-row tiles would leave the SMs'
 * rounds too empty; past 16, 32 or 48 in one round, else 64: lf_cuda_hopper_decode_rows),
 * t = blockIdx.x, + gridDim.x, …, over all of K. The producer thread
 * streams p.rows × 64 boxes of W and the TOK × 64 box of x (TOK token columns: 16 up to 16 tokens,
 * else 64; rows past M zero-filled) through a dec_shape<TOK, SLOT>::STAGES-deep ring, and during the
 * CTA's first tile also A's 16 × 64 box (rows past r zero-filled); one consumer warpgroup
 * accumulates the tile's 64 features × TOK tokens with wgmma m64nTOKk16 (W as the A operand, x as
 * the B operand, both K-major in shared memory), TOK / 2 fp32 registers a thread. T = x·Aᵀ
 * (fp32) comes from the first tile's stages: with 32- or 48-row tiles A's box
 * rides in the W slot's spare rows and the tile's own wgmma computes T (ranks × tokens); with
 * 64-row tiles it has a slot of its own after x's (SLOT), and a second wgmma computes it
 * (dec_k_loop): with 16 token columns over the 64 rows of the stage that end with A's box, with 64
 * over x's box as its A operand (the 64 tokens as wgmma's M) and A's as its B operand. Until 2026-11-27 a
 * warp of the producer warpgroup computed T by mma.sync there, holding each stage until it had
 * read it; 1 × 4096 → 7168 (one tile a CTA, every stage the T warp's) ran 27.6 µs against cuBLAS's
 * 22.4 (dev/cuda/NOTES.md, twenty-ninth session). The producer warpgroup's other warps stage each
 * tile's rows of B and the bias (fp32, double-buffered) while the tile's K loop runs, so that the
 * epilogue reads only shared memory: y = beta·y + x·Wᵀ + bias + s·T·Bᵀ, rounded once. One launch,
 * no workspace; every sum in a fixed order: bitwise reproducible. r ≤ 16. The wgmma always
 * computes 64 rows: those past the tile's (rows p.rows–63 of a W slot hold whatever an earlier
 * stage left there, or A's box; with 16 token columns the T wgmma's rows 0–47 are W's and x's),
 * whose results no other row depends on, are never stored; with 64 the T wgmma's rows for tokens
 * past M (x's zero-filled rows) reach t_s and are never read. */
enum {
    DEC_ROWS = 64, /* rows of a W slot, and the most of a tile: wgmma's M */
    DEC_TW = 16,   /* rank ≤ 16 */
    DEC_W_BYTES = DEC_ROWS * BK * 2,
    DEC_LOADERS = 96, /* the producer warpgroup's warps 1–3 */
};
/* SLOT: A's box has a slot of its own at the stage's end (with 16 token columns always, used by
 * 64-row tiles; with 64 columns for 64-row tiles only, since the slot costs 32- and 48-row ones
 * two stages and 1.6–3.8 µs: dev/cuda/NOTES.md, thirtieth session); else it rides in W's spare
 * rows. */
template <int TOK, bool SLOT> struct dec_shape {
    static_assert(TOK == 16 ? SLOT : TOK == 64, "token columns: 16 (A's slot always) or 64");
    static constexpr int X_BYTES = TOK * BK * 2;
    static constexpr int A_BYTES = SLOT ? DEC_TW * BK * 2 : 0;
    static constexpr int STAGE_BYTES = DEC_W_BYTES + X_BYTES + A_BYTES;
    /* 16 token columns, 64-row tiles: the 64 rows of 128 bytes that end a stage (W's rows 32–63,
     * x's box, A's box), the second wgmma's A operand, and the row in it where A's box starts: T
     * lands in the accumulators of consumer warp A_ROW / 16 (unused with 64 columns) */
    static constexpr int WINDOW = STAGE_BYTES - DEC_W_BYTES;
    static constexpr int A_ROW = (DEC_W_BYTES + X_BYTES - WINDOW) / (2 * BK);
    static_assert(TOK != 16 || (WINDOW % 1024 == 0 && A_ROW % 16 == 0 && A_ROW + DEC_TW == DEC_ROWS),
                  "the window starts on a swizzle atom and ends with A's box, a warp's 16 rows");
    /* 16 columns: 180 KB of W and x in flight a CTA (108 KB with 32-row tiles); 64: 13 stages of
     * 16 KB, or 11 of 18 KB with A's slot, the most that fit */
    static constexpr int STAGES = TOK == 16 ? 18 : SLOT ? 11 : 13;
    /* a tile's B rows [rank][feature] and bias, fp32, double-buffered, then T [rank][token] (the
     * epilogue's lanes read 4 tokens of one rank: distinct banks) */
    static constexpr int LORA_FLOATS = 2 * (DEC_TW * DEC_ROWS + DEC_ROWS) + TOK * DEC_TW;
    static constexpr int BARRIERS = 2 * STAGES + 5;
    static constexpr int SMEM = STAGES * STAGE_BYTES + 1024 + 8 * BARRIERS + 4 * LORA_FLOATS;
};

struct dec_params {
    int m, n, r, k_tiles, tiles;
    int rows; /* W rows per tile: 64, 32 or 48 */
    int b_vec; /* B and ldb allow 16-byte loads of 8 ranks */
    const void *b, *bias;
    long long ldb;
    void *y;
    long long ldy;
    float beta, scale;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* The loaders: B's rows and the bias of each of this CTA's tiles into buffer j % 2. i: this thread's
 * index among them. */
template <typename T>
__device__ __forceinline__ void dec_stage_lora(const dec_params &p, float *lora_s, uint32_t bars, int i)
{
    const uint32_t b_full = bars + 8, b_empty = bars + 24;
    const T *b = (const T *)p.b, *bias = (const T *)p.bias;
    int j = 0;
    for (int t = blockIdx.x; t < p.tiles; t += gridDim.x, j++) {
        const int buf = j % 2, n0 = t * p.rows;
        if (j >= 2)
            mbar_wait(b_empty + 8 * buf, (j / 2 - 1) & 1);
        float *bs = lora_s + buf * (DEC_TW * DEC_ROWS + DEC_ROWS);
        if (p.b_vec) /* 8 ranks of a feature per 16-byte load; the second 8 only where r > 8 (ldb ≥ 16 then) */
            for (int idx = i; idx < 2 * p.rows; idx += DEC_LOADERS) {
                const int f = idx / 2, r0 = 8 * (idx % 2);
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (r0 < p.r && n0 + f < p.n)
                    v = *(const uint4 *)(b + (long long)(n0 + f) * p.ldb + r0);
                const T *h = (const T *)&v;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    bs[(r0 + e) * DEC_ROWS + f] = r0 + e < p.r ? lf_dt<T>::to_f32(h[e]) : 0.0f;
            }
        else
            for (int idx = i; idx < DEC_TW * DEC_ROWS; idx += DEC_LOADERS) {
                const int rr = idx / DEC_ROWS, f = idx % DEC_ROWS;
                bs[idx] = rr < p.r && f < p.rows && n0 + f < p.n ? lf_dt<T>::to_f32(b[(long long)(n0 + f) * p.ldb + rr])
                                                                 : 0.0f;
            }
        for (int f = i; f < p.rows; f += DEC_LOADERS)
            bs[DEC_TW * DEC_ROWS + f] = bias && n0 + f < p.n ? lf_dt<T>::to_f32(bias[n0 + f]) : 0.0f;
        mbar_arrive(b_full + 8 * buf);
    }
}

/* A tile's K loop in the consumer warpgroup: x·Wᵀ into d; WITH_T (the CTA's first tile with 64-row
 * tiles) also T = x·Aᵀ into t_acc (a m64n16 fragment) by a second wgmma: with 16 token columns over
 * the 64 rows of the stage that end with A's box (W's rows 32–63, x's 16 rows, A's 16: T, ranks ×
 * tokens, in rows 48–63, consumer warp 3's), with 64 over x's box × A's (T, tokens × ranks, in
 * every warp). */
template <typename T, int TOK, bool SLOT, bool WITH_T>
__device__ __forceinline__ void dec_k_loop(const dec_params &p, uint32_t ring, uint32_t bars, float *d, float *t_acc,
                                           int &stage, uint32_t &phase, int lane)
{
    using S = dec_shape<TOK, SLOT>;
    constexpr int K16 = BK / 16;
    static_assert(!WITH_T || SLOT, "T by a second wgmma: A's box in a slot of its own");
    const uint32_t empty0 = bars + 8 * S::STAGES;
    int prev = -1;
    for (int ks = 0; ks < p.k_tiles; ks++) {
        mbar_wait(bars + 8 * stage, phase);
        const uint32_t slot = ring + stage * S::STAGE_BYTES;
        wgmma_fence();
#pragma unroll
        for (int k = 0; k < K16; k++) {
            wgmma_m64nXk16<TOK, T>(d, smem_desc_k<BK>(slot, k), smem_desc_k<BK>(slot + DEC_W_BYTES, k));
            if constexpr (WITH_T && TOK == 16)
                wgmma_m64nXk16<TOK, T>(t_acc, smem_desc_k<BK>(slot + S::WINDOW, k),
                                       smem_desc_k<BK>(slot + DEC_W_BYTES, k));
            else if constexpr (WITH_T)
                wgmma_m64nXk16<DEC_TW, T>(t_acc, smem_desc_k<BK>(slot + DEC_W_BYTES, k),
                                          smem_desc_k<BK>(slot + DEC_W_BYTES + S::X_BYTES, k));
        }
        consumer_next<S::STAGES>(empty0, prev, stage, phase, lane);
    }
    consumer_drain(empty0, prev, lane);
}

#endif

template <typename T, int TOK, bool SLOT>
__global__ void __launch_bounds__(2 * 128, 1)
    lora_hopper_decode_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
                              const __grid_constant__ CUtensorMap tm_a, const dec_params p)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using S = dec_shape<TOK, SLOT>;
    static_assert(S::STAGE_BYTES % 1024 == 0 && DEC_W_BYTES % 1024 == 0 && S::X_BYTES % 1024 == 0,
                  "boxes keep the swizzle's alignment");
    static_assert(S::SMEM <= 232448, "a block's shared memory on sm_90");
    extern __shared__ unsigned char smem_raw[];
    const uint32_t ring = (smem_addr(smem_raw) + 1023) & ~1023u, bars = ring + S::STAGES * S::STAGE_BYTES;
    float *const lora_s = (float *)(smem_raw + (bars + 8 * S::BARRIERS - smem_addr(smem_raw)));
    float *const t_s = lora_s + 2 * (DEC_TW * DEC_ROWS + DEC_ROWS);
#define FULL(s) (bars + 8 * (s))
#define EMPTY(s) (bars + 8 * (S::STAGES + (s)))
    /* t_full, b_full[2], b_empty[2] after the ring's barriers */
    const uint32_t lora_bars = bars + 8 * 2 * S::STAGES;
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    /* T = x·Aᵀ comes from the consumers' wgmmas during the CTA's first tile. 32- and 48-row tiles:
     * A's box rides in rows p.rows to p.rows + 15 of the W slots, so the tile's own wgmma computes T
     * in consumer warp p.rows / 16's accumulators beside x·Wᵀ (64 token columns: the instance
     * without SLOT, which lf_hopper_decode_launch gives 32- and 48-row tiles). 64-row tiles: A's box
     * has a slot of its own after x's, and a second wgmma computes T (dec_k_loop): with 16 columns
     * in warp 3's accumulators, with 64 in every warp's (t_warp −1). */
    const bool a_in_w = TOK == 16 ? p.rows % 16 == 0 && p.rows + DEC_TW <= DEC_ROWS : !SLOT;
    const int t_warp = a_in_w ? p.rows / 16 : TOK == 16 ? S::A_ROW / 16 : -1;
    if (threadIdx.x == 0) {
        for (int s = 0; s < S::STAGES; s++) {
            mbar_init(FULL(s), 1);
            mbar_init(EMPTY(s), 4); /* one arrival per consumer warp */
        }
        mbar_init(lora_bars, t_warp < 0 ? 128 : 32); /* t_full: the consumer lanes that hold T */
        mbar_init(lora_bars + 8, DEC_LOADERS);  /* b_full[0] */
        mbar_init(lora_bars + 16, DEC_LOADERS); /* b_full[1] */
        mbar_init(lora_bars + 24, 128);         /* b_empty[0]: every consumer thread is done */
        mbar_init(lora_bars + 32, 128);         /* b_empty[1] */
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();
    /* Launched with PDL, and the next kernel waits for all of this grid: it may launch now. */
    lf_pdl_release();
    if (wg == 0) {
        if (tid == 0) { /* the producer */
            /* Before the wait only W, which no kernel of a call writes, is read (launch.cuh): the
             * first tile's W boxes fill the empty ring while the kernel before may still run. x,
             * A, B and y may come from it, so their reads follow the wait. */
            const uint32_t stage_bytes = p.rows * BK * 2 + S::X_BYTES, first_bytes = stage_bytes + DEC_TW * BK * 2;
            const int pre = (int)blockIdx.x < p.tiles ? min(S::STAGES, p.k_tiles) : 0;
            for (int ks = 0; ks < pre; ks++) {
                mbar_arrive_expect_tx(FULL(ks), first_bytes); /* W, x and A: the first tile */
                tma_load_2d(ring + ks * S::STAGE_BYTES, &tm_w, FULL(ks), ks * BK, (int)blockIdx.x * p.rows);
            }
            lf_pdl_wait();
            int stage = 0;
            uint32_t phase = 0;
            for (int t = blockIdx.x; t < p.tiles; t += gridDim.x) {
                const bool first = t == (int)blockIdx.x; /* the tile that computes T: A's boxes too */
                for (int ks = 0; ks < p.k_tiles; ks++) {
                    const uint32_t slot = ring + stage * S::STAGE_BYTES;
                    if (!first || ks >= pre) { /* the first `pre` stages hold their W already */
                        mbar_wait(EMPTY(stage), phase ^ 1);
                        mbar_arrive_expect_tx(FULL(stage), first ? first_bytes : stage_bytes);
                        tma_load_2d(slot, &tm_w, FULL(stage), ks * BK, t * p.rows);
                    }
                    tma_load_2d(slot + DEC_W_BYTES, &tm_x, FULL(stage), ks * BK, 0);
                    if (first)
                        tma_load_2d(slot + (a_in_w ? p.rows * BK * 2 : DEC_W_BYTES + S::X_BYTES), &tm_a, FULL(stage),
                                    ks * BK, 0);
                    ring_next<S::STAGES>(stage, phase);
                }
            }
        } else if (tid >= 32) {
            lf_pdl_wait(); /* every role but the producer's waits first: x, A, B, bias and y */
            dec_stage_lora<T>(p, lora_s, lora_bars, tid - 32);
        }
    } else {
        lf_pdl_wait();
        const int warp = tid / 32, lane = tid % 32;
        int stage = 0, j = 0;
        uint32_t phase = 0;
        for (int t = blockIdx.x; t < p.tiles; t += gridDim.x, j++) {
            float d[TOK / 2], t_acc[8]; /* t_acc: a m64n16 fragment */
#pragma unroll
            for (int i = 0; i < TOK / 2; i++)
                d[i] = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++)
                t_acc[i] = 0.0f;
            if (j == 0 && !a_in_w) /* only with A's slot */
                dec_k_loop<T, TOK, SLOT, SLOT>(p, ring, bars, d, t_acc, stage, phase, lane);
            else
                dec_k_loop<T, TOK, SLOT, false>(p, ring, bars, d, t_acc, stage, phase, lane);
            fence_acc<TOK / 2>(d);
            fence_acc<8>(t_acc);
            const int buf = j % 2;
            /* fragment of m64nN: row lane/4 (+8 for h = 1) of the warp's 16, column 8·(i/2) +
             * 2·(lane%4) + i%2 in acc[4·(i/2) + 2h + i%2]; d's columns are tokens, t_acc's are
             * ranks with 64 token columns and tokens with 16 */
            if (j == 0 && t_warp < 0) { /* x's rows by A's: T, token 16·warp + lane/4 (+8) */
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        t_s[(8 * (i / 2) + 2 * (lane % 4) + i % 2) * TOK + 16 * warp + lane / 4 + 8 * h] =
                            t_acc[4 * (i / 2) + 2 * h + i % 2];
                mbar_arrive(lora_bars); /* t_full: every consumer lane */
            } else if (j == 0 && warp == t_warp) { /* A's rows of the first tile: T, rank lane/4 (+8) */
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int i = 0; i < TOK / 4; i++) {
                        const int c = 4 * (i / 2) + 2 * h + i % 2;
                        float t_value;
                        if constexpr (TOK == 16)
                            t_value = a_in_w ? d[c] : t_acc[c];
                        else /* 64 token columns come here only with A in W's spare rows */
                            t_value = d[c];
                        t_s[(lane / 4 + 8 * h) * TOK + 8 * (i / 2) + 2 * (lane % 4) + i % 2] = t_value;
                    }
                mbar_arrive(lora_bars); /* t_full: the warp's lanes */
            }
            if (j == 0)
                mbar_wait(lora_bars, 0);
            mbar_wait(lora_bars + 8 + 8 * buf, (j / 2) & 1);
            const float *bs = lora_s + buf * (DEC_TW * DEC_ROWS + DEC_ROWS);
            /* feature 16·warp + lane/4 (+8) */
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int f = 16 * warp + lane / 4 + 8 * h, n = t * p.rows + f;
                if (f >= p.rows || n >= p.n)
                    continue;
                float bf[DEC_TW]; /* the feature's B row, read once for all its tokens */
#pragma unroll
                for (int rr = 0; rr < DEC_TW; rr++)
                    bf[rr] = bs[rr * DEC_ROWS + f];
#pragma unroll
                for (int i = 0; i < TOK / 4; i++) {
                    const int tok = 8 * (i / 2) + 2 * (lane % 4) + i % 2;
                    if (tok >= p.m)
                        continue;
                    float lora = 0.0f;
#pragma unroll
                    for (int rr = 0; rr < DEC_TW; rr++)
                        lora = fmaf(t_s[rr * TOK + tok], bf[rr], lora);
                    T *out = (T *)p.y + (long long)tok * p.ldy + n;
                    float v = d[4 * (i / 2) + 2 * h + i % 2] + bs[DEC_TW * DEC_ROWS + f] + p.scale * lora;
                    if (p.beta != 0.0f) /* beta = 0 must not read y: it may hold NaN */
                        v = fmaf(p.beta, lf_dt<T>::to_f32(*out), v);
                    *out = lf_dt<T>::from_f32(v);
                }
            }
            mbar_arrive(lora_bars + 24 + 8 * buf);
        }
    }
#undef FULL
#undef EMPTY
#endif
}

/* 1 in the code that holds the kernels above (sm_90a), 0 in every other target's. */
__device__ int sm90a_code =
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    1;
#else
    0;
#endif

PFN_cuTensorMapEncodeTiled_v12000 encoder()
{
    /* a function-local static: looked up once even when contexts are created concurrently */
    static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void *f = nullptr;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) !=
                cudaSuccess ||
            q != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            f = nullptr;
        }
        return (PFN_cuTensorMapEncodeTiled_v12000)f;
    }();
    return fn;
}

/* Tensor map of a row-major 16-bit matrix [rows, cols] with row stride ld elements: boxes of 64
 * columns (128 bytes, the swizzle the wgmma descriptors expect) × box_rows rows, zero fill outside. */
bool make_map(CUtensorMap *m, bool f16, const void *ptr, int64_t rows, int64_t cols, int64_t ld, int box_rows)
{
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
    const cuuint64_t strides[1] = {(cuuint64_t)ld * 2};
    const cuuint32_t box[2] = {(cuuint32_t)BK, (cuuint32_t)box_rows};
    const cuuint32_t elem[2] = {1, 1};
    return encoder()(m, f16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
                     const_cast<void *>(ptr), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                     CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* The kernel's LW for rank r (0: the base GEMM alone). */
int lora_width(int64_t r) { return r == 0 ? 0 : r <= 16 ? 16 : 64; }

template <typename T, int LW, int BN>
cudaError_t launch_wide(const lf_lora_problem *p, void *ws, unsigned *ctl, const lf_cuda_hopper_sched &sched,
                        cudaStream_t st)
{
    const bool f16 = p->dtype == LF_F16;
    CUtensorMap mx, mw, ma, mb, mt;
    if (!make_map(&mx, f16, p->x, p->m, p->k, p->ldx, BM) || !make_map(&mw, f16, p->w, p->n, p->k, p->ldw, BN))
        return cudaErrorInvalidValue; /* pointers or strides the copy engine cannot take */
    if (LW == 0) /* never read: no worker, no LoRA stage */
        ma = mb = mt = mx;
    else if (!make_map(&ma, f16, p->a, p->rank, p->k, p->lda, LW) ||
             !make_map(&mb, f16, p->b, p->n, p->rank, p->ldb, BN) || !make_map(&mt, f16, ws, p->m, 2 * LW, 2 * LW, BM))
        return cudaErrorInvalidValue;
    kparams kp = {};
    kp.m = (int)p->m;
    kp.n = (int)p->n;
    kp.r = (int)p->rank;
    kp.tiles_m = (int)((p->m + BM - 1) / BM);
    kp.tiles_n = (int)((p->n + BN - 1) / BN);
    kp.k_tiles = (int)((p->k + BK - 1) / BK);
    kp.y_pairs = p->ldy % 2 == 0 && (uintptr_t)p->y % 4 == 0;
    kp.staged = p->beta == 0.0f && p->ldy % 8 == 0 && (uintptr_t)p->y % 16 == 0;
    kp.bias = p->bias;
    kp.y = p->y;
    kp.ldy = p->ldy;
    kp.beta = p->beta;
    kp.scale = p->scale;
    kp.t2 = ws;
    kp.ctl = ctl;
    kp.workers = sched.workers;
    kp.worker_tiles = sched.worker_tiles;
    const int grid = lf_cuda_hopper_grid(&sched, kp.tiles_m, kp.tiles_n);
    /* A plain launch, not PDL: tile CTAs spin on the workers' flags, so every CTA of the grid must
     * find an SM, which a previous kernel still running beside it (released early) could hold. */
    lora_hopper_kernel<T, LW, BN><<<grid, THREADS, wide_shape<BN>::SMEM_BYTES, st>>>(mx, mw, ma, mb, mt, kp);
    return cudaGetLastError();
}

/* The CTAs (heuristics.h, lf_cuda_hopper_schedule): T workers (none without a LoRA term, at most one
 * a row block) and tile CTAs, whose width follows from their rounds (lf_cuda_hopper_tile_cols). */
template <typename T, int LW>
cudaError_t launch_lw(const lf_lora_problem *p, void *ws, unsigned *ctl, int max_ctas, cudaStream_t st)
{
    const lf_cuda_hopper_sched sched = lf_cuda_hopper_schedule(p->m, p->n, LW, max_ctas);
    switch (sched.cols) {
    case 224:
        return launch_wide<T, LW, 224>(p, ws, ctl, sched, st);
    case 192:
        return launch_wide<T, LW, 192>(p, ws, ctl, sched, st);
    case 128:
        return launch_wide<T, LW, 128>(p, ws, ctl, sched, st);
    default:
        return launch_wide<T, LW, 256>(p, ws, ctl, sched, st);
    }
}

/* Raises one kernel's limit of dynamic shared memory to `bytes`. */
template <typename... Args> cudaError_t allow_smem_of(void (*kernel)(Args...), int bytes)
{
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

/* The persistent kernel at one tile width, for each of its LoRA widths. */
template <typename T, int BN> cudaError_t allow_smem_wide()
{
    const int bytes = wide_shape<BN>::SMEM_BYTES;
    cudaError_t e = allow_smem_of(lora_hopper_kernel<T, 0, BN>, bytes);
    if (e == cudaSuccess)
        e = allow_smem_of(lora_hopper_kernel<T, 16, BN>, bytes);
    if (e == cudaSuccess)
        e = allow_smem_of(lora_hopper_kernel<T, 64, BN>, bytes);
    return e;
}

template <typename T> cudaError_t allow_smem()
{
    const cudaError_t results[] = {
        allow_smem_wide<T, 256>(),
        allow_smem_wide<T, 224>(),
        allow_smem_wide<T, 192>(),
        allow_smem_wide<T, 128>(),
        allow_smem_of(lora_hopper_mid_kernel<T, 64>, mid_shape<64>::SMEM),
        allow_smem_of(lora_hopper_mid_kernel<T, 128>, mid_shape<128>::SMEM),
        allow_smem_of(lora_hopper_decode_kernel<T, 16, true>, dec_shape<16, true>::SMEM),
        allow_smem_of(lora_hopper_decode_kernel<T, 64, false>, dec_shape<64, false>::SMEM),
        allow_smem_of(lora_hopper_decode_kernel<T, 64, true>, dec_shape<64, true>::SMEM),
    };
    for (const cudaError_t e : results)
        if (e != cudaSuccess)
            return e;
    return cudaSuccess;
}

template <typename T> cudaError_t launch_typed(const lf_lora_problem *p, void *ws, unsigned *ctl, int max_ctas, cudaStream_t st)
{
    switch (lora_width(p->rank)) {
    case 0:
        return launch_lw<T, 0>(p, ws, ctl, max_ctas, st);
    case 16:
        return launch_lw<T, 16>(p, ws, ctl, max_ctas, st);
    default:
        return launch_lw<T, 64>(p, ws, ctl, max_ctas, st);
    }
}

template <typename T, int BN>
cudaError_t mid_launch_typed(const lf_lora_problem *p, int split, bool pdl, cudaStream_t st)
{
    const bool f16 = p->dtype == LF_F16;
    CUtensorMap mx, mw, ma;
    if (!make_map(&mx, f16, p->x, p->m, p->k, p->ldx, BM) || !make_map(&mw, f16, p->w, p->n, p->k, p->ldw, BN) ||
        !make_map(&ma, f16, p->a, p->rank, p->k, p->lda, MID_TW))
        return cudaErrorInvalidValue; /* pointers or strides the copy engine cannot take */
    mid_params mp = {};
    mp.m = (int)p->m;
    mp.n = (int)p->n;
    mp.r = (int)p->rank;
    mp.k_tiles = (int)((p->k + BK - 1) / BK);
    mp.tiles_m = (int)((p->m + BM - 1) / BM);
    mp.split = split;
    mp.y_vec = p->ldy % 4 == 0 && (uintptr_t)p->y % 8 == 0;
    mp.b_vec = p->rank == MID_TW && p->ldb % 8 == 0 && (uintptr_t)p->b % 16 == 0;
    mp.bias = p->bias;
    mp.b = p->b;
    mp.ldb = p->ldb;
    mp.y = p->y;
    mp.ldy = p->ldy;
    mp.beta = p->beta;
    mp.scale = p->scale;
    const long long ctas = (long long)mp.tiles_m * ((p->n + BN - 1) / BN) * split;
    if (ctas > INT_MAX)
        return cudaErrorInvalidValue;
    return lf_cuda_launch_clustered(lora_hopper_mid_kernel<T, BN>, dim3((unsigned)ctas), THREADS,
                                    (size_t)mid_shape<BN>::SMEM, pdl,
                                    (unsigned)split, st, mx, mw, ma, mp);
}

template <typename T, int TOK, bool SLOT>
cudaError_t decode_launch_typed(const lf_lora_problem *p, int rows, int sm_count, bool pdl, cudaStream_t st)
{
    if (TOK == 64 && !SLOT && rows + DEC_TW > DEC_ROWS)
        return cudaErrorInvalidValue; /* A's box would not fit W's spare rows */
    const bool f16 = p->dtype == LF_F16;
    CUtensorMap mx, mw, ma;
    if (!make_map(&mx, f16, p->x, p->m, p->k, p->ldx, TOK) || !make_map(&mw, f16, p->w, p->n, p->k, p->ldw, rows) ||
        !make_map(&ma, f16, p->a, p->rank, p->k, p->lda, DEC_TW))
        return cudaErrorInvalidValue; /* pointers or strides the copy engine cannot take */
    dec_params dp = {};
    dp.m = (int)p->m;
    dp.n = (int)p->n;
    dp.r = (int)p->rank;
    dp.k_tiles = (int)((p->k + BK - 1) / BK);
    dp.rows = rows;
    dp.tiles = (int)((p->n + rows - 1) / rows);
    dp.b_vec = p->ldb % 8 == 0 && (uintptr_t)p->b % 16 == 0;
    dp.b = p->b;
    dp.ldb = p->ldb;
    dp.bias = p->bias;
    dp.y = p->y;
    dp.ldy = p->ldy;
    dp.beta = p->beta;
    dp.scale = p->scale;
    const int grid = dp.tiles < sm_count ? dp.tiles : sm_count;
    return lf_cuda_launch_clustered(lora_hopper_decode_kernel<T, TOK, SLOT>, dim3((unsigned)grid), 2 * 128,
                                    (size_t)dec_shape<TOK, SLOT>::SMEM, pdl, 1u, st, mx, mw, ma, dp);
}

} /* namespace */

int lf_hopper_setup(void)
{
    int dev = 0, major = 0, minor = 0, code = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (e != cudaSuccess || major != 9 || minor != 0) { /* sm_90a code runs on 9.0 alone */
        cudaGetLastError();
        return 0;
    }
    e = cudaMemcpyFromSymbol(&code, sm90a_code, sizeof code);
    if (e == cudaSuccess && code)
        e = allow_smem<__nv_bfloat16>();
    if (e == cudaSuccess && code)
        e = allow_smem<__half>();
    if (e != cudaSuccess)
        cudaGetLastError();
    return e == cudaSuccess && code && encoder() != nullptr;
}

size_t lf_hopper_workspace_bytes(int64_t m, int64_t r)
{
    return ((size_t)m * 2 * lora_width(r) * 2 + 255) / 256 * 256;
}

cudaError_t lf_hopper_launch(const lf_lora_problem *p, void *ws, unsigned *ctl, int max_ctas, cudaStream_t st)
{
    if (p->m < 1 || p->m > LF_HOPPER_MAX_M || p->n < 1 || p->n >= INT_MAX || p->k < 1 || p->k >= INT_MAX ||
        p->rank < 0 || p->rank > 64 || (p->dtype != LF_BF16 && p->dtype != LF_F16) || !p->w ||
        max_ctas < (p->rank ? 2 : 1)) /* a T worker and a tile CTA */
        return cudaErrorInvalidValue;
    return p->dtype == LF_F16 ? launch_typed<__half>(p, ws, ctl, max_ctas, st)
                              : launch_typed<__nv_bfloat16>(p, ws, ctl, max_ctas, st);
}

template <int BN> int mid_slots(int split)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)split);
    cfg.blockDim = dim3(THREADS);
    cfg.dynamicSmemBytes = mid_shape<BN>::SMEM;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = (unsigned)split;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, lora_hopper_mid_kernel<__nv_bfloat16, BN>, &cfg) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return clusters * split;
}

/* Both widths take one CTA an SM; the fewer slots of the two, so that either runs in one wave. */
int lf_hopper_mid_slots(int split)
{
    const int a = mid_slots<64>(split), b = mid_slots<128>(split);
    return a < b ? a : b;
}

cudaError_t lf_hopper_mid_launch(const lf_lora_problem *p, int split, int bn, bool pdl, cudaStream_t st)
{
    if (p->m < 1 || p->m >= INT_MAX || p->n < 1 || p->n >= INT_MAX || p->k < 1 || p->k >= INT_MAX || p->rank < 1 ||
        p->rank > MID_TW || (p->dtype != LF_BF16 && p->dtype != LF_F16) || !p->w || split < 1 ||
        split > MID_MAX_SPLIT || (bn != 64 && bn != 128))
        return cudaErrorInvalidValue;
    if (bn == 64)
        return p->dtype == LF_F16 ? mid_launch_typed<__half, 64>(p, split, pdl, st)
                                  : mid_launch_typed<__nv_bfloat16, 64>(p, split, pdl, st);
    return p->dtype == LF_F16 ? mid_launch_typed<__half, 128>(p, split, pdl, st)
                              : mid_launch_typed<__nv_bfloat16, 128>(p, split, pdl, st);
}

cudaError_t lf_hopper_decode_launch(const lf_lora_problem *p, int sm_count, bool pdl, cudaStream_t st)
{
    if (p->m < 1 || p->m > LF_CUDA_HOPPER_DECODE_MAX_M || p->n < 1 || p->n >= INT_MAX || p->k < 1 ||
        p->k >= INT_MAX || p->rank < 1 || p->rank > DEC_TW || (p->dtype != LF_BF16 && p->dtype != LF_F16) ||
        p->layout != LF_LAYOUT_PEFT || !p->x || !p->w || !p->a || !p->b || !p->y || sm_count < 1)
        return cudaErrorInvalidValue;
    /* correct at any N; the plan takes the form only where lf_cuda_hopper_decode_rows is not 0 */
    const int best_rows = lf_cuda_hopper_decode_rows(p->m, p->n, sm_count);
    const int rows = best_rows ? best_rows : p->m <= 16 ? DEC_ROWS : 32;
    const bool f16 = p->dtype == LF_F16;
    if (p->m <= 16)
        return f16 ? decode_launch_typed<__half, 16, true>(p, rows, sm_count, pdl, st)
                   : decode_launch_typed<__nv_bfloat16, 16, true>(p, rows, sm_count, pdl, st);
    if (rows == DEC_ROWS)
        return f16 ? decode_launch_typed<__half, 64, true>(p, rows, sm_count, pdl, st)
                   : decode_launch_typed<__nv_bfloat16, 64, true>(p, rows, sm_count, pdl, st);
    return f16 ? decode_launch_typed<__half, 64, false>(p, rows, sm_count, pdl, st)
               : decode_launch_typed<__nv_bfloat16, 64, false>(p, rows, sm_count, pdl, st);
}

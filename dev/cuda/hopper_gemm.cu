/*
 * dev/cuda/hopper_gemm.cu — Hopper (sm_90a) tensor-core GEMM lab with the LoRA term fused (issue 6).
 *
 *   y = beta·y + x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ      x [M,K], W [N,K], A [r,K], B [N,r], y [M,N], all bf16
 *
 * One kernel family, versions side by side (llm.c style), each validated against an fp64 CPU
 * reference before it is timed:
 *   v1 tile      TMA (cp.async.bulk.tensor, 128B swizzle) into a 4-stage shared-memory ring, mbarrier
 *                full/empty pairs with phase parity, one producer warpgroup (one thread issues the
 *                copies, setmaxnreg.dec) and two consumer warpgroups (setmaxnreg.inc), each owning
 *                64×256 of a 128×256 fp32 accumulator fed by wgmma.mma_async m64n256k16 from
 *                shared-memory descriptors; one tile per CTA (grid = tiles), grouped raster order.
 *   v2 persist   the same kernel on a persistent grid (one CTA per SM, tiles strided by the grid):
 *                the producer runs ahead into the next tile while the consumers store this one.
 *   v3 persist-w1  v2, and the consumers keep one wgmma group in flight across K steps
 *                (wait_group 1, then release the previous stage) instead of draining every step.
 *   v4 cluster2  v3 on clusters of 2 CTAs along M: each CTA loads its own x tile and half of the
 *                shared W tile, multicast (TMA .multicast::cluster) into both; consumers release a
 *                stage on the empty barriers of both CTAs (mapa + remote mbarrier arrive).
 *   v5 bk32-8st / v6 cl2-bk32  v3 / v4 with 32-wide K stages, 8 of them in the same ring.
 *   v7 inT       v3 without the pre-pass: each K stage also brings A's tile (r ≤ 16: 16 rows, r ≤ 64:
 *                64, zero-filled past r), and each consumer accumulates T = x·Aᵀ for its 64 rows
 *                (m64n16k16 / m64n64k16 beside every m64n256k16, same x descriptor) in registers. After
 *                the K loop it splits s·T into bf16 hi + lo and runs the LoRA slab (B alone) with A
 *                from registers: the accumulator fragment of T is the A fragment of m64k16 as is.
 *                Every column tile recomputes T for its rows: + r/256 of the MMA work.
 *   v8 lib       the library's kernel (src/cuda/lora_hopper.cu through lf_hopper_launch; it began
 *                here): v3 without the pre-pass, T computed once per row block inside the same
 *                launch by the first CTAs of the grid (T workers), which store s·T as 16-bit
 *                [hi | lo] and raise a ready flag per row block (release); a tile's producer
 *                acquires it before its LoRA slab. Flags carry a generation kept on the device, so
 *                a replayed CUDA graph stays correct; B is read as is (no [B | B] copy).
 * The LoRA term is one more K slab: T = s·x·Aᵀ (bf16, a pre-pass here: one strided-batched cuBLAS
 * call over 16 K slices into fp32 partials, then an ordered reduction that scales and rounds) and
 * B are read by the same TMA ring after the K loop of each tile (the last K steps read T and B
 * instead of x and W), so it lands in the same fp32 accumulator; beta·y + bias are added in the epilogue, one rounding.
 * Edges: TMA zero-fills out-of-bounds boxes (M, N, K tails, r < 64), the epilogue masks stores.
 * Requirements of this lab (TMA strides): K % 8 == 0, r % 8 == 0, 16-byte aligned x, W, A, B, T.
 *
 *   make -C dev/cuda hopper && dev/cuda/bin/hopper_gemm [check]     (on an H100; build needs no GPU)
 */
#include <cuda.h> /* CUtensorMap and its enums only: the encoder comes through the runtime */
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include "lab_check.h"
#include "cuda/hopper_ptx.cuh"   /* the PTX wrappers, shared with the library */
#include "cuda/lora_hopper.cuh"  /* v8: the library's kernel (src/cuda/lora_hopper.cu) */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CKB(call)                                                                                    \
    do {                                                                                             \
        cublasStatus_t s_ = (call);                                                                  \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                           \
            fprintf(stderr, "%s:%d: %s -> cublas %d\n", __FILE__, __LINE__, #call, (int)s_);         \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

typedef __nv_bfloat16 bf16;
using namespace lf_hopper;

/* ---------------------------------------------------------------------------------------------- */
/* Tile configuration                                                                              */

enum {
    BM = 128, /* rows of x per tile: two consumer warpgroups of 64 rows */
    BN = 256, /* rows of W per tile: one m64n256k16 per consumer and K step of 16 */
    /* K per stage (kernel template kBK): 64 bf16 = 128-byte rows, 128-byte swizzle, 4 stages;
     * or 32 = 64-byte rows, 64-byte swizzle, 8 stages: the same 192 KB ring in finer steps */
    RING_BYTES = 4 * (BM + BN) * 64 * 2,
    CONSUMERS = 2,
    THREADS = 128 * (1 + CONSUMERS),
    /* the ring, 1024 bytes to align it (the swizzle atom), the full and empty barriers */
    SMEM_BYTES = RING_BYTES + 1024 + 2 * 8 * 8,
    /* v7 (T inside the GEMM) adds per stage the tile of A: kInT rows of 64 K (2 KB or 8 KB) */
    SMEM_BYTES_INT16 = SMEM_BYTES + 4 * 16 * 64 * 2,
    SMEM_BYTES_INT64 = SMEM_BYTES + 4 * 64 * 64 * 2, /* 230,528 ≤ 232,448 (227 KB) */
    PRODUCER_REGS = 40,
    CONSUMER_REGS = 232, /* 128·40 + 256·232 = 64512 ≤ 65536 registers */
};

typedef struct {
    int m, n, k, r;         /* r = 0: no LoRA slab */
    int tiles_m, tiles_n;   /* ceil(M/BM), ceil(N/BN) */
    int cluster_rows;       /* ceil(tiles_m / cluster size): row blocks handled together by a cluster */
    int group_m;            /* raster: tiles walk group_m row blocks, then the next column block */
    int k_tiles, lora_tiles; /* ceil(K/kBK), ceil(r/kBK) */
    const bf16 *bias;       /* [N] or NULL */
    bf16 *y;
    long long ldy;
    float beta;
    float scale; /* s: applied to T in the kernel when it computes T (v7) */
    int y_pairs; /* y and ldy allow 4-byte bf16x2 stores */
} gemm_params;

/* ---------------------------------------------------------------------------------------------- */
/* PTX wrappers (sm_90a): the library's (src/cuda/hopper_ptx.cuh), plus what only v4–v7 use         */

/* v7: d[64×256] += A[64×16] · B[256×16]ᵀ with A from registers: the m64k16 bf16 fragment of this
 * thread (4 × bf16x2: rows 16w + lane/4 (+8), columns 2·(lane%4) (+1) (+8)), which is exactly the
 * layout of an m64n16 fp32 accumulator converted pairwise: what T = x·Aᵀ leaves in registers feeds
 * the LoRA step directly. */
static __device__ __forceinline__ void wgmma_m64n256k16_rs(float *d, const uint32_t *a, uint64_t db)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " LF_WGMMA_D128_STR
                 ", {%128, %129, %130, %131}, %132, 1, 1, 1, 0;"
                 : LF_WGMMA_D128_BIND
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
/* ---------------------------------------------------------------------------------------------- */
/* The kernel                                                                                      */

/* Cluster of kCluster CTAs along M (ranks take adjacent row blocks of the same column block);
 * cluster_rank and cluster_sync come from hopper_ptx.cuh. */
/* Arrival on the barrier at the same shared offset in CTA `rank` of the cluster (itself included).
 * Default semantics (release at CTA scope): what must be ordered before the peer's refill is the
 * completion of our wgmma reads, which wait_group already guarantees. v4's first form,
 * .release.cluster, made every release a cluster-scope fence: 2.4–4.7× slower (NOTES.md). */
static __device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t rank)
{
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(bar), "r"(rank));
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(remote) : "memory");
}
/* The tile copy into the same shared offset of every CTA in `mask`, each completing its own
 * barrier at offset `bar`. */
static __device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const CUtensorMap *map, uint32_t bar,
                                                             int c0, int c1, uint16_t mask)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
                 : "memory");
}

/* A consumer warp is done with a stage: arrive on its empty barrier in every CTA of the cluster. */
template <int kCluster> static __device__ __forceinline__ void release_stage(uint32_t empty_bar)
{
    if (kCluster == 1)
        mbar_arrive(empty_bar);
    else
        for (uint32_t q = 0; q < kCluster; q++)
            mbar_arrive_cluster(empty_bar, q);
}

/* Work item t → (row-block group pm, column block nb) over ceil(tiles_m / cluster) row groups:
 * group_m row groups side by side walk the column blocks together, so the x row blocks and W
 * column blocks in flight at once stay in L2. */
static __device__ __forceinline__ void tile_coords(const gemm_params &p, int t, int *pm, int *nb)
{
    const int per_group = p.group_m * p.tiles_n, g = t / per_group, first = g * p.group_m;
    const int rows = min(p.cluster_rows - first, p.group_m), in = t - g * per_group;
    *pm = first + in % rows;
    *nb = in / rows;
}

/* kWaitOne: consumers keep one wgmma group in flight across K steps (release the previous stage
 * after wait_group 1) instead of draining each step (wait_group 0, release this stage).
 * kCluster = 2: the two CTAs of a cluster take row blocks 2pm and 2pm+1 of the same column block;
 * each loads its own x tile and one half of the W (or B) tile, multicast into both CTAs, so L2
 * serves 32 KB per stage and CTA instead of 48. A stage is refilled only when the consumers of
 * both CTAs released it (they arrive on the empty barriers of both). */
template <bool kWaitOne, int kCluster, int kBK, int kInT = 0>
__global__ void __launch_bounds__(THREADS, 1)
    hopper_gemm_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
                       const __grid_constant__ CUtensorMap tm_t, const __grid_constant__ CUtensorMap tm_b,
                       const gemm_params p)
{
    constexpr int STAGES = RING_BYTES / ((BM + BN) * kBK * 2), A_BYTES = BM * kBK * 2, B_BYTES = BN * kBK * 2;
    constexpr int K16 = kBK / 16, ROW_BYTES = 2 * kBK;
    /* kInT > 0 (v7): the stages of the K loop also hold the tile of A (kInT rows, zero past r), and
     * the consumers accumulate T = x·Aᵀ for their rows beside the tile (tm_t is then A's map) */
    static_assert(kInT == 0 || (kBK == 64 && kCluster == 1), "T in the GEMM: 64-wide stages, no cluster");
    constexpr bool kTileT = kInT > 0;
    constexpr int T_BYTES = kTileT ? kInT * kBK * 2 : 0, STAGE_BYTES = A_BYTES + B_BYTES + T_BYTES;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t ring = (smem_addr(smem_raw) + 1023) & ~1023u;
    const uint32_t ring_a = ring, ring_b = ring + STAGES * A_BYTES, ring_t = ring_b + STAGES * B_BYTES;
    const uint32_t bars = ring_t + STAGES * T_BYTES;
#define FULL(s) (bars + 8 * (s))
#define EMPTY(s) (bars + 8 * (STAGES + (s)))
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    const uint32_t rank = kCluster > 1 ? cluster_rank() : 0;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(FULL(s), 1);                         /* the producer's arrive.expect_tx */
            mbar_init(EMPTY(s), 4 * CONSUMERS * kCluster); /* one arrival per consumer warp of the cluster */
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    if (kCluster > 1)
        cluster_sync(); /* the peer's barriers exist before anyone arrives on them or multicasts */
    else
        __syncthreads();
    const int items = p.cluster_rows * p.tiles_n, steps = p.k_tiles + p.lora_tiles;
    const int first_item = blockIdx.x / kCluster, item_stride = gridDim.x / kCluster;

    if (wg == 0) { /* producer warpgroup: one thread issues every copy */
        regs_dealloc<PRODUCER_REGS>();
        if (tid == 0) {
            int stage = 0;
            uint32_t phase = 0;
            for (int t = first_item; t < items; t += item_stride) {
                int pm, nb;
                tile_coords(p, t, &pm, &nb);
                const int mb = pm * kCluster + rank;
                for (int ks = 0; ks < steps; ks++) {
                    mbar_wait(EMPTY(stage), phase ^ 1);
                    const uint32_t a = ring_a + stage * A_BYTES, b = ring_b + stage * B_BYTES;
                    const bool lora = ks >= p.k_tiles; /* the LoRA slab: [x | s·T] against [W | B] */
                    const int kc = (lora ? ks - p.k_tiles : ks) * kBK;
                    /* full boxes, OOB parts zero-filled; v7: the K stages add A's tile, and the LoRA
                     * slab is B alone (T is in the consumers' registers) */
                    mbar_arrive_expect_tx(FULL(stage), kTileT && lora ? B_BYTES : STAGE_BYTES);
                    if (!(kTileT && lora))
                        tma_load_2d(a, lora ? &tm_t : &tm_x, FULL(stage), kc, mb * BM);
                    if (kTileT && !lora)
                        tma_load_2d(ring_t + stage * T_BYTES, &tm_t, FULL(stage), kc, 0);
                    if (kCluster == 1)
                        tma_load_2d(b, lora ? &tm_b : &tm_w, FULL(stage), kc, nb * BN);
                    else
                        tma_load_2d_multicast(b + rank * (B_BYTES / kCluster), lora ? &tm_b : &tm_w, FULL(stage), kc,
                                              nb * BN + rank * (BN / kCluster), (uint16_t)((1u << kCluster) - 1));
                    ring_next<STAGES>(stage, phase);
                }
            }
        }
        __syncwarp();
    } else { /* consumer warpgroup c owns rows 64c..64c+63 of the tile */
        regs_alloc<CONSUMER_REGS>();
        const int c = wg - 1, warp = tid / 32, lane = tid % 32;
        float d[128];
        /* v7: this warpgroup's 64 rows of T = x·Aᵀ (m64·kInT fp32 fragment), then s·T split into bf16
         * hi + lo A fragments of the LoRA step (4 registers per 16 of rank each) */
        float t_acc[kInT ? kInT / 2 : 1];
        uint32_t t_hi[kInT ? kInT / 4 : 1], t_lo[kInT ? kInT / 4 : 1];
        int stage = 0;
        uint32_t phase = 0;
        for (int t = first_item; t < items; t += item_stride) {
            int pm, nb;
            tile_coords(p, t, &pm, &nb);
            const int mb = pm * kCluster + rank;
#pragma unroll
            for (int i = 0; i < 128; i++)
                d[i] = 0.0f;
#pragma unroll
            for (int i = 0; i < (kInT ? kInT / 2 : 1); i++)
                t_acc[i] = 0.0f;
            int prev = -1;
            for (int ks = 0; ks < steps; ks++) {
                mbar_wait(FULL(stage), phase);
                const bool lora = ks >= p.k_tiles;
                if (kTileT && ks == p.k_tiles) {
                    /* T is complete once the K loop's groups are: drain them (its stage is free),
                     * then s·T in two bf16 parts, hi + lo: 16 bits of mantissa, so T's rounding
                     * stays far under the output's one rounding */
                    wgmma_wait<0>();
                    fence_acc<kInT ? kInT / 2 : 1>(t_acc);
                    if (prev >= 0 && lane == 0)
                        release_stage<kCluster>(EMPTY(prev));
                    prev = -1;
                    split_hi_lo<kInT / 4, bf16>(t_acc, p.scale, t_hi, t_lo);
                }
                /* K steps of 16 in this stage: 4, or what is left of the rank in a LoRA stage */
                const int k16 = !lora ? K16 : min(K16, (p.r - (ks - p.k_tiles) * kBK + 15) / 16);
                const uint32_t a = ring_a + stage * A_BYTES + c * 64 * ROW_BYTES, b = ring_b + stage * B_BYTES;
                wgmma_fence();
                if constexpr (kTileT) {
                    if (!lora) { /* the tile's step and T's, on the same x rows */
                        const uint32_t at = ring_t + stage * T_BYTES;
#pragma unroll
                        for (int k = 0; k < K16; k++) {
                            wgmma_wide<256, bf16>(d, smem_desc<kBK>(a + 32 * k), smem_desc<kBK>(b + 32 * k));
                            wgmma_m64nXk16<kInT, bf16>(t_acc, smem_desc<kBK>(a + 32 * k), smem_desc<kBK>(at + 32 * k));
                        }
                    } else { /* d += (s·T)_hi·Bᵀ + (s·T)_lo·Bᵀ, A from registers; T is zero past r */
#pragma unroll
                        for (int q = 0; q < kInT / 16; q++) {
                            wgmma_m64n256k16_rs(d, &t_hi[4 * q], smem_desc<kBK>(b + 32 * q));
                            wgmma_m64n256k16_rs(d, &t_lo[4 * q], smem_desc<kBK>(b + 32 * q));
                        }
                    }
                } else
                    wgmma_stage<kBK, K16, bf16>(d, a, b, k16);
                wgmma_commit();
                const int done = kWaitOne ? prev : stage; /* the stage whose wgmmas have completed */
                if (kWaitOne)
                    wgmma_wait<1>(); /* the previous step's group is done: its stage may be refilled */
                else
                    wgmma_wait<0>();
                if (done >= 0 && lane == 0)
                    release_stage<kCluster>(EMPTY(done));
                prev = stage;
                ring_next<STAGES>(stage, phase);
            }
            if (kWaitOne) {
                wgmma_wait<0>();
                if (prev >= 0 && lane == 0)
                    release_stage<kCluster>(EMPTY(prev));
            }
            fence_acc(d);

            /* Epilogue: accumulator fragment of m64nNk16 — warp w holds rows 16w + lane/4 (+8), and
             * per 8-column chunk j the columns 8j + 2·(lane%4) (+1). One rounding to bf16. */
            const int row0 = mb * BM + c * 64 + warp * 16 + lane / 4;
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                const int col = nb * BN + 8 * j + 2 * (lane % 4);
                if (col >= p.n)
                    continue;
                const bool two = col + 1 < p.n;
                float b0 = 0.0f, b1 = 0.0f;
                if (p.bias) {
                    b0 = __bfloat162float(p.bias[col]);
                    if (two)
                        b1 = __bfloat162float(p.bias[col + 1]);
                }
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int row = row0 + 8 * h;
                    if (row >= p.m)
                        continue;
                    bf16 *out = p.y + (long long)row * p.ldy + col;
                    float v0 = d[4 * j + 2 * h] + b0, v1 = d[4 * j + 2 * h + 1] + b1;
                    if (two && p.y_pairs) {
                        if (p.beta != 0.0f) {
                            const float2 old = __bfloat1622float2(*(const __nv_bfloat162 *)out);
                            v0 = fmaf(p.beta, old.x, v0);
                            v1 = fmaf(p.beta, old.y, v1);
                        }
                        *(__nv_bfloat162 *)out = __floats2bfloat162_rn(v0, v1);
                    } else {
                        if (p.beta != 0.0f) {
                            v0 = fmaf(p.beta, __bfloat162float(out[0]), v0);
                            if (two)
                                v1 = fmaf(p.beta, __bfloat162float(out[1]), v1);
                        }
                        out[0] = __float2bfloat16_rn(v0);
                        if (two)
                            out[1] = __float2bfloat16_rn(v1);
                    }
                }
            }
        }
    }
    if (kCluster > 1)
        cluster_sync(); /* no CTA leaves while its peer may still arrive on its barriers */
#undef FULL
#undef EMPTY
}

/* Uniform values in [-amp, amp) from a hash of the index: fills large operands on the device. */
__global__ void fill_random_kernel(bf16 *p, size_t n, uint64_t seed, float amp)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        p[i] = __float2bfloat16((float)((z >> 40) * (1.0 / 8388608.0) - 1.0) * amp);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Host: operands, versions, cuBLAS baselines                                                      */

static PFN_cuTensorMapEncodeTiled_v12000 encode_tiled;
static cublasHandle_t blas;
static int sm_count;
static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static int encode_errors = 0;
static int max_active_clusters2 = 1; /* 2-CTA clusters of the kernel that fit on the device at once */
static int cdiv(long long a, int b) { return (int)((a + b - 1) / b); }

/* Tensor map of a row-major bf16 matrix [rows, cols] with row stride ld elements: boxes of bk
 * columns × box_rows rows, swizzled over the box's row width (128 or 64 bytes: what the wgmma
 * descriptors expect), zero fill out of bounds. */
static CUtensorMap tensor_map(const bf16 *ptr, long long rows, long long cols, long long ld, int box_rows, int bk)
{
    CUtensorMap m;
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
    const cuuint64_t strides[1] = {(cuuint64_t)ld * 2};
    const cuuint32_t box[2] = {(cuuint32_t)bk, (cuuint32_t)box_rows};
    const cuuint32_t elem[2] = {1, 1};
    const CUresult r = encode_tiled(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)ptr, dims, strides, box, elem,
                                    CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    bk == 64 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { /* reported, and the problem is skipped as failed: the run goes on */
        printf("FAIL cuTensorMapEncodeTiled(%lld x %lld, ld %lld, box %d x %d) -> %d\n", rows, cols, ld, bk,
               box_rows, (int)r);
        encode_errors++;
    }
    return m;
}

typedef struct {
    int m, n, k, r;
    float scale, beta;
    int has_bias;
    long long ldy; /* ≥ n; y has m + 1 rows: the extra row and the columns past n are canaries */
} problem;

/* K slices of the split pre-pass: cuBLAS runs the 16-wide, K-deep product of T on few blocks;
 * 16 slices of K ≥ 2048 give it 16× the blocks (the library's GEMM path does the same). */
static size_t prepass_splits(const problem *pb) { return pb->k >= 2048 && pb->k % 128 == 0 ? 16 : 1; }

typedef struct { /* device operands of one problem */
    bf16 *x, *w, *a, *b, *bias, *y, *t;
    float *t_part; /* the split pre-pass's fp32 partials [splits][M][r] */
    /* per stage width (0: 64, 1: 32): x, W, T, B; W and B also in boxes of BN/2 rows, of which
     * each CTA of a 2-cluster multicasts one */
    struct {
        CUtensorMap x, w, t, b, w_half, b_half;
    } map[2];
    CUtensorMap a_tile; /* v7: A in boxes of int_width(r) rows (zero-filled past r) × 64 of K */
    /* v8 (the library's kernel): its workspace (s·T) and control words, zeroed once */
    void *hopper_ws;
    unsigned *hopper_ctl;
} operands;

/* v7's and v8's T width: the m64nN of T's wgmma, r rounded up to 16 or 64 (0: they do not take this r) */
static int int_width(int r) { return r <= 0 || r > 64 ? 0 : r <= 16 ? 16 : 64; }

static void fill_random(bf16 *p, size_t n, float amp)
{
    fill_random_kernel<<<1024, 256>>>(p, n, next_rand(), amp);
    CK(cudaGetLastError());
}

/* Allocates and fills the operands; 0 when a tensor map could not be made. */
static int operands_make(const problem *pb, operands *o)
{
    const int errors_before = encode_errors;
    memset(o, 0, sizeof *o);
    const size_t m = pb->m, n = pb->n, k = pb->k, r = pb->r;
    CK(cudaMalloc(&o->x, m * k * 2));
    CK(cudaMalloc(&o->w, n * k * 2));
    CK(cudaMalloc(&o->bias, n * 2));
    CK(cudaMalloc(&o->y, (m + 1) * pb->ldy * 2));
    fill_random(o->x, m * k, 1.0f);
    fill_random(o->w, n * k, 0.05f);
    fill_random(o->bias, n, 1.0f);
    fill_random(o->y, (m + 1) * pb->ldy, 1.0f);
    if (r) {
        CK(cudaMalloc(&o->a, r * k * 2));
        CK(cudaMalloc(&o->b, n * r * 2));
        CK(cudaMalloc(&o->t, m * r * 2));
        CK(cudaMalloc(&o->t_part, prepass_splits(pb) * m * r * 4));
        fill_random(o->a, r * k, 0.05f);
        fill_random(o->b, n * r, 0.1f);
    }
    for (int i = 0; i < 2; i++) {
        const int bk = i ? 32 : 64;
        o->map[i].x = tensor_map(o->x, m, k, k, BM, bk);
        o->map[i].w = tensor_map(o->w, n, k, k, BN, bk);
        o->map[i].w_half = tensor_map(o->w, n, k, k, BN / 2, bk);
        if (r) {
            o->map[i].t = tensor_map(o->t, m, r, r, BM, bk);
            o->map[i].b = tensor_map(o->b, n, r, r, BN, bk);
            o->map[i].b_half = tensor_map(o->b, n, r, r, BN / 2, bk);
            if (i == 0 && int_width(pb->r))
                o->a_tile = tensor_map(o->a, r, k, k, int_width(pb->r), bk);
        } else { /* unused: no LoRA steps */
            o->map[i].t = o->map[i].x;
            o->map[i].b = o->map[i].w;
            o->map[i].b_half = o->map[i].w_half;
        }
    }
    if (pb->r <= 64) { /* v8, the library's kernel: its workspace (none at r = 0) and control words */
        if (pb->r)
            CK(cudaMalloc(&o->hopper_ws, lf_hopper_workspace_bytes(pb->m, pb->r)));
        CK(cudaMalloc(&o->hopper_ctl, LF_HOPPER_CTL_WORDS * sizeof(unsigned)));
        CK(cudaMemset(o->hopper_ctl, 0, LF_HOPPER_CTL_WORDS * sizeof(unsigned)));
        /* the generation two launches short of 2^32: the first launch is the one that clears the
         * flags and restarts the count, the next flags with 1 (lora_hopper.cu) */
        const unsigned near_wrap = 0xfffffffeu;
        CK(cudaMemcpy(o->hopper_ctl, &near_wrap, sizeof near_wrap, cudaMemcpyHostToDevice));
    }
    return encode_errors == errors_before;
}
static void operands_free(operands *o)
{
    cudaFree(o->x);
    cudaFree(o->w);
    cudaFree(o->bias);
    cudaFree(o->y);
    cudaFree(o->a);
    cudaFree(o->b);
    cudaFree(o->t);
    cudaFree(o->t_part);
    cudaFree(o->hopper_ws);
    cudaFree(o->hopper_ctl);
}

enum { V_TILE, V_PERSIST, V_PERSIST_W1, V_CLUSTER2, V_BK32, V_CLUSTER2_BK32, V_IN_T, V_T_WORKERS, V_COUNT };
static const char *vname[V_COUNT] = {"v1-tile",     "v2-persist",  "v3-persist-w1", "v4-cluster2",
                                     "v5-bk32-8st", "v6-cl2-bk32", "v7-inT",        "v8-lib"};
/* Versions this run validates and times: HOPPER_VERSIONS="2,3,7" (numbers as in vname), or all. */
static int version_on[V_COUNT];
/* v7 and v8 compute T in the kernel: they exist for 0 < r ≤ 64 only, and v8 (the library's kernel)
 * for r = 0 too: its own base GEMM. */
static int version_takes(int v, const problem *pb)
{
    return version_on[v] && (v < V_IN_T || int_width(pb->r) || (v == V_T_WORKERS && pb->r == 0));
}

/* The LoRA pre-pass: T[M,r] = s·x·Aᵀ in bf16 (column-major view: Tᵀ[r,M] = s·A·xᵀ). */
static void lora_prepass(const problem *pb, const operands *o)
{
    const float zero = 0.0f;
    CKB(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, pb->r, pb->m, pb->k, &pb->scale, o->a, CUDA_R_16BF, pb->k, o->x,
                     CUDA_R_16BF, pb->k, &zero, o->t, CUDA_R_16BF, pb->r, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* T[i,q] = bf16(s · Σ_slices partial[slice][i][q]), slices summed in order (deterministic). */
__global__ void t_reduce_kernel(const float *part, int splits, int mr, float scale, bf16 *t)
{
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= mr)
        return;
    float acc = 0.0f;
    for (int sl = 0; sl < splits; sl++)
        acc += part[(size_t)sl * mr + e];
    t[e] = __float2bfloat16_rn(scale * acc);
}

/* The split pre-pass: fp32 partials of K slices by one strided-batched cuBLAS call, then the
 * ordered reduction with the scale and the one rounding of T. */
static void lora_prepass_split(const problem *pb, const operands *o)
{
    const int splits = (int)prepass_splits(pb), ks = pb->k / splits, mr = pb->m * pb->r;
    const float one = 1.0f, zero = 0.0f;
    CKB(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, pb->r, pb->m, ks, &one, o->a, CUDA_R_16BF, pb->k,
                                   ks, o->x, CUDA_R_16BF, pb->k, ks, &zero, o->t_part, CUDA_R_32F, pb->r,
                                   (long long)mr, splits, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    t_reduce_kernel<<<(mr + 255) / 256, 256>>>(o->t_part, splits, mr, pb->scale, o->t);
    CK(cudaGetLastError());
}

/* Launch configuration of the kernel on `grid` CTAs in clusters of 2 along x (attr: its storage). */
static cudaLaunchConfig_t cluster2_config(int grid, cudaLaunchAttribute *attr)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(THREADS);
    cfg.dynamicSmemBytes = SMEM_BYTES;
    *attr = cudaLaunchAttribute{};
    attr->id = cudaLaunchAttributeClusterDimension;
    attr->val.clusterDim.x = 2;
    attr->val.clusterDim.y = 1;
    attr->val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}

/* Our layer, version v: the pre-pass when r > 0, then one GEMM launch. max_ctas > 0 caps the
 * persistent grid (validation: several tiles per CTA, the ring's phases carried across tiles). */
static void run_ours(int v, const problem *pb, const operands *o, int max_ctas)
{
    if (v == V_T_WORKERS && (pb->r == 0 || int_width(pb->r))) { /* the library's kernel, on its own grid */
        lf_lora_problem h;
        memset(&h, 0, sizeof h);
        h.layout = LF_LAYOUT_PEFT;
        h.dtype = LF_BF16;
        h.m = pb->m;
        h.k = h.ldx = h.ldw = h.lda = pb->k;
        h.n = pb->n;
        h.rank = h.ldb = pb->r;
        h.x = o->x;
        h.w = o->w;
        h.bias = pb->has_bias ? o->bias : NULL;
        h.a = o->a;
        h.b = o->b;
        h.scale = pb->scale;
        h.beta = pb->beta;
        h.y = o->y;
        h.ldy = pb->ldy;
        CK(lf_hopper_launch(&h, o->hopper_ws, o->hopper_ctl, max_ctas > 0 && max_ctas < sm_count ? max_ctas : sm_count,
                            0));
        return;
    }
    const int in_t = v >= V_IN_T ? int_width(pb->r) : 0; /* v7 where it applies, else v3 */
    if (v >= V_IN_T && !in_t)
        v = V_PERSIST_W1;
    if (pb->r && !in_t)
        lora_prepass_split(pb, o);
    gemm_params p;
    memset(&p, 0, sizeof p);
    p.m = pb->m;
    p.n = pb->n;
    p.k = pb->k;
    p.r = pb->r;
    p.tiles_m = cdiv(pb->m, BM);
    p.tiles_n = cdiv(pb->n, BN);
    p.group_m = 8;
    const int bk32 = v == V_BK32 || v == V_CLUSTER2_BK32, bk = bk32 ? 32 : 64;
    p.k_tiles = cdiv(pb->k, bk);
    p.lora_tiles = cdiv(pb->r, bk);
    p.bias = pb->has_bias ? o->bias : NULL;
    p.y = o->y;
    p.ldy = pb->ldy;
    p.beta = pb->beta;
    p.scale = pb->scale;
    p.y_pairs = pb->ldy % 2 == 0 && (uintptr_t)o->y % 4 == 0;
    const int cluster = v == V_CLUSTER2 || v == V_CLUSTER2_BK32 ? 2 : 1;
    p.cluster_rows = cdiv(p.tiles_m, cluster);
    const int items = p.cluster_rows * p.tiles_n, slots = sm_count / cluster;
    int grid = v == V_TILE ? items : (items < slots ? items : slots);
    if (cluster == 2 && grid > max_active_clusters2) /* persistent: every cluster resident at once */
        grid = max_active_clusters2;
    if (v != V_TILE && max_ctas > 0 && grid > max_ctas / cluster)
        grid = max_ctas / cluster;
    grid *= cluster;
    const auto &mp = o->map[bk32];
    if (cluster == 2) {
        cudaLaunchAttribute attr;
        const cudaLaunchConfig_t cfg = cluster2_config(grid, &attr);
        if (bk32)
            CK(cudaLaunchKernelEx(&cfg, hopper_gemm_kernel<true, 2, 32>, mp.x, mp.w_half, mp.t, mp.b_half, p));
        else
            CK(cudaLaunchKernelEx(&cfg, hopper_gemm_kernel<true, 2, 64>, mp.x, mp.w_half, mp.t, mp.b_half, p));
    } else if (in_t == 16)
        hopper_gemm_kernel<true, 1, 64, 16><<<grid, THREADS, SMEM_BYTES_INT16>>>(mp.x, mp.w, o->a_tile, mp.b, p);
    else if (in_t == 64)
        hopper_gemm_kernel<true, 1, 64, 64><<<grid, THREADS, SMEM_BYTES_INT64>>>(mp.x, mp.w, o->a_tile, mp.b, p);
    else if (v == V_BK32)
        hopper_gemm_kernel<true, 1, 32><<<grid, THREADS, SMEM_BYTES>>>(mp.x, mp.w, mp.t, mp.b, p);
    else if (v == V_PERSIST_W1)
        hopper_gemm_kernel<true, 1, 64><<<grid, THREADS, SMEM_BYTES>>>(mp.x, mp.w, mp.t, mp.b, p);
    else
        hopper_gemm_kernel<false, 1, 64><<<grid, THREADS, SMEM_BYTES>>>(mp.x, mp.w, mp.t, mp.b, p);
    CK(cudaGetLastError());
}

/* y[i][j] += bias[j], rounded: the bias add of the cuBLAS baselines, a launch of its own as in an
 * unfused composition (cublasGemmEx takes no bias). */
__global__ void add_bias_kernel(bf16 *y, long long ldy, const bf16 *bias, int m, int n)
{
    const long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= (long long)m * n)
        return;
    bf16 *out = y + e / n * ldy + e % n;
    *out = __float2bfloat16(__bfloat162float(*out) + __bfloat162float(bias[e % n]));
}

/* cuBLAS: y = beta·y + x·Wᵀ (column-major view yᵀ = W·xᵀ), then the bias where the problem has one
 * (until 2026-11-28 the baselines added none, so at the one biased sampled problem the cuBLAS row
 * printed WRONG VALUES and its error, the bar for every version's, was the bias's size). */
static void run_cublas_base(const problem *pb, const operands *o)
{
    const float one = 1.0f;
    CKB(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, pb->n, pb->m, pb->k, &one, o->w, CUDA_R_16BF, pb->k, o->x,
                     CUDA_R_16BF, pb->k, &pb->beta, o->y, CUDA_R_16BF, (int)pb->ldy, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT));
    if (pb->has_bias) {
        const long long elems = (long long)pb->m * pb->n;
        add_bias_kernel<<<(unsigned)((elems + 255) / 256), 256>>>(o->y, pb->ldy, o->bias, pb->m, pb->n);
        CK(cudaGetLastError());
    }
}
/* The unfused composition: base GEMM, T pre-pass, y += T·Bᵀ (three launches, y rounded twice). */
static void run_cublas_unfused(const problem *pb, const operands *o)
{
    run_cublas_base(pb, o);
    lora_prepass(pb, o);
    const float one = 1.0f;
    CKB(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, pb->n, pb->m, pb->r, &one, o->b, CUDA_R_16BF, pb->r, o->t,
                     CUDA_R_16BF, pb->r, &one, o->y, CUDA_R_16BF, (int)pb->ldy, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT));
}

/* Waits for the device with a deadline: a deadlocked pipeline prints HANG instead of eating the call. */
static void sync_or_die(const char *what)
{
    cudaEvent_t e;
    CK(cudaEventCreate(&e));
    CK(cudaEventRecord(e, 0));
    const time_t start = time(NULL);
    cudaError_t q;
    while ((q = cudaEventQuery(e)) == cudaErrorNotReady)
        if (time(NULL) - start > 20) {
            printf("HANG in %s\n", what);
            fflush(stdout);
            _Exit(3);
        }
    if (q != cudaSuccess) {
        printf("ERROR in %s: %s\n", what, cudaGetErrorString(q));
        fflush(stdout);
        _Exit(4);
    }
    CK(cudaEventDestroy(e));
}

/* ---------------------------------------------------------------------------------------------- */
/* Validation against the fp64 CPU reference                                                       */

typedef struct {
    float *x, *w, *a, *b, *bias, *y0;
} host_ops;

static float *to_host(const bf16 *d, size_t n)
{
    bf16 *tmp = (bf16 *)malloc(n * 2);
    float *h = (float *)malloc(n * 4);
    CK(cudaMemcpy(tmp, d, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++)
        h[i] = __bfloat162float(tmp[i]);
    free(tmp);
    return h;
}
static void host_make(const problem *pb, const operands *o, host_ops *h)
{
    memset(h, 0, sizeof *h);
    h->x = to_host(o->x, (size_t)pb->m * pb->k);
    h->w = to_host(o->w, (size_t)pb->n * pb->k);
    h->bias = to_host(o->bias, pb->n);
    h->y0 = to_host(o->y, (size_t)(pb->m + 1) * pb->ldy);
    if (pb->r) {
        h->a = to_host(o->a, (size_t)pb->r * pb->k);
        h->b = to_host(o->b, (size_t)pb->n * pb->r);
    }
}
static void host_free(host_ops *h)
{
    free(h->x);
    free(h->w);
    free(h->a);
    free(h->b);
    free(h->bias);
    free(h->y0);
}

/* Row i's LoRA shrink in fp64: t[q] = Σ x·A, ta[q] = Σ |x·A| (for the tolerance). */
static void ref_row_t(const problem *pb, const host_ops *h, int i, double *t, double *ta)
{
    for (int q = 0; q < pb->r; q++) {
        double s = 0, sa = 0;
        for (int kk = 0; kk < pb->k; kk++) {
            const double p = (double)h->x[(size_t)i * pb->k + kk] * h->a[(size_t)q * pb->k + kk];
            s += p;
            sa += fabs(p);
        }
        t[q] = s;
        ta[q] = sa;
    }
}
/* y[i,j] in fp64 and its tolerance: output rounding (2^-9, doubled), fp32 accumulation over the
 * magnitudes of the terms, and the bf16 rounding of s·T (2^-9 of the LoRA magnitude, doubled). */
static double ref_elem(const problem *pb, const host_ops *h, const double *t, const double *ta, int i, int j,
                       double *tol)
{
    double v = 0, mag = 0;
    for (int kk = 0; kk < pb->k; kk++) {
        const double p = (double)h->x[(size_t)i * pb->k + kk] * h->w[(size_t)j * pb->k + kk];
        v += p;
        mag += fabs(p);
    }
    if (pb->has_bias) {
        v += h->bias[j];
        mag += fabs(h->bias[j]);
    }
    if (pb->beta != 0) {
        v += (double)pb->beta * h->y0[(size_t)i * pb->ldy + j];
        mag += fabs((double)pb->beta * h->y0[(size_t)i * pb->ldy + j]);
    }
    double l = 0, lm = 0, lt = 0;
    for (int q = 0; q < pb->r; q++) {
        const double bv = h->b[(size_t)j * pb->r + q];
        l += t[q] * bv;
        lm += (fabs(t[q]) + ta[q]) * fabs(bv);
        lt += fabs(t[q] * bv);
    }
    v += pb->scale * l;
    mag += fabs(pb->scale) * lm;
    *tol = 0x1p-8 * fabs(v) + 2.0 * (pb->k + pb->r + 4) * 0x1p-24 * mag + 0x1p-8 * fabs(pb->scale) * lt + 1e-6;
    return v;
}

static int failures = 0;
static int version_failed[V_COUNT];

static bf16 *y_after(const problem *pb, const operands *o)
{
    const size_t ny = (size_t)(pb->m + 1) * pb->ldy;
    bf16 *h = (bf16 *)malloc(ny * 2);
    CK(cudaMemcpy(h, o->y, ny * 2, cudaMemcpyDeviceToHost));
    return h;
}

/* Every element of a small awkward problem, the canaries around y, and two runs bitwise equal. */
static void check_full(const problem *pb, int v, int max_ctas)
{
    operands o;
    if (!operands_make(pb, &o)) {
        failures++;
        version_failed[v] = 1;
        operands_free(&o);
        return;
    }
    const size_t ny = (size_t)(pb->m + 1) * pb->ldy;
    if (pb->beta == 0) /* poison: 0xFFFF is NaN in bf16; beta = 0 must never read y */
        for (int i = 0; i < pb->m; i++)
            CK(cudaMemset(o.y + (size_t)i * pb->ldy, 0xff, (size_t)pb->n * 2));
    CK(cudaDeviceSynchronize());
    bf16 *y0 = y_after(pb, &o);
    host_ops h;
    host_make(pb, &o, &h);
    run_ours(v, pb, &o, max_ctas);
    sync_or_die(vname[v]);
    bf16 *y1 = y_after(pb, &o);
    CK(cudaMemcpy(o.y, y0, ny * 2, cudaMemcpyHostToDevice));
    run_ours(v, pb, &o, max_ctas);
    sync_or_die(vname[v]);
    bf16 *y2 = y_after(pb, &o);

    double *t = (double *)malloc((pb->r + 1) * 8), *ta = (double *)malloc((pb->r + 1) * 8);
    long long bad = 0, canary = 0, first_i = -1, first_j = -1;
    double worst = 0, num = 0, den = 0, first_got = 0, first_want = 0;
    for (int i = 0; i <= pb->m; i++) {
        if (i < pb->m && pb->r)
            ref_row_t(pb, &h, i, t, ta);
        for (long long j = 0; j < pb->ldy; j++) {
            const size_t e = (size_t)i * pb->ldy + j;
            if (i == pb->m || j >= pb->n) {
                canary += memcmp(&y1[e], &y0[e], 2) != 0;
                continue;
            }
            double tol;
            const double want = ref_elem(pb, &h, t, ta, i, (int)j, &tol), got = __bfloat162float(y1[e]);
            const double err = fabs(got - want);
            if (!(err <= tol)) {
                if (!bad) {
                    first_i = i;
                    first_j = j;
                    first_got = got;
                    first_want = want;
                }
                bad++;
            }
            worst = fmax(worst, isnan(err) ? INFINITY : err / tol);
            num += (got - want) * (got - want);
            den += want * want;
        }
    }
    const int det = memcmp(y1, y2, ny * 2) == 0, ok = !bad && !canary && det;
    failures += !ok;
    version_failed[v] |= !ok;
    printf("%s full  %-14s M%-5d N%-5d K%-5d r%-3d s=%g beta=%g %s ldy=%lld ctas<=%d  rel %.2e  worst/tol %.2f%s%s%s",
           ok ? "PASS" : "FAIL", vname[v], pb->m, pb->n, pb->k, pb->r, pb->scale, pb->beta, pb->has_bias ? "bias" : "    ",
           pb->ldy, max_ctas, sqrt(num / (den + 1e-300)), worst, bad ? "  WRONG VALUES" : "",
           canary ? "  CANARY OVERWRITTEN" : "", det ? "" : "  NOT DETERMINISTIC");
    if (bad)
        printf("  (%lld bad; first at [%lld,%lld]: got %g want %g)", bad, first_i, first_j, first_got, first_want);
    printf("\n");
    free(t);
    free(ta);
    free(y0);
    free(y1);
    free(y2);
    host_free(&h);
    operands_free(&o);
}

/* Large problems: fp64 reference on sampled elements (corners included) for every version and for
 * cuBLAS (base, or the unfused composition when r > 0) on the same inputs; every element checked
 * for NaN (y poisoned) and, for r = 0, against cuBLAS. Reports each error relative to cuBLAS's. */
static void check_sampled(const problem *pb)
{
    operands o;
    if (!operands_make(pb, &o)) {
        failures++;
        for (int v = 0; v < V_COUNT; v++)
            version_failed[v] = 1;
        operands_free(&o);
        return;
    }
    CK(cudaDeviceSynchronize());
    host_ops h;
    host_make(pb, &o, &h);
    const size_t ny = (size_t)(pb->m + 1) * pb->ldy;
    enum { S = 1500 };
    int si[S], sj[S];
    for (int s = 0; s < S; s++) {
        si[s] = s < 2 ? (s ? pb->m - 1 : 0) : (int)(next_rand() % pb->m);
        sj[s] = s < 2 ? (s ? pb->n - 1 : 0) : (int)(next_rand() % pb->n);
    }
    double *want = (double *)malloc(S * 8), *tol = (double *)malloc(S * 8);
    double *t = (double *)malloc((pb->r + 1) * 8), *ta = (double *)malloc((pb->r + 1) * 8);
    for (int s = 0; s < S; s++) {
        if (pb->r)
            ref_row_t(pb, &h, si[s], t, ta);
        want[s] = ref_elem(pb, &h, t, ta, si[s], sj[s], &tol[s]);
    }
    void *poison = malloc(ny * 2); /* 0xFFFF: NaN in bf16 */
    memset(poison, 0xff, ny * 2);
    bf16 *ycub = NULL;
    double err_cublas = 0;
    for (int v = -1; v < V_COUNT; v++) { /* -1: cuBLAS */
        if (v >= 0 && !version_takes(v, pb))
            continue;
        CK(cudaMemcpy(o.y, poison, ny * 2, cudaMemcpyHostToDevice));
        if (v < 0) {
            if (pb->r)
                run_cublas_unfused(pb, &o);
            else
                run_cublas_base(pb, &o);
        } else
            run_ours(v, pb, &o, 0);
        sync_or_die(v < 0 ? "cublas" : vname[v]);
        bf16 *y = y_after(pb, &o);
        long long bad = 0, nan_count = 0, off_cublas = 0;
        double num = 0, den = 0, worst = 0;
        for (int s = 0; s < S; s++) {
            const double got = __bfloat162float(y[(size_t)si[s] * pb->ldy + sj[s]]), err = fabs(got - want[s]);
            bad += !(err <= tol[s]);
            worst = fmax(worst, isnan(err) ? INFINITY : err / tol[s]);
            num += err * err;
            den += want[s] * want[s];
        }
        for (int i = 0; i < pb->m; i++)
            for (int j = 0; j < pb->n; j++) {
                const size_t e = (size_t)i * pb->ldy + j;
                const float got = __bfloat162float(y[e]);
                nan_count += isnan(got);
                if (v >= 0 && ycub && !pb->r) {
                    const float c = __bfloat162float(ycub[e]);
                    off_cublas += !(fabsf(got - c) <= 0x1p-7f * fabsf(c) + 0x1p-9f);
                }
            }
        const double rel = sqrt(num / (den + 1e-300));
        if (v < 0) {
            err_cublas = rel;
            ycub = y;
        } else
            free(y);
        const int ok = v < 0 ? !nan_count : !bad && !nan_count && !off_cublas && rel <= 2.0 * err_cublas;
        if (v >= 0) {
            failures += !ok;
            version_failed[v] |= !ok;
        }
        printf("%s samp  %-14s M%-5d N%-5d K%-5d r%-3d rel %.3e (%.2fx cuBLAS%s)  worst/tol %.2f  unwritten %lld"
               "  off-cuBLAS %lld%s\n",
               ok ? "PASS" : "FAIL", v < 0 ? (pb->r ? "cublas-unfused" : "cublas") : vname[v], pb->m, pb->n, pb->k,
               pb->r, rel, rel / err_cublas, pb->r ? "-unfused" : "", worst, nan_count, off_cublas,
               bad ? "  WRONG VALUES" : "");
    }
    free(ycub);
    free(poison);
    free(want);
    free(tol);
    free(t);
    free(ta);
    host_free(&h);
    operands_free(&o);
}

/* ---------------------------------------------------------------------------------------------- */
/* Timing                                                                                          */

enum { T_OURS, T_CUBLAS_BASE, T_CUBLAS_UNFUSED, T_CUBLAS_PREPASS, T_SPLIT_PREPASS };

/* Median per-call time (µs) of `what` (version v), over 9 repetitions of 10 calls between events,
 * rotating `nops` operand sets so that W (and x) come from HBM as they do in a model. */
static double time_us(int what, int v, const problem *pb, const operands *ops, int nops)
{
    enum { REPS = 9, CALLS = 10 };
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double ts[REPS];
    int next = 0;
    for (int rep = -1; rep < REPS; rep++) { /* rep -1: warm-up */
        CK(cudaEventRecord(e0, 0));
        for (int c = 0; c < CALLS; c++) {
            const operands *o = &ops[next];
            next = (next + 1) % nops;
            switch (what) {
            case T_OURS:
                run_ours(v, pb, o, 0);
                break;
            case T_CUBLAS_BASE:
                run_cublas_base(pb, o);
                break;
            case T_CUBLAS_UNFUSED:
                run_cublas_unfused(pb, o);
                break;
            case T_CUBLAS_PREPASS:
                lora_prepass(pb, o);
                break;
            default:
                lora_prepass_split(pb, o);
                break;
            }
        }
        CK(cudaEventRecord(e1, 0));
        sync_or_die("timing");
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (rep >= 0)
            ts[rep] = ms * 1e3 / (int)CALLS;
    }
    for (int i = 1; i < REPS; i++) /* insertion sort: the median */
        for (int j = i; j > 0 && ts[j] < ts[j - 1]; j--) {
            const double tmp = ts[j];
            ts[j] = ts[j - 1];
            ts[j - 1] = tmp;
        }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return ts[REPS / 2];
}

static char table[128][256];
static int nrows = 0;

/* Times cuBLAS and every validated version on one shape (beta = 0, no bias: the suite's cases). */
/* HOPPER_BENCH="sq4096_r16,m4096_n2048_r16" times those rows alone (names as below), or all. */
static void bench(const char *name, int m, int n, int k, int r)
{
    const char *only = getenv("HOPPER_BENCH");
    if (only) {
        const size_t len = strlen(name);
        const char *hit = strstr(only, name);
        while (hit && !((hit == only || hit[-1] == ',') && (hit[len] == ',' || hit[len] == '\0')))
            hit = strstr(hit + 1, name);
        if (!hit)
            return;
    }
    const problem pb = {m, n, k, r, 2.0f, 0.0f, 0, n};
    const int nops = (size_t)n * k * 2 < ((size_t)200 << 20) ? 4 : 2;
    operands ops[4];
    int ok = 1;
    for (int i = 0; i < nops; i++)
        ok &= operands_make(&pb, &ops[i]);
    CK(cudaDeviceSynchronize());
    /* what is timed: cuBLAS baselines, then every validated version (with LoRA: from v3 on) */
    struct {
        char label[32];
        int what, v;
        double us[2];
    } rows[16];
    int nr = 0;
    const int base_what[4] = {T_CUBLAS_BASE, T_CUBLAS_PREPASS, T_SPLIT_PREPASS, T_CUBLAS_UNFUSED};
    const char *base_label[4] = {"cublas-base", "cublas-T-prepass", "split-T-prepass", "cublas-unfused"};
    for (int i = 0; i < (r ? 4 : 1); i++) {
        snprintf(rows[nr].label, sizeof rows[nr].label, "%s", base_label[i]);
        rows[nr].what = base_what[i];
        rows[nr++].v = 0;
    }
    for (int v = 0; v < V_COUNT && ok; v++)
        if (version_takes(v, &pb) && !version_failed[v] && !(r && v < V_PERSIST_W1)) {
            snprintf(rows[nr].label, sizeof rows[nr].label, "%s%s", vname[v], r ? "+lora" : "");
            rows[nr].what = T_OURS;
            rows[nr++].v = v;
        }
    for (int round = 0; round < 2; round++) /* two rounds, interleaved: their spread is the noise */
        for (int i = 0; i < nr; i++)
            rows[i].us[round] = time_us(rows[i].what, rows[i].v, &pb, ops, nops);
    const double flops = 2.0 * m * n * k, base = fmin(rows[0].us[0], rows[0].us[1]);
    for (int i = 0; i < nr; i++) {
        const double best = fmin(rows[i].us[0], rows[i].us[1]);
        snprintf(table[nrows++], sizeof table[0], "%-16.16s %-20.31s %9.2f / %9.2f us  %6.1f TFLOP/s  %6.3fx cuBLAS-base",
                 name, rows[i].label, rows[i].us[0], rows[i].us[1], flops / best * 1e-6, best / base);
    }
    for (int i = 0; i < nops; i++)
        operands_free(&ops[i]);
}

int main(int argc, char **argv)
{
    const int only_check = argc > 1 && strcmp(argv[1], "check") == 0;
    /* `profile M N K r v`: three calls of version v (1-based) on one shape, nothing else (for ncu) */
    const int profile = argc == 7 && strcmp(argv[1], "profile") == 0;
    const char *versions = getenv("HOPPER_VERSIONS");
    for (int v = 0; v < V_COUNT; v++) {
        char num[8];
        snprintf(num, sizeof num, "%d", v + 1);
        version_on[v] = !versions || strstr(versions, num) != NULL; /* one-digit version numbers */
    }
    int dev = 0, ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    if (prop.major != 9) {
        printf("SKIP: %s is not sm_90 (wgmma/TMA kernel)\n", prop.name);
        return 0;
    }
    sm_count = prop.multiProcessorCount;
    printf("device: %s, %d SMs, smem/block optin %zu\n", prop.name, sm_count, prop.sharedMemPerBlockOptin);
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void **)&encode_tiled, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || !encode_tiled) {
        fprintf(stderr, "cuTensorMapEncodeTiled not found\n");
        return 1;
    }
    CKB(cublasCreate(&blas));
    CK(cudaFuncSetAttribute(hopper_gemm_kernel<false, 1, 64>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
    CK(cudaFuncSetAttribute(hopper_gemm_kernel<true, 1, 64>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
    CK(cudaFuncSetAttribute(hopper_gemm_kernel<true, 2, 64>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
    CK(cudaFuncSetAttribute(hopper_gemm_kernel<true, 1, 32>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
    CK(cudaFuncSetAttribute(hopper_gemm_kernel<true, 2, 32>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
    CK(cudaFuncSetAttribute(hopper_gemm_kernel<true, 1, 64, 16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            SMEM_BYTES_INT16));
    CK(cudaFuncSetAttribute(hopper_gemm_kernel<true, 1, 64, 64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            SMEM_BYTES_INT64));
    if (!lf_hopper_setup()) {
        fprintf(stderr, "the library's Hopper kernel cannot run here (lf_hopper_setup)\n");
        return 1;
    }
    {
        cudaLaunchAttribute attr;
        const cudaLaunchConfig_t cfg = cluster2_config(sm_count, &attr);
        CK(cudaOccupancyMaxActiveClusters(&max_active_clusters2, hopper_gemm_kernel<true, 2, 64>, &cfg));
        printf("max active 2-CTA clusters: %d (of %d SMs)\n", max_active_clusters2, sm_count);
        if (max_active_clusters2 < 1)
            max_active_clusters2 = 1;
    }

    if (profile) {
        const problem pb = {atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), 2.0f, 0.0f, 0, atoi(argv[3])};
        const int v = atoi(argv[6]) - 1;
        operands o;
        if (v < 0 || v >= V_COUNT || !operands_make(&pb, &o))
            return 1;
        for (int i = 0; i < 3; i++)
            run_ours(v, &pb, &o, 0);
        sync_or_die("profile");
        operands_free(&o);
        return 0;
    }
    /* m, n, k, r, scale, beta, bias, ldy: M/N/K tails, r < 16, r > 64 (two LoRA stages), odd ldy
     * (scalar stores), NaN-poisoned y with beta = 0, many tiles per CTA with a capped grid */
    const problem small[] = {
        {200, 328, 264, 0, 2.0f, 0.5f, 1, 336},   {200, 328, 264, 16, 2.0f, 0.0f, 0, 333},
        {129, 520, 72, 8, -1.5f, 1.0f, 1, 520},   {77, 300, 136, 80, 0.5f, 0.0f, 1, 304},
        {3, 40, 16, 8, 2.0f, 0.25f, 1, 41},       {1100, 2100, 200, 64, 2.0f, 0.0f, 0, 2104},
        {333, 777, 1000, 16, 1.0f, 0.5f, 1, 780},   {257, 600, 520, 40, 1.5f, 0.0f, 1, 600},
    };
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++)
        for (int v = 0; v < V_COUNT; v++)
            if (version_takes(v, &small[i]))
                check_full(&small[i], v, v == V_TILE ? 0 : 6);
            else if (version_on[v] && small[i].r)
                printf("SKIP full  %-14s r%d (T in the kernel: 0 < r <= 64)\n", vname[v], small[i].r);
    if (!only_check) {
        const problem big[] = {
            {4096, 4096, 4096, 0, 2.0f, 0.0f, 0, 4096},
            {1024, 14336, 4096, 0, 2.0f, 0.0f, 0, 14336},
            {1024, 4096, 4096, 16, 2.0f, 0.0f, 0, 4096},
            {4096, 4096, 4096, 64, 2.0f, 0.0f, 0, 4096},
            {256, 4096, 4096, 16, 2.0f, 0.0f, 1, 4096}, /* few tiles (32), bias */
            {128, 4000, 4032, 64, 1.5f, 0.0f, 0, 4000}, /* one row block, N and K tails */
        };
        for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
            check_sampled(&big[i]);
    }
    printf("validation: %s (%d failures)\n", failures ? "FAILED" : "all passed", failures);
    if (only_check)
        return failures != 0;

    bench("sq4096", 4096, 4096, 4096, 0);
    bench("m1024", 1024, 4096, 4096, 0);
    bench("m1024_mlp", 1024, 14336, 4096, 0);
    bench("m4096_mlp", 4096, 14336, 4096, 0);
    bench("m8192", 8192, 4096, 4096, 0);
    bench("sq8192", 8192, 8192, 8192, 0);
    /* where the library's plan switches to v8 (heuristics.h: lf_cuda_hopper_fits): few tokens */
    bench("m128_r16", 128, 4096, 4096, 16);
    bench("m256_r16", 256, 4096, 4096, 16);
    bench("m512_r16", 512, 4096, 4096, 16);
    bench("m768_r16", 768, 4096, 4096, 16);
    bench("m256mlp_r16", 256, 14336, 4096, 16);
    bench("m512mlp_r16", 512, 14336, 4096, 16);
    bench("m1024_r16", 1024, 4096, 4096, 16);
    bench("m1024_r64", 1024, 4096, 4096, 64);
    bench("sq4096_r16", 4096, 4096, 4096, 16);
    bench("sq4096_r64", 4096, 4096, 4096, 64);
    bench("m8192_r16", 8192, 4096, 4096, 16);
    bench("m8192_r64", 8192, 4096, 4096, 64);
    bench("m1024mlp_r16", 1024, 14336, 4096, 16);
    bench("m1024mlp_r64", 1024, 14336, 4096, 64);
    bench("m4096mlp_r16", 4096, 14336, 4096, 16);
    /* narrow N: few column tiles per row block, so the T workers must keep up with fewer tiles
     * (q at TP 2, k/v projections) */
    /* few tiles: o_proj and gate_proj per rank at TP 2 */
    bench("m256_k2048_r16", 256, 4096, 2048, 16);
    bench("m256_n7168_r16", 256, 7168, 4096, 16);
    bench("m4096_n3072_r16", 4096, 3072, 4096, 16);
    bench("m4096_n2048_r16", 4096, 2048, 4096, 16);
    bench("m2048_n2048_r16", 2048, 2048, 4096, 16);
    bench("m4096_n1024_r16", 4096, 1024, 4096, 16);
    bench("m4096_n2048_r64", 4096, 2048, 4096, 64);

    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&now));
    printf("\n== %s, %s: bf16 in, fp32 accumulate, bf16 out; median per call, operands rotated ==\n", prop.name, date);
    for (int i = 0; i < nrows; i++)
        printf("%s\n", table[i]);
    cublasDestroy(blas);
    return failures != 0;
}

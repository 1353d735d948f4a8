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
 *   v8 Tworkers  v3 without the pre-pass, T computed once per row block inside the same launch: the
 *                grid is 128 tile CTAs + 4 T workers (the SMs that 128-tile rounds leave idle). A
 *                worker streams x's row block and A through its ring (m64n16/n64 wgmma), stores s·T as
 *                bf16 [hi | lo] to t2 and publishes t_ready[mb] = epoch (release); a tile's producer
 *                acquires it before its LoRA slab, which is v3's, 2r wide: [T_hi | T_lo]·[B | B]ᵀ.
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

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CK(call)                                                                                     \
    do {                                                                                             \
        cudaError_t e_ = (call);                                                                     \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)
#define CKB(call)                                                                                    \
    do {                                                                                             \
        cublasStatus_t s_ = (call);                                                                  \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                           \
            fprintf(stderr, "%s:%d: %s -> cublas %d\n", __FILE__, __LINE__, #call, (int)s_);         \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

typedef __nv_bfloat16 bf16;

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
    float scale; /* s: applied to T in the kernel when it computes T (v7, v8) */
    /* v8: CTAs [tile_ctas, gridDim.x) compute s·T = [hi | lo] (bf16, [M][2r]) into t2 row block by
     * row block and publish each with t_ready[mb] = epoch; the tile CTAs wait for it before their
     * LoRA slab, which reads t2 against B2 = [B | B] */
    int tile_ctas;
    bf16 *t2;
    unsigned *t_ready;
    unsigned epoch;
    int y_pairs; /* y and ldy allow 4-byte bf16x2 stores */
} gemm_params;

/* ---------------------------------------------------------------------------------------------- */
/* PTX wrappers (sm_90a)                                                                           */

static __device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

static __device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
/* One arrival that also announces `bytes` of TMA transactions for the current phase. */
static __device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes)
{
    asm volatile("{\n\t.reg .b64 st;\n\tmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n\t}" ::"r"(bar),
                 "r"(bytes)
                 : "memory");
}
static __device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
    asm volatile("{\n\t.reg .b64 st;\n\tmbarrier.arrive.shared::cta.b64 st, [%0];\n\t}" ::"r"(bar) : "memory");
}
/* Waits until the phase of parity `parity` has completed (a fresh barrier counts the phase before
 * its first, parity 1, as complete: the producer's first pass over the ring does not block). */
static __device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity)
{
    uint32_t done;
    do {
        asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                     "selp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!done);
}

/* 2-D tile copy global → shared; completes `bar`'s transaction count. c0 is the inner coordinate. */
static __device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, uint32_t bar, int c0, int c1)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}

/* Shared-memory matrix descriptor of a K-major tile written by TMA with the 128-byte swizzle:
 * rows of 128 bytes, 8-row atoms of 1024 bytes (stride byte offset), leading offset unused for
 * this mode (1 by convention), swizzle mode 1 = 128B in bits 62–63. Stepping K by 16 elements
 * inside the atom is +32 bytes on the start address (the hardware applies the XOR pattern). */
template <int kBK> static __device__ __forceinline__ uint64_t smem_desc(uint32_t saddr)
{
    /* rows of 2·kBK bytes, 8-row atoms; swizzle mode 1 = 128B, 2 = 64B */
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(8 * 2 * kBK >> 4) << 32) |
           ((uint64_t)(kBK == 64 ? 1 : 2) << 62);
}

static __device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
static __device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> static __device__ __forceinline__ void wgmma_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
/* Ties the accumulator registers to a volatile point, so the compiler neither reads them before
 * the wgmma that writes them has been waited for nor moves writes across it. */
template <int N = 128> static __device__ __forceinline__ void fence_acc(float *d)
{
#pragma unroll
    for (int i = 0; i < N; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

/* The accumulator fragment of an m64nN wgmma as asm operands: "{%0, …, %(N/2-1)}" and the N/2 "+f"
 * bindings of d[] (fp32: N/2 registers per thread). */
#define WGMMA_D8_STR \
    "{%0, %1, %2, %3, %4, %5, %6, %7}"
#define WGMMA_BIND8(o) \
    "+f"(d[(o) + 0]), "+f"(d[(o) + 1]), "+f"(d[(o) + 2]), "+f"(d[(o) + 3]), "+f"(d[(o) + 4]), "+f"(d[(o) + 5]), \
        "+f"(d[(o) + 6]), "+f"(d[(o) + 7])
#define WGMMA_BIND32(o) WGMMA_BIND8(o), WGMMA_BIND8((o) + 8), WGMMA_BIND8((o) + 16), WGMMA_BIND8((o) + 24)
#define WGMMA_D8_BIND WGMMA_BIND8(0)
#define WGMMA_D32_STR \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WGMMA_D32_BIND WGMMA_BIND32(0)
#define WGMMA_D128_STR \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define WGMMA_D128_BIND WGMMA_BIND32(0), WGMMA_BIND32(32), WGMMA_BIND32(64), WGMMA_BIND32(96)

/* d[64×256] += A[64×16] · B[256×16]ᵀ, both K-major in shared memory, bf16 in, fp32 accumulate. */
static __device__ __forceinline__ void wgmma_m64n256k16(float *d, uint64_t da, uint64_t db)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " WGMMA_D128_STR ", %128, %129, 1, 1, 1, 0, 0;"
                 : WGMMA_D128_BIND
                 : "l"(da), "l"(db));
}
/* The same with A from registers: the m64k16 bf16 fragment of this thread (4 × bf16x2: rows
 * 16w + lane/4 (+8), columns 2·(lane%4) (+1) (+8)), which is exactly the layout of an m64n16 fp32
 * accumulator converted pairwise: what T = x·Aᵀ leaves in registers feeds the LoRA step directly. */
static __device__ __forceinline__ void wgmma_m64n256k16_rs(float *d, const uint32_t *a, uint64_t db)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " WGMMA_D128_STR
                 ", {%128, %129, %130, %131}, %132, 1, 1, 1, 0;"
                 : WGMMA_D128_BIND
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
/* T's accumulators: d[64×kN] += A[64×16] · B[kN×16]ᵀ from shared memory, kN = 16 or 64. */
template <int kN> static __device__ __forceinline__ void wgmma_m64nXk16(float *d, uint64_t da, uint64_t db)
{
    static_assert(kN == 16 || kN == 64, "T widths of this lab: 16, 64");
    if constexpr (kN == 16)
        asm volatile("wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 " WGMMA_D8_STR ", %8, %9, 1, 1, 1, 0, 0;"
                     : WGMMA_D8_BIND
                     : "l"(da), "l"(db));
    else
        asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WGMMA_D32_STR ", %32, %33, 1, 1, 1, 0, 0;"
                     : WGMMA_D32_BIND
                     : "l"(da), "l"(db));
}

/* The first `steps` K steps of 16 of one stage (+32 bytes per step inside the swizzle atom). */
template <int kBK, int steps> static __device__ __forceinline__ void wgmma_k16_steps(float *d, uint32_t a, uint32_t b)
{
#pragma unroll
    for (int k = 0; k < steps; k++)
        wgmma_m64n256k16(d, smem_desc<kBK>(a + 32 * k), smem_desc<kBK>(b + 32 * k));
}
/* k16 (≤ kSteps) steps of one stage as straight-line runs: a branch between two wgmmas costs an
 * injected fence, so each count has its own run. */
template <int kBK, int kSteps>
static __device__ __forceinline__ void wgmma_stage(float *d, uint32_t a, uint32_t b, int k16)
{
    if (k16 >= kSteps)
        wgmma_k16_steps<kBK, kSteps>(d, a, b);
    else if constexpr (kSteps > 1)
        wgmma_stage<kBK, kSteps - 1>(d, a, b, k16);
}

/* s·t (pairs of fp32 accumulators) as bf16x2 hi = rn(s·t) and lo = rn(s·t − hi): hi + lo carries 16
 * bits of s·t's mantissa. Pair i of an m64nN accumulator is register i of the m64k16 A fragments. */
template <int kPairs>
static __device__ __forceinline__ void split_hi_lo(const float *t, float s, uint32_t *hi, uint32_t *lo)
{
#pragma unroll
    for (int i = 0; i < kPairs; i++) {
        const float v0 = s * t[2 * i], v1 = s * t[2 * i + 1];
        const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
        const __nv_bfloat162 l = __floats2bfloat162_rn(v0 - __low2float(h), v1 - __high2float(h));
        hi[i] = *(const uint32_t *)&h;
        lo[i] = *(const uint32_t *)&l;
    }
}

/* v8's hand-over of T between CTAs of one launch. The writers store with the generic proxy, the
 * readers load it with TMA (the async proxy): a proxy fence on both sides of the release/acquire. */
static __device__ __forceinline__ void publish_flag(unsigned *flag, unsigned value)
{
    asm volatile("fence.proxy.async.global;\n\tst.release.gpu.global.u32 [%0], %1;" ::"l"(flag), "r"(value) : "memory");
}
static __device__ __forceinline__ void wait_flag(const unsigned *flag, unsigned value)
{
    unsigned v;
    for (;;) {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
        if (v == value)
            break;
        __nanosleep(100);
    }
    asm volatile("fence.proxy.async.global;" ::: "memory");
}

template <int R> static __device__ __forceinline__ void regs_dealloc()
{
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
}
template <int R> static __device__ __forceinline__ void regs_alloc()
{
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
}

/* ---------------------------------------------------------------------------------------------- */
/* The kernel                                                                                      */

/* Cluster of kCluster CTAs along M (ranks take adjacent row blocks of the same column block). */
static __device__ __forceinline__ uint32_t cluster_rank()
{
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
static __device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
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

/* The next stage of the ring; the phase parity flips at each wrap. */
template <int kStages> static __device__ __forceinline__ void ring_next(int &stage, uint32_t &phase)
{
    if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
    }
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
template <bool kWaitOne, int kCluster, int kBK, int kInT = 0, bool kTWorkers = false>
__global__ void __launch_bounds__(THREADS, 1)
    hopper_gemm_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
                       const __grid_constant__ CUtensorMap tm_t, const __grid_constant__ CUtensorMap tm_b,
                       const gemm_params p, const __grid_constant__ CUtensorMap tm_a)
{
    constexpr int STAGES = RING_BYTES / ((BM + BN) * kBK * 2), A_BYTES = BM * kBK * 2, B_BYTES = BN * kBK * 2;
    constexpr int K16 = kBK / 16, ROW_BYTES = 2 * kBK;
    /* kInT > 0 (v7): the stages of the K loop also hold the tile of A (kInT rows, zero past r), and
     * the consumers accumulate T = x·Aᵀ for their rows beside the tile (tm_t is then A's map) */
    static_assert(kInT == 0 || (kBK == 64 && kCluster == 1), "T in the GEMM: 64-wide stages, no cluster");
    /* kTWorkers (v8): T is computed by the last CTAs of the grid instead (tm_a: A's map); each
     * tile reads it back as v3 reads the pre-pass's, from p.t2 once p.t_ready says it is there */
    constexpr bool kTileT = kInT > 0 && !kTWorkers;
    constexpr int T_BYTES = kTileT ? kInT * kBK * 2 : 0, STAGE_BYTES = A_BYTES + B_BYTES + T_BYTES;
    const bool t_worker = kTWorkers && (int)blockIdx.x >= p.tile_ctas;
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
    const int first_item = blockIdx.x / kCluster, item_stride = (kTWorkers ? p.tile_ctas : gridDim.x) / kCluster;
    const int t_workers = gridDim.x - p.tile_ctas, t_first = blockIdx.x - p.tile_ctas; /* v8 */

    if (wg == 0) { /* producer warpgroup: one thread issues every copy */
        regs_dealloc<PRODUCER_REGS>();
        if (tid == 0 && t_worker) { /* v8 T worker: x's row block and A, over K */
            int stage = 0;
            uint32_t phase = 0;
            for (int mb = t_first; mb < p.tiles_m; mb += t_workers)
                for (int ks = 0; ks < p.k_tiles; ks++) {
                    mbar_wait(EMPTY(stage), phase ^ 1);
                    mbar_arrive_expect_tx(FULL(stage), A_BYTES + kInT * kBK * 2);
                    tma_load_2d(ring_a + stage * A_BYTES, &tm_x, FULL(stage), ks * kBK, mb * BM);
                    tma_load_2d(ring_b + stage * B_BYTES, &tm_a, FULL(stage), ks * kBK, 0);
                    ring_next<STAGES>(stage, phase);
                }
        } else if (tid == 0) {
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
                    if (kTWorkers && ks == p.k_tiles) /* this row block's s·T is in t2 */
                        wait_flag(p.t_ready + mb, p.epoch);
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
        for (int mb = t_first; t_worker && mb < p.tiles_m; mb += t_workers) { /* v8 T worker */
#pragma unroll
            for (int i = 0; i < (kInT ? kInT / 2 : 1); i++)
                t_acc[i] = 0.0f;
            int prev = -1;
            for (int ks = 0; ks < p.k_tiles; ks++) {
                mbar_wait(FULL(stage), phase);
                const uint32_t a = ring_a + stage * A_BYTES + c * 64 * ROW_BYTES, at = ring_b + stage * B_BYTES;
                wgmma_fence();
                if constexpr (kInT > 0)
#pragma unroll
                    for (int k = 0; k < K16; k++)
                        wgmma_m64nXk16<kInT>(t_acc, smem_desc<kBK>(a + 32 * k), smem_desc<kBK>(at + 32 * k));
                wgmma_commit();
                wgmma_wait<1>();
                if (prev >= 0 && lane == 0)
                    release_stage<kCluster>(EMPTY(prev));
                prev = stage;
                ring_next<STAGES>(stage, phase);
            }
            wgmma_wait<0>();
            if (prev >= 0 && lane == 0)
                release_stage<kCluster>(EMPTY(prev));
            fence_acc<kInT ? kInT / 2 : 1>(t_acc);
            split_hi_lo<kInT / 4>(t_acc, p.scale, t_hi, t_lo);
            /* pair i of the fragment: row 16w + lane/4 + 8·(i%2), columns 8·(i/2) + 2·(lane%4) (+1) */
            const int row0 = mb * BM + c * 64 + warp * 16 + lane / 4;
#pragma unroll
            for (int i = 0; i < kInT / 4; i++) {
                const int row = row0 + 8 * (i % 2), col = 8 * (i / 2) + 2 * (lane % 4);
                if (row < p.m && col < p.r) {
                    uint32_t *dst = (uint32_t *)(p.t2 + (long long)row * 2 * p.r + col);
                    dst[0] = t_hi[i];
                    dst[p.r / 2] = t_lo[i]; /* columns r + col */
                }
            }
            asm volatile("fence.proxy.async.global;\n\tbar.sync 1, 256;" ::: "memory"); /* both consumers stored */
            if (c == 0 && tid == 0)
                publish_flag(p.t_ready + mb, p.epoch);
        }
        for (int t = first_item; !t_worker && t < items; t += item_stride) {
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
                    split_hi_lo<kInT / 4>(t_acc, p.scale, t_hi, t_lo);
                }
                /* K steps of 16 in this stage: 4, or what is left of the rank in a LoRA stage */
                const int lora_k = kTWorkers ? 2 * p.r : p.r; /* v8's slab: [T_hi | T_lo]·[B | B]ᵀ */
                const int k16 = !lora ? K16 : min(K16, (lora_k - (ks - p.k_tiles) * kBK + 15) / 16);
                const uint32_t a = ring_a + stage * A_BYTES + c * 64 * ROW_BYTES, b = ring_b + stage * B_BYTES;
                wgmma_fence();
                if constexpr (kTileT) {
                    if (!lora) { /* the tile's step and T's, on the same x rows */
                        const uint32_t at = ring_t + stage * T_BYTES;
#pragma unroll
                        for (int k = 0; k < K16; k++) {
                            wgmma_m64n256k16(d, smem_desc<kBK>(a + 32 * k), smem_desc<kBK>(b + 32 * k));
                            wgmma_m64nXk16<kInT>(t_acc, smem_desc<kBK>(a + 32 * k), smem_desc<kBK>(at + 32 * k));
                        }
                    } else { /* d += (s·T)_hi·Bᵀ + (s·T)_lo·Bᵀ, A from registers; T is zero past r */
#pragma unroll
                        for (int q = 0; q < kInT / 16; q++) {
                            wgmma_m64n256k16_rs(d, &t_hi[4 * q], smem_desc<kBK>(b + 32 * q));
                            wgmma_m64n256k16_rs(d, &t_lo[4 * q], smem_desc<kBK>(b + 32 * q));
                        }
                    }
                } else
                    wgmma_stage<kBK, K16>(d, a, b, k16);
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
    CUtensorMap a_tile; /* v7, v8: A in boxes of int_width(r) rows (zero-filled past r) × 64 of K */
    /* v8: s·T as [hi | lo] [M][2r], B twice [N][2r] (prepared once, as with the adapter), the
     * per-row-block ready flags (epochs: never reset) and their maps for the LoRA slab */
    bf16 *t2, *b2;
    unsigned *t_ready;
    CUtensorMap t2_map, b2_map;
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
            if (i == 0 && int_width(pb->r)) {
                o->a_tile = tensor_map(o->a, r, k, k, int_width(pb->r), bk);
                CK(cudaMalloc(&o->t2, m * 2 * r * 2));
                CK(cudaMalloc(&o->b2, n * 2 * r * 2));
                CK(cudaMalloc(&o->t_ready, cdiv(m, BM) * sizeof(unsigned)));
                CK(cudaMemset(o->t_ready, 0, cdiv(m, BM) * sizeof(unsigned)));
                for (int half = 0; half < 2; half++)
                    CK(cudaMemcpy2D(o->b2 + half * r, 2 * r * 2, o->b, r * 2, r * 2, n, cudaMemcpyDeviceToDevice));
                o->t2_map = tensor_map(o->t2, m, 2 * r, 2 * r, BM, bk);
                o->b2_map = tensor_map(o->b2, n, 2 * r, 2 * r, BN, bk);
            }
        } else { /* unused: no LoRA steps */
            o->map[i].t = o->map[i].x;
            o->map[i].b = o->map[i].w;
            o->map[i].b_half = o->map[i].w_half;
        }
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
    cudaFree(o->t2);
    cudaFree(o->b2);
    cudaFree(o->t_ready);
}

enum { V_TILE, V_PERSIST, V_PERSIST_W1, V_CLUSTER2, V_BK32, V_CLUSTER2_BK32, V_IN_T, V_T_WORKERS, V_COUNT };
static const char *vname[V_COUNT] = {"v1-tile",     "v2-persist",  "v3-persist-w1", "v4-cluster2",
                                     "v5-bk32-8st", "v6-cl2-bk32", "v7-inT",        "v8-Tworkers"};
static int t_worker_ctas = 4; /* v8: HOPPER_T_CTAS; 132 SMs − 4 = 128 divides every suite shape's tiles */
static unsigned t_epoch = 0;  /* v8: one per launch, so flags need no reset */
/* Versions this run validates and times: HOPPER_VERSIONS="2,3,7" (numbers as in vname), or all. */
static int version_on[V_COUNT];
/* v7 and v8 are v3 plus T in the kernel: they exist for 0 < r ≤ 64 only. */
static int version_takes(int v, const problem *pb)
{
    return version_on[v] && (v < V_IN_T || int_width(pb->r));
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
    const int in_t = v >= V_IN_T ? int_width(pb->r) : 0; /* v7, v8 where they apply, else v3 */
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
    if (v == V_T_WORKERS) { /* the last CTAs of the grid compute T; the LoRA slab is 2r wide */
        const int workers = t_worker_ctas < p.tiles_m ? t_worker_ctas : p.tiles_m;
        const int cap = max_ctas > 0 && max_ctas < sm_count ? max_ctas : sm_count;
        p.tile_ctas = items < cap - workers ? items : cap - workers > 1 ? cap - workers : 1;
        grid = p.tile_ctas + workers;
        p.lora_tiles = cdiv(2 * pb->r, bk);
        p.t2 = o->t2;
        p.t_ready = o->t_ready;
        p.epoch = ++t_epoch;
        if (in_t == 16)
            hopper_gemm_kernel<true, 1, 64, 16, true>
                <<<grid, THREADS, SMEM_BYTES>>>(mp.x, mp.w, o->t2_map, o->b2_map, p, o->a_tile);
        else
            hopper_gemm_kernel<true, 1, 64, 64, true>
                <<<grid, THREADS, SMEM_BYTES>>>(mp.x, mp.w, o->t2_map, o->b2_map, p, o->a_tile);
        CK(cudaGetLastError());
        return;
    }
    if (cluster == 2) {
        cudaLaunchAttribute attr;
        const cudaLaunchConfig_t cfg = cluster2_config(grid, &attr);
        if (bk32)
            CK(cudaLaunchKernelEx(&cfg, hopper_gemm_kernel<true, 2, 32>, mp.x, mp.w_half, mp.t, mp.b_half, p, mp.x));
        else
            CK(cudaLaunchKernelEx(&cfg, hopper_gemm_kernel<true, 2, 64>, mp.x, mp.w_half, mp.t, mp.b_half, p, mp.x));
    } else if (in_t == 16)
        hopper_gemm_kernel<true, 1, 64, 16><<<grid, THREADS, SMEM_BYTES_INT16>>>(mp.x, mp.w, o->a_tile, mp.b, p, mp.x);
    else if (in_t == 64)
        hopper_gemm_kernel<true, 1, 64, 64><<<grid, THREADS, SMEM_BYTES_INT64>>>(mp.x, mp.w, o->a_tile, mp.b, p, mp.x);
    else if (v == V_BK32)
        hopper_gemm_kernel<true, 1, 32><<<grid, THREADS, SMEM_BYTES>>>(mp.x, mp.w, mp.t, mp.b, p, mp.x);
    else if (v == V_PERSIST_W1)
        hopper_gemm_kernel<true, 1, 64><<<grid, THREADS, SMEM_BYTES>>>(mp.x, mp.w, mp.t, mp.b, p, mp.x);
    else
        hopper_gemm_kernel<false, 1, 64><<<grid, THREADS, SMEM_BYTES>>>(mp.x, mp.w, mp.t, mp.b, p, mp.x);
    CK(cudaGetLastError());
}

/* cuBLAS: y = beta·y + x·Wᵀ (column-major view yᵀ = W·xᵀ); no bias (the compared problems have none). */
static void run_cublas_base(const problem *pb, const operands *o)
{
    const float one = 1.0f;
    CKB(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, pb->n, pb->m, pb->k, &one, o->w, CUDA_R_16BF, pb->k, o->x,
                     CUDA_R_16BF, pb->k, &pb->beta, o->y, CUDA_R_16BF, (int)pb->ldy, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT));
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
static void bench(const char *name, int m, int n, int k, int r)
{
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
        snprintf(table[nrows++], sizeof table[0], "%-13.13s %-20.31s %9.2f / %9.2f us  %6.1f TFLOP/s  %6.3fx cuBLAS-base",
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
    CK(cudaFuncSetAttribute(hopper_gemm_kernel<true, 1, 64, 16, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            SMEM_BYTES));
    CK(cudaFuncSetAttribute(hopper_gemm_kernel<true, 1, 64, 64, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            SMEM_BYTES));
    if (getenv("HOPPER_T_CTAS"))
        t_worker_ctas = atoi(getenv("HOPPER_T_CTAS")) > 0 ? atoi(getenv("HOPPER_T_CTAS")) : 1;
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
        {3, 40, 16, 8, 2.0f, 0.25f, 1, 41},       {1100, 2100, 200, 64, 2.0f, 0.0f, 0, 2100},
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
    bench("m1024_r16", 1024, 4096, 4096, 16);
    bench("m1024_r64", 1024, 4096, 4096, 64);
    bench("sq4096_r16", 4096, 4096, 4096, 16);
    bench("sq4096_r64", 4096, 4096, 4096, 64);
    bench("m8192_r16", 8192, 4096, 4096, 16);
    bench("m8192_r64", 8192, 4096, 4096, 64);
    bench("m1024mlp_r16", 1024, 14336, 4096, 16);
    bench("m1024mlp_r64", 1024, 14336, 4096, 64);
    bench("m4096mlp_r16", 4096, 14336, 4096, 16);

    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&now));
    printf("\n== %s, %s: bf16 in, fp32 accumulate, bf16 out; median per call, operands rotated ==\n", prop.name, date);
    for (int i = 0; i < nrows; i++)
        printf("%s\n", table[i]);
    cublasDestroy(blas);
    return failures != 0;
}

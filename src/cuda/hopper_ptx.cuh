/*
 * hopper_ptx.cuh — the sm_90a instructions the Hopper layer kernel (lora_hopper.cu) and the kernel
 * lab (dev/cuda/hopper_gemm.cu) are built from: mbarrier rings, TMA tile copies, wgmma from
 * shared-memory descriptors (bf16 and f16 operands, fp32 accumulators), register reallocation, and
 * the release/acquire hand-over of data between CTAs of one launch.
 *
 * Everything here assembles only for sm_90a: call it from code compiled for that target alone
 * (guard kernel bodies with __CUDA_ARCH_FEAT_SM90_ALL). Unused inline functions emit nothing, so
 * other targets of the same file build.
 */
#ifndef LF_CUDA_HOPPER_PTX_CUH
#define LF_CUDA_HOPPER_PTX_CUH

#include <cuda.h> /* CUtensorMap only */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace lf_hopper {

static __device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

static __device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
/* Ends a barrier's life, so that its bytes may be initialized again as another barrier (no
 * arrival or transaction pending on it). */
static __device__ __forceinline__ void mbar_inval(uint32_t bar)
{
    asm volatile("mbarrier.inval.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
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

/* The next stage of a ring of kStages; the phase parity flips at each wrap. */
template <int kStages> static __device__ __forceinline__ void ring_next(int &stage, uint32_t &phase)
{
    if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
    }
}

/* 2-D tile copy global → shared; completes `bar`'s transaction count. c0 is the inner coordinate.
 * Parts of the box outside the tensor arrive as zeros (and count as bytes). */
static __device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, uint32_t bar, int c0, int c1)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}

/* Shared-memory matrix descriptor of a K-major tile written by TMA with the 128-byte (kBK = 64
 * 16-bit elements) or 64-byte (kBK = 32) swizzle: rows of 2·kBK bytes, 8-row atoms (stride byte
 * offset), leading offset unused for these modes (1 by convention). Stepping K by 16 elements inside
 * the atom is +32 bytes on the start address (the hardware applies the XOR pattern). */
template <int kBK> static __device__ __forceinline__ uint64_t smem_desc(uint32_t saddr)
{
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(8 * 2 * kBK >> 4) << 32) |
           ((uint64_t)(kBK == 64 ? 1 : 2) << 62);
}
/* The descriptor of K step k (16 elements, 32 bytes) of the tile at saddr: the start address field
 * counts 16-byte units, so the step is +2k on the descriptor — one add, where smem_desc(saddr + 32k)
 * masks and shifts again for every wgmma. No carry leaves the field: shared addresses are below
 * 2^18 (228 KB) and a stage's tiles start on 1024-byte atoms. The decode and split-K forms use it
 * (H100: 64 × 4096 → 4096 −3%, 256 × 4096 → 2048 −4.5%, decode_m16 −1.4%); the persistent kernel
 * keeps smem_desc(saddr + 32k), with which mid_m1024 ran 4% faster in the same call (why is not
 * known; dev/cuda/NOTES.md, thirty-first session). */
template <int kBK> static __device__ __forceinline__ uint64_t smem_desc_k(uint32_t saddr, int k)
{
    return smem_desc<kBK>(saddr) + (uint64_t)(2 * k);
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
#define LF_WGMMA_D8_STR "{%0, %1, %2, %3, %4, %5, %6, %7}"
#define LF_WGMMA_BIND8(o)                                                                                       \
    "+f"(d[(o) + 0]), "+f"(d[(o) + 1]), "+f"(d[(o) + 2]), "+f"(d[(o) + 3]), "+f"(d[(o) + 4]), "+f"(d[(o) + 5]), \
        "+f"(d[(o) + 6]), "+f"(d[(o) + 7])
#define LF_WGMMA_BIND32(o) LF_WGMMA_BIND8(o), LF_WGMMA_BIND8((o) + 8), LF_WGMMA_BIND8((o) + 16), LF_WGMMA_BIND8((o) + 24)
/* Sixteen accumulator operands at a time, "%i, …, %i+15", joined into the lists of 32–128. */
#define LF_WGMMA_R0 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define LF_WGMMA_R16 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define LF_WGMMA_R32 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define LF_WGMMA_R48 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define LF_WGMMA_R64 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79"
#define LF_WGMMA_R80 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define LF_WGMMA_R96 "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111"
#define LF_WGMMA_R112 "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define LF_WGMMA_D32_STR "{" LF_WGMMA_R0 ", " LF_WGMMA_R16 "}"
#define LF_WGMMA_D64_STR "{" LF_WGMMA_R0 ", " LF_WGMMA_R16 ", " LF_WGMMA_R32 ", " LF_WGMMA_R48 "}"
#define LF_WGMMA_D64_BIND LF_WGMMA_BIND32(0), LF_WGMMA_BIND32(32)
#define LF_WGMMA_D96_STR \
    "{" LF_WGMMA_R0 ", " LF_WGMMA_R16 ", " LF_WGMMA_R32 ", " LF_WGMMA_R48 ", " \
        LF_WGMMA_R64 ", " LF_WGMMA_R80 "}"
#define LF_WGMMA_D96_BIND LF_WGMMA_BIND32(0), LF_WGMMA_BIND32(32), LF_WGMMA_BIND32(64)
#define LF_WGMMA_D112_STR \
    "{" LF_WGMMA_R0 ", " LF_WGMMA_R16 ", " LF_WGMMA_R32 ", " LF_WGMMA_R48 ", " \
        LF_WGMMA_R64 ", " LF_WGMMA_R80 ", " LF_WGMMA_R96 "}"
#define LF_WGMMA_D112_BIND \
    LF_WGMMA_BIND32(0), LF_WGMMA_BIND32(32), LF_WGMMA_BIND32(64), LF_WGMMA_BIND8(96), LF_WGMMA_BIND8(104)
#define LF_WGMMA_D128_STR \
    "{" LF_WGMMA_R0 ", " LF_WGMMA_R16 ", " LF_WGMMA_R32 ", " LF_WGMMA_R48 ", " \
        LF_WGMMA_R64 ", " LF_WGMMA_R80 ", " LF_WGMMA_R96 ", " LF_WGMMA_R112 "}"
#define LF_WGMMA_D128_BIND LF_WGMMA_BIND32(0), LF_WGMMA_BIND32(32), LF_WGMMA_BIND32(64), LF_WGMMA_BIND32(96)

/* The operand type in wgmma's spelling: both operands share it (bf16 or f16), accumulators are fp32. */
template <typename T> struct wgmma_type;
template <> struct wgmma_type<__nv_bfloat16> {
    static constexpr bool f16 = false;
};
template <> struct wgmma_type<__half> {
    static constexpr bool f16 = true;
};

/* One wgmma.mma_async with both operands K-major in shared memory, fp32 accumulate: the shape, the
 * operand type, the accumulators' list and bindings, the operand numbers of the two descriptors. */
#define LF_WGMMA_SS(shape, type, dstr, dbind, da_op, db_op)                                                  \
    asm volatile("wgmma.mma_async.sync.aligned." shape ".f32." type "." type " " dstr ", %" #da_op ", %" #db_op \
                 ", 1, 1, 1, 0, 0;"                                                                         \
                 : dbind                                                                                    \
                 : "l"(da), "l"(db))

/* d[64×kN] += A[64×16] · B[kN×16]ᵀ from shared memory, kN = 16 or 64 (T's accumulators) or 128
 * (the split-K form's tiles, and the persistent kernel's narrowest). */
template <int kN, typename T>
static __device__ __forceinline__ void wgmma_m64nXk16(float *d, uint64_t da, uint64_t db)
{
    static_assert(kN == 16 || kN == 64 || kN == 128, "widths: 16, 64, 128");
    if constexpr (kN == 16 && wgmma_type<T>::f16)
        LF_WGMMA_SS("m64n16k16", "f16", LF_WGMMA_D8_STR, LF_WGMMA_BIND8(0), 8, 9);
    else if constexpr (kN == 16)
        LF_WGMMA_SS("m64n16k16", "bf16", LF_WGMMA_D8_STR, LF_WGMMA_BIND8(0), 8, 9);
    else if constexpr (kN == 128 && wgmma_type<T>::f16)
        LF_WGMMA_SS("m64n128k16", "f16", LF_WGMMA_D64_STR, LF_WGMMA_D64_BIND, 64, 65);
    else if constexpr (kN == 128)
        LF_WGMMA_SS("m64n128k16", "bf16", LF_WGMMA_D64_STR, LF_WGMMA_D64_BIND, 64, 65);
    else if constexpr (wgmma_type<T>::f16)
        LF_WGMMA_SS("m64n64k16", "f16", LF_WGMMA_D32_STR, LF_WGMMA_BIND32(0), 32, 33);
    else
        LF_WGMMA_SS("m64n64k16", "bf16", LF_WGMMA_D32_STR, LF_WGMMA_BIND32(0), 32, 33);
}

/* d[64×kN] += A[64×16] · B[kN×16]ᵀ for the persistent kernel's tiles: kN = 256, or 224, 192 or 128
 * where those fill the SMs' rounds better (lf_cuda_hopper_tile_cols). */
template <int kN, typename T> static __device__ __forceinline__ void wgmma_wide(float *d, uint64_t da, uint64_t db)
{
    static_assert(kN == 256 || kN == 224 || kN == 192 || kN == 128, "wide tiles: 256, 224, 192 or 128 columns");
    if constexpr (kN == 128)
        wgmma_m64nXk16<128, T>(d, da, db);
    else if constexpr (kN == 256 && wgmma_type<T>::f16)
        LF_WGMMA_SS("m64n256k16", "f16", LF_WGMMA_D128_STR, LF_WGMMA_D128_BIND, 128, 129);
    else if constexpr (kN == 256)
        LF_WGMMA_SS("m64n256k16", "bf16", LF_WGMMA_D128_STR, LF_WGMMA_D128_BIND, 128, 129);
    else if constexpr (kN == 224 && wgmma_type<T>::f16)
        LF_WGMMA_SS("m64n224k16", "f16", LF_WGMMA_D112_STR, LF_WGMMA_D112_BIND, 112, 113);
    else if constexpr (kN == 224)
        LF_WGMMA_SS("m64n224k16", "bf16", LF_WGMMA_D112_STR, LF_WGMMA_D112_BIND, 112, 113);
    else if constexpr (wgmma_type<T>::f16)
        LF_WGMMA_SS("m64n192k16", "f16", LF_WGMMA_D96_STR, LF_WGMMA_D96_BIND, 96, 97);
    else
        LF_WGMMA_SS("m64n192k16", "bf16", LF_WGMMA_D96_STR, LF_WGMMA_D96_BIND, 96, 97);
}

/* The first `steps` K steps of 16 of one stage (+32 bytes per step inside the swizzle atom), on
 * tiles kN columns wide (wgmma_wide). */
template <int kBK, int steps, typename T, int kN = 256>
static __device__ __forceinline__ void wgmma_k16_steps(float *d, uint32_t a, uint32_t b)
{
#pragma unroll
    for (int k = 0; k < steps; k++)
        wgmma_wide<kN, T>(d, smem_desc<kBK>(a + 32 * k), smem_desc<kBK>(b + 32 * k));
}
/* k16 (≤ kSteps) steps of one stage as straight-line runs: a branch between two wgmmas costs an
 * injected fence, so each count has its own run. */
template <int kBK, int kSteps, typename T, int kN = 256>
static __device__ __forceinline__ void wgmma_stage(float *d, uint32_t a, uint32_t b, int k16)
{
    if (k16 >= kSteps)
        wgmma_k16_steps<kBK, kSteps, T, kN>(d, a, b);
    else if constexpr (kSteps > 1)
        wgmma_stage<kBK, kSteps - 1, T, kN>(d, a, b, k16);
}

/* s·t (pairs of fp32 accumulators) as 16-bit pairs hi = rn(s·t) and lo = rn(s·t − hi): hi + lo
 * carries twice the mantissa of one 16-bit value, so the LoRA term is not rounded to 8 (bf16) or 11
 * (f16) bits before it meets the output's one rounding. Pair i of an m64nN accumulator is register i
 * of the m64k16 A fragments. */
template <int kPairs, typename T>
static __device__ __forceinline__ void split_hi_lo(const float *t, float s, uint32_t *hi, uint32_t *lo)
{
#pragma unroll
    for (int i = 0; i < kPairs; i++) {
        const float v0 = s * t[2 * i], v1 = s * t[2 * i + 1];
        if constexpr (wgmma_type<T>::f16) {
            const __half2 h = __floats2half2_rn(v0, v1);
            const __half2 l = __floats2half2_rn(v0 - __low2float(h), v1 - __high2float(h));
            hi[i] = *(const uint32_t *)&h;
            lo[i] = *(const uint32_t *)&l;
        } else {
            const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
            const __nv_bfloat162 l = __floats2bfloat162_rn(v0 - __low2float(h), v1 - __high2float(h));
            hi[i] = *(const uint32_t *)&h;
            lo[i] = *(const uint32_t *)&l;
        }
    }
}

/* Hand-over of data between CTAs of one launch: the writers store with the generic proxy, the
 * readers load with TMA (the async proxy), so a proxy fence sits on both sides of the
 * release/acquire pair. */
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

/* Thread block clusters: every thread of every CTA of the cluster arrives, and waits until all
 * have (release/acquire: shared-memory writes before it are seen by every CTA's reads after it). */
static __device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
/* The same barrier without the ordering, for "every CTA is done reading the others' shared memory"
 * before any exits: those reads' values are already used, so the reads have completed. */
static __device__ __forceinline__ void cluster_sync_relaxed()
{
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
}
static __device__ __forceinline__ unsigned cluster_rank()
{
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
/* The address `saddr` of this CTA's shared memory in CTA `rank` of the cluster, for ld_cluster_f32. */
static __device__ __forceinline__ uint32_t cluster_map(uint32_t saddr, unsigned rank)
{
    uint32_t d;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(d) : "r"(saddr), "r"(rank));
    return d;
}
static __device__ __forceinline__ float ld_cluster_f32(uint32_t caddr)
{
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(caddr) : "memory");
    return v;
}
static __device__ __forceinline__ float4 ld_cluster_f32x4(uint32_t caddr)
{
    float4 v;
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(caddr)
                 : "memory");
    return v;
}

/* Register reallocation between the warpgroups of a CTA (the kernel needs a register cap at entry:
 * __launch_bounds__(threads, 1)). */
template <int R> static __device__ __forceinline__ void regs_dealloc()
{
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
}
template <int R> static __device__ __forceinline__ void regs_alloc()
{
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
}

} /* namespace lf_hopper */

#endif /* LF_CUDA_HOPPER_PTX_CUH */

/*
 * mma_sync.cuh — the warp-level tensor-core step (mma.sync m16n8k16, fp32 accumulation) the decode
 * kernels share: lora_fwd.cu's W stream, and lora_stream.cu's and lora_multi.cu's loops that feed it
 * from global memory with 16-byte loads.
 */
#ifndef LF_CUDA_MMA_SYNC_CUH
#define LF_CUDA_MMA_SYNC_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ void mma16816(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                               uint32_t a3, uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                                    uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__half>(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                             uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* A 16-byte read of data no kernel of the launch writes, kept out of L1 (read once by this SM). */
__device__ __forceinline__ uint4 ld_stream(const void *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* One 32-wide K step of a warp. The sum over k does not care which k sits where in the MMA, so
 * each thread's 16-byte vector (8 consecutive k of one row) feeds two m16n8k16: thread (g, q)
 * holds physical k = q·8 + 4j + {0,1,2,3} as the logical k {2q, 2q+1, 2q+8, 2q+9} of MMA j, in the
 * A fragment (W rows g and g+8) and in the B fragment (token g) alike. */
template <typename T, int NT, int RT>
__device__ __forceinline__ void decode_step(float (&acc)[RT][NT][4], const uint4 (&wv)[RT][2], const uint4 (&xv)[NT])
{
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            mma16816<T>(acc[rt][nt], wv[rt][0].x, wv[rt][1].x, wv[rt][0].y, wv[rt][1].y, xv[nt].x, xv[nt].y);
            mma16816<T>(acc[rt][nt], wv[rt][0].z, wv[rt][1].z, wv[rt][0].w, wv[rt][1].w, xv[nt].z, xv[nt].w);
        }
}

#endif /* LF_CUDA_MMA_SYNC_CUH */

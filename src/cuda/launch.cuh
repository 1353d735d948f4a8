/*
 * launch.cuh — kernel launch with programmatic dependent launch (PDL), shared by the backend's
 * kernel files.
 *
 * With PDL (sm_90) a kernel may start while the one before it in the stream is still running. A
 * kernel launched this way must call lf_pdl_wait() before it reads anything the kernels before it
 * wrote; lf_pdl_release() lets the next kernel start early. Every kernel here waits first and only
 * then releases: so whatever the next kernel reads before its own wait was written by kernels that
 * have completed. Without the launch attribute both are no-ops.
 */
#ifndef LF_CUDA_LAUNCH_CUH
#define LF_CUDA_LAUNCH_CUH

#include <cuda_runtime.h>

__device__ __forceinline__ void lf_pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void lf_pdl_release()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

/* Launches kernel<<<grid, threads, smem, st>>>(args...), with PDL when pdl. */
template <typename... KArgs, typename... Args>
cudaError_t lf_cuda_launch(void (*kernel)(KArgs...), dim3 grid, unsigned threads, size_t smem, bool pdl,
                           cudaStream_t st, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

#endif /* LF_CUDA_LAUNCH_CUH */

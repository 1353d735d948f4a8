/*
 * launch.cuh — kernel launch with programmatic dependent launch (PDL), shared by the backend's
 * kernel files.
 *
 * With PDL (sm_90) a kernel may start while the one before it in the stream is still running. A
 * kernel launched this way must call lf_pdl_wait() before it reads anything the kernels before it
 * wrote; lf_pdl_release() lets the next kernel start early. A kernel that releases before its own
 * wait lets the next one run beside the kernel before it, so that next one may read nothing but
 * the layer's W before its wait: no kernel of a call writes W (the Hopper decode and split-K
 * forms release first, and load their first stages of W while the call before finishes). A kernel
 * that reads more before its wait (the decode kernel's x, the many-adapter expand's token map) has
 * a primary of its own op that waits first and only then releases. Without the launch attribute
 * both are no-ops.
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

/* Launches kernel<<<grid, threads, smem, st>>>(args...), with PDL when pdl, in thread block clusters
 * of `cluster` consecutive blocks along x when cluster > 1 (sm_90; grid.x a multiple of it). */
template <typename... KArgs, typename... Args>
cudaError_t lf_cuda_launch_clustered(void (*kernel)(KArgs...), dim3 grid, unsigned threads, size_t smem, bool pdl,
                                     unsigned cluster, cudaStream_t st, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    if (pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster;
        attr[n].val.clusterDim.y = 1;
        attr[n++].val.clusterDim.z = 1;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

/* Launches kernel<<<grid, threads, smem, st>>>(args...), with PDL when pdl. */
template <typename... KArgs, typename... Args>
cudaError_t lf_cuda_launch(void (*kernel)(KArgs...), dim3 grid, unsigned threads, size_t smem, bool pdl,
                           cudaStream_t st, Args... args)
{
    return lf_cuda_launch_clustered(kernel, grid, threads, smem, pdl, 1u, st, args...);
}

#endif /* LF_CUDA_LAUNCH_CUH */

/*
 * cluster_slots.cu — how many CTAs of one-CTA-per-SM kernels (384 threads, the Hopper kernels'
 * ~225 KB of shared memory) run at once in thread block clusters of 1 to 8 and 16 on this GPU:
 * the GPCs' SM counts decide it, and the split-K form's plan (heuristics.h,
 * lf_cuda_hopper_mid_split) needs every CTA of a launch resident. Standalone:
 *   nvcc -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/cluster_slots.cu -o cluster_slots
 */
#include <cstdio>
#include <cuda_runtime.h>

__global__ void __launch_bounds__(384, 1) probe(int *out)
{
    extern __shared__ int smem[];
    if (threadIdx.x == 0 && out)
        out[blockIdx.x] = smem[0];
}

int main()
{
    const size_t smem = 225 * 1024;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess ||
        cudaFuncSetAttribute(probe, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
        fprintf(stderr, "setup: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 1;
    }
    printf("%s, %d SMs, %zu KB of shared memory per CTA\n", prop.name, prop.multiProcessorCount, smem / 1024);
    for (int size = 1; size <= 16; size = size < 8 ? size + 1 : 2 * size) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(size);
        cfg.blockDim = dim3(384);
        cfg.dynamicSmemBytes = smem;
        cudaLaunchAttribute attr;
        attr.id = cudaLaunchAttributeClusterDimension;
        attr.val.clusterDim.x = size;
        attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        int clusters = 0;
        const cudaError_t e = cudaOccupancyMaxActiveClusters(&clusters, probe, &cfg);
        printf("clusters of %2d: %3d at once = %3d CTAs%s%s\n", size, clusters, clusters * size,
               e != cudaSuccess ? "  error: " : "", e != cudaSuccess ? cudaGetErrorString(e) : "");
    }
    return 0;
}

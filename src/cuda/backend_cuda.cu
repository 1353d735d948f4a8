/*
 * backend_cuda.cu — the CUDA backend's vtable: context setup, memory, copies, timing, and the
 * cuBLAS baselines the benchmarks print beside every result.
 *
 * All work of a context goes to one stream (lf_cuda_stream): the user's, or a private blocking
 * stream, which still orders against the legacy default stream the way the API promises but, unlike
 * it, can be captured into a graph.
 */
#include "common.cuh"
#include "lora_multi.cuh"

#include <stdlib.h>
#include <string.h>

/* cuBLAS's workspace, owned by the context so that cuBLAS never allocates during graph capture. */
#define LF_CUBLAS_WORKSPACE (32u << 20)

/* Asked once per process. A function-local static is initialized exactly once even when several
 * threads create contexts at the same time. */
extern "C" int lf_cuda_device_present(void)
{
    static const int present = [] {
        int count = 0;
        const cudaError_t e = cudaGetDeviceCount(&count); /* no driver: an error, not a crash */
        if (e != cudaSuccess)
            cudaGetLastError();
        return e == cudaSuccess && count > 0 ? 1 : 0;
    }();
    return present;
}

/* ---- lifetime and memory ------------------------------------------------------------------------ */

static void cuda_destroy(lf_context *ctx)
{
    lf_cuda_state *cs = lf_cuda_state_of(ctx);
    if (!cs)
        return;
    if (cs->cublas)
        cublasDestroy(cs->cublas);
    if (cs->cublas_ws)
        cudaFree(cs->cublas_ws);
    if (cs->own_stream)
        cudaStreamDestroy(cs->own_stream);
    free(cs);
    ctx->backend_state = NULL;
}

static lf_status cuda_init_state(lf_context *ctx, lf_cuda_state *cs)
{
    int dev = 0;
    cudaDeviceProp prop;
    LF_CUDA_CHECK(ctx, cudaGetDevice(&dev));
    LF_CUDA_CHECK(ctx, cudaGetDeviceProperties(&prop, dev));
    const size_t len = strnlen(prop.name, sizeof ctx->device_name - 1);
    memcpy(ctx->device_name, prop.name, len);
    ctx->device_name[len] = '\0';
    cs->device = dev;
    cs->sm_count = prop.multiProcessorCount;
    cs->cc_major = prop.major;
    /* A test knob: LF_CUDA_MULTI_GRID_Y=G caps the many-adapter shrink's and expand's tile groups
     * at G blocks, so that small shapes run the kernels' loops over several tiles a block. */
    const char *cap = getenv("LF_CUDA_MULTI_GRID_Y");
    cs->multi_grid_cap = cap ? atoi(cap) : 0;
    LF_CUDA_CHECK(ctx, cudaStreamCreate(&cs->own_stream));
    LF_CUDA_CHECK(ctx, cudaMalloc(&cs->cublas_ws, LF_CUBLAS_WORKSPACE));
    cs->cublas_ws_bytes = LF_CUBLAS_WORKSPACE;
    LF_CUBLAS_CHECK(ctx, cublasCreate(&cs->cublas));
    lf_cuda_lora_fwd_setup(cs);
    return LF_OK;
}

static lf_status cuda_init(lf_context *ctx)
{
    lf_cuda_state *cs = (lf_cuda_state *)calloc(1, sizeof *cs);
    if (!cs)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_context_create: out of host memory");
    ctx->backend_state = cs;
    lf_status st = cuda_init_state(ctx, cs);
    if (st != LF_OK)
        cuda_destroy(ctx);
    return st;
}

static lf_status cuda_alloc(lf_context *ctx, void **ptr, size_t bytes)
{
    cudaError_t e = cudaMalloc(ptr, bytes);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        *ptr = NULL;
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "cudaMalloc of %zu bytes: out of device memory", bytes);
    }
    LF_CUDA_CHECK(ctx, e);
    return LF_OK;
}

static lf_status cuda_release(lf_context *ctx, void *ptr)
{
    LF_CUDA_CHECK(ctx, cudaFree(ptr));
    return LF_OK;
}

static lf_status cuda_copy(lf_context *ctx, void *dst, const void *src, size_t bytes, lf_copy_kind kind)
{
    const cudaMemcpyKind k = kind == LF_COPY_HOST_TO_DEVICE   ? cudaMemcpyHostToDevice
                             : kind == LF_COPY_DEVICE_TO_HOST ? cudaMemcpyDeviceToHost
                                                              : cudaMemcpyDeviceToDevice;
    const cudaStream_t st = lf_cuda_stream(ctx);
    LF_CUDA_CHECK(ctx, cudaMemcpyAsync(dst, src, bytes, k, st));
    LF_CUDA_CHECK(ctx, cudaStreamSynchronize(st));
    return LF_OK;
}

static lf_status cuda_synchronize(lf_context *ctx)
{
    LF_CUDA_CHECK(ctx, cudaStreamSynchronize(lf_cuda_stream(ctx)));
    return LF_OK;
}

/* ---- cuBLAS ------------------------------------------------------------------------------------- */

/* cuBLAS is column-major: row-major out[m, n_out] is column-major outᵀ [n_out, m] = w' · xᵀ, where
 * row-major x [m, k] is column-major xᵀ [k, m] (ld ldx), and row-major w is column-major wᵀ: a PEFT
 * weight [n_out, k] becomes [k, n_out] and needs op T; a KN weight [k, n_out] becomes [n_out, k]. */
/* Binds the context's stream (and our workspace) to the cuBLAS handle, and the SMs it may use. */
static lf_status cublas_bind(lf_context *ctx)
{
    lf_cuda_state *cs = lf_cuda_state_of(ctx);
    const cudaStream_t st = lf_cuda_stream(ctx);
    if (cs->cublas_stream != st || !cs->cublas_stream) {
        /* cublasSetStream resets the workspace to cuBLAS's own pool: rebind ours after it. */
        LF_CUBLAS_CHECK(ctx, cublasSetStream(cs->cublas, st));
        LF_CUBLAS_CHECK(ctx, cublasSetWorkspace(cs->cublas, cs->cublas_ws, cs->cublas_ws_bytes));
        cs->cublas_stream = st;
    }
    const int target = lf_cuda_compute_sms(cs) < cs->sm_count ? lf_cuda_compute_sms(cs) : 0;
    if (cs->cublas_sm_target != target) {
        LF_CUBLAS_CHECK(ctx, cublasSetSmCountTarget(cs->cublas, target));
        cs->cublas_sm_target = target;
    }
    return LF_OK;
}

static cublasComputeType_t compute_type(lf_context *ctx, cudaDataType_t in_type)
{
    return in_type == CUDA_R_32F && ctx->allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

lf_status lf_cuda_gemm_xwt(lf_context *ctx, cudaDataType_t in_type, cudaDataType_t out_type, int w_nk,
                           int64_t m, int64_t n_out, int64_t k, const void *x, int64_t ldx, const void *w,
                           int64_t ldw, float beta, void *out, int64_t ldo)
{
    lf_cuda_state *cs = lf_cuda_state_of(ctx);
    lf_status s = cublas_bind(ctx);
    if (s != LF_OK)
        return s;
    const cublasComputeType_t compute = compute_type(ctx, in_type);
    const float alpha = 1.0f;
    LF_CUBLAS_CHECK(ctx, cublasGemmEx(cs->cublas, w_nk ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, (int)n_out, (int)m,
                                      (int)k, &alpha, w, in_type, (int)ldw, x, in_type, (int)ldx, &beta, out,
                                      out_type, (int)ldo, compute, CUBLAS_GEMM_DEFAULT));
    return LF_OK;
}

lf_status lf_cuda_gemm_xwt_ksplit(lf_context *ctx, cudaDataType_t in_type, int w_nk, int64_t m, int64_t n_out,
                                  int64_t k, int batch, const void *x, int64_t ldx, int64_t stride_x,
                                  const void *w, int64_t ldw, int64_t stride_w, float *out, int64_t ldo,
                                  int64_t stride_o)
{
    lf_cuda_state *cs = lf_cuda_state_of(ctx);
    lf_status s = cublas_bind(ctx);
    if (s != LF_OK)
        return s;
    const float alpha = 1.0f, beta = 0.0f;
    LF_CUBLAS_CHECK(ctx, cublasGemmStridedBatchedEx(cs->cublas, w_nk ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N,
                                                    (int)n_out, (int)m, (int)k, &alpha, w, in_type, (int)ldw,
                                                    stride_w, x, in_type, (int)ldx, stride_x, &beta, out,
                                                    CUDA_R_32F, (int)ldo, stride_o, batch,
                                                    compute_type(ctx, in_type), CUBLAS_GEMM_DEFAULT));
    return LF_OK;
}

/* ---- timing ------------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define LF_TIME_REPS 7

static lf_status time_reps(lf_context *ctx, cudaStream_t st, cudaGraphExec_t exec, lf_timed_fn fn, void *arg,
                           int iters, double *us)
{
    cudaEvent_t e0, e1;
    LF_CUDA_CHECK(ctx, cudaEventCreate(&e0));
    cudaError_t e = cudaEventCreate(&e1);
    if (e != cudaSuccess) {
        cudaEventDestroy(e0);
        LF_CUDA_CHECK(ctx, e);
    }
    double t[LF_TIME_REPS];
    lf_status s = LF_OK;
    for (int rep = 0; rep < LF_TIME_REPS && s == LF_OK; rep++) {
        if ((e = cudaEventRecord(e0, st)) != cudaSuccess)
            break;
        if (exec) {
            e = cudaGraphLaunch(exec, st);
        } else {
            for (int i = 0; i < iters && s == LF_OK; i++)
                s = fn(arg);
        }
        float ms = 0;
        if (e != cudaSuccess || s != LF_OK || (e = cudaEventRecord(e1, st)) != cudaSuccess ||
            (e = cudaEventSynchronize(e1)) != cudaSuccess || (e = cudaEventElapsedTime(&ms, e0, e1)) != cudaSuccess)
            break;
        t[rep] = ms * 1000.0 / iters;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (s != LF_OK)
        return s;
    LF_CUDA_CHECK(ctx, e);
    qsort(t, LF_TIME_REPS, sizeof t[0], cmp_double);
    *us = t[LF_TIME_REPS / 2];
    return LF_OK;
}

static lf_status cuda_time_calls(lf_context *ctx, lf_timed_fn fn, void *arg, int iters, lf_timing_mode mode,
                                 double *us_per_call)
{
    if (iters < 1)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "time_calls: iters = %d", iters);
    const cudaStream_t st = lf_cuda_stream(ctx);
    for (int i = 0; i < 3; i++) { /* warm-up: module load, plans, cuBLAS heuristics */
        lf_status s = fn(arg);
        if (s != LF_OK)
            return s;
    }
    LF_CUDA_CHECK(ctx, cudaStreamSynchronize(st));
    if (mode == LF_TIME_HOST_LOOP)
        return time_reps(ctx, st, NULL, fn, arg, iters, us_per_call);

    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    LF_CUDA_CHECK(ctx, cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    lf_status s = LF_OK;
    for (int i = 0; i < iters && s == LF_OK; i++)
        s = fn(arg);
    cudaError_t e = cudaStreamEndCapture(st, &graph);
    if (s != LF_OK) {
        if (graph)
            cudaGraphDestroy(graph);
        return s;
    }
    LF_CUDA_CHECK(ctx, e);
    e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    LF_CUDA_CHECK(ctx, e);
    e = cudaGraphLaunch(exec, st); /* warm replay: uploads the graph */
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(st);
    if (e == cudaSuccess)
        s = time_reps(ctx, st, exec, fn, arg, iters, us_per_call);
    cudaGraphExecDestroy(exec);
    LF_CUDA_CHECK(ctx, e);
    return s;
}

/* ---- baselines ---------------------------------------------------------------------------------- */

/* The PEFT sequence keeps its intermediates in the dtype, as PyTorch does: T [m, r] and U [m, n]. */
static size_t cuda_baseline_workspace_bytes(const lf_lora_problem *p)
{
    const size_t es = lf_dtype_size(p->dtype);
    return ((size_t)p->m * p->rank * es + 255) / 256 * 256 + (size_t)p->m * p->n * es;
}

static lf_status cuda_baseline_base_gemm(lf_context *ctx, const lf_lora_problem *p, void *ws)
{
    (void)ws;
    if (!p->w)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "baseline_base_gemm: the problem has no W");
    const cudaDataType_t t = lf_cuda_data_type(p->dtype);
    return lf_cuda_gemm_xwt(ctx, t, t, p->layout == LF_LAYOUT_PEFT, p->m, p->n, p->k, p->x, p->ldx, p->w, p->ldw,
                            0.0f, p->y, p->ldy);
}

/* lora_B(lora_A(x)) * scaling: PyTorch's separate elementwise kernel. */
template <typename T> __global__ void scale_kernel(T *u, int64_t count, float s)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        u[i] = lf_dt<T>::from_f32(lf_dt<T>::to_f32(u[i]) * s);
}

/* result = result + lora: another elementwise kernel, y strided. */
template <typename T> __global__ void add_kernel(T *y, int64_t ldy, const T *u, int64_t m, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < m * n; i += (int64_t)gridDim.x * blockDim.x) {
        T *yi = y + (i / n) * ldy + i % n;
        *yi = lf_dt<T>::from_f32(lf_dt<T>::to_f32(*yi) + lf_dt<T>::to_f32(u[i]));
    }
}

template <typename T> static void launch_scale_add(const lf_lora_problem *p, void *u, cudaStream_t st)
{
    const int64_t count = p->m * p->n;
    const unsigned blocks = (unsigned)((count + 255) / 256 < 4096 ? (count + 255) / 256 : 4096);
    scale_kernel<T><<<blocks, 256, 0, st>>>((T *)u, count, p->scale);
    add_kernel<T><<<blocks, 256, 0, st>>>((T *)p->y, p->ldy, (const T *)u, p->m, p->n);
}

static lf_status cuda_baseline_unfused(lf_context *ctx, const lf_lora_problem *p, void *ws)
{
    const cudaDataType_t t = lf_cuda_data_type(p->dtype);
    const int peft = p->layout == LF_LAYOUT_PEFT;
    const size_t es = lf_dtype_size(p->dtype);
    void *tb = ws, *ub = (char *)ws + ((size_t)p->m * p->rank * es + 255) / 256 * 256;
    lf_status s;
    if (p->w && (s = lf_cuda_gemm_xwt(ctx, t, t, peft, p->m, p->n, p->k, p->x, p->ldx, p->w, p->ldw, 0.0f, p->y,
                                      p->ldy)) != LF_OK)
        return s;
    if ((s = lf_cuda_gemm_xwt(ctx, t, t, peft, p->m, p->rank, p->k, p->x, p->ldx, p->a, p->lda, 0.0f, tb,
                              p->rank)) != LF_OK)
        return s;
    if ((s = lf_cuda_gemm_xwt(ctx, t, t, peft, p->m, p->n, p->rank, tb, p->rank, p->b, p->ldb, 0.0f, ub, p->n)) != LF_OK)
        return s;
    const cudaStream_t st = lf_cuda_stream(ctx);
    switch (p->dtype) {
    case LF_F32:
        launch_scale_add<float>(p, ub, st);
        break;
    case LF_F16:
        launch_scale_add<__half>(p, ub, st);
        break;
    case LF_BF16:
        launch_scale_add<__nv_bfloat16>(p, ub, st);
        break;
    }
    LF_CUDA_CHECK_LAUNCH(ctx);
    return LF_OK;
}

/* Device-to-device copy of 1 GiB: bytes read + written over the median time of several copies. */
static lf_status cuda_measure_copy_bandwidth(lf_context *ctx, double *gbps)
{
    const size_t bytes = (size_t)1 << 30;
    const cudaStream_t st = lf_cuda_stream(ctx);
    void *src = NULL, *dst = NULL;
    lf_status s = cuda_alloc(ctx, &src, bytes);
    if (s != LF_OK)
        return s;
    if ((s = cuda_alloc(ctx, &dst, bytes)) != LF_OK) {
        cudaFree(src);
        return s;
    }
    cudaEvent_t e0 = NULL, e1 = NULL;
    double t[LF_TIME_REPS];
    cudaError_t e = cudaMemsetAsync(src, 0x3c, bytes, st);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st); /* warm-up */
    if (e == cudaSuccess)
        e = cudaEventCreate(&e0);
    if (e == cudaSuccess)
        e = cudaEventCreate(&e1);
    for (int rep = 0; rep < LF_TIME_REPS && e == cudaSuccess; rep++) {
        float ms = 0;
        if ((e = cudaEventRecord(e0, st)) != cudaSuccess ||
            (e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st)) != cudaSuccess ||
            (e = cudaEventRecord(e1, st)) != cudaSuccess || (e = cudaEventSynchronize(e1)) != cudaSuccess ||
            (e = cudaEventElapsedTime(&ms, e0, e1)) != cudaSuccess)
            break;
        t[rep] = ms / 1000.0;
    }
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    cudaFree(src);
    cudaFree(dst);
    LF_CUDA_CHECK(ctx, e);
    qsort(t, LF_TIME_REPS, sizeof t[0], cmp_double);
    *gbps = 2.0 * (double)bytes / t[LF_TIME_REPS / 2] / 1e9;
    return LF_OK;
}

/* merge.cu */
lf_status lf_cuda_lora_merge(lf_context *ctx, const lf_merge_problem *p);

static const lf_backend_ops cuda_ops = {
    LF_BACKEND_CUDA,
    cuda_init,
    cuda_destroy,
    lf_cuda_lora_plan,
    lf_cuda_lora_forward,
    cuda_alloc,
    cuda_release,
    cuda_copy,
    cuda_synchronize,
    cuda_time_calls,
    cuda_baseline_workspace_bytes,
    cuda_baseline_base_gemm,
    cuda_baseline_unfused,
    lf_cuda_own_base_gemm,
    cuda_measure_copy_bandwidth,
    lf_cuda_lora_merge,
    lf_cuda_adapter_set_init,
    lf_cuda_adapter_set_destroy,
    lf_cuda_adapter_load_device,
    lf_cuda_lora_multi,
    lf_cuda_multi_unfused_workspace_bytes,
    lf_cuda_multi_unfused,
};

extern "C" const lf_backend_ops *lf_cuda_backend_ops(void) { return &cuda_ops; }

/*
 * common.cuh — what every CUDA file of the backend shares: dtype traits (load to fp32, round once
 * on store exactly like lf_dtype.h does on the host), the checked-call macros that turn CUDA and
 * cuBLAS failures into LF_ERR_DEVICE with the runtime's text, and the backend's private state.
 */
#ifndef LF_CUDA_COMMON_CUH
#define LF_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../lf_internal.h"

/* Backend state behind ctx->backend_state. */
typedef struct lf_cuda_state {
    cublasHandle_t cublas;
    cudaStream_t cublas_stream; /* the stream cuBLAS was last bound to */
    void *cublas_ws;            /* cuBLAS's workspace: ours, so that graph capture never allocates */
    size_t cublas_ws_bytes;
    cudaStream_t own_stream; /* used while ctx->stream is NULL: the legacy stream cannot be captured */
    int device; /* current at creation: the handle, streams and workspace live there */
    int sm_count;
    int cc_major;  /* 9 and up: programmatic dependent launch */
    int decode_ok; /* the decode kernel's shared memory fits this device (not on sm_86/89) */
    int hopper_ok; /* lora_hopper.cu's kernel runs on this device and hopper_ctl is ready */
    unsigned *hopper_ctl; /* its control words: the tail of cublas_ws, which cuBLAS is not given */
    int hopper_mid_slots[9]; /* its split-K form: [s] CTAs that run at once in clusters of s (1..8) */
    int stream_ok;           /* lora_stream.cu's kernel runs here (with hopper_ok: where it was measured) */
    unsigned *stream_ctl;    /* its control words, after hopper_ctl's */
    int multi_grid_cap;      /* LF_CUDA_MULTI_GRID_Y (tests): the many-adapter kernels' tile groups, 0: none */
    /* SMs the compute kernels leave free while a row-parallel layer's all-reduce runs beside them
     * (tp_nccl.cu sets it from a chunk's all-reduce to the layer's join); 0 otherwise. The
     * persistent kernels and cuBLAS keep off that many SMs, so the all-reduce's kernel finds SMs to
     * start on instead of waiting for the next chunk's compute to end. */
    int sm_reserve;
    int cublas_sm_target; /* what cuBLAS was last told (cublasSetSmCountTarget; 0: all) */
} lf_cuda_state;

/* SMs a persistent compute kernel may hold now (see sm_reserve). */
static inline int lf_cuda_compute_sms(const lf_cuda_state *cs)
{
    return cs->sm_reserve > 0 && cs->sm_reserve < cs->sm_count ? cs->sm_count - cs->sm_reserve : cs->sm_count;
}

static inline lf_cuda_state *lf_cuda_state_of(lf_context *ctx) { return (lf_cuda_state *)ctx->backend_state; }

/* The stream all work of ctx goes to: the user's, else the private one (never the legacy default
 * stream, which cannot be captured into a graph). */
static inline cudaStream_t lf_cuda_stream(lf_context *ctx)
{
    return ctx->stream ? (cudaStream_t)ctx->stream : lf_cuda_state_of(ctx)->own_stream;
}

/* Returns LF_ERR_DEVICE with the runtime's message from the enclosing function on failure. */
#define LF_CUDA_CHECK(ctx, call)                                                                     \
    do {                                                                                             \
        cudaError_t lf_e_ = (call);                                                                  \
        if (lf_e_ != cudaSuccess)                                                                    \
            return lf_fail((ctx), LF_ERR_DEVICE, "%s failed: %s (%s)", #call,                        \
                           cudaGetErrorString(lf_e_), cudaGetErrorName(lf_e_));                      \
    } while (0)

#define LF_CUBLAS_CHECK(ctx, call)                                                                   \
    do {                                                                                             \
        cublasStatus_t lf_s_ = (call);                                                               \
        if (lf_s_ != CUBLAS_STATUS_SUCCESS)                                                          \
            return lf_fail((ctx), LF_ERR_DEVICE, "%s failed: %s", #call, cublasGetStatusString(lf_s_)); \
    } while (0)

/* After a kernel launch: launch-configuration errors show up here, not at the <<<>>>. */
#define LF_CUDA_CHECK_LAUNCH(ctx) LF_CUDA_CHECK(ctx, cudaGetLastError())

/* ---- dtype traits ----------------------------------------------------------------------------- */

template <typename T> struct lf_dt;

template <> struct lf_dt<float> {
    static constexpr int vec = 4; /* elements per 16-byte vector */
    static __device__ __forceinline__ float load(const float *p) { return *p; }
    static __device__ __forceinline__ float to_f32(float v) { return v; }
    static __device__ __forceinline__ float from_f32(float v) { return v; }
};

template <> struct lf_dt<__half> {
    static constexpr int vec = 8;
    static __device__ __forceinline__ float load(const __half *p) { return __half2float(*p); }
    static __device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_f32(float v) { return __float2half_rn(v); }
};

template <> struct lf_dt<__nv_bfloat16> {
    static constexpr int vec = 8;
    static __device__ __forceinline__ float load(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
    static __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f32(float v) { return __float2bfloat16_rn(v); }
};

/* ---- what the backend's files call in each other ------------------------------------------------ */

/* out[m, n_out] = x[m, k] · wᵀ + beta·out through cuBLAS, row-major views with row strides.
 * w is [n_out, k] when w_nk (PEFT weights), else [k, n_out]. Inputs are in_type, out is out_type
 * (fp32 accumulation; f32 inputs use true fp32 unless ctx->allow_tf32). */
lf_status lf_cuda_gemm_xwt(lf_context *ctx, cudaDataType_t in_type, cudaDataType_t out_type, int w_nk,
                           int64_t m, int64_t n_out, int64_t k, const void *x, int64_t ldx, const void *w,
                           int64_t ldw, float beta, void *out, int64_t ldo);
/* The same, split along K into `batch` slices of k each (x, w, out advance by stride_x, stride_w,
 * stride_o elements per slice): out holds per-slice partial products. One strided-batched call, so
 * a thin, deep product (T = x·Aᵀ) runs on batch times more blocks. */
lf_status lf_cuda_gemm_xwt_ksplit(lf_context *ctx, cudaDataType_t in_type, int w_nk, int64_t m, int64_t n_out,
                                  int64_t k, int batch, const void *x, int64_t ldx, int64_t stride_x,
                                  const void *w, int64_t ldw, int64_t stride_w, float *out, int64_t ldo,
                                  int64_t stride_o);

/* lora_fwd.cu: the plan and forward entries of the backend vtable. */
lf_status lf_cuda_lora_plan(lf_context *ctx, const lf_lora_problem *p, lf_plan *plan);
lf_status lf_cuda_lora_forward(lf_context *ctx, const lf_plan *plan, const lf_lora_problem *p);
lf_status lf_cuda_own_base_gemm(lf_context *ctx, const lf_lora_problem *p);
/* Raises the shared-memory limits of the kernels that need more than 48 KB; once per context, at
 * init, so that no call (possibly under graph capture) has to. Sets state->decode_ok, and
 * state->hopper_ok with the Hopper kernel's control words. */
void lf_cuda_lora_fwd_setup(lf_cuda_state *state);

/* lora_fwd.cu: the many-adapter layer at decode sizes through the decode kernels (lora_multi.cu
 * takes it where it fits): T's partials go to t_ws, lf_cuda_decode_multi_workspace bytes. */
bool lf_cuda_decode_multi_fits(lf_context *ctx, const lf_multi_problem *q);
size_t lf_cuda_decode_multi_workspace(const lf_multi_problem *q);
lf_status lf_cuda_decode_multi(lf_context *ctx, const lf_multi_problem *q, float *t_ws);
/* lora_fwd.cu: the same on the plain-load stream (lora_stream.cu), taken before the decode kernels
 * where it fits; no workspace. */
bool lf_cuda_multi_stream_fits(lf_context *ctx, const lf_multi_problem *q);
lf_status lf_cuda_multi_stream(lf_context *ctx, const lf_multi_problem *q);

static inline cudaDataType_t lf_cuda_data_type(lf_dtype d)
{
    return d == LF_F32 ? CUDA_R_32F : d == LF_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

#endif /* LF_CUDA_COMMON_CUH */

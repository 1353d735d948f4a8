/*
 * lf_internal.h — what the front end (lorafuse.c), the backends, the tests and the CLI share, and
 * users of the library never see.
 *
 * Flow of one call: lorafuse.c validates the public views and turns them into an lf_lora_problem
 * (plain pointers, sizes and strides, everything already checked), finds or builds the plan for its
 * lf_plan_key in the context's plan cache (plan.c), then hands both to the context's backend.
 */
#ifndef LF_INTERNAL_H
#define LF_INTERNAL_H

#include "lorafuse.h"

#include <stdarg.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One validated LoRA problem: y = beta·y + x·Wᵀ + bias + scale·(x·Aᵀ)·Bᵀ.
 * Leading dimensions (ld*) are row strides in elements. Layouts as in lf_layout:
 *   PEFT: w [n, k], a [rank, k], b [n, rank];  KN: w [k, n], a [k, rank], b [rank, n]. */
typedef struct lf_lora_problem {
    lf_layout layout;
    lf_dtype dtype;
    int64_t m, k, n, rank;
    const void *x;
    int64_t ldx;
    const void *w; /* NULL: the LoRA delta alone */
    int64_t ldw;
    const void *bias; /* NULL: no bias; else n contiguous elements */
    const void *a;
    int64_t lda;
    const void *b;
    int64_t ldb;
    float scale;
    float beta;
    void *y;
    int64_t ldy;
} lf_lora_problem;

/* Plan-key flags: the properties of a call that change which implementation fits. */
enum {
    LF_PLAN_HAS_W = 1u << 0,
    LF_PLAN_HAS_BIAS = 1u << 1,
    LF_PLAN_BETA_NONZERO = 1u << 2,
    LF_PLAN_ALIGNED16 = 1u << 3 /* every pointer and row stride is a multiple of 16 bytes */
};

typedef enum lf_op { LF_OP_LORA_FORWARD = 0 } lf_op;

typedef struct lf_plan_key {
    lf_op op;
    lf_dtype dtype;
    lf_layout layout;
    uint32_t flags;
    int64_t m, k, n, rank;
} lf_plan_key;

/* What a backend decided for one key. `impl` and `param` mean what the backend says they mean;
 * the workspace is the context's (grown once when the plan is built, never in a steady call). */
typedef struct lf_plan {
    lf_plan_key key;
    int impl;
    int64_t param[6];
    size_t workspace_bytes;
} lf_plan;

/* How lf_backend_ops.time_calls times a function. */
typedef enum lf_timing_mode {
    LF_TIME_GRAPH = 0,    /* CUDA: replay of a captured graph; CPU: same as HOST_LOOP */
    LF_TIME_HOST_LOOP = 1 /* calls issued one after another from the host */
} lf_timing_mode;

typedef lf_status (*lf_timed_fn)(void *arg);

/* A backend: the dispatcher's view of the CPU or CUDA implementation. */
typedef struct lf_backend_ops {
    lf_backend kind;
    lf_status (*init)(lf_context *ctx);
    void (*destroy)(lf_context *ctx);
    /* Chooses implementation and blocking for p; sets plan->workspace_bytes. */
    lf_status (*plan)(lf_context *ctx, const lf_lora_problem *p, lf_plan *plan);
    /* Runs p with a plan made for its key; ctx->workspace holds at least plan->workspace_bytes. */
    lf_status (*lora_forward)(lf_context *ctx, const lf_plan *plan, const lf_lora_problem *p);
    lf_status (*alloc)(lf_context *ctx, void **ptr, size_t bytes);
    lf_status (*release)(lf_context *ctx, void *ptr);
    lf_status (*copy)(lf_context *ctx, void *dst, const void *src, size_t bytes, lf_copy_kind kind);
    lf_status (*synchronize)(lf_context *ctx);
    /* Benchmark support (used by the CLI, not the public API). */
    /* Per-call time of fn in µs: the median of `iters` timed calls on the CPU; on CUDA the mean
     * over one graph replay (or host loop) of `iters` calls, median of several repetitions. */
    lf_status (*time_calls)(lf_context *ctx, lf_timed_fn fn, void *arg, int iters,
                            lf_timing_mode mode, double *us_per_call);
    /* Baselines measured beside the fused op: the base GEMM alone (y = x·Wᵀ through cuBLAS/CBLAS)
     * and the unfused sequence PyTorch/PEFT runs. `ws` holds baseline_workspace_bytes(p). */
    size_t (*baseline_workspace_bytes)(const lf_lora_problem *p);
    lf_status (*baseline_base_gemm)(lf_context *ctx, const lf_lora_problem *p, void *ws);
    lf_status (*baseline_unfused)(lf_context *ctx, const lf_lora_problem *p, void *ws);
    /* Copy bandwidth of the backend's memory in GB/s (bytes read + bytes written, per second), from
     * a large buffer-to-buffer copy; the ceiling memory-bound results are reported against. */
    lf_status (*measure_copy_bandwidth)(lf_context *ctx, double *gbps);
} lf_backend_ops;

#define LF_PLAN_CACHE_SIZE 64
#define LF_ERROR_CAPACITY 512

struct lf_context {
    const lf_backend_ops *ops;
    void *backend_state; /* owned by the backend */
    int threads;         /* CPU workers; 0 = one per core */
    int allow_tf32;
    void *stream; /* cudaStream_t for CUDA contexts */
    /* Plan cache: a fixed ring, so lookups never allocate. */
    lf_plan plans[LF_PLAN_CACHE_SIZE];
    int plan_count;
    int plan_next; /* slot the next new plan replaces once the ring is full */
    uint64_t plans_built; /* how many plans were built: tests check that repeats reuse them */
    void *workspace;      /* backend memory shared by all plans */
    size_t workspace_bytes;
    char device_name[128];
    char last_error[LF_ERROR_CAPACITY];
};

/* Records a formatted message in ctx (if not NULL) and returns status. */
lf_status lf_fail(lf_context *ctx, lf_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Finds or builds the plan for p (plan.c). Grows ctx->workspace when a new plan needs more. */
lf_status lf_plan_get(lf_context *ctx, const lf_lora_problem *p, const lf_plan **plan);

/* Fills the key of p (also used by tests). */
lf_plan_key lf_plan_key_of(const lf_lora_problem *p);

/* Validates the public views of lf_lora_forward and fills *p. Everything lf_lora_forward checks is
 * checked here, so tools that run a problem several ways (bench, check) validate it the same way. */
lf_status lf_lora_problem_from_views(lf_context *ctx, lf_layout layout, const lf_matrix *x,
                                     const lf_matrix *w, const lf_matrix *bias, const lf_matrix *a,
                                     const lf_matrix *b, float scale, float beta,
                                     const lf_matrix *y, lf_lora_problem *p);

/* Backends. lf_cuda_backend_ops() returns NULL when the library was built without CUDA. */
const lf_backend_ops *lf_cpu_backend_ops(void);
const lf_backend_ops *lf_cuda_backend_ops(void);
/* 1 when the CUDA backend is built and a device is usable (cheap after the first call). */
int lf_cuda_device_present(void);

#ifdef __cplusplus
}
#endif

#endif /* LF_INTERNAL_H */

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
    LF_PLAN_ALIGNED16 = 1u << 3, /* every pointer and row stride is a multiple of 16 bytes */
    LF_PLAN_STRIDES_INT = 1u << 4 /* every row stride that is used fits in an int (cuBLAS's ld) */
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

/* One validated merge: W ← W + scale·B·A with W [out, in] (PEFT), or W [in, out] when
 * w_transposed (fan_in_fan_out), A [rank, in], B [out, rank]; fp32 arithmetic, W rounded once.
 * A and B share ab_dtype, which may differ from w_dtype. Leading dimensions in elements. */
typedef struct lf_merge_problem {
    lf_dtype w_dtype, ab_dtype;
    int w_transposed;
    int64_t out, in, rank;
    void *w;
    int64_t ldw;
    const void *a;
    int64_t lda;
    const void *b;
    int64_t ldb;
    float scale;
} lf_merge_problem;

/* ---- many adapters (adapter_set.c validates; lorafuse.h describes the API) ---- */

/* One slot's entry in the set's table, in the context's memory: what kernels read at run time, so a
 * graph captured before a load sees the new adapter. rank 0: the slot is empty. */
typedef struct lf_adapter_slot {
    int32_t rank;
    float scale;
} lf_adapter_slot;

struct lf_adapter_set {
    lf_context *ctx;
    lf_dtype dtype;
    int64_t k, n, max_rank;
    int capacity;
    int64_t lda, ldb; /* row strides of the stacked storage: K and N rounded up to 16 bytes */
    void *a;          /* [capacity][max_rank][lda]: slot s, row t = A[t, :] */
    void *b;          /* [capacity][max_rank][ldb]: slot s, row t = B[:, t] (PEFT's B transposed) */
    lf_adapter_slot *slots;      /* [capacity] in the context's memory */
    lf_adapter_slot *host_slots; /* host mirror: ranks and scales as last loaded */
    int loaded;                  /* slots of host_slots with a rank (the CUDA grids' tile estimate) */
    void *backend;               /* the backend's per-set state (NULL when it keeps none) */
};

/* One validated multi-adapter call (pointers in the context's memory). Exactly one of the forms:
 * token_adapter [m], or seg_starts [segments + 1] with seg_adapter [segments]. */
typedef struct lf_multi_problem {
    lf_layout layout; /* of w */
    lf_dtype dtype;
    int64_t m, k, n;
    const void *x;
    int64_t ldx;
    const void *w; /* NULL: the deltas alone */
    int64_t ldw;
    const void *bias; /* NULL: none */
    float beta;
    void *y;
    int64_t ldy;
    const int32_t *token_adapter;
    const int32_t *seg_starts, *seg_adapter;
    int64_t segments;
    const lf_adapter_set *set;
} lf_multi_problem;

/* One validated adapter to load: rank rows of A and B as lf_lora_problem's a and b in layout. */
typedef struct lf_adapter_source {
    lf_layout layout;
    int64_t rank;
    const void *a;
    int64_t lda;
    const void *b;
    int64_t ldb;
    float scale;
} lf_adapter_source;

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
    /* lorafuse's own kernel for the base GEMM alone, y = beta·y + x·Wᵀ + bias (the bench's own_base_us,
     * beside the BLAS's): CUDA's Hopper kernel without its LoRA term, where the plan takes that
     * kernel for p; LF_ERR_UNSUPPORTED elsewhere. NULL: the backend has none. */
    lf_status (*own_base_gemm)(lf_context *ctx, const lf_lora_problem *p);
    /* Copy bandwidth of the backend's memory in GB/s (bytes read + bytes written, per second), from
     * a large buffer-to-buffer copy; the ceiling memory-bound results are reported against. */
    lf_status (*measure_copy_bandwidth)(lf_context *ctx, double *gbps);
    /* W ← W + scale·B·A in place (src/peft/merge.c validates; NULL: the backend cannot merge). */
    lf_status (*lora_merge)(lf_context *ctx, const lf_merge_problem *p);
    /* Many adapters. set_init / set_destroy: the backend's part of a set (NULL: none). */
    lf_status (*adapter_set_init)(lf_context *ctx, lf_adapter_set *set);
    void (*adapter_set_destroy)(lf_context *ctx, lf_adapter_set *set);
    /* Copies src (in the context's memory) into slot and writes the slot's entry, ordered on the
     * stream, without a host synchronization. NULL: the context's memory is host memory, and
     * adapter_set.c packs through the host path. */
    lf_status (*adapter_load_device)(lf_context *ctx, lf_adapter_set *set, int slot, const lf_adapter_source *src);
    lf_status (*lora_multi)(lf_context *ctx, const lf_multi_problem *p);
    /* Bench: the unfused per-adapter loop (lf_multi_unfused in tools/lorafuse.c says what it is).
     * perm: token indices grouped by adapter (context memory); group[i]..group[i+1]: adapter i's
     * range of perm (host, capacity + 1 entries). ws holds multi_unfused_workspace_bytes(p). */
    size_t (*multi_unfused_workspace_bytes)(const lf_multi_problem *p);
    lf_status (*multi_unfused)(lf_context *ctx, const lf_multi_problem *p, const int32_t *perm,
                               const int64_t *group, void *ws);
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
/* Grows ctx->workspace to at least `bytes` (plan.c; a synchronization when it grows). For ops that
 * size their workspace per call instead of per plan (lf_lora_forward_multi). */
lf_status lf_workspace_reserve(lf_context *ctx, size_t bytes);

/* Fills the key of p (also used by tests). */
lf_plan_key lf_plan_key_of(const lf_lora_problem *p);

/* Validates the public views of lf_lora_forward and fills *p. Everything lf_lora_forward checks is
 * checked here, so tools that run a problem several ways (bench, check) validate it the same way. */
lf_status lf_lora_problem_from_views(lf_context *ctx, lf_layout layout, const lf_matrix *x,
                                     const lf_matrix *w, const lf_matrix *bias, const lf_matrix *a,
                                     const lf_matrix *b, float scale, float beta,
                                     const lf_matrix *y, lf_lora_problem *p);

/* Validates the views of lf_lora_forward_multi / _segments (all but the ids or segments) as those
 * functions do, messages naming fn, and fills *q (src/adapter_set.c). */
lf_status lf_multi_problem_from_views(lf_context *ctx, const char *fn, const lf_adapter_set *set,
                                     lf_layout layout, const lf_matrix *x, const lf_matrix *w,
                                     const lf_matrix *bias, float beta, const lf_matrix *y, lf_multi_problem *q);
/* The rest of their checks, on a problem lf_multi_problem_from_views filled (q->m > 0): the
 * per-token ids, or the segment table (its count checked first by lf_multi_segments_in_range), and
 * that y overlaps none of them. Nothing is stored in q. */
lf_status lf_multi_check_ids(lf_context *ctx, const char *fn, const lf_multi_problem *q, const int32_t *token_adapter);
lf_status lf_multi_segments_in_range(lf_context *ctx, const char *fn, int64_t segments);
lf_status lf_multi_check_segments(lf_context *ctx, const char *fn, const lf_multi_problem *q, const int32_t *seg_starts,
                                  const int32_t *seg_adapter, int64_t segments);

/* Backends. lf_cuda_backend_ops() returns NULL when the library was built without CUDA. */
const lf_backend_ops *lf_cpu_backend_ops(void);
const lf_backend_ops *lf_cuda_backend_ops(void);
/* 1 when the CUDA backend is built and a device is usable (cheap after the first call). */
int lf_cuda_device_present(void);

#ifdef __cplusplus
}
#endif

#endif /* LF_INTERNAL_H */

/*
 * lora_fwd.h — the CPU fast path: what the driver (lora_fwd.c) and the backend (backend_cpu.c) see
 * of the per-ISA kernels (lora_fwd_simd.c, compiled once per instruction set).
 *
 * The fused delta runs in two phases over panels of rows of x, all in fp32:
 *   project:  T[i, t] = scale · Σ_k x[i, k] · A[t, k]      (dot products along K)
 *   expand:   out[i, j] = Σ_t T[i, t] · B[t, j] + bias[j] + beta · yin[i, j]   (axpys along N)
 * A and B are first packed to fp32 rows ([rank][K] and [rank][N], zero padded), whatever their
 * layout and dtype, so one kernel of each phase serves every call.
 *
 * Every output element is computed by one thread through one fixed sequence of operations that
 * does not depend on how the work is split, so results are bitwise identical from run to run and
 * for any thread count (on a given ISA: the vector width changes the summation order along K).
 * The environment variable LF_CPU_ISA=generic|avx2|avx512, read when a context is created, forces
 * a kernel set (the best one the CPU supports is taken otherwise) so that tests can cover each.
 */
#ifndef LF_CPU_LORA_FWD_H
#define LF_CPU_LORA_FWD_H

#include "../lf_internal.h"

/* The project phase on a block of rows and ranks [t0, t1) (t1 - t0 a multiple of proj_ranks).
 * x: fp32 rows of k elements (no padding needed). a: packed A, row t at a + t·lda, zero beyond k up
 * to lda (lda a multiple of the vector width). T[i·ldt + t] receives the scaled projection. */
typedef struct lf_cpu_project_args {
    const float *x;
    int64_t ldx, rows, k;
    const float *a;
    int64_t lda, t0, t1;
    float scale;
    float *t;
    int64_t ldt;
} lf_cpu_project_args;

/* The expand phase on a tile of rows × cols. b and bias point at the tile's first column of packed
 * B (row t at b + t·ldb) and the packed bias (NULL: none); both stay readable, zero padded, up to
 * the next multiple of expand_cols. yin (read only when beta ≠ 0) and out point at the tile's first
 * element in their own dtypes; they may be the same memory (y updated in place). */
typedef struct lf_cpu_expand_args {
    const float *t;
    int64_t ldt, rows, cols, rank;
    const float *b;
    int64_t ldb;
    const float *bias;
    float beta;
    const void *yin;
    lf_dtype yin_dtype;
    int64_t ldyin;
    void *out;
    lf_dtype out_dtype;
    int64_t ldout;
} lf_cpu_expand_args;

typedef struct lf_cpu_kernels {
    const char *isa;  /* "generic", "avx2" or "avx512" */
    int vl;           /* fp32 lanes of one vector */
    int proj_rows;    /* register tile of project: rows of x ... */
    int proj_ranks;   /* ... times ranks (packed A has a multiple of this many rows) */
    int expand_rows;  /* register tile of expand: rows ... */
    int expand_cols;  /* ... times columns (a multiple of vl) */
    /* dst[i] = src[i] for i < n, src in `dtype`. */
    void (*to_f32)(const void *src, lf_dtype dtype, int64_t n, float *dst);
    /* dst[i] = src[i] rounded to `dtype`, i < n. */
    void (*from_f32)(const float *src, int64_t n, lf_dtype dtype, void *dst);
    /* dst[c·ldd + r] = src[r·lds + c] for r < rows, c0 <= c < c1: a transposing pack to fp32. */
    void (*transpose_to_f32)(const void *src, lf_dtype dtype, int64_t lds, int64_t rows, int64_t c0,
                             int64_t c1, float *dst, int64_t ldd);
    void (*project)(const lf_cpu_project_args *args);
    void (*expand)(const lf_cpu_expand_args *args);
} lf_cpu_kernels;

extern const lf_cpu_kernels lf_cpu_kernels_generic;
extern const lf_cpu_kernels lf_cpu_kernels_avx2;
extern const lf_cpu_kernels lf_cpu_kernels_avx512;

/* The best kernel set this CPU runs, or the one LF_CPU_ISA names if the CPU supports it. */
const lf_cpu_kernels *lf_cpu_kernels_select(void);

/* Number of worker threads a context uses (ctx->threads, 0 = OpenMP's default). */
int lf_cpu_threads(const lf_context *ctx);

/* Columns [j0, j0 + cols) of a layer's W (dtype dt, row stride ldw, K rows or columns) in fp32 at
 * dst: cols rows of K (PEFT layout, W [N, K]) or K rows of cols (KN layout), rows ldd apart. */
void lf_cpu_w_cols_to_f32(const lf_cpu_kernels *kern, const void *w, lf_dtype dt, lf_layout layout, int64_t ldw,
                          int64_t k, int64_t j0, int64_t cols, float *dst, int64_t ldd);

/* Around OpenMP regions whose tasks each call a single-threaded sgemm: holds a pthreads OpenBLAS
 * at one thread (process-wide, restored by the last caller out; a no-op for other builds). */
void lf_cpu_blas_single_begin(void);
void lf_cpu_blas_single_end(void);

/* Plans p for the kernel set: implementation, blocking and workspace size. */
lf_status lf_cpu_lora_plan(lf_context *ctx, const lf_cpu_kernels *kern, const lf_lora_problem *p,
                           lf_plan *plan);

/* Runs p with a plan from lf_cpu_lora_plan; ctx->workspace holds plan->workspace_bytes. */
lf_status lf_cpu_lora_forward(lf_context *ctx, const lf_cpu_kernels *kern, const lf_plan *plan,
                              const lf_lora_problem *p);

#endif /* LF_CPU_LORA_FWD_H */

/*
 * lora_fwd.c — the CPU fast path of lf_lora_forward: planning, workspace layout, threading, and the
 * base GEMM through CBLAS. The arithmetic lives in the per-ISA kernels (lora_fwd_simd.c).
 *
 * Three implementations, chosen by plan:
 *   DELTA      no W. Pack A and B to fp32, then per panel of rows: (16-bit x: convert to fp32),
 *              project T = s·x·Aᵀ, expand y = T·B + bias + beta·y straight into y, rounded once.
 *   LAYER_F32  project as DELTA; then each thread takes a slice of N, expands the delta into its
 *              slice of y (applying beta and bias: this pass stands in for the zeroing pass a
 *              beta = 0 GEMM makes anyway) and accumulates x·Wᵀ into it with cblas_sgemm, beta = 1.
 *              The LoRA term costs only what it adds to the base GEMM.
 *   LAYER_CVT  f16/bf16 with W: CBLAS has no 16-bit GEMM, so per panel of rows × panel of N each
 *              thread converts its slice of W to fp32, expands the delta (with beta·y and bias)
 *              into an fp32 accumulator, sgemms into it and rounds once into y. Bounded workspace.
 *
 * Threads: the GEMM slices run inside our OpenMP region, one single-threaded BLAS call per thread.
 * Calling a threaded BLAS between OpenMP regions instead is twice as slow on small machines:
 * libgomp's idle workers spin for milliseconds after a region (PAUSE is ~140 cycles on recent
 * Intel) and take the cores OpenBLAS's pthread workers need.
 */
#include "lora_fwd.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { IMPL_DELTA = 1, IMPL_LAYER_F32 = 2, IMPL_LAYER_CVT = 3 };

/* Blocking of the parallel loops (in kernel tiles): big enough that a task amortizes its loop
 * overhead, small enough that M = 1 or a narrow N still splits over a few threads. */
#define PROJ_TASK_TILES 4   /* rows of x per project task, in proj_rows */
#define EXP_TASK_ROW_TILES 4 /* rows per expand task, in expand_rows */
#define EXP_TASK_COL_TILES 4 /* columns per expand task, in expand_cols */
#define PACK_BLOCK 256       /* source rows per transposing-pack task */
/* Packed A of one project task's rank group stays in L2 while its rows stream past. */
#define PROJ_A_GROUP_FLOATS (128 * 1024)
/* Workspace budgets, in floats: T and converted x panels (delta), x, W and accumulator panels
 * (16-bit layer). A 16 MiB x panel keeps the GEMM large enough to run at full speed. */
#define PANEL_T_FLOATS (1 << 20)
#define PANEL_X_FLOATS (1 << 21)
#define PANEL_X_CVT_FLOATS (1 << 22)
#define PANEL_W_CVT_FLOATS (1 << 21)
#define PANEL_C_CVT_FLOATS (1 << 22)

const lf_cpu_kernels *lf_cpu_kernels_select(void)
{
    const lf_cpu_kernels *have[3];
    int count = 0;
    have[count++] = &lf_cpu_kernels_generic;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const int fma16 = __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (fma16 && __builtin_cpu_supports("avx2"))
        have[count++] = &lf_cpu_kernels_avx2;
    if (fma16 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        have[count++] = &lf_cpu_kernels_avx512;
#endif
    const char *want = getenv("LF_CPU_ISA");
    for (int i = 0; want && i < count; i++)
        if (strcmp(have[i]->isa, want) == 0)
            return have[i];
    return have[count - 1];
}

int lf_cpu_threads(const lf_context *ctx) { return ctx->threads > 0 ? ctx->threads : omp_get_max_threads(); }

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

/* Where everything lives in the workspace, in floats from its start (each region 64-byte aligned). */
typedef struct ws_layout {
    int64_t kp, rp, np; /* K, rank and N padded to the kernels' tiles */
    int64_t mp, nb;     /* rows per panel; columns per N panel (LAYER_CVT) */
    int64_t apack, bpack, bias, t, xf, wf, cbuf;
    int64_t total;
} ws_layout;

/* Adds a region of `floats` and returns its offset; -1 once the total overflows. */
static int64_t ws_take(ws_layout *L, int64_t floats)
{
    const int64_t at = L->total;
    if (at < 0 || floats > (INT64_MAX / 8 - at))
        return L->total = -1;
    L->total = at + round_up(floats, 16);
    return at;
}

static void layout_of(const lf_cpu_kernels *kern, const lf_lora_problem *p, int impl, int64_t mp,
                      int64_t nb, ws_layout *L)
{
    memset(L, 0, sizeof *L);
    L->kp = round_up(p->k, kern->vl);
    L->rp = round_up(p->rank, kern->proj_ranks);
    L->np = round_up(p->n, kern->expand_cols);
    L->mp = mp;
    L->nb = nb;
    /* Sizes beyond int64 floats fail ws_take, so no product below is formed unchecked. */
    const int64_t big = INT64_MAX / 8;
    L->apack = ws_take(L, L->kp > big / L->rp ? big : L->rp * L->kp);
    L->bpack = ws_take(L, L->np > big / p->rank ? big : p->rank * L->np);
    L->bias = p->bias ? ws_take(L, L->np) : 0;
    L->t = ws_take(L, mp * L->rp);
    L->xf = p->dtype != LF_F32 ? ws_take(L, mp > big / L->kp ? big : mp * L->kp) : 0;
    if (impl == IMPL_LAYER_CVT) {
        L->wf = ws_take(L, nb > big / L->kp ? big : nb * L->kp);
        L->cbuf = ws_take(L, mp * nb);
    }
}

lf_status lf_cpu_lora_plan(lf_context *ctx, const lf_cpu_kernels *kern, const lf_lora_problem *p,
                           lf_plan *plan)
{
    /* CBLAS takes int sizes (OpenBLAS without ILP64). */
    if (p->w && (p->m > INT_MAX || p->n > INT_MAX || p->k > INT_MAX))
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_lora_forward: the CPU backend's GEMM takes sizes up "
                       "to %d (M %lld, K %lld, N %lld)", INT_MAX, (long long)p->m, (long long)p->k,
                       (long long)p->n);
    const int impl = !p->w ? IMPL_DELTA : p->dtype == LF_F32 ? IMPL_LAYER_F32 : IMPL_LAYER_CVT;
    const int64_t kp = round_up(p->k, kern->vl), rp = round_up(p->rank, kern->proj_ranks);
    int64_t mp, nb = 0;
    if (impl == IMPL_LAYER_CVT) {
        mp = min64(p->m, max64(64, PANEL_X_CVT_FLOATS / kp));
        const int64_t ec = kern->expand_cols;
        nb = max64(1, PANEL_W_CVT_FLOATS / kp / ec);
        nb = min64(nb, max64(1, PANEL_C_CVT_FLOATS / mp / ec)); /* small K: bound the accumulator */
        nb = max64(nb, 2 * (int64_t)lf_cpu_threads(ctx)); /* every thread gets columns of a panel */
        nb = min64(round_up(p->n, ec), nb * ec);
    } else {
        mp = max64(64, PANEL_T_FLOATS / rp);
        if (p->dtype != LF_F32)
            mp = min64(mp, max64(64, PANEL_X_FLOATS / kp));
        mp = min64(p->m, mp);
    }
    ws_layout L;
    layout_of(kern, p, impl, mp, nb, &L);
    if (L.total < 0 || (uint64_t)L.total > SIZE_MAX / sizeof(float))
        return lf_fail(ctx, LF_ERR_OVERFLOW, "lf_lora_forward: the CPU workspace for K %lld, N %lld, "
                       "rank %lld does not fit in size_t", (long long)p->k, (long long)p->n,
                       (long long)p->rank);
    plan->impl = impl;
    plan->param[0] = mp;
    plan->param[1] = nb;
    plan->workspace_bytes = (size_t)L.total * sizeof(float);
    return LF_OK;
}

/* ---- pieces run by every thread of a parallel region (orphaned worksharing loops) ------------- */

static const void *elem(const void *base, lf_dtype dt, int64_t i)
{
    return (const char *)base + (size_t)i * lf_dtype_size(dt);
}

/* dst [rows_d, ldd] fp32 = src as [rows_d, cols_d] (straight) or its transpose (src [cols_d,
 * rows_d]); columns cols_d..ldd and rows rows_d..rows_pad are zeroed. */
static void pack_f32(const lf_cpu_kernels *kern, const void *src, lf_dtype dt, int64_t lds, int transposed,
                     int64_t rows_d, int64_t cols_d, float *dst, int64_t ldd, int64_t rows_pad)
{
    if (!transposed) {
#pragma omp for schedule(static) nowait
        for (int64_t r = 0; r < rows_d; r++)
            kern->to_f32(elem(src, dt, r * lds), dt, cols_d, dst + r * ldd);
    } else {
#pragma omp for schedule(static) nowait
        for (int64_t c0 = 0; c0 < cols_d; c0 += PACK_BLOCK)
            kern->transpose_to_f32(elem(src, dt, c0 * lds), dt, lds, min64(PACK_BLOCK, cols_d - c0), 0,
                                   rows_d, dst + c0, ldd);
    }
#pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < rows_pad; r++) {
        const int64_t from = r < rows_d ? cols_d : 0;
        memset(dst + r * ldd + from, 0, (size_t)(ldd - from) * sizeof(float));
    }
}

/* Packs A to [rp][kp], B to [rank][np] and the bias to [np]; ends with a barrier. */
static void pack_operands(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L, float *ws)
{
    const int peft = p->layout == LF_LAYOUT_PEFT;
    pack_f32(kern, p->a, p->dtype, p->lda, !peft, p->rank, p->k, ws + L->apack, L->kp, L->rp);
    pack_f32(kern, p->b, p->dtype, p->ldb, peft, p->rank, p->n, ws + L->bpack, L->np, p->rank);
    if (p->bias) {
#pragma omp single nowait
        {
            kern->to_f32(p->bias, p->dtype, p->n, ws + L->bias);
            memset(ws + L->bias + p->n, 0, (size_t)(L->np - p->n) * sizeof(float));
        }
    }
#pragma omp barrier
}

/* Rows [i0, i0 + rows) of 16-bit x to fp32 panel rows of kp (zero padded). */
static void convert_x(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L, float *ws,
                      int64_t i0, int64_t rows)
{
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        float *row = ws + L->xf + i * L->kp;
        kern->to_f32(elem(p->x, p->dtype, (i0 + i) * p->ldx), p->dtype, p->k, row);
        memset(row + p->k, 0, (size_t)(L->kp - p->k) * sizeof(float));
    }
}

/* T[0..rows) = scale · x·Aᵀ over tasks of (row block, group of rank tiles). */
static void project_panel(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L,
                          float *ws, const float *x, int64_t ldx, int64_t rows)
{
    const int64_t rb = (int64_t)kern->proj_rows * PROJ_TASK_TILES;
    const int64_t nrb = cdiv(rows, rb);
    const int64_t tiles = L->rp / kern->proj_ranks;
    int64_t group = min64(tiles, max64(1, PROJ_A_GROUP_FLOATS / (L->kp * kern->proj_ranks)));
    /* Few rows (decode): split the ranks instead, so every thread gets work. */
    const int64_t nt = omp_get_num_threads();
    if (nrb * cdiv(tiles, group) < nt)
        group = max64(1, tiles / cdiv(nt, nrb));
    const int64_t ng = cdiv(tiles, group);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < nrb * ng; task++) {
        const int64_t i = task / ng * rb, g = task % ng;
        const lf_cpu_project_args args = {
            .x = x + i * ldx, .ldx = ldx, .rows = min64(rb, rows - i), .k = p->k,
            .a = ws + L->apack, .lda = L->kp,
            .t0 = g * group * kern->proj_ranks, .t1 = min64(tiles, (g + 1) * group) * kern->proj_ranks,
            .scale = p->scale, .t = ws + L->t + i * L->rp, .ldt = L->rp,
        };
        kern->project(&args);
    }
}

/* Expand args for rows [i, i + rows) of the T panel and columns [j0, j0 + cols), writing out (fp32
 * or y's dtype) and reading beta·yin; yin and out point at element (i, j0) of their matrices. */
static lf_cpu_expand_args expand_args(const lf_lora_problem *p, const ws_layout *L, const float *ws,
                                      int64_t i, int64_t rows, int64_t j0, int64_t cols, const void *yin,
                                      void *out, lf_dtype out_dt, int64_t ldout)
{
    return (lf_cpu_expand_args){
        .t = ws + L->t + i * L->rp, .ldt = L->rp, .rows = rows, .cols = cols, .rank = p->rank,
        .b = ws + L->bpack + j0, .ldb = L->np, .bias = p->bias ? ws + L->bias + j0 : NULL,
        .beta = p->beta, .yin = yin, .yin_dtype = p->dtype, .ldyin = p->ldy,
        .out = out, .out_dtype = out_dt, .ldout = ldout,
    };
}

/* y[0..rows) = T·B + bias + beta·y in place (y points at the panel's first row), over tasks of
 * (row block, column block). */
static void expand_panel(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L,
                         const float *ws, int64_t rows, void *y)
{
    const int64_t rb = (int64_t)kern->expand_rows * EXP_TASK_ROW_TILES;
    const int64_t cb = (int64_t)kern->expand_cols * EXP_TASK_COL_TILES;
    const int64_t nrb = cdiv(rows, rb), ncb = cdiv(p->n, cb);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < nrb * ncb; task++) {
        const int64_t i = task / ncb * rb, j = task % ncb * cb;
        void *yij = (void *)elem(y, p->dtype, i * p->ldy + j);
        const lf_cpu_expand_args args = expand_args(p, L, ws, i, min64(rb, rows - i), j, min64(cb, p->n - j),
                                                    yij, yij, p->dtype, p->ldy);
        kern->expand(&args);
    }
}

/* Whole expand tiles of [0, n) for thread tid of team, split evenly: [*j0, *j0 + *cols). */
static void thread_columns(const lf_cpu_kernels *kern, int64_t n, int64_t *j0, int64_t *cols)
{
    const int64_t unit = kern->expand_cols, tiles = cdiv(n, unit);
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
    *j0 = min64(tiles * tid / team * unit, n);
    *cols = min64(tiles * (tid + 1) / team * unit, n) - *j0;
}

/* OpenBLAS built for OpenMP (or sequential) runs single-threaded inside a parallel region by
 * itself. Built with pthreads it has to be told, and only process-wide: the first caller in saves
 * its thread count and the last one out restores it. Meanwhile other threads' BLAS calls run
 * single-threaded too. */
static pthread_mutex_t blas_mutex = PTHREAD_MUTEX_INITIALIZER;
static int blas_users, blas_saved_threads;

static void blas_single_begin(void)
{
    if (openblas_get_parallel() != OPENBLAS_THREAD)
        return;
    pthread_mutex_lock(&blas_mutex);
    if (blas_users++ == 0) {
        blas_saved_threads = openblas_get_num_threads();
        openblas_set_num_threads(1);
    }
    pthread_mutex_unlock(&blas_mutex);
}

static void blas_single_end(void)
{
    if (openblas_get_parallel() != OPENBLAS_THREAD)
        return;
    pthread_mutex_lock(&blas_mutex);
    if (--blas_users == 0)
        openblas_set_num_threads(blas_saved_threads);
    pthread_mutex_unlock(&blas_mutex);
}

/* ---- implementations ------------------------------------------------------------------------- */

static void run_delta(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L, float *ws,
                      int nt)
{
#pragma omp parallel num_threads(nt)
    {
        pack_operands(kern, p, L, ws);
        for (int64_t i0 = 0; i0 < p->m; i0 += L->mp) {
            const int64_t rows = min64(L->mp, p->m - i0);
            const float *x = ws + L->xf;
            int64_t ldx = L->kp;
            if (p->dtype == LF_F32) {
                x = (const float *)p->x + i0 * p->ldx;
                ldx = p->ldx;
            } else {
                convert_x(kern, p, L, ws, i0, rows);
            }
            project_panel(kern, p, L, ws, x, ldx, rows);
            void *y = (void *)elem(p->y, p->dtype, i0 * p->ldy);
            expand_panel(kern, p, L, ws, rows, y);
        }
    }
}

static void run_layer_f32(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L,
                          float *ws, int nt)
{
    const int peft = p->layout == LF_LAYOUT_PEFT;
#pragma omp parallel num_threads(nt)
    {
        pack_operands(kern, p, L, ws);
        int64_t j0, cols;
        thread_columns(kern, p->n, &j0, &cols);
        for (int64_t i0 = 0; i0 < p->m; i0 += L->mp) {
            const int64_t rows = min64(L->mp, p->m - i0);
            const float *x = (const float *)p->x + i0 * p->ldx;
            project_panel(kern, p, L, ws, x, p->ldx, rows);
            if (cols > 0) {
                float *y = (float *)p->y + i0 * p->ldy + j0;
                const lf_cpu_expand_args args = expand_args(p, L, ws, 0, rows, j0, cols, y, y, LF_F32, p->ldy);
                kern->expand(&args);
                const float *w = (const float *)p->w + (peft ? j0 * p->ldw : j0);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, peft ? CblasTrans : CblasNoTrans, (int)rows, (int)cols,
                            (int)p->k, 1.0f, x, (int)p->ldx, w, (int)p->ldw, 1.0f, y, (int)p->ldy);
            }
#pragma omp barrier /* the next panel's projection overwrites T */
        }
    }
}

static void run_layer_cvt(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L,
                          float *ws, int nt)
{
    const int peft = p->layout == LF_LAYOUT_PEFT;
    float *xf = ws + L->xf, *wf = ws + L->wf, *cbuf = ws + L->cbuf;
    /* PEFT panels are nb rows of W [N, K]; KN panels are nb columns of W [K, N]. */
    const int64_t ldwf = peft ? L->kp : L->nb;
#pragma omp parallel num_threads(nt)
    {
        pack_operands(kern, p, L, ws);
        for (int64_t i0 = 0; i0 < p->m; i0 += L->mp) {
            const int64_t rows = min64(L->mp, p->m - i0);
            convert_x(kern, p, L, ws, i0, rows);
            project_panel(kern, p, L, ws, xf, L->kp, rows);
            for (int64_t j0 = 0; j0 < p->n; j0 += L->nb) {
                /* This thread's slice [s0, s0 + sc) of the panel buffers. It is the same in every
                 * panel (a narrower last panel only clips it), so threads need no barrier between
                 * panels: none ever touches another's columns of wf and cbuf. */
                int64_t s0, sc;
                thread_columns(kern, L->nb, &s0, &sc);
                sc = min64(s0 + sc, p->n - j0) - s0;
                if (sc <= 0)
                    continue;
                float *wslice = wf + (peft ? s0 * ldwf : s0);
                if (peft)
                    for (int64_t j = 0; j < sc; j++)
                        kern->to_f32(elem(p->w, p->dtype, (j0 + s0 + j) * p->ldw), p->dtype, p->k,
                                     wslice + j * ldwf);
                else
                    for (int64_t kk = 0; kk < p->k; kk++)
                        kern->to_f32(elem(p->w, p->dtype, kk * p->ldw + j0 + s0), p->dtype, sc,
                                     wslice + kk * ldwf);
                void *y = (void *)elem(p->y, p->dtype, i0 * p->ldy + j0 + s0);
                const lf_cpu_expand_args args = expand_args(p, L, ws, 0, rows, j0 + s0, sc, y, cbuf + s0,
                                                            LF_F32, L->nb);
                kern->expand(&args);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, peft ? CblasTrans : CblasNoTrans, (int)rows, (int)sc,
                            (int)p->k, 1.0f, xf, (int)L->kp, wslice, (int)ldwf, 1.0f, cbuf + s0, (int)L->nb);
                for (int64_t i = 0; i < rows; i++)
                    kern->from_f32(cbuf + i * L->nb + s0, sc, p->dtype, (void *)elem(y, p->dtype, i * p->ldy));
            }
#pragma omp barrier /* the next panel's conversion and projection overwrite x and T */
        }
    }
}

lf_status lf_cpu_lora_forward(lf_context *ctx, const lf_cpu_kernels *kern, const lf_plan *plan,
                              const lf_lora_problem *p)
{
    ws_layout L;
    layout_of(kern, p, plan->impl, plan->param[0], plan->param[1], &L);
    if (L.total < 0 || (size_t)L.total * sizeof(float) > ctx->workspace_bytes || (L.total > 0 && !ctx->workspace))
        return lf_fail(ctx, LF_ERR_INTERNAL, "lf_lora_forward: the CPU plan's workspace (%lld bytes) is "
                       "larger than the context's (%zu bytes)", (long long)L.total * 4, ctx->workspace_bytes);
    if (p->w && (p->ldx > INT_MAX || p->ldw > INT_MAX || p->ldy > INT_MAX))
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_lora_forward: the CPU backend's GEMM takes row strides "
                       "up to %d (x %lld, w %lld, y %lld)", INT_MAX, (long long)p->ldx, (long long)p->ldw,
                       (long long)p->ldy);
    float *ws = ctx->workspace;
    const int nt = lf_cpu_threads(ctx);
    switch (plan->impl) {
    case IMPL_DELTA:
        run_delta(kern, p, &L, ws, nt);
        return LF_OK;
    case IMPL_LAYER_F32:
        blas_single_begin();
        run_layer_f32(kern, p, &L, ws, nt);
        blas_single_end();
        return LF_OK;
    case IMPL_LAYER_CVT:
        blas_single_begin();
        run_layer_cvt(kern, p, &L, ws, nt);
        blas_single_end();
        return LF_OK;
    }
    return lf_fail(ctx, LF_ERR_INTERNAL, "lf_lora_forward: unknown CPU plan implementation %d", plan->impl);
}

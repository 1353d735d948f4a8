/*
 * lora_fwd.c — the CPU fast path of lf_lora_forward: planning, workspace layout, threading, and the
 * base GEMM through CBLAS. The arithmetic lives in the per-ISA kernels (lora_fwd_simd.c).
 *
 * Three implementations, chosen by plan:
 *   DELTA      no W. Pack A and B to fp32; then each task takes a block of rows, start to end:
 *              (16-bit x: convert to fp32), project T = s·x·Aᵀ, expand y = T·B + bias + beta·y
 *              straight into y, rounded once. Tasks share only the packed operands: no barrier.
 *   LAYER_F32  per panel of rows: the calling thread projects T; then each task takes a block of
 *              columns, expands the delta into it (applying beta and bias: this pass stands in for
 *              the zeroing pass a beta = 0 GEMM makes anyway) and accumulates x·Wᵀ into it with
 *              cblas_sgemm, beta = 1. The LoRA term costs only what it adds to the base GEMM.
 *   LAYER_CVT  f16/bf16 with W: CBLAS has no 16-bit GEMM, so per panel of rows: the calling thread
 *              converts x and projects T; then each task takes a block of columns, converts
 *              that slice of W to fp32, expands the delta (with beta·y and bias) into an fp32
 *              accumulator, sgemms into it and rounds once into y. Bounded workspace per thread.
 *
 * Threads: the GEMM slices run inside our OpenMP region, one single-threaded BLAS call per thread.
 * Calling a threaded BLAS between OpenMP regions instead is twice as slow on small machines:
 * libgomp's idle workers spin for milliseconds after a region (PAUSE is ~140 cycles on recent
 * Intel) and take the cores OpenBLAS's pthread workers need.
 *
 * Contention: the machine may be shared (2 cores and a compiler). A thread that has lost its core
 * stalls every barrier, and with it the whole team, until the scheduler gives the core back (a
 * quantum: milliseconds); static shares and a barrier per phase made a 20 µs call take 16 ms. So:
 *   - the plan sizes the team by the work (useful_threads): small calls run on the calling thread
 *     alone, without waking anyone and without a barrier;
 *   - the plan cuts the work into tasks, handed out dynamically: the threads that run take the
 *     tasks of one that doesn't. Every output element is computed by one task, through the same
 *     operations whoever runs it and however many threads there are, so the bits stay fixed;
 *   - packed A and B (rank rows: microseconds) are made by the calling thread before the region;
 *     the layers compute T in row tasks and keep one barrier after it (every column block reads
 *     all of T); the region's end is the other barrier, and team_size() backs off from both.
 */
#include "lora_fwd.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { IMPL_DELTA = 1, IMPL_LAYER_F32 = 2, IMPL_LAYER_CVT = 3 };
/* What plan->param holds. */
enum { P_PANEL_ROWS = 0, P_ROW_BLOCK = 1, P_COL_BLOCK = 2, P_THREADS = 3 };

/* Rows per delta task, in proj_rows tiles: few enough that a
 * descheduled thread holds little work, enough to amortize a task; fewer when M is small, so that
 * M >= 4·proj_rows still makes ROW_TASKS_MIN tasks. */
#define ROW_TASK_TILES 4
#define ROW_TASKS_MIN 4
/* LAYER_F32: columns of y per GEMM task, as a fraction of N. Each task's sgemm packs all of x again
 * (M = 1024, K = 4096: 16 MiB), so more tasks cost the GEMM: at M = 1024, K = N = 4096 (2 cores),
 * fused/base was 1.02-1.04 with 2 tasks, 1.07-1.11 with 4 and 1.09-1.12 with 8. With 2, a thread at
 * half speed makes the call up to 2× slower, as it does the threaded base GEMM. */
#define F32_COL_TASKS 2
/* A thread's share of the work must be worth waking it for: ~200 µs of one core at the ~80 GFLOP/s
 * the kernels and sgemm reach here (Xeon, AVX-512). Below that the gain is tens of µs at best
 * (seed delta, 2 MFLOP: 28 µs on one thread, 20 µs on two), while a barrier behind a descheduled
 * thread costs milliseconds. */
#define MIN_FLOPS_PER_THREAD 16e6
/* Packed A of one projection's rank group stays in L2 while its rows stream past. */
#define PROJ_A_GROUP_FLOATS (128 * 1024)
/* Workspace budgets, in floats: T panel (layers); x panel (16-bit layer: 16 MiB keeps the GEMM
 * large enough to run at full speed); one thread's fp32 W slice and accumulator (16-bit layer). */
#define PANEL_T_FLOATS (1 << 20)
#define PANEL_X_CVT_FLOATS (1 << 22)
#define SLOT_W_CVT_FLOATS (1 << 20)
#define SLOT_C_CVT_FLOATS (1 << 21)
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

/* a·b, saturating at INT64_MAX / 8 (a size ws_take refuses), for a, b >= 0. */
static int64_t mul_sat(int64_t a, int64_t b)
{
    const int64_t big = INT64_MAX / 8;
    return b != 0 && a > big / b ? big : min64(big, a * b);
}

/* Where everything lives in the workspace, in floats from its start (each region 64-byte aligned).
 * Per-thread regions are `slots` consecutive slots of *_slot floats; slot = omp_get_thread_num(). */
typedef struct ws_layout {
    int64_t kp, rp, np;     /* K, rank and N padded to the kernels' tiles */
    int64_t mp, rb, cb;     /* rows per panel, rows per row task, columns per column task */
    int64_t apack, bpack, bias, t, xf, wf, cbuf;
    int64_t t_slot, xf_slot, wf_slot, c_slot;
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

/* `slots` per-thread regions of `floats` each: sets *slot to the stride, returns the offset. */
static int64_t ws_take_slots(ws_layout *L, int64_t slots, int64_t floats, int64_t *slot)
{
    *slot = round_up(floats, 16);
    return ws_take(L, mul_sat(slots, *slot));
}

static void layout_of(const lf_cpu_kernels *kern, const lf_lora_problem *p, int impl, const int64_t *param,
                      ws_layout *L)
{
    memset(L, 0, sizeof *L);
    L->kp = round_up(p->k, kern->vl);
    L->rp = round_up(p->rank, kern->proj_ranks);
    L->np = round_up(p->n, kern->expand_cols);
    L->mp = param[P_PANEL_ROWS];
    L->rb = param[P_ROW_BLOCK];
    L->cb = param[P_COL_BLOCK];
    const int64_t slots = param[P_THREADS];
    /* Sizes beyond int64 floats saturate and fail ws_take, so no product below is formed unchecked. */
    L->apack = ws_take(L, mul_sat(L->rp, L->kp));
    L->bpack = ws_take(L, mul_sat(p->rank, L->np));
    L->bias = p->bias ? ws_take(L, L->np) : 0;
    if (impl == IMPL_DELTA) {
        L->t = ws_take_slots(L, slots, mul_sat(L->rb, L->rp), &L->t_slot);
        if (p->dtype != LF_F32)
            L->xf = ws_take_slots(L, slots, mul_sat(L->rb, L->kp), &L->xf_slot);
    } else {
        L->t = ws_take(L, mul_sat(L->mp, L->rp));
    }
    if (impl == IMPL_LAYER_CVT) {
        L->xf = ws_take(L, mul_sat(L->mp, L->kp));
        L->wf = ws_take_slots(L, slots, mul_sat(L->cb, L->kp), &L->wf_slot);
        L->cbuf = ws_take_slots(L, slots, mul_sat(L->mp, L->cb), &L->c_slot);
    }
}

/* Threads worth running the call on, whatever the context allows: one per MIN_FLOPS_PER_THREAD. */
static int64_t useful_threads(const lf_lora_problem *p)
{
    const double flops = 2.0 * (double)p->m *
                         ((double)p->rank * (double)(p->k + p->n) + (p->w ? (double)p->k * (double)p->n : 0.0));
    return flops >= MIN_FLOPS_PER_THREAD * INT_MAX ? INT_MAX : max64(1, (int64_t)(flops / MIN_FLOPS_PER_THREAD));
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
    const int64_t ec = kern->expand_cols, pr = kern->proj_rows;
    /* The decomposition depends on the problem only, never on the thread count. */
    int64_t param[6] = {0};
    param[P_ROW_BLOCK] = min64(pr * ROW_TASK_TILES, max64(pr, round_up(cdiv(p->m, ROW_TASKS_MIN), pr)));
    if (impl == IMPL_LAYER_F32) {
        param[P_PANEL_ROWS] = min64(p->m, max64(64, PANEL_T_FLOATS / rp));
        param[P_COL_BLOCK] = round_up(cdiv(p->n, F32_COL_TASKS), ec);
    } else if (impl == IMPL_LAYER_CVT) {
        const int64_t mp = min64(p->m, max64(64, PANEL_X_CVT_FLOATS / kp));
        param[P_PANEL_ROWS] = mp;
        const int64_t cb = min64(SLOT_W_CVT_FLOATS / kp, SLOT_C_CVT_FLOATS / mp) / ec * ec;
        param[P_COL_BLOCK] = min64(round_up(p->n, ec), max64(ec, cb));
    }
    param[P_THREADS] = min64(lf_cpu_threads(ctx), useful_threads(p));
    ws_layout L;
    layout_of(kern, p, impl, param, &L);
    if (L.total < 0 || (uint64_t)L.total > SIZE_MAX / sizeof(float))
        return lf_fail(ctx, LF_ERR_OVERFLOW, "lf_lora_forward: the CPU workspace for K %lld, N %lld, "
                       "rank %lld does not fit in size_t", (long long)p->k, (long long)p->n,
                       (long long)p->rank);
    plan->impl = impl;
    memcpy(plan->param, param, sizeof param);
    plan->workspace_bytes = (size_t)L.total * sizeof(float);
    return LF_OK;
}

/* ---- pieces of the implementations ----------------------------------------------------------- */

static const void *elem(const void *base, lf_dtype dt, int64_t i)
{
    return (const char *)base + (size_t)i * lf_dtype_size(dt);
}

/* dst [rows_d, ldd] fp32 = src as [rows_d, cols_d] (straight) or its transpose (src [cols_d,
 * rows_d]); columns cols_d..ldd and rows rows_d..rows_pad are zeroed. */
static void pack_f32(const lf_cpu_kernels *kern, const void *src, lf_dtype dt, int64_t lds, int transposed,
                     int64_t rows_d, int64_t cols_d, float *dst, int64_t ldd, int64_t rows_pad)
{
    if (!transposed)
        for (int64_t r = 0; r < rows_d; r++)
            kern->to_f32(elem(src, dt, r * lds), dt, cols_d, dst + r * ldd);
    else
        kern->transpose_to_f32(src, dt, lds, cols_d, 0, rows_d, dst, ldd);
    for (int64_t r = 0; r < rows_pad; r++) {
        const int64_t from = r < rows_d ? cols_d : 0;
        memset(dst + r * ldd + from, 0, (size_t)(ldd - from) * sizeof(float));
    }
}

void lf_cpu_w_cols_to_f32(const lf_cpu_kernels *kern, const void *w, lf_dtype dt, lf_layout layout, int64_t ldw,
                          int64_t k, int64_t j0, int64_t cols, float *dst, int64_t ldd)
{
    if (layout == LF_LAYOUT_PEFT)
        for (int64_t j = 0; j < cols; j++)
            kern->to_f32(elem(w, dt, (j0 + j) * ldw), dt, k, dst + j * ldd);
    else
        for (int64_t kk = 0; kk < k; kk++)
            kern->to_f32(elem(w, dt, kk * ldw + j0), dt, cols, dst + kk * ldd);
}

/* Packs A to [rp][kp], B to [rank][np] and the bias to [np], on the calling thread before the
 * region: rank rows of K and N are little work, and done there they need no barrier. */
static void pack_operands(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L, float *ws)
{
    const int peft = p->layout == LF_LAYOUT_PEFT;
    pack_f32(kern, p->a, p->dtype, p->lda, !peft, p->rank, p->k, ws + L->apack, L->kp, L->rp);
    pack_f32(kern, p->b, p->dtype, p->ldb, peft, p->rank, p->n, ws + L->bpack, L->np, p->rank);
    if (p->bias) {
        kern->to_f32(p->bias, p->dtype, p->n, ws + L->bias);
        memset(ws + L->bias + p->n, 0, (size_t)(L->np - p->n) * sizeof(float));
    }
}

/* Rows [i0, i0 + rows) of 16-bit x to fp32 rows of kp (zero padded) at dst. */
static void convert_x(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L, int64_t i0,
                      int64_t rows, float *dst)
{
    for (int64_t i = 0; i < rows; i++) {
        float *row = dst + i * L->kp;
        kern->to_f32(elem(p->x, p->dtype, (i0 + i) * p->ldx), p->dtype, p->k, row);
        memset(row + p->k, 0, (size_t)(L->kp - p->k) * sizeof(float));
    }
}

/* t[0..rows) = scale · x·Aᵀ (rows of rp), a group of rank tiles at a time. */
static void project_rows(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L,
                         const float *ws, const float *x, int64_t ldx, int64_t rows, float *t)
{
    const int64_t tiles = L->rp / kern->proj_ranks;
    const int64_t group = min64(tiles, max64(1, PROJ_A_GROUP_FLOATS / (L->kp * kern->proj_ranks)));
    for (int64_t g0 = 0; g0 < tiles; g0 += group) {
        const lf_cpu_project_args args = {
            .x = x, .ldx = ldx, .rows = rows, .k = p->k, .a = ws + L->apack, .lda = L->kp,
            .t0 = g0 * kern->proj_ranks, .t1 = min64(tiles, g0 + group) * kern->proj_ranks,
            .scale = p->scale, .t = t, .ldt = L->rp,
        };
        kern->project(&args);
    }
}

/* Expand args for `rows` rows of T (from t) and columns [j0, j0 + cols), writing out (fp32 or y's
 * dtype) and reading beta·yin; yin and out point at the tile's first element of their matrices. */
static lf_cpu_expand_args expand_args(const lf_lora_problem *p, const ws_layout *L, const float *ws,
                                      const float *t, int64_t rows, int64_t j0, int64_t cols, const void *yin,
                                      void *out, lf_dtype out_dt, int64_t ldout)
{
    return (lf_cpu_expand_args){
        .t = t, .ldt = L->rp, .rows = rows, .cols = cols, .rank = p->rank,
        .b = ws + L->bpack + j0, .ldb = L->np, .bias = p->bias ? ws + L->bias + j0 : NULL,
        .beta = p->beta, .yin = yin, .yin_dtype = p->dtype, .ldyin = p->ldy,
        .out = out, .out_dtype = out_dt, .ldout = ldout,
    };
}

/* OpenBLAS built for OpenMP (or sequential) runs single-threaded inside a parallel region by
 * itself. Built with pthreads it has to be told, and only process-wide: the first caller in saves
 * its thread count and the last one out restores it. Meanwhile other threads' BLAS calls run
 * single-threaded too. */
static pthread_mutex_t blas_mutex = PTHREAD_MUTEX_INITIALIZER;
static int blas_users, blas_saved_threads;

void lf_cpu_blas_single_begin(void)
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

void lf_cpu_blas_single_end(void)
{
    if (openblas_get_parallel() != OPENBLAS_THREAD)
        return;
    pthread_mutex_lock(&blas_mutex);
    if (--blas_users == 0)
        openblas_set_num_threads(blas_saved_threads);
    pthread_mutex_unlock(&blas_mutex);
}

/* ---- team size under contention --------------------------------------------------------------- */

/* Even with dynamic tasks, a region ends with a barrier that waits for every thread of the team to
 * arrive, including one that has not had a core since the region began: on a loaded machine that
 * is a scheduler quantum or more per call (seed layer: 0.3 ms became 8-12 ms with a compiler and a
 * busy loop on 2 cores), whoever did the work. A region whose helpers ran no task at all shows
 * exactly that; the following calls then run on the calling thread alone, for a back-off that
 * doubles while it recurs (SOLO_MIN_NS up to SOLO_MAX_NS: at most one stalled call a second under
 * steady load, full speed again within a second once the machine is quiet). The bits do not
 * depend on the team size, so this changes only time. Process-wide: contention is the machine's. */
#define SOLO_MIN_NS 10000000LL
#define SOLO_MAX_NS 1000000000LL
static _Atomic long long solo_until_ns, solo_ns;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The team for the next region: nt, or 1 during a back-off. */
static int team_size(int nt)
{
    return nt > 1 && now_ns() < atomic_load_explicit(&solo_until_ns, memory_order_relaxed) ? 1 : nt;
}

/* After a region of nt threads in which threads other than the caller ran `helped` tasks. */
static void team_report(int nt, int64_t helped)
{
    if (nt <= 1)
        return;
    if (helped > 0) {
        atomic_store_explicit(&solo_ns, 0, memory_order_relaxed);
        return;
    }
    const long long len = atomic_load_explicit(&solo_ns, memory_order_relaxed);
    const long long next = len < SOLO_MIN_NS ? SOLO_MIN_NS : len >= SOLO_MAX_NS / 2 ? SOLO_MAX_NS : 2 * len;
    atomic_store_explicit(&solo_ns, next, memory_order_relaxed);
    atomic_store_explicit(&solo_until_ns, now_ns() + next, memory_order_relaxed);
}

/* ---- implementations ------------------------------------------------------------------------- */

/* Every region below runs `if (nt > 1)`: one thread runs the same tasks without a team. Loops hand
 * out one task at a time (schedule(dynamic)); the last loop of a region is nowait, as the region's
 * end is a barrier already. */

/* Rows [i0, i0 + rows) of the delta, start to end, in the calling thread's slot: x converted to
 * fp32 (16-bit), projected into T, T expanded into y. */
static void delta_rows(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L, float *ws,
                       int64_t i0, int64_t rows)
{
    const int64_t slot = omp_get_thread_num();
    float *t = ws + L->t + slot * L->t_slot;
    const float *x = (const float *)p->x + i0 * p->ldx;
    int64_t ldx = p->ldx;
    if (p->dtype != LF_F32) {
        float *xf = ws + L->xf + slot * L->xf_slot;
        convert_x(kern, p, L, i0, rows, xf);
        x = xf;
        ldx = L->kp;
    }
    project_rows(kern, p, L, ws, x, ldx, rows, t);
    void *y = (void *)elem(p->y, p->dtype, i0 * p->ldy);
    const lf_cpu_expand_args args = expand_args(p, L, ws, t, rows, 0, p->n, y, y, p->dtype, p->ldy);
    kern->expand(&args);
}

static int64_t run_delta(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L,
                         float *ws, int nt)
{
    const int64_t tasks = cdiv(p->m, L->rb);
    int64_t helped = 0;
#pragma omp parallel for if (nt > 1) num_threads(nt) schedule(dynamic) reduction(+ : helped)
    for (int64_t task = 0; task < tasks; task++) {
        helped += omp_get_thread_num() != 0;
        delta_rows(kern, p, L, ws, task * L->rb, min64(L->rb, p->m - task * L->rb));
    }
    return helped;
}

/* Whether a layer's panel of `rows` rows computes T (and converts x) in row tasks shared by the team
 * rather than on the calling thread before the region. Shared costs a barrier (every column task
 * reads all of T), worth it only when T is a thread's worth of work: projecting on the calling
 * thread cost 1.07-1.11x the base GEMM at M = 1024, K = N = 4096, r = 16 (2 cores), while a
 * barrier on a seed-sized layer is what stalls behind a descheduled thread. */
static int shared_projection(const lf_lora_problem *p, int64_t rows)
{
    return 2.0 * (double)rows * (double)p->k * (double)p->rank >= MIN_FLOPS_PER_THREAD;
}

/* Inside a layer's region: T for a panel of `rows` rows (x of stride ldx) into ws + L->t, in row
 * tasks; returns the tasks threads other than the caller ran. */
static int64_t project_panel(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L,
                             float *ws, const float *x, int64_t ldx, int64_t rows)
{
    int64_t helped = 0;
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < cdiv(rows, L->rb); b++) {
        helped += omp_get_thread_num() != 0;
        const int64_t r0 = b * L->rb;
        project_rows(kern, p, L, ws, x + r0 * ldx, ldx, min64(L->rb, rows - r0), ws + L->t + r0 * L->rp);
    }
    return helped;
}

static int64_t run_layer_f32(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L,
                             float *ws, int nt)
{
    const int peft = p->layout == LF_LAYOUT_PEFT;
    const int64_t tasks = cdiv(p->n, L->cb);
    int64_t helped = 0;
    for (int64_t i0 = 0; i0 < p->m; i0 += L->mp) {
        const int64_t rows = min64(L->mp, p->m - i0);
        const float *x = (const float *)p->x + i0 * p->ldx;
        const int shared = nt > 1 && shared_projection(p, rows);
        if (!shared)
            project_rows(kern, p, L, ws, x, p->ldx, rows, ws + L->t);
#pragma omp parallel if (nt > 1) num_threads(nt) reduction(+ : helped)
        {
            if (shared)
                helped += project_panel(kern, p, L, ws, x, p->ldx, rows);
#pragma omp for schedule(dynamic) nowait
            for (int64_t task = 0; task < tasks; task++) {
                helped += omp_get_thread_num() != 0;
                const int64_t j0 = task * L->cb, cols = min64(L->cb, p->n - j0);
                float *y = (float *)p->y + i0 * p->ldy + j0;
                const lf_cpu_expand_args args = expand_args(p, L, ws, ws + L->t, rows, j0, cols, y, y, LF_F32, p->ldy);
                kern->expand(&args);
                const float *w = (const float *)p->w + (peft ? j0 * p->ldw : j0);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, peft ? CblasTrans : CblasNoTrans, (int)rows, (int)cols,
                            (int)p->k, 1.0f, x, (int)p->ldx, w, (int)p->ldw, 1.0f, y, (int)p->ldy);
            }
        }
    }
    return helped;
}

static int64_t run_layer_cvt(const lf_cpu_kernels *kern, const lf_lora_problem *p, const ws_layout *L,
                             float *ws, int nt)
{
    const int peft = p->layout == LF_LAYOUT_PEFT;
    const float *xf = ws + L->xf;
    /* PEFT slices are cb rows of W [N, K]; KN slices are cb columns of W [K, N]. */
    const int64_t ldwf = peft ? L->kp : L->cb;
    const int64_t tasks = cdiv(p->n, L->cb);
    int64_t helped = 0;
    for (int64_t i0 = 0; i0 < p->m; i0 += L->mp) {
        const int64_t rows = min64(L->mp, p->m - i0);
        const int shared = nt > 1 && shared_projection(p, rows);
        if (!shared) {
            convert_x(kern, p, L, i0, rows, ws + L->xf);
            project_rows(kern, p, L, ws, xf, L->kp, rows, ws + L->t);
        }
#pragma omp parallel if (nt > 1) num_threads(nt) reduction(+ : helped)
        {
            if (shared) {
#pragma omp for schedule(dynamic)
                for (int64_t b = 0; b < cdiv(rows, L->rb); b++) {
                    helped += omp_get_thread_num() != 0;
                    const int64_t r0 = b * L->rb;
                    convert_x(kern, p, L, i0 + r0, min64(L->rb, rows - r0), ws + L->xf + r0 * L->kp);
                }
                helped += project_panel(kern, p, L, ws, xf, L->kp, rows);
            }
#pragma omp for schedule(dynamic) nowait
            for (int64_t task = 0; task < tasks; task++) {
                helped += omp_get_thread_num() != 0;
                const int64_t j0 = task * L->cb, cols = min64(L->cb, p->n - j0);
                const int64_t slot = omp_get_thread_num();
                float *wf = ws + L->wf + slot * L->wf_slot, *cbuf = ws + L->cbuf + slot * L->c_slot;
                lf_cpu_w_cols_to_f32(kern, p->w, p->dtype, p->layout, p->ldw, p->k, j0, cols, wf, ldwf);
                void *y = (void *)elem(p->y, p->dtype, i0 * p->ldy + j0);
                const lf_cpu_expand_args args = expand_args(p, L, ws, ws + L->t, rows, j0, cols, y, cbuf, LF_F32, L->cb);
                kern->expand(&args);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, peft ? CblasTrans : CblasNoTrans, (int)rows, (int)cols,
                            (int)p->k, 1.0f, xf, (int)L->kp, wf, (int)ldwf, 1.0f, cbuf, (int)L->cb);
                for (int64_t i = 0; i < rows; i++)
                    kern->from_f32(cbuf + i * L->cb, cols, p->dtype, (void *)elem(y, p->dtype, i * p->ldy));
            }
        }
    }
    return helped;
}

lf_status lf_cpu_lora_forward(lf_context *ctx, const lf_cpu_kernels *kern, const lf_plan *plan,
                              const lf_lora_problem *p)
{
    ws_layout L;
    layout_of(kern, p, plan->impl, plan->param, &L);
    if (L.total < 0 || (size_t)L.total * sizeof(float) > ctx->workspace_bytes || (L.total > 0 && !ctx->workspace))
        return lf_fail(ctx, LF_ERR_INTERNAL, "lf_lora_forward: the CPU plan's workspace (%lld bytes) is "
                       "larger than the context's (%zu bytes)", (long long)L.total * 4, ctx->workspace_bytes);
    if (p->w && (p->ldx > INT_MAX || p->ldw > INT_MAX || p->ldy > INT_MAX))
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_lora_forward: the CPU backend's GEMM takes row strides "
                       "up to %d (x %lld, w %lld, y %lld)", INT_MAX, (long long)p->ldx, (long long)p->ldw,
                       (long long)p->ldy);
    float *ws = ctx->workspace;
    /* The plan's team, or fewer threads if the context has been given fewer since (the workspace
     * has a slot for each thread of the plan), or one during a contention back-off. */
    const int nt = team_size((int)min64(lf_cpu_threads(ctx), plan->param[P_THREADS]));
    pack_operands(kern, p, &L, ws);
    int64_t helped;
    switch (plan->impl) {
    case IMPL_DELTA:
        helped = run_delta(kern, p, &L, ws, nt);
        break;
    case IMPL_LAYER_F32:
        lf_cpu_blas_single_begin();
        helped = run_layer_f32(kern, p, &L, ws, nt);
        lf_cpu_blas_single_end();
        break;
    case IMPL_LAYER_CVT:
        lf_cpu_blas_single_begin();
        helped = run_layer_cvt(kern, p, &L, ws, nt);
        lf_cpu_blas_single_end();
        break;
    default:
        return lf_fail(ctx, LF_ERR_INTERNAL, "lf_lora_forward: unknown CPU plan implementation %d", plan->impl);
    }
    team_report(nt, helped);
    return LF_OK;
}

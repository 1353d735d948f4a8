/*
 * backend_cpu.c — the CPU backend's vtable: context setup, host memory, the fast path's entry
 * points, and the benchmark support (timing, CBLAS baselines, copy bandwidth) `lorafuse bench` uses.
 *
 * Baselines on 16-bit data: CBLAS has no f16/bf16 GEMM, so both baselines first convert their
 * operands to fp32 in the workspace, run the same fp32 BLAS steps as for f32, and round y once at
 * the end. Their times include those conversions, as a framework on this CPU would pay them too.
 * The conversions run on the calling thread: an OpenMP region before a threaded OpenBLAS call
 * leaves libgomp workers spinning on the cores OpenBLAS needs, which made these baselines up to
 * 2.5× slower and erratic (2 cores, pthread OpenBLAS); one thread costs them less than that.
 */
#include "lora_fwd.h"
#include "lora_merge.h"
#include "lora_multi.h"

#include <cblas.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* backend_state holds the kernel set chosen at init (a const table: nothing to free). */
static const lf_cpu_kernels *kernels_of(const lf_context *ctx) { return ctx->backend_state; }

static void read_cpu_model(char *out, size_t cap)
{
    snprintf(out, cap, "CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        const char *v = strchr(line, ':');
        if (!v)
            continue;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t len = strcspn(v, "\r\n");
        if (len > 0)
            snprintf(out, cap, "%.*s", (int)len, v);
        break;
    }
    fclose(f);
}

static lf_status cpu_init(lf_context *ctx)
{
    const lf_cpu_kernels *kern = lf_cpu_kernels_select();
    ctx->backend_state = (void *)kern;
    char model[96];
    read_cpu_model(model, sizeof model);
    /* The kernel set is part of the device: timings differ by it. */
    snprintf(ctx->device_name, sizeof ctx->device_name, "%s [%s]", model, kern->isa);
    return LF_OK;
}

static void cpu_destroy(lf_context *ctx) { ctx->backend_state = NULL; }

static lf_status cpu_plan(lf_context *ctx, const lf_lora_problem *p, lf_plan *plan)
{
    return lf_cpu_lora_plan(ctx, kernels_of(ctx), p, plan);
}

static lf_status cpu_lora_forward(lf_context *ctx, const lf_plan *plan, const lf_lora_problem *p)
{
    return lf_cpu_lora_forward(ctx, kernels_of(ctx), plan, p);
}

static lf_status cpu_lora_multi(lf_context *ctx, const lf_multi_problem *p)
{
    return lf_cpu_lora_multi(ctx, kernels_of(ctx), p);
}

static lf_status cpu_alloc(lf_context *ctx, void **ptr, size_t bytes)
{
    /* 64 bytes: a cache line and an AVX-512 vector. */
    if (posix_memalign(ptr, 64, bytes ? bytes : 64) != 0) {
        *ptr = NULL;
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_malloc: %zu bytes of host memory are not available", bytes);
    }
    return LF_OK;
}

static lf_status cpu_release(lf_context *ctx, void *ptr)
{
    (void)ctx;
    free(ptr);
    return LF_OK;
}

static lf_status cpu_copy(lf_context *ctx, void *dst, const void *src, size_t bytes, lf_copy_kind kind)
{
    (void)ctx;
    (void)kind;
    memcpy(dst, src, bytes);
    return LF_OK;
}

static lf_status cpu_synchronize(lf_context *ctx)
{
    (void)ctx;
    return LF_OK;
}

/* ---- benchmark support ----------------------------------------------------------------------- */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of single timed calls: robust to the odd preempted call on a shared machine. */
static lf_status cpu_time_calls(lf_context *ctx, lf_timed_fn fn, void *arg, int iters, lf_timing_mode mode,
                                double *us_per_call)
{
    (void)mode; /* no graphs on the CPU: every mode is a host loop */
    if (iters < 1)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "time_calls: iters = %d, expected >= 1", iters);
    double *us = malloc((size_t)iters * sizeof *us);
    if (!us)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "time_calls: no memory for %d timings", iters);
    lf_status st = LF_OK;
    /* Warm-up: first-touch of pages, plan building, OpenBLAS and OpenMP thread start-up. */
    for (int i = 0; i < 2 && st == LF_OK; i++)
        st = fn(arg);
    for (int i = 0; i < iters && st == LF_OK; i++) {
        const double t0 = now_seconds();
        st = fn(arg);
        us[i] = (now_seconds() - t0) * 1e6;
    }
    if (st == LF_OK) {
        qsort(us, (size_t)iters, sizeof *us, cmp_double);
        *us_per_call = iters % 2 ? us[iters / 2] : 0.5 * (us[iters / 2 - 1] + us[iters / 2]);
    }
    free(us);
    return st;
}

/* fp32 copies of a 16-bit problem's operands, dense, in the baseline workspace. */
typedef struct baseline_ws {
    size_t t, u, x, w, a, b, bias, y, total; /* offsets in floats */
} baseline_ws;

static size_t take(baseline_ws *L, size_t floats)
{
    const size_t at = L->total;
    const size_t rounded = floats > SIZE_MAX / 8 ? SIZE_MAX / 8 : (floats + 15) / 16 * 16;
    L->total = at > SIZE_MAX / 8 - rounded ? SIZE_MAX / 8 : at + rounded;
    return at;
}

/* a·b floats, saturating at a size take() treats as impossible. */
static size_t mul(int64_t a, int64_t b)
{
    if (b != 0 && (uint64_t)a > SIZE_MAX / 8 / (uint64_t)b)
        return SIZE_MAX / 8;
    return (size_t)a * (size_t)b;
}

static baseline_ws baseline_layout(const lf_lora_problem *p)
{
    baseline_ws L = {0};
    L.t = take(&L, mul(p->m, p->rank));
    L.u = take(&L, mul(p->m, p->n));
    if (p->dtype != LF_F32) {
        L.x = take(&L, mul(p->m, p->k));
        L.w = p->w ? take(&L, mul(p->n, p->k)) : 0;
        L.a = p->a ? take(&L, mul(p->rank, p->k)) : 0; /* the base GEMM alone has no adapter */
        L.b = p->b ? take(&L, mul(p->n, p->rank)) : 0;
        L.bias = p->bias ? take(&L, (size_t)p->n) : 0;
        L.y = take(&L, mul(p->m, p->n));
    }
    return L;
}

static size_t cpu_baseline_workspace_bytes(const lf_lora_problem *p)
{
    const baseline_ws L = baseline_layout(p);
    /* An impossible size stays impossible: the allocation fails instead of wrapping around. */
    return L.total >= SIZE_MAX / 8 ? SIZE_MAX : L.total * sizeof(float);
}

static lf_status baseline_check(lf_context *ctx, const lf_lora_problem *p, const void *ws, const char *what)
{
    const int64_t lim = INT_MAX;
    if (!ws && cpu_baseline_workspace_bytes(p) > 0)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "%s: the workspace is NULL", what);
    if (p->m > lim || p->n > lim || p->k > lim || p->ldx > lim || p->ldw > lim || p->lda > lim ||
        p->ldb > lim || p->ldy > lim)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "%s: CBLAS takes sizes and strides up to %d", what, INT_MAX);
    return LF_OK;
}

/* dst [rows, cols] dense fp32 = src (rows of `ld` elements in p's dtype). */
static void convert_in(const lf_cpu_kernels *kern, const void *src, lf_dtype dt, int64_t ld,
                       int64_t rows, int64_t cols, float *dst)
{
    const size_t es = lf_dtype_size(dt);
    for (int64_t i = 0; i < rows; i++)
        kern->to_f32((const char *)src + (size_t)(i * ld) * es, dt, cols, dst + i * cols);
}

static void convert_out(const lf_cpu_kernels *kern, const float *src, int64_t rows, int64_t cols,
                        void *dst, lf_dtype dt, int64_t ld)
{
    const size_t es = lf_dtype_size(dt);
    for (int64_t i = 0; i < rows; i++)
        kern->from_f32(src + i * cols, cols, dt, (char *)dst + (size_t)(i * ld) * es);
}

/* The fp32 view of p: p itself, or its operands converted into the workspace (y too when read). */
static lf_lora_problem baseline_f32_view(lf_context *ctx, const lf_lora_problem *p, float *ws, const baseline_ws *L)
{
    if (p->dtype == LF_F32)
        return *p;
    const lf_cpu_kernels *kern = kernels_of(ctx);
    const int peft = p->layout == LF_LAYOUT_PEFT;
    lf_lora_problem q = *p;
    q.dtype = LF_F32;
    convert_in(kern, p->x, p->dtype, p->ldx, p->m, p->k, ws + L->x);
    q.x = ws + L->x;
    q.ldx = p->k;
    if (p->w) {
        convert_in(kern, p->w, p->dtype, p->ldw, peft ? p->n : p->k, peft ? p->k : p->n, ws + L->w);
        q.w = ws + L->w;
        q.ldw = peft ? p->k : p->n;
    }
    if (p->a) {
        convert_in(kern, p->a, p->dtype, p->lda, peft ? p->rank : p->k, peft ? p->k : p->rank, ws + L->a);
        q.a = ws + L->a;
        q.lda = peft ? p->k : p->rank;
    }
    if (p->b) {
        convert_in(kern, p->b, p->dtype, p->ldb, peft ? p->n : p->rank, peft ? p->rank : p->n, ws + L->b);
        q.b = ws + L->b;
        q.ldb = peft ? p->rank : p->n;
    }
    if (p->bias) {
        kern->to_f32(p->bias, p->dtype, p->n, ws + L->bias);
        q.bias = ws + L->bias;
    }
    if (p->beta != 0.0f)
        convert_in(kern, p->y, p->dtype, p->ldy, p->m, p->n, ws + L->y);
    q.y = ws + L->y;
    q.ldy = p->n;
    return q;
}

static lf_status cpu_baseline_base_gemm(lf_context *ctx, const lf_lora_problem *p, void *ws)
{
    if (!p->w)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "baseline_base_gemm: the problem has no W");
    lf_status st = baseline_check(ctx, p, ws, "baseline_base_gemm");
    if (st != LF_OK)
        return st;
    const baseline_ws L = baseline_layout(p);
    const lf_lora_problem q = baseline_f32_view(ctx, p, ws, &L);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, q.layout == LF_LAYOUT_PEFT ? CblasTrans : CblasNoTrans,
                (int)q.m, (int)q.n, (int)q.k, 1.0f, q.x, (int)q.ldx, q.w, (int)q.ldw, q.beta, q.y, (int)q.ldy);
    if (p->dtype != LF_F32)
        convert_out(kernels_of(ctx), q.y, p->m, p->n, p->y, p->dtype, p->ldy);
    return LF_OK;
}

/* y = beta·y for rows of n elements; beta = 0 writes zeros without reading y. */
static void scale_rows(float *y, int64_t m, int64_t n, int64_t ldy, float beta)
{
    if (beta == 1.0f)
        return;
    if (ldy == n && m * n <= INT_MAX) {
        if (beta == 0.0f)
            memset(y, 0, (size_t)(m * n) * sizeof(float));
        else
            cblas_sscal((int)(m * n), beta, y, 1);
        return;
    }
    for (int64_t i = 0; i < m; i++) {
        if (beta == 0.0f)
            memset(y + i * ldy, 0, (size_t)n * sizeof(float));
        else
            cblas_sscal((int)n, beta, y + i * ldy, 1);
    }
}

/* The sequence PyTorch/PEFT runs for a LoRA linear, one BLAS call or pass per step:
 *   y = x·Wᵀ + bias (addmm), T = x·Aᵀ, U = T·Bᵀ, U *= scale, y += U. */
static lf_status cpu_baseline_unfused(lf_context *ctx, const lf_lora_problem *p, void *ws)
{
    lf_status st = baseline_check(ctx, p, ws, "baseline_unfused");
    if (st != LF_OK)
        return st;
    const baseline_ws L = baseline_layout(p);
    const lf_lora_problem q = baseline_f32_view(ctx, p, ws, &L);
    const CBLAS_TRANSPOSE tr = q.layout == LF_LAYOUT_PEFT ? CblasTrans : CblasNoTrans;
    float *y = q.y, *t = (float *)ws + L.t, *u = (float *)ws + L.u;
    const int m = (int)q.m, n = (int)q.n, k = (int)q.k, r = (int)q.rank;

    if (q.w)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tr, m, n, k, 1.0f, q.x, (int)q.ldx, q.w, (int)q.ldw, q.beta,
                    y, (int)q.ldy);
    else
        scale_rows(y, q.m, q.n, q.ldy, q.beta);
    if (q.bias)
        for (int64_t i = 0; i < q.m; i++)
            cblas_saxpy(n, 1.0f, q.bias, 1, y + i * q.ldy, 1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tr, m, r, k, 1.0f, q.x, (int)q.ldx, q.a, (int)q.lda, 0.0f, t, r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tr, m, n, r, 1.0f, t, r, q.b, (int)q.ldb, 0.0f, u, n);
    /* Whole-matrix calls where the memory is contiguous, so OpenBLAS may thread them. */
    const int whole = q.m * q.n <= INT_MAX;
    if (whole)
        cblas_sscal(m * n, q.scale, u, 1);
    else
        for (int64_t i = 0; i < q.m; i++)
            cblas_sscal(n, q.scale, u + i * q.n, 1);
    if (whole && q.ldy == q.n)
        cblas_saxpy(m * n, 1.0f, u, 1, y, 1);
    else
        for (int64_t i = 0; i < q.m; i++)
            cblas_saxpy(n, 1.0f, u + i * q.n, 1, y + i * q.ldy, 1);

    if (p->dtype != LF_F32)
        convert_out(kernels_of(ctx), y, p->m, p->n, p->y, p->dtype, p->ldy);
    return LF_OK;
}

/* Buffer-to-buffer copy bandwidth, split over the context's threads as the kernels are. */
static lf_status cpu_measure_copy_bandwidth(lf_context *ctx, double *gbps)
{
    const size_t bytes = (size_t)256 << 20, chunk = (size_t)1 << 20;
    char *src = NULL, *dst = NULL;
    if (posix_memalign((void **)&src, 64, bytes) != 0 || posix_memalign((void **)&dst, 64, bytes) != 0) {
        free(src);
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "measure_copy_bandwidth: no memory for 2 × 256 MiB");
    }
    const int nt = lf_cpu_threads(ctx);
    const int64_t chunks = (int64_t)(bytes / chunk);
    /* First touch from the threads that copy, so pages sit near them. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        memset(src + c * chunk, 1, chunk);
        memset(dst + c * chunk, 0, chunk);
    }
    double best = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        const double t0 = now_seconds();
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t c = 0; c < chunks; c++)
            memcpy(dst + c * chunk, src + c * chunk, chunk);
        const double rate = 2.0 * (double)bytes / (now_seconds() - t0) / 1e9;
        best = rate > best ? rate : best;
    }
    free(src);
    free(dst);
    *gbps = best;
    return LF_OK;
}

static const lf_backend_ops cpu_ops = {
    .kind = LF_BACKEND_CPU,
    .init = cpu_init,
    .destroy = cpu_destroy,
    .plan = cpu_plan,
    .lora_forward = cpu_lora_forward,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .copy = cpu_copy,
    .synchronize = cpu_synchronize,
    .time_calls = cpu_time_calls,
    .baseline_workspace_bytes = cpu_baseline_workspace_bytes,
    .baseline_base_gemm = cpu_baseline_base_gemm,
    .baseline_unfused = cpu_baseline_unfused,
    .measure_copy_bandwidth = cpu_measure_copy_bandwidth,
    .lora_merge = lf_cpu_lora_merge,
    .lora_multi = cpu_lora_multi,
};

const lf_backend_ops *lf_cpu_backend_ops(void) { return &cpu_ops; }

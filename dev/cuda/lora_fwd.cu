/*
 * dev/cuda/lora_fwd.cu — kernel lab for lf_lora_forward on CUDA (llm.c style).
 *
 * The kernels under test are the library's own (src/cuda/lora_fwd.cu), reached through the
 * backend vtable with the plan forced to each version, so what is validated and timed here is what
 * ships. Versions:
 *   delta-fused   one launch: each block shrinks its rows into shared memory, then expands
 *   delta-two     shrink kernel (T fp32 in the workspace), then the expand kernel
 *   delta-tsplit  T by cuBLAS in K-slices (workspace), then the GEMM path's epilogue without a base
 *   decode        shrink + W-streaming mma.sync GEMV with the LoRA epilogue, PDL between them
 *   plan-nopdl    the plan's choice, launched without programmatic dependent launch
 *   decode-rtalt  the other tile height (16 rows of W per tile instead of 32, or the reverse)
 *   gemm          cuBLAS base GEMM (fp32 out) + the delta as epilogue
 *   gemm-c128     the same in row chunks of 128 (the plan chunks only past 256 MiB of fp32: this
 *                 keeps the chunk loop validated on small shapes)
 *   gemm-whole    the same in one chunk (one cuBLAS GEMM, the fp32 result read from HBM)
 * The v11 decode experiments (prefetch-size hints, whole-line copies, evict-first; NOTES.md) were
 * copies of the library's decode kernel with knobs; the winner (the 128-byte hint) is in
 * src/cuda, the copies are in git history at commit 387b7ba.
 * Every version is validated against a double-precision _cpu reference on awkward shapes with
 * poisoned outputs and stride canaries, and twice for bitwise determinism, before anything is timed.
 *
 *   make -C dev/cuda && dev/cuda/bin/lora_fwd          (all checks, then the timing table)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lf_dtype.h"
#include "cpu/lora_ref.h"
#include "cuda/common.cuh"
#include "cuda/heuristics.h"

#define CHECK_LF(call)                                                                               \
    do {                                                                                             \
        lf_status s_ = (call);                                                                       \
        if (s_ != LF_OK) {                                                                           \
            fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call, lf_status_name(s_),  \
                    lf_context_last_error(ctx));                                                     \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

static lf_context *ctx;
static uint64_t rng = 88172645463325252ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

enum {
    V_DEFAULT, V_DELTA_FUSED, V_DELTA_TWO, V_DELTA_TSPLIT, V_DECODE, V_NOPDL, V_DECODE_RTALT, V_GEMM,
    V_GEMM_C128, V_GEMM_WHOLE, V_COUNT
};
static const char *vname[V_COUNT] = {"plan",       "delta-fused",  "delta-two",    "delta-tsplit",
                                     "decode",     "plan-nopdl",   "decode-rtalt", "gemm",
                                     "gemm-c128", "gemm-whole"};

/* A host matrix with its device copy: rows × cols with a row stride; `off` elements skipped at the
 * start (misaligns the pointer when odd). */
typedef struct {
    int64_t rows, cols, stride, off;
    size_t elems; /* allocated */
    float *h;     /* fp32 values, exactly representable in the dtype */
    void *d;
} mat;

static void mat_make(mat *m, lf_dtype dt, int64_t rows, int64_t cols, int aligned, float amp)
{
    m->rows = rows;
    m->cols = cols;
    m->stride = aligned ? (cols + 7) / 8 * 8 : cols + 1;
    m->off = aligned ? 0 : 1;
    m->elems = (size_t)(m->off + rows * m->stride + 8);
    m->h = (float *)malloc(m->elems * 4);
    const size_t es = lf_dtype_size(dt);
    unsigned char *raw = (unsigned char *)malloc(m->elems * es);
    for (size_t i = 0; i < m->elems; i++) {
        float v = amp * frand();
        lf_store_f32(raw, dt, (int64_t)i, v);
        m->h[i] = lf_load_f32(raw, dt, (int64_t)i);
    }
    CHECK_LF(lf_malloc(ctx, &m->d, m->elems * es));
    CHECK_LF(lf_memcpy(ctx, m->d, raw, m->elems * es, LF_COPY_HOST_TO_DEVICE));
    free(raw);
}
static void mat_free(mat *m)
{
    free(m->h);
    lf_free(ctx, m->d);
}
static lf_matrix view(const mat *m, lf_dtype dt)
{
    lf_matrix v = lf_matrix_make(dt, (char *)m->d + m->off * lf_dtype_size(dt), m->rows, m->cols);
    v.stride = m->stride;
    return v;
}

typedef struct {
    const char *name;
    lf_dtype dt;
    lf_layout layout;
    int64_t m, k, n, r;
    int has_w, has_bias, aligned;
    float beta;
} tcase;

/* Host view of m's fp32 values (exactly the dtype's values) for the library's reference. */
static const float *host_at(const mat *m) { return m->h + m->off; }

/* The reference (src/cpu/lora_ref.c, double accumulation) on the host copies of case c: exact
 * values in out, the magnitudes lf_ref_tolerance wants in mag. y0 holds y's values before the call. */
static void reference(const tcase *c, const mat *x, const mat *w, const mat *bias, const mat *a, const mat *b,
                      const mat *y0, float scale, double *out, double *mag)
{
    const lf_lora_problem hp = {.layout = c->layout, .dtype = LF_F32, .m = c->m, .k = c->k, .n = c->n, .rank = c->r,
                                .x = host_at(x), .ldx = x->stride, .w = w ? host_at(w) : NULL,
                                .ldw = w ? w->stride : 0, .bias = bias ? host_at(bias) : NULL, .a = host_at(a),
                                .lda = a->stride, .b = host_at(b), .ldb = b->stride, .scale = scale,
                                .beta = c->beta, .y = (void *)host_at(y0), .ldy = y0->stride};
    lf_ref_lora_forward_f64(&hp, out, mag);
}

/* A plan for version v of problem p: the backend's own, then forced where v asks. */
static int plan_version(const lf_lora_problem *p, int v, lf_plan *plan)
{
    const lf_backend_ops *ops = lf_cuda_backend_ops();
    memset(plan, 0, sizeof *plan);
    plan->key = lf_plan_key_of(p);
    CHECK_LF(ops->plan(ctx, p, plan));
    const int sms = lf_cuda_state_of(ctx)->sm_count;
    const lf_cuda_shrink_cfg s = lf_cuda_shrink_pick(p->m, p->k, p->rank, sms);
    switch (v) {
    case V_DEFAULT:
        break;
    case V_DELTA_FUSED:
        if (p->w || lf_cuda_pick_kc(p->k, lf_cuda_delta_bm(p->m), (int)p->rank) < 32)
            return 0;
        plan->impl = LF_CUDA_DELTA_FUSED;
        plan->param[4] = lf_cuda_state_of(ctx)->cc_major >= 9;
        plan->param[0] = LF_CUDA_DELTA_FUSED;
        plan->param[1] = lf_cuda_delta_bm(p->m);
        plan->param[2] = lf_cuda_delta_bn(p->n);
        plan->param[3] = lf_cuda_pick_kc(p->k, lf_cuda_delta_bm(p->m), (int)p->rank);
        plan->workspace_bytes = 0;
        break;
    case V_DELTA_TWO:
        if (p->w)
            return 0;
        plan->impl = LF_CUDA_DELTA_TWO;
        plan->param[4] = lf_cuda_state_of(ctx)->cc_major >= 9;
        plan->param[0] = LF_CUDA_DELTA_TWO;
        plan->param[1] = s.bm;
        plan->param[2] = s.rc;
        plan->param[3] = s.kc;
        plan->workspace_bytes = (size_t)p->m * p->rank * 4 + 256;
        break;
    case V_DELTA_TSPLIT:
        if (p->w || !(plan->key.flags & LF_PLAN_STRIDES_INT))
            return 0;
        plan->impl = LF_CUDA_DELTA_TSPLIT;
        plan->param[0] = LF_CUDA_DELTA_TSPLIT;
        plan->param[1] = lf_cuda_gemm_t_splits(p->m, p->k);
        plan->param[4] = lf_cuda_state_of(ctx)->cc_major >= 9;
        plan->workspace_bytes = (size_t)plan->param[1] * p->m * p->rank * 4 + 256;
        break;
    case V_NOPDL: /* the plan's own choice, every launch without programmatic dependent launch */
        if (plan->impl == LF_CUDA_DECODE)
            plan->param[5] = 0;
        else if (plan->impl == LF_CUDA_GEMM || plan->impl == LF_CUDA_HOPPER_MID)
            plan->param[1] = 0;
        else
            plan->param[4] = 0;
        break;
    case V_DECODE:
    case V_DECODE_RTALT:
        if (plan->impl != LF_CUDA_DECODE)
            return 0;
        if (v == V_DECODE_RTALT)
            plan->param[0] = 3 - plan->param[0];
        break;
    case V_GEMM:
    case V_GEMM_C128:
    case V_GEMM_WHOLE:
        if (!p->w)
            return 0;
        plan->impl = LF_CUDA_GEMM;
        plan->param[0] = p->dtype == LF_F32 ? p->m : lf_cuda_gemm_chunk_rows(p->m, p->n);
        if (v == V_GEMM_C128)
            plan->param[0] = p->m < 128 ? p->m : 128;
        if (v == V_GEMM_WHOLE)
            plan->param[0] = p->m;
        plan->param[1] = lf_cuda_state_of(ctx)->cc_major >= 9;
        plan->param[2] = lf_cuda_gemm_t_splits(p->m, p->k);
        plan->param[3] = 0; /* the general path: T by cuBLAS and lora_epilogue_kernel */
        plan->workspace_bytes = ((size_t)plan->param[2] * p->m * p->rank * 4 + 255) / 256 * 256 +
                                (p->dtype == LF_F32 ? 0 : (size_t)plan->param[0] * p->n * 4);
        break;
    }
    if (plan->workspace_bytes > ctx->workspace_bytes) {
        CHECK_LF(lf_synchronize(ctx));
        if (ctx->workspace)
            CHECK_LF(lf_free(ctx, ctx->workspace));
        CHECK_LF(lf_malloc(ctx, &ctx->workspace, plan->workspace_bytes));
        ctx->workspace_bytes = plan->workspace_bytes;
    }
    return 1;
}

typedef struct {
    int nops;
    int which; /* 0 fused (forced plan), 1 base GEMM, 2 unfused, 3 cuBLAS x·Wᵀ fp32 out, 4 cuBLAS T */
    lf_lora_problem p[4]; /* rotated: W copies that together overflow L2 */
    lf_plan plan;
    void *ws;
    int next;
} timed;

static lf_status timed_call(void *arg)
{
    timed *t = (timed *)arg;
    const lf_lora_problem *p = &t->p[t->next];
    t->next = (t->next + 1) % t->nops;
    const lf_backend_ops *ops = lf_cuda_backend_ops();
    switch (t->which) {
    case 0:
        return ops->lora_forward(ctx, &t->plan, p);
    case 1:
        return ops->baseline_base_gemm(ctx, p, t->ws);
    case 2:
        return ops->baseline_unfused(ctx, p, t->ws);
    case 3: /* the GEMM path's parts, into t->ws sized for them */
        return lf_cuda_gemm_xwt(ctx, lf_cuda_data_type(p->dtype), CUDA_R_32F, 1, p->m, p->n, p->k, p->x, p->ldx,
                                p->w, p->ldw, 0.0f, t->ws, p->n);
    default: { /* T in K-slices as the GEMM path computes it */
        const int s = lf_cuda_gemm_t_splits(p->m, p->k);
        return lf_cuda_gemm_xwt_ksplit(ctx, lf_cuda_data_type(p->dtype), 1, p->m, p->rank, p->k / s, s, p->x, p->ldx,
                                       p->k / s, p->a, p->lda, p->k / s, (float *)t->ws, p->rank, p->m * p->rank);
    }
    }
}

static int failures = 0;

/* Frees what check_case made for case c. */
static void free_case(const tcase *c, mat *x, mat *w, mat *bias, mat *a, mat *b, mat *y, unsigned char *y0,
                      unsigned char *y1, unsigned char *y2)
{
    mat_free(x);
    if (c->has_w)
        mat_free(w);
    if (c->has_bias)
        mat_free(bias);
    mat_free(a);
    mat_free(b);
    mat_free(y);
    free(y0);
    free(y1);
    free(y2);
}

/* Validates version v on case c; returns 0 when the version does not apply. */
static int check_case(const tcase *c, int v, float scale)
{
    const int kn = c->layout == LF_LAYOUT_KN;
    mat x, w, bias, a, b, y;
    mat_make(&x, c->dt, c->m, c->k, c->aligned, 1.0f);
    if (c->has_w)
        mat_make(&w, c->dt, kn ? c->k : c->n, kn ? c->n : c->k, c->aligned, 0.05f);
    if (c->has_bias)
        mat_make(&bias, c->dt, 1, c->n, 1, 1.0f);
    mat_make(&a, c->dt, kn ? c->k : c->r, kn ? c->r : c->k, c->aligned, 0.05f);
    mat_make(&b, c->dt, kn ? c->r : c->n, kn ? c->n : c->r, c->aligned, 0.1f);
    mat_make(&y, c->dt, c->m, c->n, c->aligned, 1.0f);
    const size_t es = lf_dtype_size(c->dt);
    unsigned char *y0 = (unsigned char *)malloc(y.elems * es), *y1 = (unsigned char *)malloc(y.elems * es),
                  *y2 = (unsigned char *)malloc(y.elems * es);
    CHECK_LF(lf_memcpy(ctx, y0, y.d, y.elems * es, LF_COPY_DEVICE_TO_HOST));
    if (c->beta == 0) /* poison: 0xFF bytes are NaN in every dtype; beta = 0 must never read them */
        for (int64_t i = 0; i < c->m; i++)
            memset(y0 + (y.off + i * y.stride) * es, 0xff, c->n * es);
    /* canaries in the stride padding and around the view */
    lf_matrix xv = view(&x, c->dt), av = view(&a, c->dt), bv = view(&b, c->dt), yv = view(&y, c->dt);
    lf_matrix wv, biasv;
    if (c->has_w)
        wv = view(&w, c->dt);
    if (c->has_bias)
        biasv = view(&bias, c->dt);
    lf_lora_problem p;
    CHECK_LF(lf_lora_problem_from_views(ctx, c->layout, &xv, c->has_w ? &wv : NULL, c->has_bias ? &biasv : NULL,
                                        &av, &bv, scale, c->beta, &yv, &p));
    lf_plan plan;
    if (!plan_version(&p, v, &plan)) {
        free_case(c, &x, &w, &bias, &a, &b, &y, y0, y1, y2);
        return 0;
    }
    for (int run = 0; run < 2; run++) {
        CHECK_LF(lf_memcpy(ctx, y.d, y0, y.elems * es, LF_COPY_HOST_TO_DEVICE));
        CHECK_LF(lf_cuda_backend_ops()->lora_forward(ctx, &plan, &p));
        CHECK_LF(lf_memcpy(ctx, run ? y2 : y1, y.d, y.elems * es, LF_COPY_DEVICE_TO_HOST));
    }
    double *ref = (double *)malloc(c->m * c->n * 8), *mag = (double *)malloc(c->m * c->n * 8);
    /* the reference reads y's old values (beta != 0) from y.h, which matches y0 then */
    reference(c, &x, c->has_w ? &w : NULL, c->has_bias ? &bias : NULL, &a, &b, &y, scale, ref, mag);
    int64_t bad = 0, bad_canary = 0;
    double worst = 0, num = 0, den = 0;
    for (int64_t i = 0; i < c->m; i++)
        for (int64_t j = 0; j < y.stride; j++) {
            const int64_t e = y.off + i * y.stride + j;
            if (j >= c->n) {
                bad_canary += memcmp(y1 + e * es, y0 + e * es, es) != 0;
                continue;
            }
            const double got = lf_load_f32(y1, c->dt, e), want = ref[i * c->n + j];
            const double tol = lf_ref_tolerance(c->dt, c->k, c->r, want, mag[i * c->n + j]);
            const double err = fabs(got - want);
            if (!(err <= tol))
                bad++;
            if (err / tol > worst || isnan(err))
                worst = isnan(err) ? INFINITY : err / tol;
            num += (got - want) * (got - want);
            den += want * want;
        }
    for (int64_t e = 0; e < y.off; e++)
        bad_canary += memcmp(y1 + e * es, y0 + e * es, es) != 0;
    for (size_t e = y.off + (c->m - 1) * y.stride + c->n; e < y.elems; e++)
        bad_canary += memcmp(y1 + e * es, y0 + e * es, es) != 0;
    const int det = memcmp(y1, y2, y.elems * es) == 0;
    const int ok = bad == 0 && bad_canary == 0 && det;
    failures += !ok;
    printf("%s %-14s %-12s %-4s %-4s M%-5lld K%-5lld N%-6lld r%-5lld %s%s%s beta=%g  rel %.2e  worst/tol %.2f%s%s%s\n",
           ok ? "PASS" : "FAIL", c->name, vname[v], lf_dtype_name(c->dt), kn ? "KN" : "PEFT", (long long)c->m,
           (long long)c->k, (long long)c->n, (long long)c->r, c->has_w ? "W " : "delta ", c->has_bias ? "bias " : "",
           c->aligned ? "al16" : "unal", c->beta, sqrt(num / (den + 1e-300)), worst,
           bad ? "  WRONG VALUES" : "", bad_canary ? "  CANARY OVERWRITTEN" : "", det ? "" : "  NOT DETERMINISTIC");
    free(ref);
    free(mag);
    free_case(c, &x, &w, &bias, &a, &b, &y, y0, y1, y2);
    return 1;
}

typedef struct {
    char line[200];
} row;
static row table[128];
static int nrows = 0;

/* Times version v (and, with baselines, cuBLAS base and the unfused sequence) on a dense aligned
 * PEFT problem, rotating `copies` sets of W/x/y so that W comes from HBM as it does in a model. */
static void bench(const char *name, lf_dtype dt, int64_t m, int64_t k, int64_t n, int64_t r, int has_w,
                  const int *versions, int nv, int baselines, double copy_gbps)
{
    const size_t es = lf_dtype_size(dt);
    const int copies = has_w && (size_t)n * k * es < (size_t)(200 << 20) ? 4 : 1;
    timed t;
    memset(&t, 0, sizeof t);
    t.nops = copies;
    void *bufs[4][5];
    for (int c = 0; c < copies; c++) {
        const int64_t sizes[5] = {m * k, has_w ? n * k : 0, r * k, n * r, m * n};
        for (int i = 0; i < 5; i++) {
            bufs[c][i] = NULL;
            if (!sizes[i])
                continue;
            CHECK_LF(lf_malloc(ctx, &bufs[c][i], sizes[i] * es));
            /* random bits in the 16-bit types would include NaN; fill from a host pattern */
            unsigned char *h = (unsigned char *)malloc(sizes[i] * es);
            for (int64_t e = 0; e < sizes[i]; e++)
                lf_store_f32(h, dt, e, 0.05f * frand());
            CHECK_LF(lf_memcpy(ctx, bufs[c][i], h, sizes[i] * es, LF_COPY_HOST_TO_DEVICE));
            free(h);
        }
        t.p[c] = lf_lora_problem{.layout = LF_LAYOUT_PEFT, .dtype = dt, .m = m, .k = k, .n = n, .rank = r,
                                   .x = bufs[c][0], .ldx = k, .w = bufs[c][1], .ldw = k, .bias = NULL,
                                   .a = bufs[c][2], .lda = k, .b = bufs[c][3], .ldb = r, .scale = 2.0f,
                                   .beta = 0.0f, .y = bufs[c][4], .ldy = n};
    }
    const double bytes = (double)es * (m * k + (has_w ? n * k : 0) + r * k + n * r + m * n);
    const int iters = 40;
    for (int i = 0; i < nv; i++) {
        if (!plan_version(&t.p[0], versions[i], &t.plan))
            continue;
        double g = 0, hl = 0;
        t.which = 0;
        t.next = 0;
        CHECK_LF(lf_cuda_backend_ops()->time_calls(ctx, timed_call, &t, iters, LF_TIME_GRAPH, &g));
        t.next = 0;
        CHECK_LF(lf_cuda_backend_ops()->time_calls(ctx, timed_call, &t, iters, LF_TIME_HOST_LOOP, &hl));
        snprintf(table[nrows++].line, sizeof table[0].line, "%-16s %-13s graph %8.2f us  host %8.2f us  %7.1f GB/s  %5.1f%% copy",
                 name, vname[versions[i]], g, hl, bytes / g / 1e3, 100.0 * bytes / g / 1e3 / copy_gbps);
    }
    if (baselines) {
        t.ws = NULL;
        const size_t bws = lf_cuda_backend_ops()->baseline_workspace_bytes(&t.p[0]), pws = (size_t)m * n * 4;
        CHECK_LF(lf_malloc(ctx, &t.ws, bws > pws ? bws : pws));
        const char *bn[4] = {"cublas-base", "unfused-peft", "part:xW->f32", "part:T->f32"};
        for (int which = has_w ? 1 : 2; which <= (baselines > 1 ? 4 : 2); which++) {
            double g = 0, hl = 0;
            t.which = which;
            t.next = 0;
            CHECK_LF(lf_cuda_backend_ops()->time_calls(ctx, timed_call, &t, iters, LF_TIME_GRAPH, &g));
            t.next = 0;
            CHECK_LF(lf_cuda_backend_ops()->time_calls(ctx, timed_call, &t, iters, LF_TIME_HOST_LOOP, &hl));
            snprintf(table[nrows++].line, sizeof table[0].line, "%-16s %-13s graph %8.2f us  host %8.2f us",
                     name, bn[which - 1], g, hl);
        }
        lf_free(ctx, t.ws);
    }
    for (int c = 0; c < copies; c++)
        for (int i = 0; i < 5; i++)
            if (bufs[c][i])
                lf_free(ctx, bufs[c][i]);
}

/* `prof`: a few plain calls of the timed shapes, for ncu (no validation, no graphs). */
static void prof_case(lf_dtype dt, int64_t m, int64_t k, int64_t n, int64_t r, int has_w, int calls)
{
    const size_t es = lf_dtype_size(dt);
    void *buf[5] = {NULL, NULL, NULL, NULL, NULL};
    const int64_t sizes[5] = {m * k, has_w ? n * k : 0, r * k, n * r, m * n};
    for (int i = 0; i < 5; i++)
        if (sizes[i]) {
            CHECK_LF(lf_malloc(ctx, &buf[i], sizes[i] * es));
            unsigned char *h = (unsigned char *)malloc(sizes[i] * es);
            for (int64_t e = 0; e < sizes[i]; e++)
                lf_store_f32(h, dt, e, 0.05f * frand());
            CHECK_LF(lf_memcpy(ctx, buf[i], h, sizes[i] * es, LF_COPY_HOST_TO_DEVICE));
            free(h);
        }
    lf_lora_problem p = {.layout = LF_LAYOUT_PEFT, .dtype = dt, .m = m, .k = k, .n = n, .rank = r, .x = buf[0],
                         .ldx = k, .w = buf[1], .ldw = k, .bias = NULL, .a = buf[2], .lda = k, .b = buf[3],
                         .ldb = r, .scale = 2.0f, .beta = 0.0f, .y = buf[4], .ldy = n};
    lf_plan plan;
    plan_version(&p, V_DEFAULT, &plan);
    for (int i = 0; i < calls; i++)
        CHECK_LF(lf_cuda_backend_ops()->lora_forward(ctx, &plan, &p));
    CHECK_LF(lf_synchronize(ctx));
    for (int i = 0; i < 5; i++)
        if (buf[i])
            lf_free(ctx, buf[i]);
}

int main(int argc, char **argv)
{
    const int only_check = argc > 1 && strcmp(argv[1], "check") == 0;
    if (!lf_cuda_device_present()) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    CHECK_LF(lf_context_create(&ctx, LF_BACKEND_CUDA));
    printf("device: %s\n", lf_context_device_name(ctx));
    const int decode_only = argc > 1 && strcmp(argv[1], "decode") == 0; /* validate all, time decode only */
    const int gemm_only = argc > 1 && strcmp(argv[1], "gemm") == 0;     /* validate all, time the GEMM path */
    if (argc > 1 && strcmp(argv[1], "prof") == 0) {
        prof_case(LF_F32, 128, 512, 512, 8, 0, 3);
        prof_case(LF_BF16, 1, 4096, 4096, 16, 1, 2);
        prof_case(LF_BF16, 16, 4096, 4096, 16, 1, 2);
        prof_case(LF_BF16, 16, 4096, 14336, 16, 1, 2);
        prof_case(LF_BF16, 1024, 4096, 4096, 16, 1, 2);
        lf_context_destroy(ctx);
        return 0;
    }

    const tcase cases[] = {
        {"seed", LF_F32, LF_LAYOUT_PEFT, 128, 512, 512, 8, 0, 0, 1, 0.0f},
        {"seed-layer", LF_F32, LF_LAYOUT_PEFT, 128, 512, 512, 8, 1, 1, 1, 1.0f},
        {"odd", LF_F32, LF_LAYOUT_KN, 37, 129, 67, 7, 0, 1, 0, 0.5f},
        {"odd", LF_BF16, LF_LAYOUT_PEFT, 37, 129, 67, 7, 0, 0, 0, 0.0f},
        {"odd", LF_F16, LF_LAYOUT_KN, 37, 129, 67, 7, 1, 1, 0, 0.5f},
        {"tiny", LF_BF16, LF_LAYOUT_PEFT, 1, 3, 5, 1, 0, 1, 0, 0.0f},
        {"small-bf16", LF_BF16, LF_LAYOUT_PEFT, 37, 1000, 300, 13, 0, 1, 1, 0.5f},
        {"small-f32", LF_F32, LF_LAYOUT_PEFT, 5, 36, 130, 1, 0, 0, 1, 0.0f},
        {"rank1024", LF_BF16, LF_LAYOUT_KN, 19, 300, 200, 1024, 0, 0, 1, 0.0f},
        {"bigK.r", LF_F16, LF_LAYOUT_PEFT, 300, 1000, 700, 40, 0, 1, 1, 1.0f},
        {"decode-odd", LF_BF16, LF_LAYOUT_PEFT, 13, 1000, 333, 7, 1, 1, 1, 0.5f},
        {"decode-m1", LF_BF16, LF_LAYOUT_PEFT, 1, 4096, 4096, 16, 1, 0, 1, 0.0f},
        {"decode-m16", LF_BF16, LF_LAYOUT_PEFT, 16, 4096, 4096, 16, 1, 0, 1, 0.0f},
        {"decode-m32", LF_F16, LF_LAYOUT_PEFT, 32, 520, 1000, 64, 1, 1, 1, 1.0f},
        {"decode-unal", LF_BF16, LF_LAYOUT_PEFT, 9, 300, 130, 16, 1, 0, 0, 0.0f},
        {"decode-tiles", LF_BF16, LF_LAYOUT_PEFT, 5, 256, 9000, 16, 1, 1, 1, 0.5f},
        {"gemm-kn", LF_BF16, LF_LAYOUT_KN, 200, 300, 500, 16, 1, 1, 1, 0.5f},
        {"gemm-chunks", LF_BF16, LF_LAYOUT_PEFT, 300, 64, 20000, 8, 1, 1, 1, 0.0f},
        {"gemm-f32", LF_F32, LF_LAYOUT_KN, 150, 77, 90, 5, 1, 0, 0, 0.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int v = 0; v < V_COUNT; v++)
            check_case(&cases[i], v, 2.0f);
    printf("validation: %s (%d failures)\n", failures ? "FAILED" : "all passed", failures);
    if (failures || only_check)
        return failures != 0;

    double copy = 0;
    CHECK_LF(lf_cuda_backend_ops()->measure_copy_bandwidth(ctx, &copy));
    if (gemm_only) { /* v12c: how large the fp32 chunks of the GEMM path should be */
        const int vg[] = {V_DEFAULT, V_GEMM_WHOLE};
        bench("mid_m1024", LF_BF16, 1024, 4096, 4096, 16, 1, vg, 2, 2, copy);
        bench("prefill_m4096", LF_BF16, 4096, 4096, 4096, 16, 1, vg, 2, 2, copy);
        bench("prefill_m4096_r64", LF_BF16, 4096, 4096, 4096, 64, 1, vg, 2, 2, copy);
        bench("prefill_m4096_mlp", LF_BF16, 4096, 4096, 14336, 16, 1, vg, 2, 2, copy);
        bench("prefill_m1024_mlp", LF_BF16, 1024, 4096, 14336, 16, 1, vg, 2, 2, copy);
    } else if (decode_only) {
        const int vd[] = {V_DEFAULT, V_DECODE_RTALT, V_GEMM};
        bench("decode_m1", LF_BF16, 1, 4096, 4096, 16, 1, vd, 2, 1, copy);
        /* where the decode kernel stops paying: 32 and 64 tokens re-read x from L2 per tile */
        bench("decode_m32", LF_BF16, 32, 4096, 4096, 16, 1, vd, 3, 1, copy);
        bench("decode_m64", LF_BF16, 64, 4096, 4096, 16, 1, vd, 3, 1, copy);
        bench("decode_m32_mlp", LF_BF16, 32, 4096, 14336, 16, 1, vd, 3, 1, copy);
        bench("decode_m64_mlp", LF_BF16, 64, 4096, 14336, 16, 1, vd, 3, 1, copy);
        bench("decode_m1_mlp", LF_BF16, 1, 4096, 14336, 16, 1, vd, 2, 1, copy);
        bench("decode_m16", LF_BF16, 16, 4096, 4096, 16, 1, vd, 2, 1, copy);
        bench("decode_m16_mlp", LF_BF16, 16, 4096, 14336, 16, 1, vd, 2, 1, copy);
        bench("decode_m16_r64", LF_BF16, 16, 4096, 4096, 64, 1, vd, 1, 0, copy);
    } else {
    const int vdelta[] = {V_DEFAULT, V_NOPDL, V_DELTA_FUSED, V_DELTA_TWO, V_DELTA_TSPLIT};
    const int vlayer[] = {V_DEFAULT, V_NOPDL, V_DECODE_RTALT, V_GEMM};
    bench("seed-delta", LF_F32, 128, 512, 512, 8, 0, vdelta, 3, 1, copy);
    /* the delta at large K·r (v12b): which of fused, two-kernel and T-split wins where */
    bench("delta-r32", LF_F32, 128, 512, 512, 32, 0, vdelta, 5, 1, copy);
    bench("delta-k1024", LF_F32, 128, 1024, 1024, 8, 0, vdelta, 5, 1, copy);
    bench("delta-k2048", LF_F32, 128, 2048, 2048, 8, 0, vdelta, 5, 1, copy);
    bench("delta-m1-4096", LF_BF16, 1, 4096, 4096, 16, 0, vdelta, 5, 1, copy);
    bench("delta-m16-4096", LF_BF16, 16, 4096, 4096, 16, 0, vdelta, 5, 1, copy);
    bench("delta-m128-4096", LF_BF16, 128, 4096, 4096, 16, 0, vdelta, 5, 1, copy);
    bench("delta-m1024-4096", LF_BF16, 1024, 4096, 4096, 16, 0, vdelta, 5, 1, copy);
    const int vseedl[] = {V_DEFAULT, V_GEMM};
    bench("seed-layer", LF_F32, 128, 512, 512, 8, 1, vseedl, 2, 1, copy);
    bench("decode_m1", LF_BF16, 1, 4096, 4096, 16, 1, vlayer, 4, 1, copy);
    bench("decode_m16", LF_BF16, 16, 4096, 4096, 16, 1, vlayer, 4, 1, copy);
    bench("decode_m16_mlp", LF_BF16, 16, 4096, 14336, 16, 1, vlayer, 4, 1, copy);
    bench("decode_m16_r64", LF_BF16, 16, 4096, 4096, 64, 1, vlayer, 1, 1, copy);
    bench("mid_m128", LF_BF16, 128, 4096, 4096, 16, 1, vlayer, 2, 2, copy);
    bench("mid_m1024", LF_BF16, 1024, 4096, 4096, 16, 1, vlayer, 2, 2, copy);
    }

    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&now));
    printf("\n== %s, %s, copy %.0f GB/s (read+write), per call, W rotated over 4 copies ==\n",
           lf_context_device_name(ctx), date, copy);
    for (int i = 0; i < nrows; i++)
        printf("%s\n", table[i].line);
    lf_context_destroy(ctx);
    return 0;
}

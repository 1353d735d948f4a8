/*
 * test_peft.c — PEFT adapters: the fixtures PEFT itself made (tests/fixtures/README.md) through
 * lf_lora_forward and lf_peft_merge on every backend present, the merge against a double-precision
 * reference on awkward shapes, and hostile adapters and arguments.
 *
 *   test_peft                                    every case
 *   test_peft --compare-merge OUT.safetensors CASE    checks `lorafuse merge`'s output (ctest)
 *   test_peft --write-wrong-base OUT.safetensors      base_f32 with one weight of the wrong shape
 *   test_peft --write-replacement-adapter DIR         adapter_f32 plus a trained model.norm.weight
 *
 * Tolerances (u = 2⁻²⁴ for f32, 2⁻⁸ for bf16; mag = the sum of the magnitudes of every term):
 * - forward vs PEFT: PEFT rounds to the dtype after the base GEMM, after x·Aᵀ, after ·Bᵀ, after
 *   ·scale and after the sum; lorafuse once. Both are within 5u·mag + fp32 accumulation of the
 *   exact value, so they differ by at most 6u·mag + 2(K+r+4)·2⁻²⁴·mag.
 * - merge vs PEFT: PEFT rounds δ = s·B·A to the dtype, then W + δ; lorafuse rounds W + δ once:
 *   u·(|δ| + 2|W+δ|) + 2(r+4)·2⁻²⁴·(|W| + |s|·Σ|B||A|).
 */
#define _GNU_SOURCE /* mkdtemp */

#include "lf_test.h"

#include "cpu/lora_ref.h"
#include "lf_dtype.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef LF_FIXTURES_DIR
#define LF_FIXTURES_DIR "tests/fixtures"
#endif

static const char *fixtures(void)
{
    const char *d = getenv("LF_FIXTURES");
    return d && *d ? d : LF_FIXTURES_DIR;
}

static double unit(lf_dtype dt) { return lf_ref_unit_roundoff(dt); }

/* v rounded to dt, as an upload to dt rounds it. */
static double rounded(lf_dtype dt, float v)
{
    uint32_t bits = 0;
    lf_store_f32(&bits, dt, 0, v);
    return lf_load_f32(&bits, dt, 0);
}

/* ---- device buffers -------------------------------------------------------------------------- */

static void *upload(lf_context *ctx, const void *host, size_t bytes)
{
    void *d = NULL;
    if (lf_malloc(ctx, &d, bytes) != LF_OK || lf_memcpy(ctx, d, host, bytes, LF_COPY_HOST_TO_DEVICE) != LF_OK) {
        lf_free(ctx, d);
        return NULL;
    }
    return d;
}

/* A tensor of a fixture file as doubles (dense). */
static double *tensor_f64(lf_safetensors *st, const char *name, lf_safetensors_tensor_info *info)
{
    size_t i;
    if (lf_safetensors_find(st, name, &i) != LF_OK || lf_safetensors_tensor(st, i, info) != LF_OK ||
        !info->has_lf_dtype)
        return NULL;
    const size_t n = info->bytes / info->element_size;
    double *v = malloc((n ? n : 1) * sizeof *v);
    void *copy = malloc(info->bytes ? info->bytes : 1); /* aligned for the loads */
    memcpy(copy, info->data, info->bytes);
    for (size_t k = 0; k < n; k++)
        v[k] = lf_load_f32(copy, info->lf_dtype, (int64_t)k);
    free(copy);
    return v;
}

/* ---- the fixtures ---------------------------------------------------------------------------- */

static const char *const fixture_cases[4] = {"f32", "bf16", "f32_rslora", "bf16_rslora"};

typedef struct fixture {
    const char *name;
    lf_dtype dtype;
    int rslora;
    lf_peft_adapter *ad;
    lf_safetensors *base, *io, *merged;
} fixture;

static void fixture_close(fixture *f)
{
    lf_peft_adapter_close(f->ad);
    lf_safetensors_close(f->base);
    lf_safetensors_close(f->io);
    lf_safetensors_close(f->merged);
}

static lf_status fixture_open(lf_context *ctx, const char *name, fixture *f)
{
    memset(f, 0, sizeof *f);
    f->name = name;
    f->dtype = strncmp(name, "bf16", 4) == 0 ? LF_BF16 : LF_F32;
    f->rslora = strstr(name, "rslora") != NULL;
    char path[1024];
    lf_status s;
    snprintf(path, sizeof path, "%s/adapter_%s", fixtures(), name);
    if ((s = lf_peft_adapter_open(ctx, path, &f->ad)) != LF_OK)
        return s;
    snprintf(path, sizeof path, "%s/base_%s.safetensors", fixtures(), f->dtype == LF_BF16 ? "bf16" : "f32");
    if ((s = lf_safetensors_open(ctx, path, &f->base)) != LF_OK)
        return s;
    snprintf(path, sizeof path, "%s/io_%s.safetensors", fixtures(), name);
    if ((s = lf_safetensors_open(ctx, path, &f->io)) != LF_OK)
        return s;
    snprintf(path, sizeof path, "%s/merged_%s.safetensors", fixtures(), name);
    return lf_safetensors_open(ctx, path, &f->merged);
}

/* What make_peft_fixtures.py asked PEFT for: r 8, alpha 16, rank_pattern {"v_proj": 4,
 * "layers.1.mlp.down_proj": 12}, alpha_pattern {"o_proj": 24}, matched as PEFT matches them. */
static void expected_rank_alpha(const char *module, int64_t *rank, double *alpha)
{
    const size_t n = strlen(module);
    *rank = n >= 7 && strcmp(module + n - 7, ".v_proj") == 0 ? 4
            : strcmp(module, "model.layers.1.mlp.down_proj") == 0 ? 12 : 8;
    *alpha = n >= 7 && strcmp(module + n - 7, ".o_proj") == 0 ? 24 : 16;
}

static void check_modules(const fixture *f)
{
    lft_begin("test_peft fixture %s: modules, ranks and scales as PEFT set them", f->name);
    LFT_CHECKF(lf_peft_adapter_module_count(f->ad) == 14, "%zu modules, expected 14 (2 layers × 7 projections)",
               lf_peft_adapter_module_count(f->ad));
    for (size_t i = 0; i < lf_peft_adapter_module_count(f->ad); i++) {
        lf_peft_module_info m;
        lf_peft_adapter_module(f->ad, i, &m);
        int64_t r;
        double alpha;
        expected_rank_alpha(m.name, &r, &alpha);
        const double scale = f->rslora ? alpha / sqrt((double)r) : alpha / (double)r;
        /* PEFT keeps the adapter of a bf16 model in f32 (autocast_adapter_dtype=True, its default). */
        LFT_CHECKF(m.rank == r && m.alpha == alpha && m.scale == (float)scale && m.dtype == LF_F32,
                   "%s: rank %lld alpha %g scale %g, expected %lld %g %g", m.name, (long long)m.rank, m.alpha,
                   (double)m.scale, (long long)r, alpha, scale);
        size_t bt;
        LFT_CHECKF(lf_safetensors_find(f->base, m.base_tensor, &bt) == LF_OK, "%s not in the base", m.base_tensor);
    }
    lft_end();
}

/* The forward of every targeted module against PEFT's output. */
static void check_forward(lf_context *ctx, const fixture *f)
{
    const char *bk = lf_backend_name(lf_context_backend(ctx));
    for (size_t i = 0; i < lf_peft_adapter_module_count(f->ad); i++) {
        lf_peft_module_info m;
        lf_peft_adapter_module(f->ad, i, &m);
        lft_begin("test_peft fixture %s %s forward %s", f->name, bk, m.name);
        char name[256];
        lf_safetensors_tensor_info tw, tx, ty;
        lf_matrix a, b;
        snprintf(name, sizeof name, "%s.x", m.name);
        double *x = tensor_f64(f->io, name, &tx);
        snprintf(name, sizeof name, "%s.y", m.name);
        double *yp = tensor_f64(f->io, name, &ty);
        double *w = tensor_f64(f->base, m.base_tensor, &tw);
        lf_matrix ha, hb; /* host views for the reference */
        if (LFT_CHECKF(x && yp && w, "fixture tensors of %s missing", m.name) &&
            LFT_CHECK_STATUS(ctx, lf_peft_adapter_host_weights(ctx, f->ad, i, &ha, &hb), LF_OK) &&
            LFT_CHECK_STATUS(ctx, lf_peft_adapter_upload_weights(ctx, f->ad, i, f->dtype, &a, &b), LF_OK)) {
            const int64_t M = tx.shape[0], K = m.in_features, N = m.out_features, r = m.rank;
            const size_t es = lf_dtype_size(f->dtype);
            void *dx = upload(ctx, (const char *)tx.data, tx.bytes), *dw = upload(ctx, tw.data, tw.bytes);
            void *dy = NULL;
            lf_malloc(ctx, &dy, (size_t)(M * N) * es);
            const lf_matrix xv = lf_matrix_make(f->dtype, dx, M, K), wv = lf_matrix_make(f->dtype, dw, N, K);
            const lf_matrix yv = lf_matrix_make(f->dtype, dy, M, N);
            if (LFT_CHECK(dx && dw && dy) &&
                LFT_CHECK_STATUS(ctx, lf_lora_forward(ctx, LF_LAYOUT_PEFT, &xv, &wv, NULL, &a, &b, m.scale, 0.0f, &yv),
                                 LF_OK)) {
                void *got = malloc((size_t)(M * N) * es);
                lf_memcpy(ctx, got, dy, (size_t)(M * N) * es, LF_COPY_DEVICE_TO_HOST);
                const double u = unit(f->dtype);
                for (int64_t row = 0; row < M; row++)
                    for (int64_t col = 0; col < N; col++) {
                        double exact = 0, mag = 0;
                        for (int64_t k = 0; k < K; k++) {
                            exact += x[row * K + k] * w[col * K + k];
                            mag += fabs(x[row * K + k] * w[col * K + k]);
                        }
                        for (int64_t t = 0; t < r; t++) {
                            double tt = 0, tm = 0;
                            for (int64_t k = 0; k < K; k++) {
                                const double p = x[row * K + k] * rounded(f->dtype, lf_load_f32(ha.data, m.dtype, t * K + k));
                                tt += p;
                                tm += fabs(p);
                            }
                            const double bv = rounded(f->dtype, lf_load_f32(hb.data, m.dtype, col * r + t));
                            exact += (double)m.scale * tt * bv;
                            mag += fabs((double)m.scale * bv) * (fabs(tt) + tm);
                        }
                        const double g = lf_load_f32(got, f->dtype, row * N + col), p = yp[row * N + col];
                        const double tol_peft = 6.0 * u * mag + 2.0 * (double)(K + r + 4) * 0x1p-24 * mag;
                        LFT_CHECKF(fabs(g - p) <= tol_peft, "y[%lld, %lld] = %.8g, PEFT %.8g (tolerance %.3g)",
                                   (long long)row, (long long)col, g, p, tol_peft);
                        LFT_CHECKF(fabs(g - exact) <= lf_ref_tolerance(f->dtype, K, r, exact, mag),
                                   "y[%lld, %lld] = %.8g, exact %.8g", (long long)row, (long long)col, g, exact);
                    }
                free(got);
            }
            lf_free(ctx, dx);
            lf_free(ctx, dw);
            lf_free(ctx, dy);
            lf_free(ctx, a.data);
            lf_free(ctx, b.data);
        }
        free(x);
        free(yp);
        free(w);
        lft_end();
    }
}

/* Checks merged weight `got` (host, dtype) against PEFT's `want` and the exact W0 + s·B·A, from the
 * module's host A and B; with `w_back`, also that unmerging returned W0 (two roundings). */
static void compare_merged(const lf_peft_adapter *ad, size_t index, lf_dtype dt, const double *w0, const void *got,
                           const double *want, const void *w_back)
{
    lf_peft_module_info m;
    lf_peft_adapter_module(ad, index, &m);
    lf_matrix a, b;
    if (!LFT_CHECK(lf_peft_adapter_host_weights(NULL, ad, index, &a, &b) == LF_OK))
        return;
    const double u = unit(dt), s = m.scale;
    const int64_t K = m.in_features, N = m.out_features, r = m.rank;
    int reported = 0;
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < K; j++) {
            double d = 0, mag = 0;
            for (int64_t t = 0; t < r; t++) {
                const double p = (double)lf_load_f32(b.data, m.dtype, i * r + t) * lf_load_f32(a.data, m.dtype, t * K + j);
                d += p;
                mag += fabs(p);
            }
            const double w = w0[i * K + j], exact = w + s * d, g = lf_load_f32(got, dt, i * K + j);
            const double acc = 2.0 * (double)(r + 4) * 0x1p-24 * (fabs(w) + fabs(s) * mag);
            const double tol_peft = u * (fabs(s * d) + 2.0 * fabs(exact)) + acc, tol = u * fabs(exact) + acc;
            int ok = fabs(g - exact) <= tol && (!want || fabs(g - want[i * K + j]) <= tol_peft);
            if (w_back) {
                const double back = lf_load_f32(w_back, dt, i * K + j);
                ok = ok && fabs(back - w) <= u * (fabs(exact) + fabs(w)) + 2.0 * acc;
            }
            if (!ok && reported++ < 4)
                LFT_CHECKF(0, "%s W[%lld, %lld]: merged %.8g, exact %.8g, PEFT %.8g%s", m.name, (long long)i,
                           (long long)j, g, exact, want ? want[i * K + j] : NAN, w_back ? " (or unmerge off)" : "");
        }
    LFT_CHECKF(reported == 0, "%s: %d elements outside the tolerance", m.name, reported);
}

static void check_merge(lf_context *ctx, const fixture *f)
{
    const char *bk = lf_backend_name(lf_context_backend(ctx));
    lft_begin("test_peft fixture %s %s merge and unmerge vs merge_and_unload", f->name, bk);
    for (size_t i = 0; i < lf_peft_adapter_module_count(f->ad); i++) {
        lf_peft_module_info m;
        lf_peft_adapter_module(f->ad, i, &m);
        lf_safetensors_tensor_info tw, tm;
        double *w0 = tensor_f64(f->base, m.base_tensor, &tw), *want = tensor_f64(f->merged, m.base_tensor, &tm);
        lf_matrix a, b;
        if (!LFT_CHECKF(w0 && want, "%s missing in the base or merged fixture", m.base_tensor) ||
            !LFT_CHECK_STATUS(ctx, lf_peft_adapter_upload_weights(ctx, f->ad, i, m.dtype, &a, &b), LF_OK)) {
            free(w0);
            free(want);
            continue;
        }
        void *dw = upload(ctx, tw.data, tw.bytes), *merged = malloc(tw.bytes), *back = malloc(tw.bytes);
        const lf_matrix wv = lf_matrix_make(f->dtype, dw, m.out_features, m.in_features);
        if (LFT_CHECK(dw) && LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &wv, &a, &b, m.scale, 0), LF_OK) &&
            LFT_CHECK(lf_memcpy(ctx, merged, dw, tw.bytes, LF_COPY_DEVICE_TO_HOST) == LF_OK) &&
            LFT_CHECK_STATUS(ctx, lf_peft_unmerge(ctx, &wv, &a, &b, m.scale, 0), LF_OK) &&
            LFT_CHECK(lf_memcpy(ctx, back, dw, tw.bytes, LF_COPY_DEVICE_TO_HOST) == LF_OK))
            compare_merged(f->ad, i, f->dtype, w0, merged, want, back);
        lf_free(ctx, dw);
        lf_free(ctx, a.data);
        lf_free(ctx, b.data);
        free(merged);
        free(back);
        free(w0);
        free(want);
    }
    lft_end();
}

static void fixture_tests(lf_context *ctx, void *arg)
{
    (void)arg;
    for (int c = 0; c < 4; c++) {
        fixture f;
        lf_status s = fixture_open(ctx, fixture_cases[c], &f);
        if (s != LF_OK) {
            lft_begin("test_peft fixture %s: open", fixture_cases[c]);
            LFT_CHECK_STATUS(ctx, s, LF_OK);
            lft_end();
        } else {
            if (lf_context_backend(ctx) == LF_BACKEND_CPU)
                check_modules(&f);
            check_forward(ctx, &f);
            check_merge(ctx, &f);
        }
        fixture_close(&f);
    }
}

/* ---- merge against the reference on awkward shapes --------------------------------------------- */

typedef struct merge_case {
    lf_dtype w_dtype, ab_dtype;
    int64_t out, in, rank;
    int fan_in_fan_out, w_gap; /* w_gap: W's stride is cols + gap, the gap poisoned and checked */
} merge_case;

static void random_merge(lf_context *ctx, const merge_case *c, uint64_t seed)
{
    const char *bk = lf_backend_name(lf_context_backend(ctx));
    lft_begin("test_peft merge %s W %s [%lld, %lld]%s A/B %s r%lld%s", bk, lf_dtype_name(c->w_dtype),
              (long long)c->out, (long long)c->in, c->fan_in_fan_out ? " fan_in_fan_out" : "",
              lf_dtype_name(c->ab_dtype), (long long)c->rank, c->w_gap ? " strided" : "");
    lft_set_seed(seed);
    lft_rng rng;
    lft_rng_seed(&rng, seed);
    const int64_t rows = c->fan_in_fan_out ? c->in : c->out, cols = c->fan_in_fan_out ? c->out : c->in;
    const int64_t ld = cols + c->w_gap, r = c->rank;
    const size_t ew = lf_dtype_size(c->w_dtype), eab = lf_dtype_size(c->ab_dtype);
    const size_t wbytes = (size_t)(rows * ld) * ew;
    void *w0 = malloc(wbytes), *w1 = malloc(wbytes), *w2 = malloc(wbytes);
    void *ha = malloc((size_t)(r * c->in) * eab), *hb = malloc((size_t)(c->out * r) * eab);
    for (int64_t i = 0; i < rows * ld; i++) /* the gap holds NaN: a kernel that touches it is caught */
        lf_store_f32(w0, c->w_dtype, i, i % ld < cols ? lft_rng_value(&rng) : NAN);
    for (int64_t i = 0; i < r * c->in; i++)
        lf_store_f32(ha, c->ab_dtype, i, lft_rng_value(&rng) * 0.125f);
    for (int64_t i = 0; i < c->out * r; i++)
        lf_store_f32(hb, c->ab_dtype, i, lft_rng_value(&rng) * 0.25f);
    const float s = 1.75f;
    void *dw = upload(ctx, w0, wbytes), *da = upload(ctx, ha, (size_t)(r * c->in) * eab);
    void *db = upload(ctx, hb, (size_t)(c->out * r) * eab);
    lf_matrix wv = {dw, c->w_dtype, rows, cols, ld};
    const lf_matrix av = lf_matrix_make(c->ab_dtype, da, r, c->in), bv = lf_matrix_make(c->ab_dtype, db, c->out, r);
    if (LFT_CHECK(dw && da && db) &&
        LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &wv, &av, &bv, s, c->fan_in_fan_out), LF_OK) &&
        LFT_CHECK(lf_memcpy(ctx, w1, dw, wbytes, LF_COPY_DEVICE_TO_HOST) == LF_OK)) {
        const double u = unit(c->w_dtype);
        int bad = 0;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < ld; j++) {
                if (j >= cols) { /* the gap: bit for bit as it was */
                    bad += LFT_CHECKF(memcmp((char *)w1 + (size_t)(i * ld + j) * ew, (char *)w0 + (size_t)(i * ld + j) * ew,
                                             ew) == 0, "W's stride gap was written at [%lld, %lld]", (long long)i,
                                      (long long)j) == 0;
                    continue;
                }
                const int64_t o = c->fan_in_fan_out ? j : i, k = c->fan_in_fan_out ? i : j;
                double d = 0, mag = 0;
                for (int64_t t = 0; t < r; t++) {
                    const double p = (double)lf_load_f32(hb, c->ab_dtype, o * r + t) * lf_load_f32(ha, c->ab_dtype, t * c->in + k);
                    d += p;
                    mag += fabs(p);
                }
                const double w = lf_load_f32(w0, c->w_dtype, i * ld + j), exact = w + (double)s * d;
                const double tol = u * fabs(exact) + 2.0 * (double)(r + 4) * 0x1p-24 * (fabs(w) + (double)s * mag) +
                                   (c->w_dtype == LF_F16 ? 0x1p-25 : 0);
                const double g = lf_load_f32(w1, c->w_dtype, i * ld + j);
                if (!(fabs(g - exact) <= tol) && bad++ < 4)
                    LFT_CHECKF(0, "W[%lld, %lld] = %.8g, expected %.8g (tolerance %.3g)", (long long)i, (long long)j, g,
                               exact, tol);
            }
        LFT_CHECKF(bad == 0, "%d elements wrong", bad);
        /* Bitwise reproducible: the same merge on the same input gives the same bits. */
        if (LFT_CHECK(lf_memcpy(ctx, dw, w0, wbytes, LF_COPY_HOST_TO_DEVICE) == LF_OK) &&
            LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &wv, &av, &bv, s, c->fan_in_fan_out), LF_OK) &&
            LFT_CHECK(lf_memcpy(ctx, w2, dw, wbytes, LF_COPY_DEVICE_TO_HOST) == LF_OK))
            LFT_CHECK(memcmp(w1, w2, wbytes) == 0);
    }
    lf_free(ctx, dw);
    lf_free(ctx, da);
    lf_free(ctx, db);
    free(w0);
    free(w1);
    free(w2);
    free(ha);
    free(hb);
    lft_end();
}

static void merge_tests(lf_context *ctx, void *arg)
{
    (void)arg;
    static const merge_case cases[] = {
        {LF_F32, LF_F32, 37, 129, 7, 0, 0},      {LF_BF16, LF_BF16, 64, 64, 8, 0, 0},
        {LF_BF16, LF_BF16, 300, 70, 33, 0, 3},   {LF_F16, LF_F16, 129, 257, 1, 0, 0},
        {LF_BF16, LF_F32, 96, 130, 16, 0, 5},    {LF_F32, LF_BF16, 33, 65, 64, 0, 0},
        {LF_F32, LF_F32, 50, 40, 12, 1, 0},      {LF_BF16, LF_BF16, 31, 257, 9, 1, 2},
        {LF_F16, LF_F32, 1, 1, 1, 0, 0},         {LF_BF16, LF_BF16, 130, 200, 1024, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        random_merge(ctx, &cases[i], lft_case_seed(1000 + i));
}

/* ---- hostile adapters and arguments ----------------------------------------------------------- */

typedef struct fake_tensor {
    const char *name, *dtype;
    int64_t rows, cols;
} fake_tensor;

/* A safetensors image in memory with zero-filled tensors: header by hand, offsets in order. */
static unsigned char *fake_file(const fake_tensor *t, int n, size_t *size)
{
    char header[4096];
    size_t at = 0, off = 0;
    at += (size_t)snprintf(header + at, sizeof header - at, "{");
    for (int i = 0; i < n; i++) {
        const size_t es = strcmp(t[i].dtype, "F32") == 0 ? 4 : strcmp(t[i].dtype, "F64") == 0 ? 8 : 2;
        const size_t bytes = (size_t)(t[i].rows * t[i].cols) * es;
        at += (size_t)snprintf(header + at, sizeof header - at,
                               "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%zu,%zu]}",
                               i ? "," : "", t[i].name, t[i].dtype, (long long)t[i].rows, (long long)t[i].cols, off,
                               off + bytes);
        off += bytes;
    }
    at += (size_t)snprintf(header + at, sizeof header - at, "}");
    *size = 8 + at + off;
    unsigned char *f = calloc(1, *size);
    for (int i = 0; i < 8; i++)
        f[i] = (unsigned char)((uint64_t)at >> (8 * i));
    memcpy(f + 8, header, at);
    return f;
}

#define QA "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
#define QB "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
#define CFG(extra) "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":16" extra "}"

static void expect_adapter(lf_context *ctx, const char *what, const char *config, const fake_tensor *t, int n,
                           lf_status want, const char *needle)
{
    lft_begin("test_peft hostile adapter: %s", what);
    size_t size;
    unsigned char *f = fake_file(t, n, &size);
    lf_peft_adapter *ad = (lf_peft_adapter *)(uintptr_t)1;
    const lf_status s = lf_peft_adapter_open_memory(ctx, config, strlen(config), f, size, &ad);
    if (LFT_CHECK_STATUS(ctx, s, want) && want != LF_OK)
        LFT_CHECKF(strstr(lf_context_last_error(ctx), needle) != NULL && ad == NULL, "message \"%s\" lacks \"%s\"",
                   lf_context_last_error(ctx), needle);
    if (s == LF_OK) {
        lf_peft_module_info m;
        lf_peft_adapter_module(ad, 0, &m);
        LFT_CHECKF(strstr(needle, "scale=") == NULL || (double)m.scale == atof(strstr(needle, "scale=") + 6),
                   "scale %g, expected %s", (double)m.scale, needle);
        lf_peft_adapter_close(ad);
    }
    free(f);
    lft_end();
}

static void hostile_adapters(lf_context *ctx)
{
    const fake_tensor ok[2] = {{QA, "F32", 8, 64}, {QB, "F32", 64, 8}};
    const fake_tensor ok4[2] = {{QA, "BF16", 4, 64}, {QB, "BF16", 64, 4}};
    expect_adapter(ctx, "a valid one", CFG(""), ok, 2, LF_OK, "scale=2");
    expect_adapter(ctx, "rsLoRA scale", CFG(",\"use_rslora\":true"), ok4 /* r 4 via pattern */, 2, LF_ERR_SHAPE_MISMATCH,
                   "config gives rank 8");
    expect_adapter(ctx, "rank_pattern by suffix, rsLoRA", CFG(",\"use_rslora\":true,\"rank_pattern\":{\"q_proj\":4}"), ok4,
                   2, LF_OK, "scale=8");
    /* PEFT's key "proj" needs a '.' before it: it does not match "...q_proj", so r stays 8. */
    expect_adapter(ctx, "pattern keys match whole name segments", CFG(",\"rank_pattern\":{\"proj\":4}"), ok4, 2,
                   LF_ERR_SHAPE_MISMATCH, "config gives rank 8");
    expect_adapter(ctx, "the first matching key wins, regex keys",
                   CFG(",\"rank_pattern\":{\"layers\\\\.0\\\\..*\":4,\"q_proj\":8},\"alpha_pattern\":{\"q_.roj\":2}"),
                   ok4, 2, LF_OK, "scale=0.5");
    const fake_tensor only_a[1] = {{QA, "F32", 8, 64}};
    expect_adapter(ctx, "lora_A without lora_B", CFG(""), only_a, 1, LF_ERR_BAD_FORMAT, "has lora_A.weight but no lora_B");
    const fake_tensor only_b[2] = {{QB, "F32", 64, 8}, {"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight", "F32", 8, 64}};
    expect_adapter(ctx, "lora_B without lora_A", CFG(""), only_b, 2, LF_ERR_BAD_FORMAT, "no lora_");
    const fake_tensor ranks[2] = {{QA, "F32", 8, 64}, {QB, "F32", 64, 6}};
    expect_adapter(ctx, "ranks of A and B disagree", CFG(""), ranks, 2, LF_ERR_SHAPE_MISMATCH, "has rank 6");
    expect_adapter(ctx, "rank disagrees with the config", CFG(""), ok4, 2, LF_ERR_SHAPE_MISMATCH, "config gives rank 8");
    const fake_tensor mixed[2] = {{QA, "F32", 8, 64}, {QB, "BF16", 64, 8}};
    expect_adapter(ctx, "A and B dtypes differ", CFG(""), mixed, 2, LF_ERR_DTYPE_MISMATCH, "lora_B is BF16");
    const fake_tensor f64[2] = {{QA, "F64", 8, 64}, {QB, "F64", 64, 8}};
    expect_adapter(ctx, "F64 weights", CFG(""), f64, 2, LF_ERR_UNSUPPORTED, "only F32, F16");
    const fake_tensor stray[3] = {{QA, "F32", 8, 64}, {QB, "F32", 64, 8}, {"model.x", "F32", 1, 1}};
    expect_adapter(ctx, "a tensor outside base_model.model.", CFG(""), stray, 3, LF_ERR_BAD_FORMAT, "not named");
    const fake_tensor emb[3] = {{QA, "F32", 8, 64}, {QB, "F32", 64, 8},
                                {"base_model.model.model.embed_tokens.lora_embedding_A", "F32", 8, 32}};
    expect_adapter(ctx, "embedding LoRA", CFG(""), emb, 3, LF_ERR_UNSUPPORTED, "other than lora_A");
    const fake_tensor save[3] = {{QA, "F32", 8, 64}, {QB, "F32", 64, 8}, {"base_model.model.lm_head.weight", "F32", 32, 64}};
    expect_adapter(ctx, "modules_to_save is a replacement", CFG(",\"modules_to_save\":[\"lm_head\"]"), save, 3, LF_OK, "");
    expect_adapter(ctx, "DoRA", CFG(",\"use_dora\":true"), ok, 2, LF_ERR_UNSUPPORTED, "DoRA");
    expect_adapter(ctx, "lora_bias", CFG(",\"lora_bias\":true"), ok, 2, LF_ERR_UNSUPPORTED, "lora_bias");
    expect_adapter(ctx, "not LoRA", "{\"peft_type\":\"IA3\",\"r\":8,\"lora_alpha\":16}", ok, 2, LF_ERR_UNSUPPORTED,
                   "only LORA");
    expect_adapter(ctx, "invalid JSON", "{\"peft_type\":\"LORA\",", ok, 2, LF_ERR_BAD_FORMAT, "not valid JSON");
    expect_adapter(ctx, "r as a string", "{\"peft_type\":\"LORA\",\"r\":\"8\",\"lora_alpha\":16}", ok, 2,
                   LF_ERR_BAD_FORMAT, "\"r\" is not");
    expect_adapter(ctx, "bias of another kind", CFG(",\"bias\":\"some\""), ok, 2, LF_ERR_BAD_FORMAT, "\"bias\"");
    expect_adapter(ctx, "rank_pattern value 0", CFG(",\"rank_pattern\":{\"q_proj\":0}"), ok, 2, LF_ERR_BAD_FORMAT,
                   "rank in 1..1024");
    expect_adapter(ctx, "a key that is no regular expression", CFG(",\"rank_pattern\":{\"q_proj(\":4}"), ok, 2,
                   LF_ERR_BAD_FORMAT, "not a regular expression");
    expect_adapter(ctx, "layer_replication", CFG(",\"layer_replication\":[[0,1]]"), ok, 2, LF_ERR_UNSUPPORTED,
                   "layer_replication");

    /* The config's fields are an allowlist: features lorafuse does not implement must be off. */
    expect_adapter(ctx, "BD-LoRA (use_bdlora)", CFG(",\"use_bdlora\":{\"nblocks\":4}"), ok, 2, LF_ERR_UNSUPPORTED,
                   "\"use_bdlora\" is set: BD-LoRA");
    expect_adapter(ctx, "Arrow routing", CFG(",\"arrow_config\":{\"top_k\":3}"), ok, 2, LF_ERR_UNSUPPORTED, "Arrow");
    expect_adapter(ctx, "LoftQ", CFG(",\"loftq_config\":{\"loftq_bits\":4}"), ok, 2, LF_ERR_UNSUPPORTED, "LoftQ");
    expect_adapter(ctx, "trainable tokens", CFG(",\"trainable_token_indices\":[1,2]"), ok, 2, LF_ERR_UNSUPPORTED,
                   "trainable tokens");
    expect_adapter(ctx, "an unknown field that is set", CFG(",\"use_magic\":true"), ok, 2, LF_ERR_UNSUPPORTED,
                   "unknown field \"use_magic\"");
    expect_adapter(ctx, "unknown fields that are off, known ones at their defaults",
                   CFG(",\"use_magic\":false,\"magic_config\":null,\"magic_list\":[],\"loftq_config\":{},"
                       "\"use_dora\":false,\"arrow_config\":null,\"lora_dropout\":0.05,\"init_lora_weights\":\"gaussian\""),
                   ok, 2, LF_OK, "scale=2");
    expect_adapter(ctx, "PiSSA, not converted", CFG(",\"init_lora_weights\":\"pissa\""), ok, 2, LF_ERR_UNSUPPORTED,
                   "init_lora_weights \"pissa\"");

    /* Keys in Python's syntax, as PEFT matches them (re.match(r"(.*\.)?(KEY)$", name)); JSON doubles
     * each backslash, C again. */
    expect_adapter(ctx, "key with \\d (Python's digit class)",
                   CFG(",\"rank_pattern\":{\"layers\\\\.\\\\d+\\\\.self_attn\\\\.q_proj\":4}"), ok4, 2, LF_OK, "scale=4");
    expect_adapter(ctx, "key with \\d and \\w inside brackets",
                   CFG(",\"rank_pattern\":{\"layers\\\\.[\\\\d]+\\\\.[\\\\w]+\\\\.q_proj\":4}"), ok4, 2, LF_OK, "scale=4");
    expect_adapter(ctx, "key with \\D, \\S and an escaped dash", CFG(",\"rank_pattern\":{\"\\\\D+\\\\.[\\\\S]\\\\.[\\\\-\\\\w]+\\\\.q_proj\":4}"),
                   ok4, 2, LF_OK, "scale=4");
    expect_adapter(ctx, "(?:...) groups", CFG(",\"rank_pattern\":{\"(?:k|q)_proj\":4}"), ok4, 2, LF_OK, "scale=4");
    expect_adapter(ctx, "nested {m,n} bounds (a gigabyte in glibc's regcomp)",
                   CFG(",\"alpha_pattern\":{\"((a{1,100}){1,100}){1,100}\":1}"), ok, 2, LF_ERR_UNSUPPORTED,
                   "((a{1,100}){1,100}){1,100}\" uses a {m,n} repetition bound");
    expect_adapter(ctx, "a {m} bound", CFG(",\"rank_pattern\":{\"q_proj{1}\":4}"), ok4, 2, LF_ERR_UNSUPPORTED,
                   "repetition bound");
    expect_adapter(ctx, "a Python escape POSIX lacks (\\b)", CFG(",\"rank_pattern\":{\"\\\\bq_proj\":4}"), ok4, 2,
                   LF_ERR_UNSUPPORTED, "uses the escape \\b");
    expect_adapter(ctx, "a back-reference", CFG(",\"rank_pattern\":{\"(q)_proj\\\\1\":4}"), ok4, 2, LF_ERR_UNSUPPORTED,
                   "uses \\1");
    expect_adapter(ctx, "a lookahead", CFG(",\"rank_pattern\":{\"(?=q)q_proj\":4}"), ok4, 2, LF_ERR_UNSUPPORTED,
                   "(?...) group");
    expect_adapter(ctx, "an unterminated bracket", CFG(",\"rank_pattern\":{\"q_pro[j\":4}"), ok4, 2, LF_ERR_BAD_FORMAT,
                   "without its ']'");

    lft_begin("test_peft hostile adapter: directories without the files");
    char dir[] = "/tmp/lf_test_peft_XXXXXX";
    lf_peft_adapter *ad;
    LFT_CHECK_STATUS(ctx, lf_peft_adapter_open(ctx, "/nonexistent", &ad), LF_ERR_IO);
    if (LFT_CHECK(mkdtemp(dir) != NULL)) {
        char path[128];
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        FILE *f = fopen(path, "w");
        fputs(CFG(""), f);
        fclose(f);
        LFT_CHECK_STATUS(ctx, lf_peft_adapter_open(ctx, dir, &ad), LF_ERR_IO);
        char bin[128];
        snprintf(bin, sizeof bin, "%s/adapter_model.bin", dir);
        fclose(fopen(bin, "w"));
        LFT_CHECK_STATUS(ctx, lf_peft_adapter_open(ctx, dir, &ad), LF_ERR_UNSUPPORTED);
        unlink(bin);
        unlink(path);
        rmdir(dir);
    }
    lft_end();

    lft_begin("test_peft hostile adapter: a FIFO or a directory for either file, refused without blocking");
    char fdir[] = "/tmp/lf_test_peft_XXXXXX";
    if (LFT_CHECK(mkdtemp(fdir) != NULL)) {
        char config[128], model[128];
        snprintf(config, sizeof config, "%s/adapter_config.json", fdir);
        snprintf(model, sizeof model, "%s/adapter_model.safetensors", fdir);
        alarm(20); /* a blocking open would otherwise hang the test until ctest's timeout */
        LFT_CHECK(mkfifo(config, 0600) == 0);
        LFT_CHECK_STATUS(ctx, lf_peft_adapter_open(ctx, fdir, &ad), LF_ERR_IO);
        LFT_CHECK(strstr(lf_context_last_error(ctx), "adapter_config.json: not a regular file") != NULL);
        unlink(config);
        LFT_CHECK(mkdir(config, 0700) == 0);
        LFT_CHECK_STATUS(ctx, lf_peft_adapter_open(ctx, fdir, &ad), LF_ERR_IO);
        rmdir(config);
        FILE *f = fopen(config, "w");
        fputs(CFG(""), f);
        fclose(f);
        LFT_CHECK(mkfifo(model, 0600) == 0);
        LFT_CHECK_STATUS(ctx, lf_peft_adapter_open(ctx, fdir, &ad), LF_ERR_IO);
        LFT_CHECK(strstr(lf_context_last_error(ctx), "adapter_model.safetensors: not a regular file") != NULL);
        alarm(0);
        unlink(model);
        unlink(config);
        rmdir(fdir);
    }
    lft_end();
}

static void bad_merge_arguments(lf_context *ctx)
{
    lft_begin("test_peft lf_peft_merge rejects bad arguments, W untouched");
    float w[6 * 4], a[2 * 4], b[6 * 2];
    for (int i = 0; i < 24; i++)
        w[i] = (float)i;
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    float w_copy[24];
    memcpy(w_copy, w, sizeof w);
    const lf_matrix wv = lf_matrix_make(LF_F32, w, 6, 4), av = lf_matrix_make(LF_F32, a, 2, 4);
    const lf_matrix bv = lf_matrix_make(LF_F32, b, 6, 2);
    LFT_CHECK_STATUS(ctx, lf_peft_merge(NULL, &wv, &av, &bv, 1, 0), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, NULL, &av, &bv, 1, 0), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &wv, &av, &bv, NAN, 0), LF_ERR_INVALID_VALUE);
    LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &wv, &av, &bv, 1, 1), LF_ERR_SHAPE_MISMATCH); /* W is not [in, out] */
    lf_matrix x = av;
    x.rows = 0;
    LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &wv, &x, &bv, 1, 0), LF_ERR_INVALID_VALUE);
    x = bv;
    x.cols = 3;
    x.stride = 3;
    LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &wv, &av, &x, 1, 0), LF_ERR_SHAPE_MISMATCH);
    x = bv;
    x.dtype = LF_BF16;
    LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &wv, &av, &x, 1, 0), LF_ERR_DTYPE_MISMATCH);
    x = wv;
    x.stride = 3;
    LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &x, &av, &bv, 1, 0), LF_ERR_BAD_STRIDE);
    x = wv;
    x.data = NULL;
    LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &x, &av, &bv, 1, 0), LF_ERR_NULL_POINTER);
    const lf_matrix alias = lf_matrix_make(LF_F32, w + 4, 2, 4); /* A inside W */
    LFT_CHECK_STATUS(ctx, lf_peft_merge(ctx, &wv, &alias, &bv, 1, 0), LF_ERR_ALIASING);
    x = wv;
    x.stride = INT64_MAX / 2;
    LFT_CHECK_STATUS(ctx, lf_peft_unmerge(ctx, &x, &av, &bv, 1, 0), LF_ERR_OVERFLOW);
    LFT_CHECK(memcmp(w, w_copy, sizeof w) == 0);
    lft_end();
}

/* ---- modes for the CLI's ctest cases ----------------------------------------------------------- */

/* `lorafuse merge`'s output: targeted weights as PEFT merged them, everything else byte for byte. */
static int compare_merge_output(const char *out_path, const char *case_name)
{
    lf_context *ctx;
    if (lf_context_create(&ctx, LF_BACKEND_CPU) != LF_OK)
        return 1;
    fixture f;
    lf_safetensors *out = NULL;
    lft_begin("test_peft lorafuse merge output %s vs PEFT (case %s)", out_path, case_name);
    if (LFT_CHECK_STATUS(ctx, fixture_open(ctx, case_name, &f), LF_OK) &&
        LFT_CHECK_STATUS(ctx, lf_safetensors_open(ctx, out_path, &out), LF_OK) &&
        LFT_CHECK(lf_safetensors_count(out) == lf_safetensors_count(f.base))) {
        size_t merged = 0;
        for (size_t i = 0; i < lf_safetensors_count(f.base); i++) {
            lf_safetensors_tensor_info tb, to;
            size_t j, mod;
            lf_safetensors_tensor(f.base, i, &tb);
            if (!LFT_CHECKF(lf_safetensors_find(out, tb.name, &j) == LF_OK, "%s missing", tb.name))
                continue;
            lf_safetensors_tensor(out, j, &to);
            LFT_CHECKF(strcmp(tb.dtype_name, to.dtype_name) == 0 && tb.ndim == to.ndim &&
                       memcmp(tb.shape, to.shape, sizeof tb.shape) == 0, "%s: dtype or shape changed", tb.name);
            const size_t len = strlen(tb.name);
            char module[256];
            snprintf(module, sizeof module, "%.*s", len > 7 ? (int)(len - 7) : 0, tb.name); /* drop ".weight" */
            if (len > 7 && strcmp(tb.name + len - 7, ".weight") == 0 &&
                lf_peft_adapter_find_module(f.ad, module, &mod) == LF_OK) {
                lf_safetensors_tensor_info tm, tw;
                double *w0 = tensor_f64(f.base, tb.name, &tw), *want = tensor_f64(f.merged, tb.name, &tm);
                void *got = malloc(to.bytes);
                memcpy(got, to.data, to.bytes);
                if (LFT_CHECK(w0 && want))
                    compare_merged(f.ad, mod, f.dtype, w0, got, want, NULL);
                free(got);
                free(w0);
                free(want);
                merged++;
            } else {
                LFT_CHECKF(tb.bytes == to.bytes && memcmp(tb.data, to.data, tb.bytes) == 0,
                           "untouched tensor %s is not byte-identical", tb.name);
            }
        }
        LFT_CHECKF(merged == lf_peft_adapter_module_count(f.ad), "%zu merged tensors, expected %zu", merged,
                   lf_peft_adapter_module_count(f.ad));
    }
    lft_end();
    lf_safetensors_close(out);
    fixture_close(&f);
    lf_context_destroy(ctx);
    return lft_summary("test_peft --compare-merge");
}

/* base_f32 with model.layers.1.self_attn.k_proj.weight declared [64, 32] instead of [32, 64]. */
static int write_wrong_base(const char *path)
{
    lf_context *ctx;
    lf_safetensors *st;
    lf_safetensors_writer *w;
    char in[1024];
    snprintf(in, sizeof in, "%s/base_f32.safetensors", fixtures());
    if (lf_context_create(&ctx, LF_BACKEND_CPU) != LF_OK)
        return 1;
    lf_status s = lf_safetensors_open(ctx, in, &st);
    if (s == LF_OK && (s = lf_safetensors_writer_create(ctx, path, NULL, 0, &w)) == LF_OK) {
        for (size_t i = 0; i < lf_safetensors_count(st) && s == LF_OK; i++) {
            lf_safetensors_tensor_info t;
            lf_safetensors_tensor(st, i, &t);
            if (strcmp(t.name, "model.layers.1.self_attn.k_proj.weight") == 0) {
                const int64_t tmp = t.shape[0];
                t.shape[0] = t.shape[1];
                t.shape[1] = tmp;
            }
            s = lf_safetensors_writer_add(w, t.name, t.dtype_name, t.ndim, t.shape);
        }
        for (size_t i = 0; i < lf_safetensors_count(st) && s == LF_OK; i++) {
            lf_safetensors_tensor_info t;
            lf_safetensors_tensor(st, i, &t);
            s = lf_safetensors_writer_write(w, t.data, t.bytes);
        }
        if (s == LF_OK)
            s = lf_safetensors_writer_commit(w);
        else
            lf_safetensors_writer_abort(w);
    }
    if (s != LF_OK)
        printf("--write-wrong-base: %s\n", lf_context_last_error(ctx));
    lf_safetensors_close(st);
    lf_context_destroy(ctx);
    return s == LF_OK ? 0 : 1;
}

/* adapter_f32 plus base_model.model.model.norm.weight (F32 [64], all 0.5): a tensor that replaces
 * the base's in a merge, as modules_to_save or a trained bias would. */
static int write_replacement_adapter(const char *dir)
{
    lf_context *ctx;
    lf_safetensors *st;
    lf_safetensors_writer *w;
    char in[1024], out[1024];
    if (lf_context_create(&ctx, LF_BACKEND_CPU) != LF_OK)
        return 1;
    snprintf(in, sizeof in, "%s/adapter_f32/adapter_config.json", fixtures());
    snprintf(out, sizeof out, "%s/adapter_config.json", dir);
    FILE *fi = fopen(in, "rb"), *fo = (mkdir(dir, 0755) == 0 || errno == EEXIST) ? fopen(out, "wb") : NULL;
    int ok = fi && fo;
    for (int c; ok && (c = fgetc(fi)) != EOF;)
        ok = fputc(c, fo) != EOF;
    if (fi)
        fclose(fi);
    if (fo && fclose(fo) != 0)
        ok = 0;
    snprintf(in, sizeof in, "%s/adapter_f32/adapter_model.safetensors", fixtures());
    snprintf(out, sizeof out, "%s/adapter_model.safetensors", dir);
    lf_status s = ok ? lf_safetensors_open(ctx, in, &st) : LF_ERR_IO;
    if (s == LF_OK && (s = lf_safetensors_writer_create(ctx, out, NULL, 0, &w)) == LF_OK) {
        const int64_t norm_shape[1] = {64};
        float norm[64];
        for (int i = 0; i < 64; i++)
            norm[i] = 0.5f;
        for (size_t i = 0; i < lf_safetensors_count(st) && s == LF_OK; i++) {
            lf_safetensors_tensor_info t;
            lf_safetensors_tensor(st, i, &t);
            s = lf_safetensors_writer_add(w, t.name, t.dtype_name, t.ndim, t.shape);
        }
        if (s == LF_OK)
            s = lf_safetensors_writer_add(w, "base_model.model.model.norm.weight", "F32", 1, norm_shape);
        for (size_t i = 0; i < lf_safetensors_count(st) && s == LF_OK; i++) {
            lf_safetensors_tensor_info t;
            lf_safetensors_tensor(st, i, &t);
            s = lf_safetensors_writer_write(w, t.data, t.bytes);
        }
        if (s == LF_OK && (s = lf_safetensors_writer_write(w, norm, sizeof norm)) == LF_OK)
            s = lf_safetensors_writer_commit(w);
        else
            lf_safetensors_writer_abort(w);
        lf_safetensors_close(st);
    }
    if (s != LF_OK)
        printf("--write-replacement-adapter: %s\n", ok ? lf_context_last_error(ctx) : "cannot copy the config");
    lf_context_destroy(ctx);
    return s == LF_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--compare-merge") == 0)
        return compare_merge_output(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "--write-wrong-base") == 0)
        return write_wrong_base(argv[2]);
    if (argc == 3 && strcmp(argv[1], "--write-replacement-adapter") == 0)
        return write_replacement_adapter(argv[2]);
    printf("test_peft: fixtures in %s, base seed LF_TEST_SEED=0x%016llx\n", fixtures(),
           (unsigned long long)lft_base_seed());
    lft_for_each_backend("test_peft fixtures", 4 * 15, fixture_tests, NULL);
    lft_for_each_backend("test_peft merge", 10, merge_tests, NULL);
    lf_context *ctx;
    if (lf_context_create(&ctx, LF_BACKEND_CPU) == LF_OK) {
        hostile_adapters(ctx);
        bad_merge_arguments(ctx);
        lf_context_destroy(ctx);
    }
    return lft_summary("test_peft");
}

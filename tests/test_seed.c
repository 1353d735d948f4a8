/*
 * test_seed.c — the prototype's three correctness tests (shared/seed: Candle + Metal), reproduced with
 * lorafuse on every backend present:
 *   basic:        x [2, 64, 512] (M = 128, K = 512), A [512, 8], B [8, 512] (the KN layout), scale 2, f32
 *   batch sizes:  1, 4, 8 with seq 64 (M = 64, 256, 512)
 *   ranks:        4, 8, 16, 32 (M = 128)
 * The prototype's op is the LoRA delta alone (w NULL, no bias, beta 0). Each case passes when every
 * element is within the derived tolerance AND the largest absolute error is below the prototype's
 * 1e-4. The basic shape also runs as a whole layer (W and bias present) for good measure.
 *
 * Magnitudes: an absolute bound like 1e-4 only means something for a given data scale. With the
 * shared fill (|values| in [0.125, 1]) |y| reaches ~250 at r = 32, where even the prototype's own
 * plain fp32 loop is off by 1.5e-4. So, like a real adapter (PEFT initialises lora_A uniformly within
 * ±1/√K ≈ 0.044 for K = 512), A is scaled by 2⁻⁴ and B by 2⁻²: powers of two, exact, so the relative
 * errors — and the strength of the derived-tolerance check — are the same as without scaling.
 */
#include "lf_test.h"

#include "lf_dtype.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* The prototype's naive kernel in plain fp32 (hidden = Σ_k x·a; out += hidden·b; out *= scale),
 * delta only, on the host images: its max abs error is printed beside lorafuse's so that the 1e-4
 * margin can be judged against what a plain fp32 implementation achieves on the same data. */
static double plain_fp32_max_err(const lft_problem *p)
{
    const float *x = lft_mat_host(&p->x), *a = lft_mat_host(&p->a), *b = lft_mat_host(&p->b);
    double worst = 0.0;
    float hidden[32];
    if (p->c.rank > 32)
        return NAN;
    for (int64_t i = 0; i < p->c.m; i++) {
        /* hidden depends on (i, t) only: computed once per row, the same bits as per element */
        for (int64_t t = 0; t < p->c.rank; t++) {
            float h = 0.0f;
            for (int64_t kk = 0; kk < p->c.k; kk++)
                h += x[i * p->x.stride + kk] * a[kk * p->a.stride + t];
            hidden[t] = h;
        }
        for (int64_t j = 0; j < p->c.n; j++) {
            float result = 0.0f;
            for (int64_t t = 0; t < p->c.rank; t++)
                result += hidden[t] * b[t * p->b.stride + j];
            result *= p->c.scale;
            double err = fabs((double)result - p->exact[i * p->c.n + j]);
            if (err > worst)
                worst = err;
        }
    }
    return worst;
}

static void seed_case(lf_context *ctx, const char *what, int64_t m, int64_t rank, int has_w, uint64_t index)
{
    lft_case c;
    memset(&c, 0, sizeof c);
    c.dtype = LF_F32;
    c.layout = LF_LAYOUT_KN;
    c.m = m;
    c.k = 512;
    c.n = 512;
    c.rank = rank;
    c.has_w = has_w;
    c.has_bias = has_w;
    c.scale = 2.0f;
    c.beta = 0.0f;
    c.seed = lft_case_seed(index);

    char name[256];
    lft_begin("test_seed %s %s %s", what, lf_backend_name(lf_context_backend(ctx)), lft_case_name(&c, name, sizeof name));
    lft_set_seed(c.seed);
    lft_problem p;
    lf_status st = lft_problem_init(&p, ctx, &c);
    if (LFT_CHECKF(st == LF_OK, "setting up the buffers failed: %s", lf_status_name(st))) {
        lft_mat_scale(&p.a, 0x1.0p-4f);
        lft_mat_scale(&p.b, 0x1.0p-2f);
        LFT_CHECK(lft_mat_upload(&p.a) == LF_OK && lft_mat_upload(&p.b) == LF_OK);
        if (LFT_CHECK_STATUS(ctx, lft_problem_run(&p), LF_OK)) {
            double max_err = 0.0;
            lft_problem_reference(&p);
            lft_problem_check(&p, &max_err, NULL);
            LFT_CHECKF(max_err < 1e-4, "max abs error %.3g is not below the prototype's 1e-4", max_err);
            double max_exact = 0.0;
            for (int64_t i = 0; i < m * c.n; i++)
                max_exact = fmax(max_exact, fabs(p.exact[i]));
            if (has_w)
                printf("   %-6s M=%-4lld r=%-3lld layer: max abs error %.3g (max |y| %.3g)\n", what, (long long)m,
                       (long long)rank, max_err, max_exact);
            else
                printf("   %-6s M=%-4lld r=%-3lld delta: max abs error %.3g (max |y| %.3g; the prototype's plain "
                       "fp32 loop: %.3g)\n", what, (long long)m, (long long)rank, max_err, max_exact,
                       plain_fp32_max_err(&p));
        }
        lft_problem_free(&p);
    }
    lft_end();
}

static void seed_tests(lf_context *ctx, void *arg)
{
    (void)arg;
    uint64_t index = 0;
    /* test_fused_lora_correctness_basic */
    seed_case(ctx, "basic", 2 * 64, 8, 0, index++);
    seed_case(ctx, "basic", 2 * 64, 8, 1, index++);
    /* test_fused_lora_various_batch_sizes */
    static const int64_t batches[3] = {1, 4, 8};
    for (int i = 0; i < 3; i++)
        seed_case(ctx, "batch", batches[i] * 64, 8, 0, index++);
    /* test_fused_lora_various_ranks */
    static const int64_t ranks[4] = {4, 8, 16, 32};
    for (int i = 0; i < 4; i++)
        seed_case(ctx, "rank", 2 * 64, ranks[i], 0, index++);
}

int main(void)
{
    printf("test_seed: base seed LF_TEST_SEED=0x%016llx\n", (unsigned long long)lft_base_seed());
    lft_for_each_backend("test_seed", 9, seed_tests, NULL);
    return lft_summary("test_seed");
}

/*
 * lora_ref.c — the reference LoRA forward: the oracle the fast paths and every test compare against.
 *
 * Straight loops over the definition, in double, one output row at a time. Nothing here is meant to
 * be fast; everything is meant to be obviously right.
 */
#include "lora_ref.h"

#include "../lf_dtype.h"

#include <math.h>
#include <stdlib.h>

/* Element accessors: the two layouts differ only in which index is the row. */
static double x_at(const lf_lora_problem *p, int64_t i, int64_t kk)
{
    return lf_load_f32(p->x, p->dtype, i * p->ldx + kk);
}

static double w_at(const lf_lora_problem *p, int64_t j, int64_t kk) /* W[j, kk] of x·Wᵀ */
{
    int64_t at = p->layout == LF_LAYOUT_PEFT ? j * p->ldw + kk : kk * p->ldw + j;
    return lf_load_f32(p->w, p->dtype, at);
}

static double a_at(const lf_lora_problem *p, int64_t t, int64_t kk) /* A[t, kk] of x·Aᵀ */
{
    int64_t at = p->layout == LF_LAYOUT_PEFT ? t * p->lda + kk : kk * p->lda + t;
    return lf_load_f32(p->a, p->dtype, at);
}

static double b_at(const lf_lora_problem *p, int64_t j, int64_t t) /* B[j, t] of (x·Aᵀ)·Bᵀ */
{
    int64_t at = p->layout == LF_LAYOUT_PEFT ? j * p->ldb + t : t * p->ldb + j;
    return lf_load_f32(p->b, p->dtype, at);
}

void lf_ref_lora_forward_f64(const lf_lora_problem *p, double *out, double *mag)
{
    /* Per row of x: the rank-sized projection x·Aᵀ and the sum of its terms' magnitudes. */
    double t_val[LF_MAX_RANK], t_abs[LF_MAX_RANK];
    const double scale = p->scale, beta = p->beta;

    for (int64_t i = 0; i < p->m; i++) {
        for (int64_t t = 0; t < p->rank; t++) {
            double s = 0.0, sa = 0.0;
            for (int64_t kk = 0; kk < p->k; kk++) {
                double term = x_at(p, i, kk) * a_at(p, t, kk);
                s += term;
                sa += fabs(term);
            }
            t_val[t] = s;
            t_abs[t] = sa;
        }
        for (int64_t j = 0; j < p->n; j++) {
            double v = 0.0, vm = 0.0;
            if (beta != 0.0) { /* beta = 0 must not read y: it may hold NaN or garbage */
                double old = beta * lf_load_f32(p->y, p->dtype, i * p->ldy + j);
                v += old;
                vm += fabs(old);
            }
            if (p->w) {
                for (int64_t kk = 0; kk < p->k; kk++) {
                    double term = x_at(p, i, kk) * w_at(p, j, kk);
                    v += term;
                    vm += fabs(term);
                }
            }
            if (p->bias) {
                double bj = lf_load_f32(p->bias, p->dtype, j);
                v += bj;
                vm += fabs(bj);
            }
            double lora = 0.0, lora_mag = 0.0;
            for (int64_t t = 0; t < p->rank; t++) {
                double bt = b_at(p, j, t);
                lora += t_val[t] * bt;
                /* Both the rounded projection and its own terms feed an fp32 evaluation's error. */
                lora_mag += (fabs(t_val[t]) + t_abs[t]) * fabs(bt);
            }
            v += scale * lora;
            vm += fabs(scale) * lora_mag;
            out[i * p->n + j] = v;
            if (mag)
                mag[i * p->n + j] = vm;
        }
    }
}

double lf_ref_unit_roundoff(lf_dtype dtype)
{
    return dtype == LF_BF16 ? 0x1p-8 : dtype == LF_F16 ? 0x1p-11 : 0x1p-24;
}

/* Why this tolerance, and why it is not hand-tuned:
 *
 * The contract is "accumulate in fp32, round to the dtype once". An fp32 evaluation of the element, in any
 * order and with or without FMA, makes these errors (u₃₂ = 2⁻²⁴, the fp32 rounding unit):
 *  - x·Wᵀ: a sum of K products. Standard bound (Higham, Accuracy and Stability, 3.1): the computed
 *    sum differs from the exact one by at most γ_K·Σ|x·w| with γ_K = K·u₃₂/(1 - K·u₃₂); products of
 *    f16/bf16 inputs are exact in fp32, products of f32 inputs add one more u₃₂ each.
 *  - t = x·Aᵀ: the same, γ_K·Σ_k|x·a|; that error is carried through B and scale into the output,
 *    which is the last term of the reference's mag (|scale|·Σ_t(Σ_k|x·a|)·|b|).
 *  - s·Σ_t t·b: a sum of r products, γ_r·|scale|·Σ_t|t|·|b| (the fourth term of mag), plus one
 *    rounding if the scale is applied separately.
 *  - beta·y + base + bias + lora: at most four more additions/multiplications of terms bounded by mag.
 * Adding up: |fp32 result - exact| ≤ (K + r + 4 + O(1))·u₃₂·mag to first order. The factor 2 covers
 * the O(1) (the product roundings: K+1 ≤ 2K) and the second-order factor 1/(1 - n·u₃₂) (≤ 1.001 for
 * the shapes tested), with no room for a real mistake: a wrong index, a dropped term or an
 * intermediate rounded to f16/bf16 makes errors of order |term| or 2⁻⁸·|term|, far above
 * (K + r + 4)·2⁻²³·mag. Typical errors are ~√n·u₃₂, well inside the bound, so it does not flake.
 *
 * Then the result is rounded to the output dtype: at most u·|value| in the normal range (relative
 * to the exact value to first order; the difference is u·(K+r+4)·u₃₂·mag, absorbed by the factor
 * 2), plus half the spacing of the dtype's subnormals when the value underflows, which only
 * matters for f16 results below 2⁻¹⁴ (2⁻²⁵ absolute). */
double lf_ref_tolerance(lf_dtype dtype, int64_t k, int64_t rank, double exact, double mag)
{
    const double eta = dtype == LF_F16 ? 0x1p-25 : dtype == LF_BF16 ? 0x1p-134 : 0x1p-150;
    return lf_ref_unit_roundoff(dtype) * fabs(exact) + 2.0 * (double)(k + rank + 4) * 0x1p-24 * mag + eta;
}

void lf_ref_lora_multi_f64(const lf_lora_problem *p, const lf_lora_problem *adapters, int count,
                           const int32_t *adapter_of_row, double *out, double *mag)
{
    const size_t esize = lf_dtype_size(p->dtype);
    for (int64_t i = 0; i < p->m; i++) {
        const int32_t id = adapter_of_row[i];
        const int none = id < 0 || id >= count;
        const lf_lora_problem *ad = none ? &adapters[0] : &adapters[id];
        lf_lora_problem one = *p;
        one.m = 1;
        one.x = (const char *)p->x + (size_t)(i * p->ldx) * esize;
        one.y = (char *)p->y + (size_t)(i * p->ldy) * esize;
        one.a = ad->a, one.lda = ad->lda, one.b = ad->b, one.ldb = ad->ldb, one.rank = ad->rank;
        one.scale = none ? 0.0f : ad->scale; /* adds exactly 0, and 0 to mag */
        lf_ref_lora_forward_f64(&one, out + i * p->n, mag ? mag + i * p->n : NULL);
    }
}

lf_status lf_ref_lora_forward(const lf_lora_problem *p)
{
    /* One row at a time keeps the temporary at n doubles whatever m is. */
    double *row = malloc((size_t)p->n * sizeof *row);
    if (!row)
        return LF_ERR_OUT_OF_MEMORY;
    const size_t esize = lf_dtype_size(p->dtype);
    for (int64_t i = 0; i < p->m; i++) {
        lf_lora_problem one = *p;
        one.m = 1;
        one.x = (const char *)p->x + (size_t)(i * p->ldx) * esize;
        one.y = (char *)p->y + (size_t)(i * p->ldy) * esize;
        lf_ref_lora_forward_f64(&one, row, NULL);
        /* Through f32 first, as a backend that accumulates in fp32 rounds its result. */
        for (int64_t j = 0; j < p->n; j++)
            lf_store_f32(one.y, p->dtype, j, (float)row[j]);
    }
    free(row);
    return LF_OK;
}

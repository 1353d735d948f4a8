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

/*
 * lora_ref.h — the reference implementation: plain loops, double accumulation, readable above all.
 * It is the oracle of every test and of `lorafuse check`. Host memory only.
 */
#ifndef LF_LORA_REF_H
#define LF_LORA_REF_H

#include "../lf_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Computes p in double precision without rounding to p->dtype. For every output element (i, j):
 *   out[i·n + j] = beta·y + Σ_k x·W + bias + scale·Σ_t (Σ_k x·A)·B        (the exact value)
 *   mag[i·n + j] = |beta·y| + Σ_k |x·W| + |bias| + |scale|·Σ_t |Σ_k x·A|·|B| + |scale|·Σ_t (Σ_k |x·A|)·|B|
 * mag bounds the size of the terms an fp32 evaluation adds up, so tests can derive their tolerance
 * from it (error of an fp32 sum of n terms <= n·2⁻²⁴·Σ|terms|). mag may be NULL.
 * out and mag are dense [m, n]. p->y is read (when beta ≠ 0), never written. */
void lf_ref_lora_forward_f64(const lf_lora_problem *p, double *out, double *mag);

/* Computes p and writes y rounded once to p->dtype, exactly like a backend would. */
lf_status lf_ref_lora_forward(const lf_lora_problem *p);

#ifdef __cplusplus
}
#endif

#endif /* LF_LORA_REF_H */

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

/* How far a backend's element of y may be from the exact value (derivation in lora_ref.c):
 *   u·|exact| + 2·(k + r + 4)·2⁻²⁴·mag + half the dtype's smallest subnormal spacing,
 * u = lf_ref_unit_roundoff(dtype) = 2⁻²⁴, 2⁻¹¹, 2⁻⁸ for f32, f16, bf16. */
double lf_ref_unit_roundoff(lf_dtype dtype);
double lf_ref_tolerance(lf_dtype dtype, int64_t k, int64_t rank, double exact, double mag);

/* Many adapters: row i of out and mag (may be NULL) is the one-row problem of
 * row i of p with the a, b, rank and scale of adapters[adapter_of_row[i]] (their layout is p's), or
 * with no LoRA term when that id is outside 0..count-1 (count >= 1: adapters[0] stands in, scale 0).
 * All host memory; out and mag dense [m, n]. */
void lf_ref_lora_multi_f64(const lf_lora_problem *p, const lf_lora_problem *adapters, int count,
                           const int32_t *adapter_of_row, double *out, double *mag);

/* Computes p and writes y rounded once to p->dtype, exactly like a backend would. */
lf_status lf_ref_lora_forward(const lf_lora_problem *p);

#ifdef __cplusplus
}
#endif

#endif /* LF_LORA_REF_H */

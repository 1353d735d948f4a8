/*
 * lora_merge.c — W ← W + scale·B·A on the CPU: A and B converted to fp32 once, then W in blocks of
 * rows: one CBLAS sgemm makes the block's fp32 delta, and each element of W is loaded, added to and
 * rounded once. Memory beyond W: A and B in fp32 and one block of about 4 MiB.
 *
 * PEFT layout: W [out, in] rows i: delta = s·B[i, :]·A.  fan_in_fan_out: W [in, out] rows i:
 * delta = s·(B·A)ᵀ[i, :] = s·A[:, i]ᵀ·Bᵀ, the same sgemm with both operands transposed.
 */
#include "lora_merge.h"

#include "lf_dtype.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>

#define MERGE_BLOCK_FLOATS ((int64_t)1 << 20)

static float *to_f32_dense(const void *src, lf_dtype dt, int64_t ld, int64_t rows, int64_t cols)
{
    float *dst = malloc((size_t)rows * (size_t)cols * sizeof *dst);
    if (!dst)
        return NULL;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            dst[i * cols + j] = lf_load_f32(src, dt, i * ld + j);
    return dst;
}

lf_status lf_cpu_lora_merge(lf_context *ctx, const lf_merge_problem *p)
{
    const int64_t rows = p->w_transposed ? p->in : p->out, cols = p->w_transposed ? p->out : p->in;
    if (rows > INT_MAX || cols > INT_MAX)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_peft_merge: CBLAS takes sizes up to %d", INT_MAX);
    const int64_t block = MERGE_BLOCK_FLOATS / cols > 0 ? MERGE_BLOCK_FLOATS / cols : 1;
    const int64_t block_rows = block < rows ? block : rows;
    float *a = to_f32_dense(p->a, p->ab_dtype, p->lda, p->rank, p->in);
    float *b = to_f32_dense(p->b, p->ab_dtype, p->ldb, p->out, p->rank);
    float *delta = malloc((size_t)block_rows * (size_t)cols * sizeof *delta);
    if (!a || !b || !delta) {
        free(a);
        free(b);
        free(delta);
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_peft_merge: no host memory for the fp32 copies of A and B");
    }
    const int r = (int)p->rank, in = (int)p->in;
    const size_t es = lf_dtype_size(p->w_dtype);
    for (int64_t i0 = 0; i0 < rows; i0 += block_rows) {
        const int n = (int)(rows - i0 < block_rows ? rows - i0 : block_rows);
        if (p->w_transposed) /* delta[n, out] = s · A[:, i0:i0+n]ᵀ · Bᵀ */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, n, (int)cols, r, p->scale, a + i0, in, b, r, 0.0f,
                        delta, (int)cols);
        else /* delta[n, in] = s · B[i0:i0+n, :] · A */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, (int)cols, r, p->scale, b + i0 * r, r, a, in,
                        0.0f, delta, (int)cols);
        for (int64_t i = 0; i < n; i++) {
            void *row = (char *)p->w + (size_t)((i0 + i) * p->ldw) * es;
            const float *d = delta + i * cols;
            for (int64_t j = 0; j < cols; j++)
                lf_store_f32(row, p->w_dtype, j, lf_load_f32(row, p->w_dtype, j) + d[j]);
        }
    }
    free(a);
    free(b);
    free(delta);
    return LF_OK;
}

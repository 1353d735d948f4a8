/*
 * lora_fwd_simd.c — the CPU kernels of the fused LoRA delta, written once and compiled once per
 * instruction set (CMake passes -DLF_SIMD_ISA=generic|avx2|avx512 and the matching -m flags); the
 * driver picks a set at run time. The only exported symbol is the table lf_cpu_kernels_<isa>.
 *
 * Kernels are GCC vector-extension code with explicit register tiles, so the same source becomes
 * SSE2, AVX2+FMA or AVX-512 code. Everything is computed in fp32; 16-bit data is converted on load
 * and rounded once on store.
 */
#include "lora_fwd.h"

#include "../lf_dtype.h"

#include <string.h>

#ifndef LF_SIMD_ISA
#error "compile lora_fwd_simd.c with -DLF_SIMD_ISA=generic|avx2|avx512"
#endif
#define LF_CAT2(a, b) a##b
#define LF_CAT(a, b) LF_CAT2(a, b)
#define LF_STR2(a) #a
#define LF_STR(a) LF_STR2(a)
#define LF_ISA_SYMBOL(name) LF_CAT(name, LF_SIMD_ISA)

/* Vector width and register tiles. AVX-512 has 32 registers: 4×4 accumulators in both phases.
 * AVX2 and SSE2 have 16: 4×2 tiles leave room for the operands. */
#if defined(__AVX512F__)
#define VL 16
#define PROJ_ROWS 4
#define PROJ_RANKS 4
#define EXP_ROWS 4
#define EXP_VECS 4
#elif defined(__AVX__)
#define VL 8
#define PROJ_ROWS 4
#define PROJ_RANKS 2
#define EXP_ROWS 4
#define EXP_VECS 2
#else
#define VL 4
#define PROJ_ROWS 4
#define PROJ_RANKS 2
#define EXP_ROWS 4
#define EXP_VECS 2
#endif
#define EXP_COLS (EXP_VECS * VL)

#define LF_INLINE static inline __attribute__((always_inline))

typedef float vf __attribute__((vector_size(VL * sizeof(float))));

/* memcpy is how C says "unaligned load"; GCC turns it into one vector move. */
LF_INLINE vf vload(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

LF_INLINE void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* A fixed left-to-right order, so that the result does not depend on anything but the lanes. */
LF_INLINE float hsum(vf v)
{
    float s = 0.0f;
    for (int l = 0; l < VL; l++)
        s += v[l];
    return s;
}

/* ---- conversions ----------------------------------------------------------------------------- */

/* Inlined with a constant dtype, each instance is a plain conversion loop GCC vectorizes. */
LF_INLINE void to_f32_dt(const void *restrict src, lf_dtype dt, int64_t n, float *restrict dst)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = lf_load_f32(src, dt, i);
}

LF_INLINE void from_f32_dt(const float *restrict src, int64_t n, lf_dtype dt, void *restrict dst)
{
    for (int64_t i = 0; i < n; i++)
        lf_store_f32(dst, dt, i, src[i]);
}

static void to_f32(const void *src, lf_dtype dt, int64_t n, float *dst)
{
    switch (dt) {
    case LF_F16:
        to_f32_dt(src, LF_F16, n, dst);
        break;
    case LF_BF16:
        to_f32_dt(src, LF_BF16, n, dst);
        break;
    default:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    }
}

static void from_f32(const float *src, int64_t n, lf_dtype dt, void *dst)
{
    switch (dt) {
    case LF_F16:
        from_f32_dt(src, n, LF_F16, dst);
        break;
    case LF_BF16:
        from_f32_dt(src, n, LF_BF16, dst);
        break;
    default:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    }
}

/* Square blocks keep both the rows read and the rows written in L1 while a block is turned. */
#define TR_BLOCK 32

LF_INLINE void transpose_dt(const void *src, lf_dtype dt, int64_t lds, int64_t rows, int64_t c0,
                            int64_t c1, float *dst, int64_t ldd)
{
    for (int64_t rb = 0; rb < rows; rb += TR_BLOCK) {
        const int64_t re = rb + TR_BLOCK < rows ? rb + TR_BLOCK : rows;
        for (int64_t cb = c0; cb < c1; cb += TR_BLOCK) {
            const int64_t ce = cb + TR_BLOCK < c1 ? cb + TR_BLOCK : c1;
            for (int64_t c = cb; c < ce; c++)
                for (int64_t r = rb; r < re; r++)
                    dst[c * ldd + r] = lf_load_f32(src, dt, r * lds + c);
        }
    }
}

static void transpose_to_f32(const void *src, lf_dtype dt, int64_t lds, int64_t rows, int64_t c0,
                             int64_t c1, float *dst, int64_t ldd)
{
    switch (dt) {
    case LF_F16:
        transpose_dt(src, LF_F16, lds, rows, c0, c1, dst, ldd);
        break;
    case LF_BF16:
        transpose_dt(src, LF_BF16, lds, rows, c0, c1, dst, ldd);
        break;
    default:
        transpose_dt(src, LF_F32, lds, rows, c0, c1, dst, ldd);
        break;
    }
}

/* ---- project: T = scale · x·Aᵀ ----------------------------------------------------------------- */

/* R rows of x against PROJ_RANKS packed rows of A. Each lane accumulates every VL-th product in k
 * order, the tail (k not a multiple of VL) comes in as one zero-padded vector, and the lanes are
 * summed in a fixed order: the same operations for an element whichever tile computes it. */
LF_INLINE void project_tile(const int R, const float *x, int64_t ldx, int64_t k, const float *a,
                            int64_t lda, float scale, float *t, int64_t ldt)
{
    vf acc[PROJ_ROWS][PROJ_RANKS];
    for (int r = 0; r < R; r++)
        for (int q = 0; q < PROJ_RANKS; q++)
            acc[r][q] = (vf){0};
    int64_t kk = 0;
    for (; kk + VL <= k; kk += VL) {
        vf av[PROJ_RANKS];
        for (int q = 0; q < PROJ_RANKS; q++)
            av[q] = vload(a + q * lda + kk);
        for (int r = 0; r < R; r++) {
            const vf xv = vload(x + r * ldx + kk);
            for (int q = 0; q < PROJ_RANKS; q++)
                acc[r][q] += xv * av[q];
        }
    }
    if (kk < k) {
        /* Packed A is zero beyond k, so only x needs padding. */
        vf av[PROJ_RANKS];
        for (int q = 0; q < PROJ_RANKS; q++)
            av[q] = vload(a + q * lda + kk);
        for (int r = 0; r < R; r++) {
            float buf[VL] = {0};
            memcpy(buf, x + r * ldx + kk, (size_t)(k - kk) * sizeof(float));
            const vf xv = vload(buf);
            for (int q = 0; q < PROJ_RANKS; q++)
                acc[r][q] += xv * av[q];
        }
    }
    for (int r = 0; r < R; r++)
        for (int q = 0; q < PROJ_RANKS; q++)
            t[r * ldt + q] = scale * hsum(acc[r][q]);
}

static void project(const lf_cpu_project_args *pa)
{
    int64_t i = 0;
    for (; i + PROJ_ROWS <= pa->rows; i += PROJ_ROWS)
        for (int64_t q = pa->t0; q < pa->t1; q += PROJ_RANKS)
            project_tile(PROJ_ROWS, pa->x + i * pa->ldx, pa->ldx, pa->k, pa->a + q * pa->lda, pa->lda,
                         pa->scale, pa->t + i * pa->ldt + q, pa->ldt);
    for (; i < pa->rows; i++)
        for (int64_t q = pa->t0; q < pa->t1; q += PROJ_RANKS)
            project_tile(1, pa->x + i * pa->ldx, pa->ldx, pa->k, pa->a + q * pa->lda, pa->lda,
                         pa->scale, pa->t + i * pa->ldt + q, pa->ldt);
}

/* ---- expand: out = T·B + bias + beta·yin ------------------------------------------------------ */

/* n (<= VL) elements of a row in `dt`, as a vector; lanes past n are zero. */
LF_INLINE vf load_vec(const void *p, lf_dtype dt, int64_t n)
{
    if (dt == LF_F32 && n == VL)
        return vload(p);
    float buf[VL] = {0};
    if (n == VL)
        to_f32_dt(p, dt, VL, buf);
    else
        to_f32_dt(p, dt, n, buf);
    return vload(buf);
}

LF_INLINE void store_vec(void *p, lf_dtype dt, int64_t n, vf v)
{
    if (dt == LF_F32 && n == VL) {
        vstore(p, v);
        return;
    }
    float buf[VL];
    vstore(buf, v);
    if (n == VL)
        from_f32_dt(buf, VL, dt, p);
    else
        from_f32_dt(buf, n, dt, p);
}

/* R rows × EXP_VECS vectors of columns; `cols` (<= EXP_COLS) of them are stored. */
LF_INLINE void expand_tile(const int R, const lf_cpu_expand_args *e, const lf_dtype yin_dt,
                           const lf_dtype out_dt, int64_t i, int64_t j, int64_t cols)
{
    vf acc[EXP_ROWS][EXP_VECS];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < EXP_VECS; c++)
            acc[r][c] = (vf){0};
    const float *t = e->t + i * e->ldt;
    const float *b = e->b + j;
    for (int64_t q = 0; q < e->rank; q++) {
        vf bv[EXP_VECS];
        for (int c = 0; c < EXP_VECS; c++)
            bv[c] = vload(b + q * e->ldb + c * VL);
        for (int r = 0; r < R; r++) {
            const float tv = t[r * e->ldt + q]; /* scalar × vector: a broadcast operand */
            for (int c = 0; c < EXP_VECS; c++)
                acc[r][c] += tv * bv[c];
        }
    }
    const size_t in_size = lf_dtype_size(yin_dt), out_size = lf_dtype_size(out_dt);
    for (int r = 0; r < R; r++) {
        const char *yin = (const char *)e->yin + (size_t)((i + r) * e->ldyin + j) * in_size;
        char *out = (char *)e->out + (size_t)((i + r) * e->ldout + j) * out_size;
        for (int c = 0; c < EXP_VECS; c++) {
            const int64_t n = cols - c * VL < VL ? cols - c * VL : VL;
            if (n <= 0)
                break;
            vf v = acc[r][c];
            if (e->bias)
                v += vload(e->bias + j + c * VL);
            if (e->beta != 0.0f) /* beta = 0 must not read y */
                v += e->beta * load_vec(yin + (size_t)(c * VL) * in_size, yin_dt, n);
            store_vec(out + (size_t)(c * VL) * out_size, out_dt, n, v);
        }
    }
}

LF_INLINE void expand_dt(const lf_cpu_expand_args *e, const lf_dtype yin_dt, const lf_dtype out_dt)
{
    for (int64_t j = 0; j < e->cols; j += EXP_COLS) {
        const int64_t cols = e->cols - j < EXP_COLS ? e->cols - j : EXP_COLS;
        int64_t i = 0;
        for (; i + EXP_ROWS <= e->rows; i += EXP_ROWS)
            expand_tile(EXP_ROWS, e, yin_dt, out_dt, i, j, cols);
        for (; i < e->rows; i++)
            expand_tile(1, e, yin_dt, out_dt, i, j, cols);
    }
}

static void expand(const lf_cpu_expand_args *e)
{
    /* The pairs the driver uses: y in place, or a 16-bit y into an fp32 accumulator. */
    if (e->out_dtype == LF_F32 && e->yin_dtype == LF_F16)
        expand_dt(e, LF_F16, LF_F32);
    else if (e->out_dtype == LF_F32 && e->yin_dtype == LF_BF16)
        expand_dt(e, LF_BF16, LF_F32);
    else if (e->out_dtype == LF_F16)
        expand_dt(e, LF_F16, LF_F16);
    else if (e->out_dtype == LF_BF16)
        expand_dt(e, LF_BF16, LF_BF16);
    else
        expand_dt(e, LF_F32, LF_F32);
}

const lf_cpu_kernels LF_ISA_SYMBOL(lf_cpu_kernels_) = {
    .isa = LF_STR(LF_SIMD_ISA),
    .vl = VL,
    .proj_rows = PROJ_ROWS,
    .proj_ranks = PROJ_RANKS,
    .expand_rows = EXP_ROWS,
    .expand_cols = EXP_COLS,
    .to_f32 = to_f32,
    .from_f32 = from_f32,
    .transpose_to_f32 = transpose_to_f32,
    .project = project,
    .expand = expand,
};

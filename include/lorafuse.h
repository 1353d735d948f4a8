/*
 * lorafuse.h — fused LoRA kernels for C, C++, Rust (FFI) and Python.
 *
 * One LoRA-adapted linear layer:
 *
 *     y = beta·y + x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ
 *
 * computed in one pass per backend instead of the 3–5 kernels frameworks run.
 *
 * Worked example (CPU, f32, PEFT layout, whole layer):
 *
 *     lf_context *ctx;
 *     if (lf_context_create(&ctx, LF_BACKEND_AUTO) != LF_OK) return 1;
 *     lf_matrix x = lf_matrix_make(LF_F32, xd, M, K);     // [M, K] row-major
 *     lf_matrix w = lf_matrix_make(LF_F32, wd, N, K);     // PEFT: W [N, K]
 *     lf_matrix a = lf_matrix_make(LF_F32, ad, r, K);     // lora_A.weight [r, K]
 *     lf_matrix b = lf_matrix_make(LF_F32, bd, N, r);     // lora_B.weight [N, r]
 *     lf_matrix y = lf_matrix_make(LF_F32, yd, M, N);
 *     lf_status st = lf_lora_forward(ctx, LF_LAYOUT_PEFT, &x, &w, NULL, &a, &b,
 *                                    2.0f, 0.0f, &y);
 *     if (st != LF_OK) fprintf(stderr, "%s\n", lf_context_last_error(ctx));
 *     lf_context_destroy(ctx);
 *
 * Conventions
 * - Matrices are row-major views (lf_matrix): data, dtype, rows, cols and a row stride counted in
 *   elements (stride >= cols). Views never own memory.
 * - All operands of one call share one dtype (f32, f16 or bf16). Arithmetic accumulates in fp32 and
 *   the result is rounded to the dtype once.
 * - With a CPU context, data pointers are host pointers. With a CUDA context they are device
 *   pointers (lf_malloc), and work is queued on the context's stream.
 * - Every function returns an lf_status. On failure nothing is written to any output, and
 *   lf_context_last_error() holds a readable sentence saying what was wrong. The library never
 *   prints, exits or aborts.
 * - A context is not thread-safe: use one per thread (or per CUDA stream).
 */
#ifndef LORAFUSE_H
#define LORAFUSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LF_VERSION_MAJOR 0
#define LF_VERSION_MINOR 1
#define LF_VERSION_PATCH 0
/* MAJOR·10000 + MINOR·100 + PATCH, comparable with lf_version_number(). */
#define LF_VERSION_NUMBER (LF_VERSION_MAJOR * 10000 + LF_VERSION_MINOR * 100 + LF_VERSION_PATCH)

/* Largest LoRA rank the operations accept. */
#define LF_MAX_RANK 1024

/*! lf_version_number() :
 *  @return the version of the library actually linked, as LF_VERSION_NUMBER encodes it. */
unsigned lf_version_number(void);

/*! lf_version_string() :
 *  @return the linked version as "MAJOR.MINOR.PATCH" (static storage). */
const char *lf_version_string(void);

/* Status codes. Values are stable; new codes are only ever appended. */
typedef enum lf_status {
    LF_OK = 0,
    LF_ERR_NULL_POINTER = 1,        /* a required pointer argument is NULL */
    LF_ERR_INVALID_VALUE = 2,       /* a size, rank, enum or scalar outside its allowed range */
    LF_ERR_SHAPE_MISMATCH = 3,      /* operand shapes do not agree with each other */
    LF_ERR_BAD_STRIDE = 4,          /* a row stride smaller than the row length */
    LF_ERR_OVERFLOW = 5,            /* a size whose byte count does not fit in size_t */
    LF_ERR_DTYPE_MISMATCH = 6,      /* operands of one call with different dtypes */
    LF_ERR_ALIASING = 7,            /* the output overlaps an input */
    LF_ERR_UNSUPPORTED = 8,         /* a valid request this build or backend cannot serve */
    LF_ERR_BACKEND_UNAVAILABLE = 9, /* the requested backend is not built or has no device */
    LF_ERR_OUT_OF_MEMORY = 10,      /* host or device allocation failed */
    LF_ERR_DEVICE = 11,             /* the device runtime reported an error (text in last_error) */
    LF_ERR_INTERNAL = 12            /* a bug in lorafuse: please report it */
} lf_status;

/*! lf_status_string() :
 *  @return a short static description of a status, "unknown status" for values not listed above. */
const char *lf_status_string(lf_status status);

/*! lf_status_name() :
 *  @return the enumerator's name ("LF_ERR_SHAPE_MISMATCH"), "LF_UNKNOWN" for unlisted values. */
const char *lf_status_name(lf_status status);

typedef enum lf_dtype {
    LF_F32 = 0,  /* IEEE binary32 */
    LF_F16 = 1,  /* IEEE binary16 */
    LF_BF16 = 2  /* bfloat16: the upper half of a binary32 */
} lf_dtype;

/*! lf_dtype_size() : @return the size in bytes of one element, 0 for an invalid dtype. */
size_t lf_dtype_size(lf_dtype dtype);

/*! lf_dtype_name() : @return "f32", "f16", "bf16", or "invalid". */
const char *lf_dtype_name(lf_dtype dtype);

typedef enum lf_backend {
    LF_BACKEND_AUTO = 0, /* the best backend present: CUDA when built and a device exists, else CPU */
    LF_BACKEND_CPU = 1,
    LF_BACKEND_CUDA = 2
} lf_backend;

/*! lf_backend_name() : @return "auto", "cpu", "cuda", or "invalid". */
const char *lf_backend_name(lf_backend backend);

/*! lf_backend_available() :
 *  @return 1 when contexts of this backend can be created in this process (built in, and for CUDA a
 *  usable device is present), else 0. LF_BACKEND_AUTO and LF_BACKEND_CPU are always available. */
int lf_backend_available(lf_backend backend);

/* Layout of the weights. x is [M, K] and y is [M, N] in both. */
typedef enum lf_layout {
    LF_LAYOUT_PEFT = 0, /* PyTorch/PEFT: W [N, K], A [r, K] (lora_A.weight), B [N, r] (lora_B.weight) */
    LF_LAYOUT_KN = 1    /* transposed: W [K, N], A [K, r], B [r, N] */
} lf_layout;

/* A non-owning row-major matrix view. Element (i, j) is at data + (i·stride + j)·dtype_size. */
typedef struct lf_matrix {
    void *data;
    lf_dtype dtype;
    int64_t rows;
    int64_t cols;
    int64_t stride; /* elements between the starts of consecutive rows, >= cols */
} lf_matrix;

/*! lf_matrix_make() :
 *  @return a dense view (stride = cols) over data. Inline so that it costs nothing. */
static inline lf_matrix lf_matrix_make(lf_dtype dtype, void *data, int64_t rows, int64_t cols)
{
    lf_matrix m;
    m.data = data;
    m.dtype = dtype;
    m.rows = rows;
    m.cols = cols;
    m.stride = cols;
    return m;
}

typedef struct lf_context lf_context;

/*! lf_context_create() :
 *  Creates a context on a backend. LF_BACKEND_AUTO takes CUDA when the library was built with it
 *  and a device is present, otherwise the CPU; lf_context_backend() says which was taken.
 *  A CUDA context uses device 0 (or the current device) and the legacy default stream until
 *  lf_context_set_stream() is called.
 *  @return LF_OK and *out set; LF_ERR_NULL_POINTER (out NULL); LF_ERR_INVALID_VALUE (unknown
 *  backend); LF_ERR_BACKEND_UNAVAILABLE (CUDA asked for explicitly but not built or no device);
 *  LF_ERR_OUT_OF_MEMORY. On failure *out is set to NULL (when out is not NULL). */
lf_status lf_context_create(lf_context **out, lf_backend backend);

/*! lf_context_destroy() : frees a context and everything it cached. NULL is a no-op. */
void lf_context_destroy(lf_context *ctx);

/*! lf_context_backend() : @return the backend the context runs on (never LF_BACKEND_AUTO). */
lf_backend lf_context_backend(const lf_context *ctx);

/*! lf_context_device_name() :
 *  @return a description of the device the context runs on ("NVIDIA H100 80GB HBM3", or the CPU's
 *  model name), owned by the context. */
const char *lf_context_device_name(const lf_context *ctx);

/*! lf_context_last_error() :
 *  @return the message of the last failed call on this context ("" when none failed yet), owned by
 *  the context and valid until its next call. A NULL context gives a static explanation. */
const char *lf_context_last_error(const lf_context *ctx);

/*! lf_context_set_threads() :
 *  CPU backend: the number of worker threads (0 = one per available core, the default). Other
 *  backends accept and ignore it. While a CPU layer call (with W) runs, the library holds
 *  OpenBLAS's own thread count at one and restores it afterwards: the GEMM runs inside lorafuse's
 *  threads, one slice each, so the two thread pools never compete for the cores.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (threads < 0). */
lf_status lf_context_set_threads(lf_context *ctx, int threads);

/*! lf_context_set_stream() :
 *  CUDA backend: queue all later work of this context on `stream` (a cudaStream_t; NULL = the legacy
 *  default stream). The library never synchronizes the stream itself, so calls can be captured in
 *  a CUDA graph.
 *  @return LF_OK; LF_ERR_NULL_POINTER (ctx); LF_ERR_UNSUPPORTED (not a CUDA context). */
lf_status lf_context_set_stream(lf_context *ctx, void *stream);

/*! lf_context_set_allow_tf32() :
 *  CUDA backend: allow f32 operations to use TF32 tensor cores (10-bit mantissa products). Off by
 *  default: f32 is computed in true fp32. The CPU backend accepts and ignores it.
 *  @return LF_OK; LF_ERR_NULL_POINTER. */
lf_status lf_context_set_allow_tf32(lf_context *ctx, int allow);

/*! lf_lora_forward() :
 *  y = beta·y + x·Wᵀ + bias + scale·(x·Aᵀ)·Bᵀ
 *
 *  Shapes (M = x.rows ≥ 0, K = x.cols ≥ 1, N = y.cols ≥ 1, r = rank, 1 ≤ r ≤ LF_MAX_RANK):
 *      operand   LF_LAYOUT_PEFT   LF_LAYOUT_KN
 *      x         [M, K]           [M, K]
 *      w         [N, K]           [K, N]        optional: NULL = the LoRA delta alone
 *      bias      [1, N]           [1, N]        optional: NULL = no bias
 *      a         [r, K]           [K, r]
 *      b         [N, r]           [r, N]
 *      y         [M, N]           [M, N]        read when beta ≠ 0, always written
 *  Every operand has its own row stride. All operands must share one dtype. beta = 0 overwrites y
 *  without reading it (NaN in y does not propagate); any other beta scales the old y.
 *  M = 0 is a valid no-op once the other operands are valid.
 *  Aliasing: y must not overlap any input. Inputs may overlap each other.
 *  Results are bitwise identical from run to run for the same inputs, backend and thread count.
 *  @return LF_OK; LF_ERR_NULL_POINTER (ctx, x, a, b, y, or a view's data, NULL); LF_ERR_INVALID_VALUE
 *  (negative sizes, K or N of 0, rank outside 1..LF_MAX_RANK, unknown layout or dtype, non-finite
 *  scale or beta); LF_ERR_SHAPE_MISMATCH; LF_ERR_BAD_STRIDE; LF_ERR_OVERFLOW; LF_ERR_DTYPE_MISMATCH;
 *  LF_ERR_ALIASING; LF_ERR_OUT_OF_MEMORY (first call of a shape, when its plan needs workspace);
 *  LF_ERR_DEVICE. */
lf_status lf_lora_forward(lf_context *ctx, lf_layout layout, const lf_matrix *x, const lf_matrix *w,
                          const lf_matrix *bias, const lf_matrix *a, const lf_matrix *b,
                          float scale, float beta, const lf_matrix *y);

/*! lf_malloc() :
 *  Allocates `bytes` of memory the context's backend computes on (device memory for CUDA, 64-byte
 *  aligned host memory for the CPU). bytes = 0 gives *ptr = NULL and LF_OK.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_OUT_OF_MEMORY; LF_ERR_DEVICE. */
lf_status lf_malloc(lf_context *ctx, void **ptr, size_t bytes);

/*! lf_free() : frees memory from lf_malloc() on the same context. NULL ptr is a no-op.
 *  @return LF_OK; LF_ERR_NULL_POINTER (ctx); LF_ERR_DEVICE. */
lf_status lf_free(lf_context *ctx, void *ptr);

/* Direction of lf_memcpy(), seen from the host. */
typedef enum lf_copy_kind {
    LF_COPY_HOST_TO_DEVICE = 0,
    LF_COPY_DEVICE_TO_HOST = 1,
    LF_COPY_DEVICE_TO_DEVICE = 2
} lf_copy_kind;

/*! lf_memcpy() :
 *  Copies `bytes` between host memory and the context's memory (for a CPU context all three kinds
 *  are a plain memcpy). The copy is complete when the function returns (CUDA: it synchronizes the
 *  context's stream, so do not call it inside graph capture).
 *  @return LF_OK; LF_ERR_NULL_POINTER (ctx, or dst/src with bytes > 0); LF_ERR_INVALID_VALUE (kind);
 *  LF_ERR_DEVICE. */
lf_status lf_memcpy(lf_context *ctx, void *dst, const void *src, size_t bytes, lf_copy_kind kind);

/*! lf_synchronize() : waits until all work queued on the context has finished.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_DEVICE (an earlier asynchronous failure). */
lf_status lf_synchronize(lf_context *ctx);

#ifdef __cplusplus
}
#endif

#endif /* LORAFUSE_H */

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
 *   the result is rounded to the dtype once. (One range limit: on Hopper GPUs the f16 layer that
 *   runs as one tensor-core kernel — PEFT layout, rank ≤ 64, from 768 tokens at N = 4096 — holds
 *   scale·x·Aᵀ as two f16 parts, twice f16's precision but f16's range: where |scale·x·Aᵀ| reaches
 *   65520 the output is NaN. bf16 has fp32's range.)
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
    LF_ERR_INTERNAL = 12,           /* a bug in lorafuse: please report it */
    LF_ERR_IO = 13,                 /* a file could not be opened, read, mapped or written */
    LF_ERR_BAD_FORMAT = 14,         /* a file's contents break its format (safetensors, JSON, PEFT) */
    LF_ERR_NOT_FOUND = 15,          /* no tensor or module of that name */
    LF_ERR_RANK_REFUSED = 16        /* another rank of a tensor-parallel group refused the same call */
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
 *  A CUDA context belongs to the device current when it is created (its cuBLAS handle, workspace
 *  and streams live there); make that device current in every thread that uses the context. It
 *  uses the legacy default stream until lf_context_set_stream() is called.
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
 *  a CUDA graph. Capturing: the first call of a shape builds its plan and may grow the context's
 *  workspace (with a synchronization), so make one call of every shape, largest first, before
 *  capturing; a graph keeps the workspace it was captured with, so a later call that grows the
 *  workspace invalidates graphs captured earlier (capture them again). Switch streams only when
 *  the work queued on the old one is done (or ordered before the new one by an event).
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
 *  CUDA: on sm_90 a call may start reading W before the work queued ahead of it has completed:
 *  while that kernel still runs, if it let its dependents start early (programmatic dependent
 *  launch), else once its blocks have exited. So a kernel that writes W just before a call must
 *  make those writes visible before its blocks exit (a __threadfence() after them, as
 *  lf_peft_merge's kernel does) or be ordered before the call by an event or a synchronization;
 *  copies (cudaMemcpy*, lf_memcpy) need nothing. Every other operand is read only after the work
 *  queued before the call has completed.
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

/* ============================================================================================== */
/* safetensors files and PEFT LoRA adapters                                                        */
/* ============================================================================================== */
/*
 * Reading an adapter and merging it (CPU; with a CUDA context upload A and B and pass device W):
 *
 *     lf_peft_adapter *ad;
 *     if (lf_peft_adapter_open(ctx, "my-adapter/", &ad) != LF_OK) { ...lf_context_last_error(ctx)... }
 *     for (size_t i = 0; i < lf_peft_adapter_module_count(ad); i++) {
 *         lf_peft_module_info mi;
 *         lf_matrix a, b;
 *         lf_peft_adapter_module(ad, i, &mi);            // mi.base_tensor: "model.layers.0.self_attn.q_proj.weight"
 *         lf_peft_adapter_host_weights(ctx, ad, i, &a, &b);
 *         lf_matrix w = lf_matrix_make(LF_BF16, wdata, mi.out_features, mi.in_features);
 *         lf_peft_merge(ctx, &w, &a, &b, mi.scale, 0);
 *     }
 *     lf_peft_adapter_close(ad);
 *
 * Files are memory-mapped, never read whole, and every byte of them is treated as hostile: a
 * malformed file gives LF_ERR_BAD_FORMAT and a sentence naming what is wrong, never a crash.
 * Errors are reported through the lf_context passed in (any backend; lf_context_last_error).
 */

/* Largest safetensors header the reader accepts (the reference implementation's limit). */
#define LF_SAFETENSORS_MAX_HEADER 100000000u
/* Most dimensions a safetensors tensor may have here. */
#define LF_SAFETENSORS_MAX_DIMS 8

typedef struct lf_safetensors lf_safetensors;

/* One tensor of a safetensors file, as lf_safetensors_tensor() describes it. Pointers stay valid
 * until the file is closed. */
typedef struct lf_safetensors_tensor_info {
    const char *name;
    const char *dtype_name; /* the file's dtype string: "F32", "BF16", "I64", ... */
    int has_lf_dtype;       /* 1 when the dtype is F32, F16 or BF16 (then lf_dtype is set) */
    lf_dtype lf_dtype;
    int ndim;                              /* 0 (a scalar) .. LF_SAFETENSORS_MAX_DIMS */
    int64_t shape[LF_SAFETENSORS_MAX_DIMS]; /* unused dimensions are 0 */
    size_t element_size;                   /* bytes per element */
    uint64_t offset;                       /* of the data, from the start of the file */
    size_t bytes;
    const void *data; /* the bytes in the mapping (read-only memory) */
} lf_safetensors_tensor_info;

/*! lf_safetensors_open() :
 *  Maps a .safetensors file read-only and validates it: header length within the file and at most
 *  LF_SAFETENSORS_MAX_HEADER, the header a JSON object without duplicate keys, every entry with a
 *  known dtype (BOOL, U8, I8, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64, F8_E4M3, F8_E5M2,
 *  F8_E8M0),
 *  a shape of non-negative integers whose byte count equals end − begin, offsets inside the data
 *  section, and the tensors tiling it exactly (no overlap, no gap), as the reference library writes.
 *  "__metadata__", when present, must map strings to strings.
 *  @return LF_OK and *out; LF_ERR_NULL_POINTER; LF_ERR_IO (cannot open or map, or not a regular file:
 *  a FIFO or device is refused without waiting on it); LF_ERR_BAD_FORMAT
 *  (with what and where in lf_context_last_error); LF_ERR_OUT_OF_MEMORY. *out is NULL on failure. */
lf_status lf_safetensors_open(lf_context *ctx, const char *path, lf_safetensors **out);

/*! lf_safetensors_open_memory() :
 *  The same validation over `size` bytes the caller keeps alive (and unchanged) until the handle is
 *  closed; nothing is copied. */
lf_status lf_safetensors_open_memory(lf_context *ctx, const void *data, size_t size, lf_safetensors **out);

/*! lf_safetensors_close() : unmaps and frees. NULL is a no-op. */
void lf_safetensors_close(lf_safetensors *st);

/*! lf_safetensors_count() : @return the number of tensors (0 for NULL). */
size_t lf_safetensors_count(const lf_safetensors *st);

/*! lf_safetensors_tensor() :
 *  Describes tensor `index` (0 .. count−1, in the order of their data in the file).
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (index out of range). */
lf_status lf_safetensors_tensor(const lf_safetensors *st, size_t index, lf_safetensors_tensor_info *info);

/*! lf_safetensors_find() :
 *  @return LF_OK and *index of the tensor called `name`; LF_ERR_NOT_FOUND; LF_ERR_NULL_POINTER. */
lf_status lf_safetensors_find(const lf_safetensors *st, const char *name, size_t *index);

/*! lf_safetensors_metadata() :
 *  @return the "__metadata__" value for key, or NULL when absent (valid until close). */
const char *lf_safetensors_metadata(const lf_safetensors *st, const char *key);

/*! lf_safetensors_metadata_count() / lf_safetensors_metadata_entry() :
 *  The "__metadata__" pairs in file order; entry() gives NULLs for an index out of range. */
size_t lf_safetensors_metadata_count(const lf_safetensors *st);
void lf_safetensors_metadata_entry(const lf_safetensors *st, size_t index, const char **key, const char **value);

typedef struct lf_safetensors_writer lf_safetensors_writer;

/*! lf_safetensors_writer_create() :
 *  Starts writing `path` atomically: the data goes to a temporary file in the same directory, which
 *  lf_safetensors_writer_commit() renames over `path`; until then `path` is untouched, and an
 *  abandoned writer leaves nothing behind. `protected_paths` (count entries, may be NULL) are the
 *  inputs the output must never replace: the call fails when `path` names one of them, by name or
 *  by device and inode (hard and symbolic links included). The file is created with mode 0666 less
 *  the process's umask, as any new file.
 *  Use: declare every tensor (add), optionally metadata, then write their bytes in declaration order
 *  (write: in as many pieces as convenient), then commit.
 *  @return LF_OK and *out; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (path is protected);
 *  LF_ERR_IO; LF_ERR_OUT_OF_MEMORY. */
lf_status lf_safetensors_writer_create(lf_context *ctx, const char *path, const char *const *protected_paths,
                                       size_t count, lf_safetensors_writer **out);

/*! lf_safetensors_writer_add() :
 *  Declares the next tensor: a unique, non-empty name other than "__metadata__", a dtype string of
 *  those lf_safetensors_open() knows, and its shape (ndim 0..LF_SAFETENSORS_MAX_DIMS).
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (name, dtype, shape, a duplicate, or data
 *  already written); LF_ERR_OVERFLOW; LF_ERR_OUT_OF_MEMORY. */
lf_status lf_safetensors_writer_add(lf_safetensors_writer *w, const char *name, const char *dtype_name, int ndim,
                                    const int64_t *shape);

/*! lf_safetensors_writer_set_metadata() :
 *  Adds a "__metadata__" pair (before the first write). @return LF_OK; LF_ERR_NULL_POINTER;
 *  LF_ERR_INVALID_VALUE (duplicate key, or data already written); LF_ERR_OUT_OF_MEMORY. */
lf_status lf_safetensors_writer_set_metadata(lf_safetensors_writer *w, const char *key, const char *value);

/*! lf_safetensors_writer_write() :
 *  Appends bytes of the tensors' data, in declaration order (the header is written before the first
 *  piece). @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (more bytes than declared);
 *  LF_ERR_IO. After LF_ERR_IO the file's contents are unknown: later writes and the commit fail too,
 *  and nothing is renamed into place. */
lf_status lf_safetensors_writer_write(lf_safetensors_writer *w, const void *data, size_t bytes);

/*! lf_safetensors_writer_commit() :
 *  Checks that every declared byte was written and that no write failed, flushes the file to disk,
 *  renames it over the path and flushes the directory (where the filesystem can); frees the writer
 *  in every case (on failure the temporary file is removed).
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (bytes missing); LF_ERR_IO. */
lf_status lf_safetensors_writer_commit(lf_safetensors_writer *w);

/*! lf_safetensors_writer_abort() : removes the temporary file and frees the writer. NULL: no-op. */
void lf_safetensors_writer_abort(lf_safetensors_writer *w);

typedef struct lf_peft_adapter lf_peft_adapter;

/* The adapter-wide settings of adapter_config.json. */
typedef struct lf_peft_adapter_info {
    int64_t r;               /* the default rank */
    double lora_alpha;       /* the default alpha */
    int use_rslora;          /* scale = alpha / sqrt(r) instead of alpha / r */
    int fan_in_fan_out;      /* base weights stored [in, out] (GPT-2's Conv1D) */
    const char *bias;        /* "none", "all" or "lora_only" */
    const char *base_model;  /* base_model_name_or_path, "" when absent */
    size_t module_count;     /* LoRA modules (pairs lora_A / lora_B) */
    size_t replacement_count; /* other tensors (modules_to_save, trained biases): they replace the base's */
} lf_peft_adapter_info;

/* One LoRA module. Strings stay valid until the adapter is closed. */
typedef struct lf_peft_module_info {
    const char *name;        /* "model.layers.0.self_attn.q_proj": the PEFT key without "base_model.model." */
    const char *base_tensor; /* the base weight it applies to: name + ".weight" */
    int64_t in_features;     /* K: lora_A is [rank, in_features] */
    int64_t out_features;    /* N: lora_B is [out_features, rank] */
    int64_t rank;            /* r, after rank_pattern */
    double alpha;            /* lora_alpha, after alpha_pattern */
    float scale;             /* alpha / r, or alpha / sqrt(r) with use_rslora */
    lf_dtype dtype;          /* of lora_A and lora_B */
} lf_peft_module_info;

/*! lf_peft_adapter_open() :
 *  Opens a PEFT LoRA adapter directory: adapter_config.json and adapter_model.safetensors. The
 *  config must say peft_type "LORA"; r, lora_alpha, use_rslora, rank_pattern, alpha_pattern (keys
 *  are Python regular expressions matched against the end of the module name after a '.', first
 *  match in file order, as PEFT's get_pattern_key), fan_in_fan_out, bias and modules_to_save are
 *  read. Pattern keys may use literals, . * + ? | ( ) (?:) [ ], \d \D \w \W \s \S (ASCII meaning,
 *  also in brackets) and escaped punctuation; {m,n} bounds, back-references, other letter escapes
 *  and other (?...) groups give LF_ERR_UNSUPPORTED. The config's fields are an allowlist (PEFT
 *  0.21's LoraConfig): a feature that changes the computation (use_dora, lora_bias, use_bdlora,
 *  aLoRA, Arrow, KaSA, LoftQ, trainable tokens, ...), an init_lora_weights other than true, false,
 *  "gaussian" or "eva" (PiSSA etc. change the base weights), an unknown field that is not null,
 *  false or empty, and LoRA tensors other than lora_A / lora_B (embeddings, DoRA magnitudes) give
 *  LF_ERR_UNSUPPORTED. Either file being a FIFO or another non-regular file gives LF_ERR_IO without
 *  blocking. Every lora_A.weight [r, in] needs its lora_B.weight [out, r] and the
 *  reverse; both ranks must equal the config's for that module, the dtypes be F32, F16 or BF16 and
 *  agree. Tensors under base_model.model. that are not LoRA weights are replacements (see info).
 *  @return LF_OK and *out; LF_ERR_NULL_POINTER; LF_ERR_IO; LF_ERR_BAD_FORMAT; LF_ERR_UNSUPPORTED;
 *  LF_ERR_SHAPE_MISMATCH (ranks or shapes that disagree); LF_ERR_OUT_OF_MEMORY. */
lf_status lf_peft_adapter_open(lf_context *ctx, const char *dir, lf_peft_adapter **out);

/*! lf_peft_adapter_open_memory() :
 *  The same from a config (JSON text of config_len bytes) and safetensors bytes held by the caller
 *  until the adapter is closed. */
lf_status lf_peft_adapter_open_memory(lf_context *ctx, const char *config_json, size_t config_len,
                                      const void *tensors, size_t tensors_len, lf_peft_adapter **out);

/*! lf_peft_adapter_close() : frees the adapter and unmaps its file. NULL is a no-op. */
void lf_peft_adapter_close(lf_peft_adapter *ad);

/*! lf_peft_adapter_get_info() : @return LF_OK and *info; LF_ERR_NULL_POINTER. */
lf_status lf_peft_adapter_get_info(const lf_peft_adapter *ad, lf_peft_adapter_info *info);

/*! lf_peft_adapter_module_count() : @return the number of LoRA modules (0 for NULL), sorted by name. */
size_t lf_peft_adapter_module_count(const lf_peft_adapter *ad);

/*! lf_peft_adapter_module() : @return LF_OK and *info of module `index`; LF_ERR_NULL_POINTER;
 *  LF_ERR_INVALID_VALUE (index out of range). */
lf_status lf_peft_adapter_module(const lf_peft_adapter *ad, size_t index, lf_peft_module_info *info);

/*! lf_peft_adapter_find_module() :
 *  @return LF_OK and *index of the module called `name` ("model.layers.0.self_attn.q_proj");
 *  LF_ERR_NOT_FOUND; LF_ERR_NULL_POINTER. */
lf_status lf_peft_adapter_find_module(const lf_peft_adapter *ad, const char *name, size_t *index);

/*! lf_peft_adapter_replacement() :
 *  Tensor `index` (0 .. replacement_count−1) of those that replace a base tensor in a merge
 *  (modules_to_save, biases trained with bias = "all" / "lora_only"): *base_name is the base
 *  tensor's name (the PEFT key without "base_model.model."), *tensor its data in the adapter file.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (index out of range). */
lf_status lf_peft_adapter_replacement(const lf_peft_adapter *ad, size_t index, const char **base_name,
                                      lf_safetensors_tensor_info *tensor);

/*! lf_peft_adapter_host_weights() :
 *  Views of module `index`'s A (lora_A.weight, [rank, in]) and B (lora_B.weight, [out, rank]) in
 *  LF_LAYOUT_PEFT, in the module's dtype, pointing into the mapped file: no copy, no transpose.
 *  The memory is read-only and lives until the adapter is closed. Use them with a CPU context.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (index). */
lf_status lf_peft_adapter_host_weights(lf_context *ctx, const lf_peft_adapter *ad, size_t index, lf_matrix *a,
                                       lf_matrix *b);

/*! lf_peft_adapter_upload_weights() :
 *  Copies module `index`'s A and B into memory of ctx's backend (lf_malloc: device memory for CUDA)
 *  and returns views of them, as lf_peft_adapter_host_weights lays them out, stored as `dtype`: the
 *  module's own dtype copies the bytes; another rounds each element once. (PEFT keeps adapters of a
 *  bf16 or f16 model in f32 by default; lf_lora_forward wants them in the model's dtype.)
 *  The caller owns the memory: lf_free(ctx, a->data) and lf_free(ctx, b->data).
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (index, dtype); LF_ERR_OUT_OF_MEMORY;
 *  LF_ERR_DEVICE. On failure nothing stays allocated. */
lf_status lf_peft_adapter_upload_weights(lf_context *ctx, const lf_peft_adapter *ad, size_t index, lf_dtype dtype,
                                         lf_matrix *a, lf_matrix *b);

/*! lf_peft_merge() :
 *  W ← W + scale·B·A, in place, in W's dtype: fp32 arithmetic and one rounding per element.
 *  w is [out, in] ([in, out] when fan_in_fan_out ≠ 0: W ← W + scale·(B·A)ᵀ), a is [r, in], b is
 *  [out, r], 1 ≤ r ≤ LF_MAX_RANK; each view has its own stride. W is f32, f16 or bf16; a and b
 *  share a dtype of those, which may differ from W's. Pointers belong to ctx's backend (device
 *  memory on CUDA; the work is queued on the context's stream). W must not overlap a or b.
 *  Bitwise reproducible run to run on one backend.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (sizes, rank, dtype, non-finite scale);
 *  LF_ERR_SHAPE_MISMATCH; LF_ERR_BAD_STRIDE; LF_ERR_DTYPE_MISMATCH (a and b differ); LF_ERR_OVERFLOW;
 *  LF_ERR_ALIASING; LF_ERR_OUT_OF_MEMORY; LF_ERR_DEVICE; LF_ERR_UNSUPPORTED (backend without merge). */
lf_status lf_peft_merge(lf_context *ctx, const lf_matrix *w, const lf_matrix *a, const lf_matrix *b, float scale,
                        int fan_in_fan_out);

/*! lf_peft_unmerge() :
 *  W ← W − scale·B·A: lf_peft_merge with the opposite sign (same rules, same single rounding).
 *  Undoes a merge up to the two roundings of W. */
lf_status lf_peft_unmerge(lf_context *ctx, const lf_matrix *w, const lf_matrix *a, const lf_matrix *b, float scale,
                          int fan_in_fan_out);

/* ============================================================================================== */
/* Many adapters in one batch                                                                      */
/* ============================================================================================== */
/*
 * Serving batches mix requests that use different adapters. An adapter set holds up to `capacity`
 * adapters of one layer, each with its own rank (1..max_rank) and scale, in the context's memory
 * (device memory for CUDA). A call then applies to every token the adapter it asks for:
 *
 *     y = beta·y + [x·Wᵀ + bias] + s_i·(x_t·A_iᵀ)·B_iᵀ        i = the adapter of token t
 *
 *     lf_adapter_set *set;
 *     lf_adapter_set_create(ctx, LF_BF16, K, N, 64, 16, &set);           // 64 slots, ranks <= 16
 *     lf_adapter_set_load(set, 3, LF_LAYOUT_PEFT, &a3, &b3, 2.0f, LF_COPY_HOST_TO_DEVICE);
 *     lf_lora_forward_multi(ctx, set, LF_LAYOUT_PEFT, &x, &w, NULL, ids, 0.0f, &y);  // ids: int32 [M] on the device
 *
 * Storage: stacked. Each slot owns room for max_rank rows of A ([rank][K]) and of B ([rank][N],
 * i.e. B transposed from PEFT's [N, rank]) in the set's dtype, whatever layout it was loaded from;
 * kernels read only the slot's own rank rows (no padding to max_rank is ever computed).
 *
 * Adapter ids live in the context's memory (device memory for CUDA) so that calls need no host
 * synchronization and can be captured in a CUDA graph; the host never reads them. An id outside
 * 0..capacity−1, or naming an empty slot, means "no adapter" (as −1 does): such a token gets
 * y = beta·y [+ x·Wᵀ + bias] and costs nothing beyond that.
 * For a given number of tokens M, the sums of each token do not depend on the other tokens of the
 * batch: results are bitwise identical run to run, and equal between the per-token and the segment
 * form. Across batch sizes they may differ in the last bits (CUDA picks its blocking by M).
 */

/* Most adapters one set may hold. */
#define LF_MAX_ADAPTERS 1024

typedef struct lf_adapter_set lf_adapter_set;

/*! lf_adapter_set_create() :
 *  Allocates a set of `capacity` empty slots for adapters of a K → N layer in `dtype`, each of rank
 *  at most max_rank, in ctx's memory: capacity·max_rank·(K + N) elements (rounded up to 16 bytes
 *  per row). The set belongs to ctx and must be destroyed before it.
 *  @return LF_OK and *out; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (dtype, K or N < 1, capacity
 *  outside 1..LF_MAX_ADAPTERS, max_rank outside 1..LF_MAX_RANK); LF_ERR_OVERFLOW;
 *  LF_ERR_OUT_OF_MEMORY; LF_ERR_DEVICE. *out is NULL on failure. */
lf_status lf_adapter_set_create(lf_context *ctx, lf_dtype dtype, int64_t k, int64_t n, int capacity,
                                int64_t max_rank, lf_adapter_set **out);

/*! lf_adapter_set_destroy() : frees the set's memory (after the work queued on its context). NULL: no-op. */
void lf_adapter_set_destroy(lf_adapter_set *set);

/*! lf_adapter_set_load() :
 *  Copies adapter (a, b, scale) into `slot`, replacing what it held; other slots are untouched (hot
 *  swap). Shapes as in lf_lora_forward for `layout` (PEFT: a [r, K], b [N, r]; KN: a [K, r],
 *  b [r, N]), 1 ≤ r ≤ max_rank, the set's dtype, any row strides. `from` says where a and b live:
 *  LF_COPY_HOST_TO_DEVICE (host memory) or LF_COPY_DEVICE_TO_DEVICE (the context's memory). The copy
 *  is ordered on the context's stream: calls queued before it use the old adapter, calls after it
 *  the new one. From the host it completes before returning (like lf_memcpy); from device memory it
 *  is asynchronous (the source must stay unchanged until the stream reaches it) and needs no host
 *  synchronization. Calls captured in a CUDA graph read the slot when the graph runs, so a graph
 *  replayed after a load uses the new adapter.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (slot, layout, from, rank, non-finite
 *  scale); LF_ERR_SHAPE_MISMATCH; LF_ERR_BAD_STRIDE; LF_ERR_DTYPE_MISMATCH; LF_ERR_OVERFLOW;
 *  LF_ERR_OUT_OF_MEMORY; LF_ERR_DEVICE. When the arguments are refused the slot keeps its old
 *  adapter; when a copy fails (LF_ERR_DEVICE) the slot is left empty, never half-written. */
lf_status lf_adapter_set_load(lf_adapter_set *set, int slot, lf_layout layout, const lf_matrix *a,
                              const lf_matrix *b, float scale, lf_copy_kind from);

/*! lf_adapter_set_clear() :
 *  Empties `slot` (ordered on the context's stream like a load): tokens that name it get no adapter.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (slot); LF_ERR_DEVICE. */
lf_status lf_adapter_set_clear(lf_adapter_set *set, int slot);

/*! lf_adapter_set_rank() : @return the rank loaded in `slot`, 0 when it is empty or out of range. */
int64_t lf_adapter_set_rank(const lf_adapter_set *set, int slot);

/*! lf_lora_forward_multi() :
 *  The per-token form: token t (row t of x and y) uses adapter token_adapter[t] (int32, M entries,
 *  in the context's memory; −1 = none). x [M, K], w / bias as in lf_lora_forward for `layout` (w
 *  NULL: the deltas alone, bias then still added when given), y [M, N]; the set's dtype, K and N.
 *  beta = 0 overwrites y without reading it. y must not overlap x, w, bias or the ids.
 *  @return LF_OK; LF_ERR_NULL_POINTER (ctx, set, x, y, token_adapter with M > 0); LF_ERR_INVALID_VALUE
 *  (layout, non-finite beta, a set of another context); LF_ERR_SHAPE_MISMATCH; LF_ERR_BAD_STRIDE;
 *  LF_ERR_DTYPE_MISMATCH; LF_ERR_OVERFLOW; LF_ERR_ALIASING; LF_ERR_UNSUPPORTED (more than 2^31 − 1
 *  tokens; other sizes beyond 2^31 on CUDA); LF_ERR_OUT_OF_MEMORY (the first call of a larger M grows the context's workspace, with
 *  a synchronization: make that call before capturing a graph); LF_ERR_DEVICE. */
lf_status lf_lora_forward_multi(lf_context *ctx, const lf_adapter_set *set, lf_layout layout, const lf_matrix *x,
                                const lf_matrix *w, const lf_matrix *bias, const int32_t *token_adapter,
                                float beta, const lf_matrix *y);

/*! lf_lora_forward_segments() :
 *  The segment form: `segments` runs of consecutive tokens, run s = rows [seg_starts[s],
 *  seg_starts[s+1]) using adapter seg_adapter[s] (−1 = none). seg_starts has segments + 1 entries,
 *  seg_adapter `segments`, both int32 in the context's memory. Starts must be non-decreasing (then
 *  each token is in at most one run); tokens outside every run get no adapter. Starts that decrease
 *  are not detected (the host never reads them): which runs the affected tokens fall into is then
 *  unspecified, but memory outside the operands is never touched. Otherwise as lf_lora_forward_multi;
 *  the result is bitwise the one of the per-token form with the same adapter per token.
 *  @return as lf_lora_forward_multi; LF_ERR_INVALID_VALUE also for segments < 0 or > 2^30. */
lf_status lf_lora_forward_segments(lf_context *ctx, const lf_adapter_set *set, lf_layout layout,
                                   const lf_matrix *x, const lf_matrix *w, const lf_matrix *bias,
                                   const int32_t *seg_starts, const int32_t *seg_adapter, int64_t segments,
                                   float beta, const lf_matrix *y);

/* ============================================================================================== */
/*  Tensor parallelism (Megatron layout)                                                          */
/* ============================================================================================== */
/*
 * A layer too large for one GPU is split over P ranks:
 *   column-parallel (q/k/v, gate/up): W and B split on N (output features), A whole on every rank.
 *     Each rank computes its N/P columns of y with lf_lora_forward on its shard: no communication.
 *   row-parallel (o_proj, down_proj): x, W and A split on K (input features), B whole. Each rank
 *     computes x_p·W_pᵀ + s·(x_p·A_pᵀ)·Bᵀ, and one all-reduce (the one the base layer needs anyway)
 *     sums the partial outputs: the LoRA branch adds no collective and no launch of its own.
 * lf_tp_shard_lora cuts a full layer (host or device views, e.g. from lf_peft_adapter_host_weights)
 * into rank `index`'s shard without copying; lf_tp_split says which rows or columns a rank owns.
 * Uneven sizes are allowed: the first n % P ranks get one more row or column than the others.
 *
 *     lf_tp_comm *comm;                      // once per rank: wraps the caller's ncclComm_t
 *     lf_tp_comm_from_nccl(ctx, (void *)nccl_comm, &comm);
 *     lf_tp_row_forward(ctx, comm, LF_LAYOUT_PEFT, &x_p, &w_p, &bias, &a_p, &b, scale, 0.0f, &y);
 */

/* How a layer is split over the ranks. */
typedef enum lf_tp_kind {
    LF_TP_COLUMN = 0, /* W and B split on N, A whole; no communication */
    LF_TP_ROW = 1     /* x, W and A split on K, B whole; one all-reduce of y */
} lf_tp_kind;

/*! lf_tp_split() :
 *  The part `index` (0 ≤ index < parts) of n items split contiguously over `parts`: items
 *  [*begin, *begin + *count), the first n % parts parts one item longer than the others.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (n < 0, parts < 1, index outside). */
lf_status lf_tp_split(int64_t n, int parts, int index, int64_t *begin, int64_t *count);

/*! lf_tp_shard_lora() :
 *  Views of rank `index`'s shard of a full layer's W and bias (both optional: NULL gives a zeroed
 *  view), A and B, for `kind` and `layout` (the shapes of lf_lora_forward): column-parallel takes
 *  the slice of N of W, bias and B; row-parallel the slice of K of W and A (bias whole). The views
 *  share the full matrices' memory (row strides kept); copy them to where the rank computes when
 *  they live elsewhere. The rank's x is its slice of x's columns (row-parallel), and its y the
 *  slice of y's columns (column-parallel): lf_tp_split gives both.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (kind, layout, parts, index, or a split
 *  that leaves this rank no row or column); LF_ERR_SHAPE_MISMATCH (W, bias, A, B disagree). */
lf_status lf_tp_shard_lora(lf_tp_kind kind, lf_layout layout, int parts, int index, const lf_matrix *w,
                           const lf_matrix *bias, const lf_matrix *a, const lf_matrix *b, lf_matrix *w_shard,
                           lf_matrix *bias_shard, lf_matrix *a_shard, lf_matrix *b_shard);

/* A rank's handle on its communicator. */
typedef struct lf_tp_comm lf_tp_comm;

/*! lf_tp_comm_from_nccl() :
 *  Wraps the caller's NCCL communicator (an ncclComm_t, passed as a pointer so that this header
 *  needs no nccl.h) for a CUDA context on the communicator's device. The communicator stays the
 *  caller's; the handle holds a second stream and events for overlapping the all-reduce with the
 *  next rows' compute. Keep NCCL_NVLS_ENABLE=0 (lorafuse never uses NVLink multicast).
 *  One thread (or process) per GPU, with that GPU current when its context runs: the row layers
 *  issue their all-reduces inside the call and order later work after them with events, so several
 *  ranks cannot share one thread's ncclGroupStart/ncclGroupEnd.
 *  @return LF_OK and *out; LF_ERR_NULL_POINTER; LF_ERR_UNSUPPORTED (lorafuse was built without
 *  NCCL, or ctx is not a CUDA context); LF_ERR_INVALID_VALUE (the communicator's device, the
 *  context's and the current one differ); LF_ERR_DEVICE (NCCL or CUDA reported an error). */
lf_status lf_tp_comm_from_nccl(lf_context *ctx, void *nccl_comm, lf_tp_comm **out);

/*! lf_tp_comm_destroy() : frees the handle (not the NCCL communicator). NULL is a no-op. After NCCL
 *  reported an error (LF_ERR_DEVICE from a TP call), abort the communicator (ncclCommAbort) first:
 *  a collective stuck on the context's stream would otherwise block the frees here. */
void lf_tp_comm_destroy(lf_tp_comm *comm);

/*! lf_tp_comm_rank() / lf_tp_comm_size() : this rank's index and the number of ranks (-1 for NULL). */
int lf_tp_comm_rank(const lf_tp_comm *comm);
int lf_tp_comm_size(const lf_tp_comm *comm);

/*! lf_tp_comm_set_checked() :
 *  Checked mode, off by default (0). On (1), every row-parallel call (all three forms) first
 *  compares across the ranks what each one is about to sum (M, N, dtype, row chunks, op form) and
 *  whether all of its own argument checks passed, and after each row chunk's compute whether
 *  every rank computed it, each time through one small all-reduce that the host waits for. A call
 *  that any rank refuses, whose sizes differ between ranks, or that fails on any rank inside the
 *  computation, returns a status on every rank and sums nothing more (a refusal before the
 *  compute leaves y untouched; a failure inside it may leave this rank's partial output in y),
 *  where unchecked it could leave NCCL waiting forever. It costs those collectives and host waits
 *  and cannot run inside CUDA graph capture (refused there): for bring-up and tests, like PyTorch's
 *  TORCH_DISTRIBUTED_DEBUG=DETAIL. Every rank must set the same mode and call; a rank that never
 *  calls still leaves the others waiting. Unchecked calls still refuse a communicator in an error
 *  state (ncclCommGetAsyncError) before any collective.
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (on not 0 or 1). */
lf_status lf_tp_comm_set_checked(lf_tp_comm *comm, int on);

/*! lf_tp_comm_set_row_chunks() :
 *  The row chunks of this communicator's row-parallel calls in the single-adapter and per-token
 *  forms (the per-segment form always runs in one). 0, the default: the plan's choice, one chunk.
 *  1..LF_TP_MAX_ROW_CHUNKS: that many chunks (one row each at least); each chunk's all-reduce then
 *  runs while the next chunk is computed on all but a few of the GPU's SMs. Whether that pays
 *  depends on the rank's K, which the plan must not read (ranks of an uneven split would choose
 *  differently and hang NCCL), so the caller chooses, and every rank must choose the same (checked
 *  mode compares the chunks). Measured on two H100s over NVLink (bf16, r 16, 4096 tokens): o_proj
 *  (K 2048 a rank) 245 µs in one chunk, 229 in two, below the base layer's GEMM then all-reduce
 *  (237–245); down_proj (K 7168 a rank) 476 in one, 487–492 in two; at 256 tokens two chunks lost
 *  everywhere. Runs with the same setting give bitwise the same y; other chunk counts may differ
 *  in the last bit (a chunk's rows may take another kernel).
 *  @return LF_OK; LF_ERR_NULL_POINTER; LF_ERR_INVALID_VALUE (chunks outside 0..LF_TP_MAX_ROW_CHUNKS). */
#define LF_TP_MAX_ROW_CHUNKS 64
lf_status lf_tp_comm_set_row_chunks(lf_tp_comm *comm, int chunks);

/*! lf_tp_row_forward() :
 *  Row-parallel layer, called by every rank with its shard: x_p [M, K_p], w_p (optional) and a_p
 *  split on K as lf_tp_shard_lora gives them, b and bias (optional) whole, y [M, N] dense (row
 *  stride N) in ctx's memory. On return (in stream order) every rank's y holds
 *      beta·y + Σ_p (x_p·W_pᵀ + scale·(x_p·A_pᵀ)·Bᵀ) + bias
 *  Rank 0 alone adds beta·y and bias; every rank's partial output is rounded to the dtype and the
 *  all-reduce sums them (as the TP base layer does; one rank needs none). The rows run in one chunk
 *  (chunks whose all-reduce overlaps the next chunk's compute were measured: faster only for some
 *  layers, told apart by the rank's K, which would differ between ranks of an uneven split). All
 *  ranks must pass
 *  the same M, N, dtype and beta: unchecked (lf_tp_comm_set_checked), the ranks do not compare them
 *  (that would cost a collective), and NCCL may hang on a mismatch. Every rank checks beta and bias,
 *  so that a call rank 0 refuses is refused by all. Runs of the same inputs give bitwise the same y.
 *  @return as lf_lora_forward; LF_ERR_NULL_POINTER (comm); LF_ERR_INVALID_VALUE (comm of another
 *  context); LF_ERR_BAD_STRIDE (y not dense); LF_ERR_DEVICE (NCCL's error text in the message);
 *  checked mode: LF_ERR_SHAPE_MISMATCH / LF_ERR_DTYPE_MISMATCH (the ranks' calls differ),
 *  LF_ERR_RANK_REFUSED (another rank refused its call), LF_ERR_UNSUPPORTED (inside graph capture). */
lf_status lf_tp_row_forward(lf_context *ctx, lf_tp_comm *comm, lf_layout layout, const lf_matrix *x_p,
                            const lf_matrix *w_p, const lf_matrix *bias, const lf_matrix *a_p, const lf_matrix *b,
                            float scale, float beta, const lf_matrix *y);

/*! lf_tp_row_forward_multi() :
 *  The per-token many-adapter form of lf_tp_row_forward: `set` holds each adapter's A shard (its
 *  slice of K, lf_tp_shard_lora) and whole B; ids as lf_lora_forward_multi; ids that overlap y are
 *  refused (LF_ERR_ALIASING). Checked mode (lf_tp_comm_set_checked) as lf_tp_row_forward. */
lf_status lf_tp_row_forward_multi(lf_context *ctx, lf_tp_comm *comm, const lf_adapter_set *set, lf_layout layout,
                                  const lf_matrix *x_p, const lf_matrix *w_p, const lf_matrix *bias,
                                  const int32_t *token_adapter, float beta, const lf_matrix *y);

/*! lf_tp_row_forward_segments() :
 *  The per-segment form (lf_lora_forward_segments) of lf_tp_row_forward. Segments are not cut into
 *  row chunks: the all-reduce follows the whole partial output. Checked mode as lf_tp_row_forward. */
lf_status lf_tp_row_forward_segments(lf_context *ctx, lf_tp_comm *comm, const lf_adapter_set *set,
                                     lf_layout layout, const lf_matrix *x_p, const lf_matrix *w_p,
                                     const lf_matrix *bias, const int32_t *seg_starts,
                                     const int32_t *seg_adapter, int64_t segments, float beta,
                                     const lf_matrix *y);

#ifdef __cplusplus
}
#endif

#endif /* LORAFUSE_H */

/*
 * lorafuse_tp_bench.c — `lorafuse bench --tp`: tensor-parallel LoRA layers over every visible GPU
 * (P = cudaGetDeviceCount), beside the baselines serving engines run, measured in the same run.
 *
 * Cases, bf16, rank 16, scale 2, PEFT layout, no bias, M ∈ {1, 16, 256, 4096} tokens:
 *   tp_row  o_proj 4096 → 4096 and down_proj 14336 → 4096: x, W and A split on K, B whole;
 *   tp_col  q_proj 4096 → 4096 and gate_proj 4096 → 14336: W and B split on N, A whole.
 * Per call (µs, the slowest rank's):
 *   fused_us    lorafuse: lf_tp_row_forward (row), lf_lora_forward on the rank's shard (column);
 *               fused_host_us the same in a plain host loop;
 *   base_us     the TP base layer: cuBLAS x_p·W_pᵀ then ncclAllReduce of y (row); x·W_pᵀ (column);
 *   unfused_us  the engine-style LoRA: the base GEMM, the cuBLAS shrink T = x·Aᵀ [M, r], the cuBLAS
 *               expand y += s·T·Bᵀ folded into the (partial) output — before the all-reduce on row
 *               layers, so no collective of its own;
 *   slora_us    S-LoRA's scheme. Row: the partial shrink T_p = x_p·A_pᵀ is all-reduced (a second
 *               collective, M × r), then each rank expands only its N/P columns of y with its rows
 *               of B, into its partial output: the base all-reduce then also gathers those columns.
 *               Column: A is split on r; each rank shrinks its r/P rows of Tᵀ = A·xᵀ, all-gathers
 *               Tᵀ [r, M] (blocks padded to ⌈r/P⌉ rows, B's columns to match, when P does not divide
 *               r), then expands its N/P columns. One small collective more than lorafuse in both.
 * Before timing, every case runs lorafuse once on poisoned output and checks it against the exact
 * (fp64) layer on sampled rows within lf_ref_tolerance, and against the unsharded layer
 * (lf_lora_forward on GPU 0); the baselines are checked loosely against the unsharded layer (their
 * bf16 intermediates round more: the check catches a wrong operand, not rounding).
 *
 * Timing as `lorafuse bench` does it (backend_cuda.cu's time_calls), per rank: warm-up calls, one
 * CUDA graph of `iters` calls captured on the rank's stream, one warm replay, then 7 timed replays
 * (events on the rank's stream), each started by every rank together (a barrier): the median per
 * rank, the largest over ranks. Timed calls rotate over buffer sets (cli.h) so they read memory.
 *
 * One thread per GPU, each with its context, stream, cuBLAS handle and lf_tp_comm. One thread cannot
 * drive several ranks through the library: NCCL needs group semantics when one thread issues the
 * collectives of several ranks, and inside ncclGroupStart/End the all-reduces lf_tp_row_forward
 * issues are only enqueued at ncclGroupEnd — after the call has recorded the event that joins the
 * all-reduce stream back into the context's stream, so the output would not wait for its sum. The
 * contexts also bind no device: a thread must be on the rank's device (cudaSetDevice) for its calls.
 * Threads meet at a barrier between steps, and every rank issues the same collectives in the same
 * order; a device error in the middle of a measurement on one rank can still leave the others
 * waiting in NCCL (no abort).
 */
#define _GNU_SOURCE /* pthread_barrier_t */

#include "lorafuse_tp_bench.h"
#include "cli.h"
#include "lf_internal.h"

#ifndef LF_HAVE_NCCL

int lf_cli_bench_tp(const lf_tp_bench_options *o)
{
    (void)o;
    lf_cli_error("bench --tp: this lorafuse was built without %s; the tensor-parallel bench needs CUDA and NCCL",
                 lf_cuda_backend_ops() ? "NCCL" : "CUDA (and NCCL)");
    return lf_cli_exit_status(LF_ERR_UNSUPPORTED);
}

#else

#include "cpu/lora_ref.h"
#include "lf_dtype.h"
#include "tp_internal.h" /* lf_tp_row_chunks: the chunks a row layer runs in */

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TP_DTYPE LF_BF16
#define TP_RANK 16
#define TP_SCALE 2.0f
#define TP_MAX_M 4096
#define TP_REPS 7                 /* timed replays per measurement: the median is reported */
#define TP_DEFAULT_ITERS 100      /* calls per replay (as `lorafuse bench`) */
#define TP_MIN_ITERS 3            /* a median of fewer calls means nothing */
#define TP_REPLAY_BUDGET_US 1e5   /* one replay's length without --iters: keeps the whole run ~1 minute */
#define TP_CHECK_ROWS 16          /* rows checked against the fp64 layer (all of them up to 16) */
#define TP_BASELINE_REL_TOL 0.03  /* baselines vs the unsharded layer: of max |y| */
#define TP_CUBLAS_WS (32u << 20)  /* cuBLAS's workspace, ours: no allocation during graph capture */

typedef struct tp_shape {
    const char *name;
    lf_tp_kind kind;
    int64_t k, n;
} tp_shape;

static const tp_shape tp_shapes[] = {
    {"o_proj", LF_TP_ROW, 4096, 4096},
    {"down_proj", LF_TP_ROW, 14336, 4096},
    {"q_proj", LF_TP_COLUMN, 4096, 4096},
    {"gate_proj", LF_TP_COLUMN, 4096, 14336},
};
static const int64_t tp_tokens[] = {1, 16, 256, 4096};
#define TP_SHAPES (sizeof tp_shapes / sizeof tp_shapes[0])
#define TP_TOKENS (sizeof tp_tokens / sizeof tp_tokens[0])
/* Row layers at M >= 256 on several GPUs are also timed at these chunk counts (forced), and with
 * more than one chunk at these SMs left to the all-reduce beside the next chunk's compute: the
 * measurements lf_tp_row_chunks's and lf_tp_overlap_sms's rules come from. */
static const struct {
    int chunks, sms;
} tp_sweep[] = {{1, 0}, {2, 0}, {2, 24}, {2, 32}, {2, 40}, {3, 32}, {4, 32}};
#define TP_SWEEP (sizeof tp_sweep / sizeof tp_sweep[0])

/* One measured case, as the JSON and the table give it. */
typedef struct tp_result {
    char name[40];
    const char *op; /* "tp_row" | "tp_col" */
    int64_t m, k, n;
    int chunks, sets;
    double fused_us, fused_host_us, base_us, unfused_us, slora_us; /* NAN: not measured */
    double sweep_us[TP_SWEEP]; /* lorafuse as tp_sweep[i] says; NAN: not measured */
} tp_result;

/* One copy of a rank's operands in its GPU's memory (see tp_shard for the shapes). */
typedef struct tp_set {
    void *x, *w, *a, *b, *y;
    void *t;            /* T = x·Aᵀ [M, r] of the unfused and row S-LoRA sequences */
    void *bpad;         /* column S-LoRA: the rank's rows of B, columns in padded rank blocks [nc, P·rc] */
    void *tsend, *trecv; /* column S-LoRA: the rank's block of Tᵀ [rc, M], all of Tᵀ [P·rc, M] */
} tp_set;

/* What rank p holds of a case. Row: x [M, kc], W [N, kc], A [r, kc], B [N, r], y [M, N]; S-LoRA
 * expands columns [n0, n0 + nc) of y. Column: x [M, K], W [nc, K], A [r, K], B [nc, r], y [M, nc];
 * S-LoRA shrinks rows [r0, r0 + rq) of A into a block of rc rows. */
typedef struct tp_shard {
    int64_t k0, kc, n0, nc, r0, rq, rc;
} tp_shard;

typedef struct tp_bench tp_bench;

typedef struct tp_rank {
    tp_bench *b;
    int rank;
    lf_context *ctx;
    lf_tp_comm *comm;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    cudaEvent_t e0, e1;
    tp_shard sh;
    tp_set *set; /* b->sets of them for the current case */
    int next;    /* the set the next call uses */
} tp_rank;

/* The shape's full layer (rank 0 keeps it on its GPU too, for the unsharded check). */
typedef struct tp_full {
    void *x, *w, *a, *b; /* host: x [TP_MAX_M, K] (a case uses its first M rows), W [N, K], A, B */
    void *dx, *dw, *da, *db, *dy; /* rank 0's device copies; dy [TP_MAX_M, N] */
} tp_full;

struct tp_bench {
    int parts;
    const lf_tp_bench_options *opts;
    ncclComm_t *nccl;
    pthread_barrier_t barrier;
    int *ok;       /* [parts]: each rank's word at an agreement */
    double *value; /* [parts] */
    /* the current shape and case (written by rank 0 between barriers) */
    const tp_shape *shape;
    int64_t m;
    int sets;
    tp_full full;
    void *y_single; /* host [M, N]: the unsharded layer */
    void **y_tp;    /* host [parts] × [M, N] (row: every rank's y; column: y_tp[0] gathers the columns) */
    tp_result *res;
    size_t count;
    char device[128]; /* rank 0's */
};

/* ---- messages and checked calls -------------------------------------------------------------- */

static int cuda_ok(int rank, cudaError_t e, const char *what)
{
    if (e != cudaSuccess)
        lf_cli_error("bench --tp: rank %d: %s failed: %s", rank, what, cudaGetErrorString(e));
    return e == cudaSuccess;
}

static int cublas_ok(int rank, cublasStatus_t s, const char *what)
{
    if (s != CUBLAS_STATUS_SUCCESS)
        lf_cli_error("bench --tp: rank %d: %s failed: %s", rank, what, cublasGetStatusString(s));
    return s == CUBLAS_STATUS_SUCCESS;
}

static int nccl_ok(int rank, ncclResult_t r, const char *what)
{
    if (r != ncclSuccess)
        lf_cli_error("bench --tp: rank %d: %s failed: %s", rank, what, ncclGetErrorString(r));
    return r == ncclSuccess;
}

static int lf_ok(tp_rank *rk, lf_status st, const char *what)
{
    if (st != LF_OK)
        lf_cli_error("bench --tp: rank %d: %s failed: %s (%s)", rk->rank, what, lf_status_name(st),
                     lf_context_last_error(rk->ctx));
    return st == LF_OK;
}

#define CUDA(rk, call) cuda_ok((rk)->rank, (call), #call)

/* Every rank's ok (and a value) meet: 1 when all ranks were ok; *max, when asked, the largest value.
 * The second barrier keeps the slots until every rank has read them. */
static int agree(tp_rank *rk, int ok, double v, double *max)
{
    tp_bench *b = rk->b;
    b->ok[rk->rank] = ok;
    b->value[rk->rank] = v;
    pthread_barrier_wait(&b->barrier);
    int all = 1;
    double top = -INFINITY;
    for (int p = 0; p < b->parts; p++) {
        all &= b->ok[p];
        top = b->value[p] > top ? b->value[p] : top;
    }
    pthread_barrier_wait(&b->barrier);
    if (max)
        *max = top;
    return all;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static size_t bytes_of(int64_t rows, int64_t cols) { return (size_t)(rows * cols) * lf_dtype_size(TP_DTYPE); }

/* ---- the operations --------------------------------------------------------------------------- */

/* Row-major out[m, n] = alpha·x[m, k]·w[n, k]ᵀ + beta·out, bf16 in and out, fp32 accumulation.
 * cuBLAS is column-major: it computes outᵀ = w·xᵀ, w (stored as wᵀ) transposed. */
static int gemm_xwt(tp_rank *rk, int64_t m, int64_t n, int64_t k, float alpha, const void *x, int64_t ldx,
                    const void *w, int64_t ldw, float beta, void *out, int64_t ldo)
{
    return cublas_ok(rk->rank,
                     cublasGemmEx(rk->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m, (int)k, &alpha, w, CUDA_R_16BF,
                                  (int)ldw, x, CUDA_R_16BF, (int)ldx, &beta, out, CUDA_R_16BF, (int)ldo,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmEx");
}

static int allreduce(tp_rank *rk, void *data, size_t count)
{
    return nccl_ok(rk->rank, ncclAllReduce(data, data, count, ncclBfloat16, ncclSum, rk->b->nccl[rk->rank], rk->stream),
                   "ncclAllReduce");
}

static int is_row(const tp_bench *b) { return b->shape->kind == LF_TP_ROW; }

/* The partial (row) or sharded (column) base GEMM: the first step of every baseline. */
static int base_gemm(tp_rank *rk, const tp_set *s)
{
    const tp_bench *b = rk->b;
    const int64_t m = b->m, k = b->shape->k, n = b->shape->n;
    if (is_row(b))
        return gemm_xwt(rk, m, n, rk->sh.kc, 1.0f, s->x, rk->sh.kc, s->w, rk->sh.kc, 0.0f, s->y, n);
    return gemm_xwt(rk, m, rk->sh.nc, k, 1.0f, s->x, k, s->w, k, 0.0f, s->y, rk->sh.nc);
}

typedef int (*tp_call)(tp_rank *rk, const tp_set *s);

static int call_fused(tp_rank *rk, const tp_set *s)
{
    const tp_bench *b = rk->b;
    const int64_t m = b->m, k = b->shape->k, n = b->shape->n, r = TP_RANK;
    if (is_row(b)) {
        const lf_matrix x = lf_matrix_make(TP_DTYPE, s->x, m, rk->sh.kc), w = lf_matrix_make(TP_DTYPE, s->w, n, rk->sh.kc);
        const lf_matrix a = lf_matrix_make(TP_DTYPE, s->a, r, rk->sh.kc), bm = lf_matrix_make(TP_DTYPE, s->b, n, r);
        const lf_matrix y = lf_matrix_make(TP_DTYPE, s->y, m, n);
        return lf_ok(rk, lf_tp_row_forward(rk->ctx, rk->comm, LF_LAYOUT_PEFT, &x, &w, NULL, &a, &bm, TP_SCALE, 0.0f, &y),
                     "lf_tp_row_forward");
    }
    const lf_matrix x = lf_matrix_make(TP_DTYPE, s->x, m, k), w = lf_matrix_make(TP_DTYPE, s->w, rk->sh.nc, k);
    const lf_matrix a = lf_matrix_make(TP_DTYPE, s->a, r, k), bm = lf_matrix_make(TP_DTYPE, s->b, rk->sh.nc, r);
    const lf_matrix y = lf_matrix_make(TP_DTYPE, s->y, m, rk->sh.nc);
    return lf_ok(rk, lf_lora_forward(rk->ctx, LF_LAYOUT_PEFT, &x, &w, NULL, &a, &bm, TP_SCALE, 0.0f, &y),
                 "lf_lora_forward");
}

static int call_base(tp_rank *rk, const tp_set *s)
{
    const tp_bench *b = rk->b;
    return base_gemm(rk, s) && (!is_row(b) || allreduce(rk, s->y, (size_t)(b->m * b->shape->n)));
}

static int call_unfused(tp_rank *rk, const tp_set *s)
{
    const tp_bench *b = rk->b;
    const int64_t m = b->m, k = b->shape->k, n = b->shape->n, r = TP_RANK;
    if (!base_gemm(rk, s))
        return 0;
    if (is_row(b))
        return gemm_xwt(rk, m, r, rk->sh.kc, 1.0f, s->x, rk->sh.kc, s->a, rk->sh.kc, 0.0f, s->t, r) &&
               gemm_xwt(rk, m, n, r, TP_SCALE, s->t, r, s->b, r, 1.0f, s->y, n) && allreduce(rk, s->y, (size_t)(m * n));
    return gemm_xwt(rk, m, r, k, 1.0f, s->x, k, s->a, k, 0.0f, s->t, r) &&
           gemm_xwt(rk, m, rk->sh.nc, r, TP_SCALE, s->t, r, s->b, r, 1.0f, s->y, rk->sh.nc);
}

static int call_slora(tp_rank *rk, const tp_set *s)
{
    const tp_bench *b = rk->b;
    const tp_shard *sh = &rk->sh;
    const int64_t m = b->m, k = b->shape->k, n = b->shape->n, r = TP_RANK;
    const size_t es = lf_dtype_size(TP_DTYPE);
    if (!base_gemm(rk, s))
        return 0;
    if (is_row(b))
        return gemm_xwt(rk, m, r, sh->kc, 1.0f, s->x, sh->kc, s->a, sh->kc, 0.0f, s->t, r) &&
               allreduce(rk, s->t, (size_t)(m * r)) &&
               gemm_xwt(rk, m, sh->nc, r, TP_SCALE, s->t, r, (const char *)s->b + (size_t)(sh->n0 * r) * es, r, 1.0f,
                        (char *)s->y + (size_t)sh->n0 * es, n) &&
               allreduce(rk, s->y, (size_t)(m * n));
    /* Tᵀ rows [r0, r0 + rq) = A's rows · xᵀ, into this rank's block (rows past rq stay zero) */
    if (!gemm_xwt(rk, sh->rq, m, k, 1.0f, (const char *)s->a + (size_t)(sh->r0 * k) * es, k, s->x, k, 0.0f, s->tsend,
                  m) ||
        !nccl_ok(rk->rank, ncclAllGather(s->tsend, s->trecv, (size_t)(sh->rc * m), ncclBfloat16, b->nccl[rk->rank],
                                         rk->stream),
                 "ncclAllGather"))
        return 0;
    /* y [M, nc] += s·T·Bpadᵀ: column-major yᵀ [nc, M] = Bpad [nc, R] · Tᵀ [R, M], R = P·rc; Bpad is
     * stored row-major (column-major Bpadᵀ, ld R) and the gathered Tᵀ [R, M] row-major is T
     * column-major (ld M): both transposed. */
    const int64_t R = b->parts * sh->rc;
    const float alpha = TP_SCALE, one = 1.0f;
    return cublas_ok(rk->rank,
                     cublasGemmEx(rk->blas, CUBLAS_OP_T, CUBLAS_OP_T, (int)sh->nc, (int)m, (int)R, &alpha, s->bpad,
                                  CUDA_R_16BF, (int)R, s->trecv, CUDA_R_16BF, (int)m, &one, s->y, CUDA_R_16BF,
                                  (int)sh->nc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmEx (S-LoRA expand)");
}

/* ---- a rank's buffers ------------------------------------------------------------------------- */

static void shard_of(const tp_bench *b, int p, tp_shard *sh)
{
    const int64_t k = b->shape->k, n = b->shape->n;
    memset(sh, 0, sizeof *sh);
    sh->kc = k, sh->nc = n;
    if (is_row(b))
        lf_tp_split(k, b->parts, p, &sh->k0, &sh->kc);
    lf_tp_split(n, b->parts, p, &sh->n0, &sh->nc); /* row: S-LoRA's columns of the expand */
    lf_tp_split(TP_RANK, b->parts, p, &sh->r0, &sh->rq);
    sh->rc = (TP_RANK + b->parts - 1) / b->parts;
}

/* What one base-layer call of rank 0 (the largest shard) moves: the rotation every rank uses, so
 * that all ranks make the same number of calls. */
static double rank0_base_bytes(const tp_bench *b)
{
    tp_shard sh;
    shard_of(b, 0, &sh);
    const int64_t m = b->m, k = b->shape->k, n = b->shape->n;
    return is_row(b) ? (double)(bytes_of(m, sh.kc) + bytes_of(n, sh.kc) + bytes_of(m, n))
                     : (double)(bytes_of(m, k) + bytes_of(sh.nc, k) + bytes_of(m, sh.nc));
}

#define SET_BUFFERS 9
enum { SET_Y = 4, SET_T = 5 }; /* slots of set_slots: the ones past SET_T start as zeros */

/* A set's buffers in a fixed order: x, w, a, b, y, t, bpad, tsend, trecv. */
static void set_slots(tp_set *s, void **slot[SET_BUFFERS])
{
    void **all[SET_BUFFERS] = {&s->x, &s->w, &s->a, &s->b, &s->y, &s->t, &s->bpad, &s->tsend, &s->trecv};
    memcpy(slot, all, sizeof all);
}

static void free_sets(tp_rank *rk)
{
    for (int i = 0; rk->set && i < rk->b->sets; i++) {
        void **slot[SET_BUFFERS];
        set_slots(&rk->set[i], slot);
        for (int j = 0; j < SET_BUFFERS; j++)
            cudaFree(*slot[j]);
    }
    free(rk->set);
    rk->set = NULL;
}

/* Host rows [0, rows) and columns [c0, c0 + cols) of a [*, ld] host matrix into dense device memory. */
static int upload_cols(tp_rank *rk, void *dev, const void *host, int64_t ld, int64_t rows, int64_t c0, int64_t cols)
{
    const size_t es = lf_dtype_size(TP_DTYPE);
    return CUDA(rk, cudaMemcpy2D(dev, (size_t)cols * es, (const char *)host + (size_t)c0 * es, (size_t)ld * es,
                                 (size_t)cols * es, (size_t)rows, cudaMemcpyHostToDevice));
}

/* B's rows [n0, n0 + nc), its columns rearranged into the ranks' blocks of rc (zeros past each
 * rank's rq): the expand's operand of the gathered, padded Tᵀ. */
static int upload_bpad(tp_rank *rk, void *dev)
{
    const tp_bench *b = rk->b;
    const tp_shard *sh = &rk->sh;
    const int64_t R = b->parts * sh->rc;
    void *host = calloc((size_t)(sh->nc * R), lf_dtype_size(TP_DTYPE));
    if (!host) {
        lf_cli_error("bench --tp: out of host memory");
        return 0;
    }
    for (int q = 0; q < b->parts; q++) {
        int64_t r0, rq;
        lf_tp_split(TP_RANK, b->parts, q, &r0, &rq);
        for (int64_t i = 0; i < sh->nc; i++)
            for (int64_t j = 0; j < rq; j++)
                lf_store_f32(host, TP_DTYPE, i * R + q * sh->rc + j,
                             lf_load_f32(b->full.b, TP_DTYPE, (sh->n0 + i) * TP_RANK + r0 + j));
    }
    const int ok = CUDA(rk, cudaMemcpy(dev, host, bytes_of(sh->nc, R), cudaMemcpyHostToDevice));
    free(host);
    return ok;
}

/* Allocates the case's sets: set 0 from the host values, the others copied from set 0. */
static int alloc_sets(tp_rank *rk)
{
    const tp_bench *b = rk->b;
    const tp_shard *sh = &rk->sh;
    const int64_t m = b->m, k = b->shape->k, n = b->shape->n, r = TP_RANK, R = b->parts * sh->rc;
    const int row = is_row(b);
    const size_t size[SET_BUFFERS] = {row ? bytes_of(m, sh->kc) : bytes_of(m, k), row ? bytes_of(n, sh->kc) : bytes_of(sh->nc, k),
                      row ? bytes_of(r, sh->kc) : bytes_of(r, k), row ? bytes_of(n, r) : bytes_of(sh->nc, r),
                      row ? bytes_of(m, n) : bytes_of(m, sh->nc), bytes_of(m, r),
                      row ? 0 : bytes_of(sh->nc, R), row ? 0 : bytes_of(sh->rc, m), row ? 0 : bytes_of(R, m)};
    rk->set = calloc((size_t)b->sets, sizeof *rk->set);
    if (!rk->set) {
        lf_cli_error("bench --tp: out of host memory");
        return 0;
    }
    void **first[SET_BUFFERS];
    set_slots(&rk->set[0], first);
    int ok = 1;
    for (int i = 0; i < b->sets && ok; i++) {
        tp_set *s = &rk->set[i];
        void **slot[SET_BUFFERS];
        set_slots(s, slot);
        for (int j = 0; j < SET_BUFFERS && ok; j++) {
            if (!size[j])
                continue;
            ok = CUDA(rk, cudaMalloc(slot[j], size[j]));
            if (ok && i == 0 && j >= SET_T) /* T and the S-LoRA blocks: padding rows zero, never NaN */
                ok = CUDA(rk, cudaMemset(*slot[j], 0, size[j]));
            else if (ok && i > 0 && j != SET_Y) /* y is always written before it is read */
                ok = CUDA(rk, cudaMemcpy(*slot[j], *first[j], size[j], cudaMemcpyDeviceToDevice));
        }
        if (ok && i == 0) {
            const tp_full *f = &b->full;
            if (row)
                ok = upload_cols(rk, s->x, f->x, k, m, sh->k0, sh->kc) && upload_cols(rk, s->w, f->w, k, n, sh->k0, sh->kc) &&
                     upload_cols(rk, s->a, f->a, k, r, sh->k0, sh->kc) && upload_cols(rk, s->b, f->b, r, n, 0, r);
            else
                ok = upload_cols(rk, s->x, f->x, k, m, 0, k) &&
                     upload_cols(rk, s->w, (const char *)f->w + bytes_of(sh->n0, k), k, sh->nc, 0, k) &&
                     upload_cols(rk, s->a, f->a, k, r, 0, k) &&
                     upload_cols(rk, s->b, (const char *)f->b + bytes_of(sh->n0, r), r, sh->nc, 0, r) &&
                     upload_bpad(rk, s->bpad);
        }
    }
    return ok;
}

/* ---- the check -------------------------------------------------------------------------------- */

/* Runs `call` once on set 0 with y poisoned (NaN) and brings y to the host: every rank's own y_tp
 * (row), or this rank's columns of y_tp[0] (column). */
static int run_to_host(tp_rank *rk, tp_call call)
{
    tp_bench *b = rk->b;
    const tp_set *s = &rk->set[0];
    const size_t es = lf_dtype_size(TP_DTYPE);
    const int64_t m = b->m, n = b->shape->n, cols = is_row(b) ? n : rk->sh.nc;
    void *dst = is_row(b) ? b->y_tp[rk->rank] : (char *)b->y_tp[0] + (size_t)rk->sh.n0 * es;
    return CUDA(rk, cudaMemsetAsync(s->y, 0xFF, bytes_of(m, cols), rk->stream)) && call(rk, s) &&
           CUDA(rk, cudaMemcpy2DAsync(dst, (size_t)n * es, s->y, (size_t)cols * es, (size_t)cols * es, (size_t)m,
                                      cudaMemcpyDeviceToHost, rk->stream)) &&
           CUDA(rk, cudaStreamSynchronize(rk->stream));
}

/* Rank 0: the unsharded layer on its GPU (lf_lora_forward), into b->y_single. */
static int run_unsharded(tp_rank *rk)
{
    tp_bench *b = rk->b;
    const tp_full *f = &b->full;
    const int64_t m = b->m, k = b->shape->k, n = b->shape->n;
    const lf_matrix x = lf_matrix_make(TP_DTYPE, f->dx, m, k), w = lf_matrix_make(TP_DTYPE, f->dw, n, k);
    const lf_matrix a = lf_matrix_make(TP_DTYPE, f->da, TP_RANK, k), bm = lf_matrix_make(TP_DTYPE, f->db, n, TP_RANK);
    const lf_matrix y = lf_matrix_make(TP_DTYPE, f->dy, m, n);
    return lf_ok(rk, lf_lora_forward(rk->ctx, LF_LAYOUT_PEFT, &x, &w, NULL, &a, &bm, TP_SCALE, 0.0f, &y),
                 "lf_lora_forward (unsharded)") &&
           CUDA(rk, cudaMemcpyAsync(b->y_single, f->dy, bytes_of(m, n), cudaMemcpyDeviceToHost, rk->stream)) &&
           CUDA(rk, cudaStreamSynchronize(rk->stream));
}

/* Rank 0: lorafuse's TP output and the unsharded layer against the exact layer on sampled rows.
 * Row layers with P > 1 get (P - 1)·u·mag more: each rank rounds its partial output, and the
 * all-reduce rounds its running sums, each bounded by u·Σ|terms| (mag). Returns 1 when it passed. */
static int check_fused(const tp_bench *b)
{
    const int64_t m = b->m, k = b->shape->k, n = b->shape->n;
    const int64_t rows = m < TP_CHECK_ROWS ? m : TP_CHECK_ROWS;
    const double u = lf_ref_unit_roundoff(TP_DTYPE);
    const double extra = is_row(b) ? (double)(b->parts - 1) * u : 0.0;
    double *exact = malloc((size_t)(rows * n) * sizeof *exact), *mag = malloc((size_t)(rows * n) * sizeof *mag);
    if (!exact || !mag) {
        free(exact), free(mag);
        lf_cli_error("bench --tp: out of host memory for the check");
        return 0;
    }
    const size_t es = lf_dtype_size(TP_DTYPE);
#pragma omp parallel for schedule(dynamic)
    for (int64_t j = 0; j < rows; j++) {
        const int64_t i = rows > 1 ? j * (m - 1) / (rows - 1) : 0; /* first and last rows included */
        const lf_lora_problem p = {.layout = LF_LAYOUT_PEFT, .dtype = TP_DTYPE, .m = 1, .k = k, .n = n,
                                   .rank = TP_RANK, .x = (const char *)b->full.x + (size_t)(i * k) * es, .ldx = k,
                                   .w = b->full.w, .ldw = k, .a = b->full.a, .lda = k, .b = b->full.b,
                                   .ldb = TP_RANK, .scale = TP_SCALE, .ldy = n};
        lf_ref_lora_forward_f64(&p, exact + j * n, mag + j * n);
    }
    int64_t bad_tp = 0, bad_single = 0;
    double worst_tp = 0, worst_single = 0, max_diff = 0;
    for (int64_t j = 0; j < rows; j++) {
        const int64_t i = rows > 1 ? j * (m - 1) / (rows - 1) : 0;
        for (int64_t c = 0; c < n; c++) {
            const double want = exact[j * n + c], tol = lf_ref_tolerance(TP_DTYPE, k, TP_RANK, want, mag[j * n + c]);
            const double tp = lf_load_f32(b->y_tp[0], TP_DTYPE, i * n + c);
            const double one = lf_load_f32(b->y_single, TP_DTYPE, i * n + c);
            const double r_tp = fabs(tp - want) / (tol + extra * mag[j * n + c]), r_one = fabs(one - want) / tol;
            bad_tp += !(r_tp <= 1.0), bad_single += !(r_one <= 1.0);
            worst_tp = r_tp > worst_tp || isnan(r_tp) ? r_tp : worst_tp;
            worst_single = r_one > worst_single || isnan(r_one) ? r_one : worst_single;
            max_diff = fabs(tp - one) > max_diff || isnan(tp - one) ? fabs(tp - one) : max_diff;
        }
    }
    /* row layers: every rank holds the same sum */
    int64_t differ = 0;
    for (int p = 1; is_row(b) && p < b->parts; p++)
        differ += memcmp(b->y_tp[p], b->y_tp[0], bytes_of(m, n)) != 0;
    const int pass = bad_tp == 0 && bad_single == 0 && differ == 0;
    printf("  check (%lld of %lld rows vs fp64): lorafuse TP worst err/tol %.3g, unsharded lf_lora_forward %.3g; "
           "max |TP - unsharded| %.3g%s  %s\n",
           (long long)rows, (long long)m, worst_tp, worst_single, max_diff,
           differ ? "; ranks' y differ" : "", pass ? "PASS" : "FAIL");
    free(exact), free(mag);
    return pass;
}

/* Rank 0: a baseline's y (y_tp) against the unsharded layer's, every element, loosely. */
static int check_baseline(const tp_bench *b, const char *what)
{
    const int64_t cells = b->m * b->shape->n;
    double max_ref = 0, max_diff = 0;
    for (int64_t i = 0; i < cells; i++) {
        const double want = lf_load_f32(b->y_single, TP_DTYPE, i), got = lf_load_f32(b->y_tp[0], TP_DTYPE, i);
        max_ref = fabs(want) > max_ref ? fabs(want) : max_ref;
        max_diff = fabs(got - want) > max_diff || isnan(got) ? fabs(got - want) : max_diff;
    }
    const int pass = max_diff <= TP_BASELINE_REL_TOL * max_ref; /* NaN fails */
    printf("  check %-8s max |y - unsharded| %.3g (bound %.2g: %g of max |y|)  %s\n", what, max_diff,
           TP_BASELINE_REL_TOL * max_ref, TP_BASELINE_REL_TOL, pass ? "PASS" : "FAIL");
    return pass;
}

/* ---- timing ----------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int issue(tp_rank *rk, tp_call call)
{
    const int k = rk->next;
    rk->next = (k + 1) % rk->b->sets;
    return call(rk, &rk->set[k]);
}

/* Per-call µs of `call` (graph replay, or a host loop), the slowest rank's median; NAN when it
 * failed. Every rank calls it with the same arguments: they issue the same collectives. */
static double measure(tp_rank *rk, tp_call call, int graph)
{
    tp_bench *b = rk->b;
    /* two warm-up calls (plans, workspaces, cuBLAS heuristics, NCCL connections), then one that
     * says how slow a call is */
    int ok = issue(rk, call) && issue(rk, call) && CUDA(rk, cudaStreamSynchronize(rk->stream));
    const double t0 = now_us();
    ok = ok && issue(rk, call) && CUDA(rk, cudaStreamSynchronize(rk->stream));
    double slowest;
    if (!agree(rk, ok, now_us() - t0, &slowest))
        return NAN;
    int iters = (int)b->opts->iters;
    if (!iters) {
        iters = TP_DEFAULT_ITERS;
        if (slowest * iters > TP_REPLAY_BUDGET_US)
            iters = slowest * TP_MIN_ITERS > TP_REPLAY_BUDGET_US ? TP_MIN_ITERS : (int)(TP_REPLAY_BUDGET_US / slowest);
    }
    iters = (iters + b->sets - 1) / b->sets * b->sets; /* every set used equally often */

    cudaGraphExec_t exec = NULL;
    if (graph) {
        cudaGraph_t g = NULL;
        ok = CUDA(rk, cudaStreamBeginCapture(rk->stream, cudaStreamCaptureModeThreadLocal));
        int captured = ok;
        for (int i = 0; i < iters && captured; i++)
            captured = issue(rk, call);
        ok = ok && CUDA(rk, cudaStreamEndCapture(rk->stream, &g)) && captured;
        ok = ok && CUDA(rk, cudaGraphInstantiate(&exec, g, 0));
        if (g)
            cudaGraphDestroy(g);
    }
    /* nothing collective ran yet: a rank that failed to capture stops every rank here */
    if (agree(rk, ok, 0, NULL) && graph) /* the warm replay uploads the graph */
        ok = CUDA(rk, cudaGraphLaunch(exec, rk->stream)) && CUDA(rk, cudaStreamSynchronize(rk->stream));
    double t[TP_REPS] = {0};
    for (int rep = 0; rep < TP_REPS && agree(rk, ok, 0, NULL); rep++) {
        ok = CUDA(rk, cudaEventRecord(rk->e0, rk->stream));
        if (graph)
            ok = ok && CUDA(rk, cudaGraphLaunch(exec, rk->stream));
        for (int i = 0; i < iters && ok && !graph; i++)
            ok = issue(rk, call);
        float ms = 0;
        ok = ok && CUDA(rk, cudaEventRecord(rk->e1, rk->stream)) && CUDA(rk, cudaEventSynchronize(rk->e1)) &&
             CUDA(rk, cudaEventElapsedTime(&ms, rk->e0, rk->e1));
        t[rep] = ms * 1000.0 / iters;
    }
    if (exec)
        cudaGraphExecDestroy(exec);
    qsort(t, TP_REPS, sizeof t[0], cmp_double);
    double us;
    return agree(rk, ok, ok ? t[TP_REPS / 2] : NAN, &us) ? us : NAN;
}

/* After the graph timing of lorafuse's layer: every set's y (same inputs as set 0, last written by a
 * replay) must be bitwise the eager call's, which the check compared with the exact layer — the
 * replays run the captured side stream, events and all-reduces the check did not. */
static int check_replays(tp_rank *rk)
{
    tp_bench *b = rk->b;
    const size_t es = lf_dtype_size(TP_DTYPE);
    const int64_t m = b->m, n = b->shape->n, cols = is_row(b) ? n : rk->sh.nc;
    const unsigned char *eager =
        is_row(b) ? b->y_tp[rk->rank] : (const unsigned char *)b->y_tp[0] + (size_t)rk->sh.n0 * es;
    unsigned char *got = malloc(bytes_of(m, cols));
    int ok = got != NULL, same = 1;
    for (int i = 0; i < b->sets && ok && same; i++) {
        ok = CUDA(rk, cudaMemcpy(got, rk->set[i].y, bytes_of(m, cols), cudaMemcpyDeviceToHost));
        for (int64_t row = 0; row < m && ok && same; row++)
            same = memcmp(got + (size_t)(row * cols) * es, eager + (size_t)(row * n) * es, (size_t)cols * es) == 0;
        if (ok && !same)
            lf_cli_error("bench --tp: rank %d: set %d's y after the graph replays differs from the eager call's",
                         rk->rank, i);
    }
    free(got);
    return agree(rk, ok && same, 0, NULL);
}

/* ---- cases ------------------------------------------------------------------------------------ */

static void free_full(tp_bench *b)
{
    tp_full *f = &b->full;
    void *host[] = {f->x, f->w, f->a, f->b}, *dev[] = {f->dx, f->dw, f->da, f->db, f->dy};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        cudaFree(dev[i]);
    memset(f, 0, sizeof *f);
}

/* Rank 0: the shape's full layer on the host (x for the largest M) and on its own GPU. Values as
 * `lorafuse bench` draws them: every output O(1) whatever K and r. */
static int make_full(tp_rank *rk, const tp_shape *shape)
{
    tp_bench *b = rk->b;
    tp_full *f = &b->full;
    const int64_t k = shape->k, n = shape->n, r = TP_RANK;
    const int64_t count[4] = {TP_MAX_M * k, n * k, r * k, n * r};
    const double amp[4] = {1.0, 1.0 / sqrt((double)k), 1.0 / sqrt((double)k), 1.0 / sqrt((double)r)};
    void **host[4] = {&f->x, &f->w, &f->a, &f->b}, **dev[4] = {&f->dx, &f->dw, &f->da, &f->db};
    int ok = 1;
    for (int i = 0; i < 4 && ok; i++) {
        const size_t bytes = bytes_of(count[i], 1);
        if (!(*host[i] = malloc(bytes))) {
            lf_cli_error("bench --tp: out of host memory for %s", shape->name);
            return 0;
        }
        lf_cli_fill_random(*host[i], TP_DTYPE, count[i], amp[i], b->opts->seed * 0x100000001b3ull + (uint64_t)i);
        ok = CUDA(rk, cudaMalloc(dev[i], bytes)) && CUDA(rk, cudaMemcpy(*dev[i], *host[i], bytes, cudaMemcpyHostToDevice));
    }
    return ok && CUDA(rk, cudaMalloc(&f->dy, bytes_of(TP_MAX_M, n)));
}

static void print_case_times(const tp_result *r)
{
    printf("  per call, us (slowest rank): lorafuse %.2f (host loop %.2f)   base %.2f   unfused %.2f   "
           "S-LoRA %.2f\n",
           r->fused_us, r->fused_host_us, r->base_us, r->unfused_us, r->slora_us);
    printf("  lorafuse / base %.3fx   unfused / base %.3fx   S-LoRA / base %.3fx   lorafuse / best baseline %.3fx\n",
           r->fused_us / r->base_us, r->unfused_us / r->base_us, r->slora_us / r->base_us,
           r->fused_us / fmin(r->unfused_us, r->slora_us));
    if (isnan(r->sweep_us[0]))
        return;
    printf("  lorafuse in forced row chunks (chunks/SMs left to the all-reduce):");
    for (size_t i = 0; i < TP_SWEEP; i++)
        printf("  %d/%d: %.2f", tp_sweep[i].chunks, tp_sweep[i].sms, r->sweep_us[i]);
    printf("   (the plan's: %d/%d)\n", r->chunks, r->chunks > 1 ? lf_tp_overlap_sms() : 0);
}

/* One case, every rank in step. Returns 0 when it failed (a check, or a runtime error: *runtime). */
static int run_case(tp_rank *rk, int64_t m, int *runtime)
{
    tp_bench *b = rk->b;
    const tp_shape *shape = b->shape;
    const int lead = rk->rank == 0;
    tp_result r = {.op = is_row(b) ? "tp_row" : "tp_col", .m = m, .k = shape->k, .n = shape->n,
                   .fused_us = NAN, .fused_host_us = NAN, .base_us = NAN, .unfused_us = NAN, .slora_us = NAN};
    if (lead) {
        b->m = m;
        b->sets = lf_cli_buffer_sets(rank0_base_bytes(b));
    }
    pthread_barrier_wait(&b->barrier); /* b->m and b->sets are set */
    shard_of(b, rk->rank, &rk->sh);
    rk->next = 0;
    snprintf(r.name, sizeof r.name, "%s_m%lld", shape->name, (long long)m);
    r.chunks = is_row(b) ? lf_tp_row_chunks(m, shape->n, b->parts) : 1;
    r.sets = b->sets;
    if (lead)
        printf("\n== %s: %s, bf16, %lld x %lld -> %lld, rank %d, P %d (%s %lld per rank on rank 0)%s; %d buffer set%s\n",
               r.name, r.op, (long long)m, (long long)shape->k, (long long)shape->n, TP_RANK, b->parts,
               is_row(b) ? "K" : "N", (long long)(is_row(b) ? rk->sh.kc : rk->sh.nc),
               r.chunks > 1 ? "; lorafuse in row chunks" : "", b->sets, b->sets == 1 ? "" : "s");
    fflush(stdout);
    int ok = alloc_sets(rk);
    if (lead)
        ok = ok && run_unsharded(rk);
    int pass = 0;
    if (!agree(rk, ok, 0, NULL)) {
        *runtime = 1;
        goto done;
    }
    /* lorafuse's layer last: its y stays in y_tp for check_replays */
    static const struct {
        const char *what;
        tp_call call;
    } checks[] = {{"unfused", call_unfused}, {"S-LoRA", call_slora}, {"lorafuse", call_fused}};
    pass = 1;
    for (size_t i = 0; i < sizeof checks / sizeof checks[0] && pass; i++) {
        if (!agree(rk, run_to_host(rk, checks[i].call), 0, NULL)) {
            *runtime = 1, pass = 0;
            break;
        }
        const int verdict = lead ? (checks[i].call == call_fused ? check_fused(b) : check_baseline(b, checks[i].what)) : 1;
        pass = agree(rk, verdict, 0, NULL);
    }
    if (!pass)
        goto done;
    r.fused_us = measure(rk, call_fused, 1);
    if (!isnan(r.fused_us) && !check_replays(rk)) {
        pass = 0;
        goto done;
    }
    r.fused_host_us = measure(rk, call_fused, 0);
    r.base_us = measure(rk, call_base, 1);
    r.unfused_us = measure(rk, call_unfused, 1);
    r.slora_us = measure(rk, call_slora, 1);
    for (size_t i = 0; i < TP_SWEEP; i++) {
        r.sweep_us[i] = NAN;
        if (is_row(b) && b->parts > 1 && m >= 256) {
            lf_tp_comm_force_chunks(rk->comm, tp_sweep[i].chunks);
            lf_tp_comm_force_overlap_sms(rk->comm, tp_sweep[i].sms);
            r.sweep_us[i] = measure(rk, call_fused, 1);
            lf_tp_comm_force_chunks(rk->comm, 0);
            lf_tp_comm_force_overlap_sms(rk->comm, -1);
        }
    }
    if (isnan(r.fused_us) || isnan(r.fused_host_us) || isnan(r.base_us) || isnan(r.unfused_us) || isnan(r.slora_us))
        *runtime = 1;
    if (lead) {
        print_case_times(&r);
        if (!isnan(r.fused_us))
            b->res[b->count++] = r;
    }
done:
    free_sets(rk);
    pthread_barrier_wait(&b->barrier);
    return pass;
}

/* ---- ranks ------------------------------------------------------------------------------------ */

static int open_rank(tp_rank *rk)
{
    if (!CUDA(rk, cudaSetDevice(rk->rank)) || !CUDA(rk, cudaStreamCreateWithFlags(&rk->stream, cudaStreamNonBlocking)))
        return 0;
    const lf_status st = lf_context_create(&rk->ctx, LF_BACKEND_CUDA); /* on this thread's device */
    if (st != LF_OK) {
        lf_cli_error("bench --tp: rank %d: lf_context_create failed: %s", rk->rank, lf_status_name(st));
        return 0;
    }
    return lf_ok(rk, lf_context_set_stream(rk->ctx, rk->stream), "lf_context_set_stream") &&
           lf_ok(rk, lf_tp_comm_from_nccl(rk->ctx, (void *)rk->b->nccl[rk->rank], &rk->comm), "lf_tp_comm_from_nccl") &&
           cublas_ok(rk->rank, cublasCreate(&rk->blas), "cublasCreate") &&
           cublas_ok(rk->rank, cublasSetStream(rk->blas, rk->stream), "cublasSetStream") &&
           CUDA(rk, cudaMalloc(&rk->blas_ws, TP_CUBLAS_WS)) &&
           cublas_ok(rk->rank, cublasSetWorkspace(rk->blas, rk->blas_ws, TP_CUBLAS_WS), "cublasSetWorkspace") &&
           CUDA(rk, cudaEventCreate(&rk->e0)) && CUDA(rk, cudaEventCreate(&rk->e1));
}

static void close_rank(tp_rank *rk)
{
    lf_tp_comm_destroy(rk->comm); /* waits for its last all-reduce */
    if (rk->blas)
        cublasDestroy(rk->blas);
    cudaFree(rk->blas_ws);
    if (rk->e0)
        cudaEventDestroy(rk->e0);
    if (rk->e1)
        cudaEventDestroy(rk->e1);
    lf_context_destroy(rk->ctx);
    if (rk->stream)
        cudaStreamDestroy(rk->stream);
}

typedef struct rank_outcome {
    int failed_check, runtime_error;
} rank_outcome;

static void *rank_main(void *arg)
{
    tp_rank *rk = arg;
    tp_bench *b = rk->b;
    rank_outcome *out = calloc(1, sizeof *out);
    const int opened = open_rank(rk);
    if (rk->rank == 0 && opened) {
        snprintf(b->device, sizeof b->device, "%s", lf_context_device_name(rk->ctx));
        printf("rank 0: %s\n", b->device);
    }
    if (!agree(rk, opened && out, 0, NULL)) {
        if (out)
            out->runtime_error = 1;
        close_rank(rk);
        return out;
    }
    for (size_t s = 0; s < TP_SHAPES; s++) {
        int ok = 1;
        if (rk->rank == 0) {
            b->shape = &tp_shapes[s];
            ok = make_full(rk, b->shape);
        }
        pthread_barrier_wait(&b->barrier); /* b->shape is set */
        if (!agree(rk, ok, 0, NULL)) {
            out->runtime_error = 1;
        } else {
            for (size_t t = 0; t < TP_TOKENS; t++) {
                int runtime = 0;
                out->failed_check |= !run_case(rk, tp_tokens[t], &runtime) && !runtime;
                out->runtime_error |= runtime;
            }
        }
        if (rk->rank == 0)
            free_full(b);
        pthread_barrier_wait(&b->barrier);
    }
    close_rank(rk);
    return out;
}

/* ---- results ---------------------------------------------------------------------------------- */

static void print_table(const tp_bench *b)
{
    if (!b->count)
        return;
    printf("\n%-16s %-6s %2s %5s %6s %6s %10s %10s %10s %10s %10s %7s %7s %7s\n", "name", "op", "P", "M", "K", "N",
           "fused_us", "host_us", "base_us", "unfused_us", "slora_us", "f/base", "u/base", "s/base");
    for (size_t i = 0; i < b->count; i++) {
        const tp_result *r = &b->res[i];
        printf("%-16s %-6s %2d %5lld %6lld %6lld %10.2f %10.2f %10.2f %10.2f %10.2f %6.2fx %6.2fx %6.2fx\n", r->name,
               r->op, b->parts, (long long)r->m, (long long)r->k, (long long)r->n, r->fused_us, r->fused_host_us,
               r->base_us, r->unfused_us, r->slora_us, r->fused_us / r->base_us, r->unfused_us / r->base_us,
               r->slora_us / r->base_us);
    }
}

static int write_tp_json(const tp_bench *b, const char *path)
{
    char nccl[32];
    int v = 0;
    ncclGetVersion(&v);
    snprintf(nccl, sizeof nccl, "%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    json_t *root = lf_cli_json_root(b->device, "cuda"), *cases = json_array();
    json_object_set_new(root, "tp", json_integer(b->parts));
    lf_cli_json_str(root, "nccl", nccl);
    lf_cli_json_str(root, "timing", "CUDA-graph replay per rank, median of 7, slowest rank; fused_host_us: host loop");
    for (size_t i = 0; i < b->count; i++) {
        const tp_result *r = &b->res[i];
        const double m = (double)r->m, k = (double)r->k, n = (double)r->n, rk = TP_RANK;
        json_t *c = lf_cli_json_case(r->name, r->op, TP_DTYPE, r->m, r->k, r->n, TP_RANK, 1);
        json_object_set_new(c, "tp", json_integer(b->parts));
        /* bytes and flops: the whole layer's (all ranks together), each input read once, y written once */
        lf_cli_json_measured(c, r->fused_us, r->fused_host_us, r->base_us, r->unfused_us,
                             (m * k + n * k + rk * (k + n) + m * n) * 2.0,
                             2 * m * k * n + 2 * m * k * rk + 2 * m * rk * n, r->sets);
        lf_cli_json_num(c, "slora_us", r->slora_us);
        json_object_set_new(c, "chunks", json_integer(r->chunks));
        if (!isnan(r->sweep_us[0])) {
            json_t *sweep = json_object();
            for (size_t j = 0; j < TP_SWEEP; j++) {
                char key[24];
                snprintf(key, sizeof key, "%d/%d", tp_sweep[j].chunks, tp_sweep[j].sms);
                lf_cli_json_num(sweep, key, r->sweep_us[j]);
            }
            json_object_set_new(c, "chunk_sweep_us", sweep);
        }
        json_array_append_new(cases, c);
    }
    return lf_cli_write_bench_json(path, root, cases);
}

int lf_cli_bench_tp(const lf_tp_bench_options *o)
{
    /* Never NVLink multicast (NCCL reads this at its first init), whatever the environment says:
     * lorafuse's TP layers do not use it, and the machines it is measured on must not create
     * multicast objects. */
    const char *nvls = getenv("NCCL_NVLS_ENABLE");
    const int overridden = nvls && strcmp(nvls, "0") != 0;
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    int parts = 0;
    if (!lf_backend_available(LF_BACKEND_CUDA) || cudaGetDeviceCount(&parts) != cudaSuccess || parts < 1) {
        lf_cli_error("bench --tp: no usable CUDA device");
        return EXIT_RUNTIME;
    }
    int v = 0;
    ncclGetVersion(&v);
    printf("lorafuse bench --tp %s: P = %d GPU%s (one thread each), NCCL %d.%d.%d, NCCL_NVLS_ENABLE=0%s\n",
           lf_version_string(), parts, parts == 1 ? "" : "s", v / 10000, v / 100 % 100, v % 100,
           overridden ? " (the environment's other value ignored)" : "");
    printf("times: per call, CUDA-graph replay per rank (lorafuse also in a host loop), median of %d replays, the "
           "slowest rank\n", TP_REPS);
    tp_bench b = {.parts = parts, .opts = o};
    b.nccl = calloc((size_t)parts, sizeof *b.nccl);
    b.ok = calloc((size_t)parts, sizeof *b.ok);
    b.value = calloc((size_t)parts, sizeof *b.value);
    b.y_tp = calloc((size_t)parts, sizeof *b.y_tp);
    b.res = calloc(TP_SHAPES * TP_TOKENS, sizeof *b.res);
    b.y_single = malloc(bytes_of(TP_MAX_M, 14336)); /* the largest y of the cases */
    tp_rank *ranks = calloc((size_t)parts, sizeof *ranks);
    pthread_t *threads = calloc((size_t)parts, sizeof *threads);
    int host_ok = b.nccl && b.ok && b.value && b.y_tp && b.res && b.y_single && ranks && threads;
    for (int p = 0; p < parts && host_ok; p++)
        host_ok = (b.y_tp[p] = malloc(bytes_of(TP_MAX_M, 14336))) != NULL;
    int rc = EXIT_PASS;
    if (!host_ok) {
        lf_cli_error("bench --tp: out of host memory");
        rc = EXIT_RUNTIME;
    } else if (!nccl_ok(0, ncclCommInitAll(b.nccl, parts, NULL), "ncclCommInitAll")) {
        rc = EXIT_RUNTIME;
        memset(b.nccl, 0, (size_t)parts * sizeof *b.nccl);
    } else {
        pthread_barrier_init(&b.barrier, NULL, (unsigned)parts);
        int started = 0;
        for (; started < parts; started++) {
            ranks[started] = (tp_rank){.b = &b, .rank = started};
            if (pthread_create(&threads[started], NULL, rank_main, &ranks[started]) != 0)
                break;
        }
        /* A rank that did not start would leave the others at the first barrier for ever. */
        if (started < parts) {
            lf_cli_error("bench --tp: cannot start thread %d of %d", started, parts);
            exit(EXIT_RUNTIME);
        }
        rank_outcome all = {0, 0};
        for (int p = 0; p < parts; p++) {
            rank_outcome *out = NULL;
            pthread_join(threads[p], (void **)&out);
            all.failed_check |= !out || out->failed_check;
            all.runtime_error |= !out || out->runtime_error;
            free(out);
        }
        pthread_barrier_destroy(&b.barrier);
        print_table(&b);
        if (o->json_path && b.count && !write_tp_json(&b, o->json_path))
            all.runtime_error = 1;
        if (all.failed_check)
            lf_cli_error("bench --tp: a check failed: that case was not timed");
        rc = all.failed_check ? EXIT_NUMERIC : all.runtime_error ? EXIT_RUNTIME : EXIT_PASS;
    }
    for (int p = 0; b.nccl && p < parts; p++)
        if (b.nccl[p])
            ncclCommDestroy(b.nccl[p]);
    for (int p = 0; b.y_tp && p < parts; p++)
        free(b.y_tp[p]);
    free(b.nccl), free(b.ok), free(b.value), free(b.y_tp), free(b.res), free(b.y_single), free(ranks), free(threads);
    return rc;
}

#endif /* LF_HAVE_NCCL */

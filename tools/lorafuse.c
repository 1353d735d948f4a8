/*
 * lorafuse — the command-line tool: `bench`, `check`, `help`, `--version`.
 *
 *   lorafuse bench                      the seed's LoRALayer problem (f32, 128×512→512, r 8, scale 2)
 *   lorafuse bench --m 16 --k 4096 --n 4096 --rank 16 --dtype bf16
 *   lorafuse bench --suite --json bench/results/h100.json
 *   lorafuse check --m 37 --k 129 --n 67 --rank 7 --dtype bf16
 *
 * bench measures lorafuse's fused op beside the baselines of the same backend, measured in the same
 * run (the base GEMM alone and the unfused PyTorch/PEFT sequence), and never times an op before it
 * has been checked against the double-precision reference. check runs the fused delta and the fused
 * layer on random inputs against the reference.
 *
 * Exit status: 0 success, 1 a numerical check failed, 2 invalid options, 3 a runtime failure (out of
 * memory, device error, unsupported request, a JSON file that cannot be written).
 *
 * Device memory only goes through lf_malloc/lf_memcpy, so this file needs no CUDA header. It uses the
 * backend's benchmark hooks (lf_backend_ops in lf_internal.h) through ctx->ops.
 */
#define _GNU_SOURCE /* sched_getaffinity, popen, localtime_r, fsync */

#include "lf_dtype.h"
#include "lf_internal.h"
#include "cpu/lora_ref.h"
#include "lorafuse.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_PASS = 0, EXIT_NUMERIC = 1, EXIT_USAGE = 2, EXIT_RUNTIME = 3 };

/* Limits and budgets, with the reasons behind them. */
#define MAX_DIM ((int64_t)1 << 31)    /* no real layer is larger; keeps byte counts far from overflow */
#define DEFAULT_ITERS 100             /* the prototype's benchmark ran 100 iterations */
#define TIME_BUDGET_US 1.5e6          /* one adaptive measurement stays within ~1-2 s */
#define MIN_TIMED_CALLS 3             /* a median of fewer calls means nothing */
#define FULL_CHECK_MAX_FLOPS 2e10     /* beyond this the double reference takes too long: sample rows */
#define SAMPLE_BLOCK_ROWS 8           /* rows checked at the start, middle and end when sampling */
#define CPU_SUITE_MAX_BASE_FLOPS 2e11 /* ~200 GFLOP: minutes per call on a 2-core CPU */
#define GUARD_BYTES 256               /* canaries on both sides of y; keeps y 64-byte aligned */
#define GUARD_BYTE 0xA5
#define CHECK_CHUNK_ELEMS ((int64_t)1 << 20) /* reference rows compared per chunk: bounds memory */

static const char *progname = "lorafuse";

/* ============================================================================================== */
/* Messages                                                                                       */
/* ============================================================================================== */

static void errorf(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

static void errorf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", progname);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* A failing library call: its status and the context's own sentence about it. */
static void report_lf_error(lf_context *ctx, const char *what, lf_status st)
{
    const char *detail = ctx ? lf_context_last_error(ctx) : "";
    errorf("%s failed: %s (%s)%s%s", what, lf_status_name(st), lf_status_string(st),
           detail && *detail ? ": " : "", detail ? detail : "");
}

/* Statuses that mean "the request was invalid" map to the usage exit status; the rest are runtime. */
static int exit_status_of(lf_status st)
{
    switch (st) {
    case LF_OK:
        return EXIT_PASS;
    case LF_ERR_INVALID_VALUE:
    case LF_ERR_SHAPE_MISMATCH:
    case LF_ERR_BAD_STRIDE:
    case LF_ERR_OVERFLOW:
    case LF_ERR_DTYPE_MISMATCH:
        return EXIT_USAGE;
    default:
        return EXIT_RUNTIME;
    }
}

/* ============================================================================================== */
/* Options                                                                                        */
/* ============================================================================================== */

enum { CMD_BENCH = 1u << 0, CMD_CHECK = 1u << 1 };

typedef struct options {
    int64_t m, k, n, rank;
    lf_dtype dtype;
    lf_backend backend;
    lf_layout layout;
    double scale, beta;
    int64_t bias;    /* flag */
    int64_t iters;   /* 0 = adaptive */
    int64_t threads; /* 0 = one per core (the library's default) */
    int64_t seed;
    int64_t suite, suite_all;
    const char *json_path;
    int threads_given;
    unsigned shape_given; /* which shape options were given: they conflict with --suite */
} options;

static options default_options(void)
{
    /* The prototype's LoRALayer benchmark: batch 1 × seq 128, 512 → 512, rank 8, scale 2, f32. */
    options o = {.m = 128, .k = 512, .n = 512, .rank = 8, .dtype = LF_F32, .backend = LF_BACKEND_AUTO,
                 .layout = LF_LAYOUT_PEFT, .scale = 2.0, .beta = 0.0, .seed = 1};
    return o;
}

typedef enum opt_kind { OPT_INT, OPT_REAL, OPT_DTYPE, OPT_BACKEND, OPT_LAYOUT, OPT_FLAG, OPT_PATH } opt_kind;

typedef struct opt_spec {
    const char *name;
    opt_kind kind;
    size_t offset;    /* into options */
    int64_t min, max; /* OPT_INT */
    unsigned cmds;    /* commands that accept it */
    int is_shape;     /* conflicts with --suite */
    const char *arg, *help;
} opt_spec;

#define OFF(field) offsetof(options, field)
#define BOTH (CMD_BENCH | CMD_CHECK)
static const opt_spec opt_table[] = {
    {"m", OPT_INT, OFF(m), 1, MAX_DIM, BOTH, 1, "M", "tokens (rows of x and y)                [128]"},
    {"k", OPT_INT, OFF(k), 1, MAX_DIM, BOTH, 1, "K", "input features                          [512]"},
    {"n", OPT_INT, OFF(n), 1, MAX_DIM, BOTH, 1, "N", "output features                         [512]"},
    {"rank", OPT_INT, OFF(rank), 1, LF_MAX_RANK, BOTH, 1, "R", "LoRA rank, 1..1024                      [8]"},
    {"dtype", OPT_DTYPE, OFF(dtype), 0, 0, BOTH, 1, "T", "f32 | f16 | bf16                        [f32]"},
    {"backend", OPT_BACKEND, OFF(backend), 0, 0, BOTH, 0, "B", "auto | cpu | cuda                       [auto]"},
    {"layout", OPT_LAYOUT, OFF(layout), 0, 0, BOTH, 0, "L", "peft (W [N,K]) | kn (W [K,N])           [peft]"},
    {"scale", OPT_REAL, OFF(scale), 0, 0, BOTH, 1, "S", "LoRA scale s (lora_alpha / r)           [2]"},
    {"beta", OPT_REAL, OFF(beta), 0, 0, BOTH, 1, "B", "y = beta*y + ...; nonzero reads y       [0]"},
    {"bias", OPT_FLAG, OFF(bias), 0, 0, BOTH, 1, NULL, "add a bias vector                       [off]"},
    {"seed", OPT_INT, OFF(seed), 0, INT64_MAX, BOTH, 0, "S", "seed of the random inputs               [1]"},
    {"threads", OPT_INT, OFF(threads), 0, 4096, BOTH, 0, "N", "CPU worker threads, 0 = one per core    [0]"},
    {"iters", OPT_INT, OFF(iters), 1, 1000000000, CMD_BENCH, 0, "N",
     "timed calls per measurement      [100; adaptive: >= 3, ~1.5 s]"},
    {"suite", OPT_FLAG, OFF(suite), 0, 0, CMD_BENCH, 0, NULL, "run the standard suite (docs: Benchmarks)"},
    {"suite-all", OPT_FLAG, OFF(suite_all), 0, 0, CMD_BENCH, 0, NULL,
     "with --suite on the CPU: also cases over 200 GFLOP"},
    {"json", OPT_PATH, OFF(json_path), 0, 0, CMD_BENCH, 0, "FILE", "write the results as JSON (atomically)"},
};
#define OPT_COUNT (sizeof opt_table / sizeof opt_table[0])

static void print_usage(FILE *f)
{
    fprintf(f,
            "usage: %s <command> [options]\n"
            "\n"
            "commands:\n"
            "  bench      time the fused LoRA delta and layer beside the base GEMM and the unfused\n"
            "             PyTorch/PEFT sequence (default: the seed's f32 128x512x512 rank-8 problem)\n"
            "  check      run the fused delta and layer on random inputs against the fp64 reference\n"
            "  help       this text           --version   versions of the tool and library\n"
            "\n"
            "options (as --name VALUE or --name=VALUE):\n",
            progname);
    for (size_t i = 0; i < OPT_COUNT; i++) {
        const opt_spec *s = &opt_table[i];
        char left[32];
        snprintf(left, sizeof left, "--%s%s%s", s->name, s->arg ? " " : "", s->arg ? s->arg : "");
        fprintf(f, "  %-16s %s%s\n", left, s->help, s->cmds == CMD_BENCH ? "  (bench)" : "");
    }
    fprintf(f,
            "\n"
            "The op: y = beta*y + x*W^T + bias + s*(x*A^T)*B^T; `delta` is the same without x*W^T.\n"
            "Tolerance of check, per element (u = unit roundoff of the dtype: 2^-24, 2^-11, 2^-8):\n"
            "  u|ref| + 2(K+r+4) 2^-24 sum|terms| + half the smallest subnormal (as tests/lf_test.c):\n"
            "one final rounding plus fp32 accumulation error.\n"
            "Times are per call: the median of the timed calls on the CPU (fused_host_us is then the same\n"
            "measurement as fused_us); CUDA-graph replay (fused_us) and a host loop (fused_host_us) on CUDA.\n"
            "exit status: 0 ok, 1 numerical failure, 2 invalid options, 3 runtime error\n");
}

/* Full-string integer parse: no leading blanks, no trailing junk. 1 ok, 0 not an integer, -1 overflow. */
static int parse_int64(const char *s, int64_t *out)
{
    if (!s || !*s || (*s != '-' && *s != '+' && (*s < '0' || *s > '9')))
        return 0;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0')
        return 0;
    if (errno == ERANGE)
        return -1;
    *out = (int64_t)v;
    return 1;
}

static int parse_real(const char *s, double *out)
{
    if (!s || !*s || strchr(" \t\n\v\f\r", *s))
        return 0;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno == ERANGE || end == s || *end != '\0' || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

static int parse_dtype(const char *s, lf_dtype *out)
{
    static const lf_dtype all[] = {LF_F32, LF_F16, LF_BF16};
    for (size_t i = 0; i < 3; i++)
        if (strcmp(s, lf_dtype_name(all[i])) == 0) {
            *out = all[i];
            return 1;
        }
    return 0;
}

static int parse_backend(const char *s, lf_backend *out)
{
    static const lf_backend all[] = {LF_BACKEND_AUTO, LF_BACKEND_CPU, LF_BACKEND_CUDA};
    for (size_t i = 0; i < 3; i++)
        if (strcmp(s, lf_backend_name(all[i])) == 0) {
            *out = all[i];
            return 1;
        }
    return 0;
}

static int parse_layout(const char *s, lf_layout *out)
{
    if (strcmp(s, "peft") == 0)
        *out = LF_LAYOUT_PEFT;
    else if (strcmp(s, "kn") == 0)
        *out = LF_LAYOUT_KN;
    else
        return 0;
    return 1;
}

static const char *cmd_name(unsigned cmd) { return cmd == CMD_BENCH ? "bench" : "check"; }

/* Stores one option's value; prints why on failure. */
static int set_option(options *o, const opt_spec *s, const char *val)
{
    char *base = (char *)o + s->offset;
    switch (s->kind) {
    case OPT_INT: {
        int64_t v;
        int got = parse_int64(val, &v);
        if (got <= 0) {
            errorf("--%s: '%s' is %s", s->name, val, got ? "out of range" : "not an integer");
            return 0;
        }
        if (v < s->min || v > s->max) {
            errorf("--%s: %lld is outside %lld..%lld", s->name, (long long)v, (long long)s->min,
                   (long long)s->max);
            return 0;
        }
        memcpy(base, &v, sizeof v);
        return 1;
    }
    case OPT_REAL: {
        double v;
        if (!parse_real(val, &v)) {
            errorf("--%s: '%s' is not a finite number", s->name, val);
            return 0;
        }
        if (fabs(v) > 3.4e38) {
            errorf("--%s: %g does not fit in a float", s->name, v);
            return 0;
        }
        memcpy(base, &v, sizeof v);
        return 1;
    }
    case OPT_DTYPE:
        if (!parse_dtype(val, (lf_dtype *)(void *)base)) {
            errorf("--dtype: unknown dtype '%s' (f32, f16 or bf16)", val);
            return 0;
        }
        return 1;
    case OPT_BACKEND:
        if (!parse_backend(val, (lf_backend *)(void *)base)) {
            errorf("--backend: unknown backend '%s' (auto, cpu or cuda)", val);
            return 0;
        }
        return 1;
    case OPT_LAYOUT:
        if (!parse_layout(val, (lf_layout *)(void *)base)) {
            errorf("--layout: unknown layout '%s' (peft or kn)", val);
            return 0;
        }
        return 1;
    case OPT_PATH:
        if (!*val) {
            errorf("--%s: empty file name", s->name);
            return 0;
        }
        memcpy(base, &val, sizeof val);
        return 1;
    case OPT_FLAG: {
        int64_t one = 1;
        memcpy(base, &one, sizeof one);
        return 1;
    }
    }
    return 0;
}

/* Parses argv[first..argc) for `cmd`. Returns 1 on success, 0 on invalid options (already said why),
 * -1 when --help was asked for. */
static int parse_options(int argc, char **argv, int first, unsigned cmd, options *o)
{
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return -1;
        if (strncmp(arg, "--", 2) != 0) {
            errorf("%s: unexpected argument '%s' (options start with --)", cmd_name(cmd), arg);
            return 0;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const opt_spec *s = NULL;
        for (size_t j = 0; j < OPT_COUNT; j++)
            if (strlen(opt_table[j].name) == len && strncmp(opt_table[j].name, name, len) == 0)
                s = &opt_table[j];
        if (!s) {
            errorf("%s: unknown option '%.*s' (see '%s help')", cmd_name(cmd), (int)(len + 2), arg, progname);
            return 0;
        }
        if (!(s->cmds & cmd)) {
            errorf("--%s is an option of 'bench' only", s->name);
            return 0;
        }
        const char *val = NULL;
        if (s->kind == OPT_FLAG) {
            if (eq) {
                errorf("--%s takes no value", s->name);
                return 0;
            }
        } else if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i]; /* taken as is, so "--m -1" reports a negative size, not an option */
        } else {
            errorf("--%s needs a value (%s)", s->name, s->arg);
            return 0;
        }
        if (!set_option(o, s, val))
            return 0;
        if (s->is_shape)
            o->shape_given |= 1u << (s - opt_table);
        if (s->offset == OFF(threads))
            o->threads_given = 1;
    }
    if (o->suite_all && !o->suite) {
        errorf("--suite-all goes with --suite");
        return 0;
    }
    if (o->suite && o->shape_given) {
        errorf("--suite runs fixed shapes and dtypes: drop --m/--k/--n/--rank/--dtype/--scale/--beta/--bias");
        return 0;
    }
    return 1;
}

/* ============================================================================================== */
/* Host buffers, random inputs                                                                    */
/* ============================================================================================== */

/* splitmix64: tiny, good enough for test data, the same on every platform. */
static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Nonzero values of magnitude in [amp/8, amp), random sign: a zero B (PEFT's init) would hide the
 * LoRA term, and zeros elsewhere would hide missing terms. */
static void fill_random(void *buf, lf_dtype dtype, int64_t count, double amp, uint64_t seed)
{
    uint64_t state = seed;
    for (int64_t i = 0; i < count; i++) {
        uint64_t r = rng_next(&state);
        double u = (double)(r >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) */
        double v = amp * (0.125 + 0.875 * u);
        lf_store_f32(buf, dtype, i, (float)((r & 1) ? -v : v));
    }
}

static void fill_nan(void *buf, lf_dtype dtype, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        lf_store_f32(buf, dtype, i, NAN);
}

/* count·esize in size_t, or 0 with *ok cleared on overflow. */
static size_t bytes_of(int64_t count, lf_dtype dtype, int *ok)
{
    size_t b;
    if (count < 0 || __builtin_mul_overflow((size_t)count, lf_dtype_size(dtype), &b)) {
        *ok = 0;
        return 0;
    }
    return b;
}

static int64_t elems_of(int64_t rows, int64_t cols, int *ok)
{
    int64_t e;
    if (__builtin_mul_overflow(rows, cols, &e)) {
        *ok = 0;
        return 0;
    }
    return e;
}

/* ============================================================================================== */
/* Workload: one problem's operands on the host (for the reference) and in backend memory        */
/* ============================================================================================== */

typedef struct operand_buf {
    void *host; /* the values generated (x, w, bias, a, b) or y's initial value */
    void *dev;  /* lf_malloc'd copy */
    size_t bytes; /* of the operand itself (y's guards not counted) */
} operand_buf;

typedef struct problem_cfg {
    int64_t m, k, n, rank;
    lf_dtype dtype;
    lf_layout layout;
    float scale, beta;
    int bias;
    uint64_t seed;
} problem_cfg;

enum { OPD_X, OPD_W, OPD_BIAS, OPD_A, OPD_B, OPD_Y, OPD_COUNT };

typedef struct workload {
    lf_context *ctx;
    problem_cfg cfg;
    operand_buf op[OPD_COUNT]; /* op[OPD_Y].dev holds guards around y; .host is y's initial value */
    size_t y_guard;            /* bytes before and after y */
    lf_matrix dev[OPD_COUNT];  /* views of backend memory */
    lf_matrix host[OPD_COUNT]; /* views of the host copies */
    void *ws;                  /* baseline workspace (backend memory) */
    size_t ws_bytes;
} workload;

static void workload_free(workload *wl)
{
    for (int i = 0; i < OPD_COUNT; i++) {
        if (wl->op[i].dev)
            lf_free(wl->ctx, wl->op[i].dev);
        free(wl->op[i].host);
    }
    if (wl->ws)
        lf_free(wl->ctx, wl->ws);
    memset(wl->op, 0, sizeof wl->op);
    wl->ws = NULL;
}

/* Shapes of the operands in the chosen layout. */
static void operand_shapes(const problem_cfg *c, int64_t rows[OPD_COUNT], int64_t cols[OPD_COUNT])
{
    const int peft = c->layout == LF_LAYOUT_PEFT;
    rows[OPD_X] = c->m, cols[OPD_X] = c->k;
    rows[OPD_W] = peft ? c->n : c->k, cols[OPD_W] = peft ? c->k : c->n;
    rows[OPD_BIAS] = 1, cols[OPD_BIAS] = c->n;
    rows[OPD_A] = peft ? c->rank : c->k, cols[OPD_A] = peft ? c->k : c->rank;
    rows[OPD_B] = peft ? c->n : c->rank, cols[OPD_B] = peft ? c->rank : c->n;
    rows[OPD_Y] = c->m, cols[OPD_Y] = c->n;
}

/* Says how many bytes the operands need, or that they overflow. */
static int workload_sizes(const problem_cfg *c, size_t bytes[OPD_COUNT])
{
    int64_t rows[OPD_COUNT], cols[OPD_COUNT];
    operand_shapes(c, rows, cols);
    int ok = 1;
    for (int i = 0; i < OPD_COUNT; i++)
        bytes[i] = bytes_of(elems_of(rows[i], cols[i], &ok), c->dtype, &ok);
    return ok && bytes[OPD_Y] <= SIZE_MAX - 2 * GUARD_BYTES;
}

static lf_status upload(lf_context *ctx, void *dev, const void *host, size_t bytes)
{
    lf_status st = lf_memcpy(ctx, dev, host, bytes, LF_COPY_HOST_TO_DEVICE);
    if (st != LF_OK)
        report_lf_error(ctx, "lf_memcpy (host to device)", st);
    return st;
}

/* Generates the inputs on the host and uploads them. Scales keep every value O(1) whatever K and r. */
static lf_status workload_create(lf_context *ctx, const problem_cfg *c, workload *wl)
{
    memset(wl, 0, sizeof *wl);
    wl->ctx = ctx;
    wl->cfg = *c;
    wl->y_guard = GUARD_BYTES;
    int64_t rows[OPD_COUNT], cols[OPD_COUNT];
    size_t bytes[OPD_COUNT];
    operand_shapes(c, rows, cols);
    if (!workload_sizes(c, bytes)) {
        errorf("the operands of this shape do not fit in memory's address space");
        return LF_ERR_OVERFLOW;
    }
    const double amp[OPD_COUNT] = {
        [OPD_X] = 1.0, [OPD_W] = 1.0 / sqrt((double)c->k), [OPD_BIAS] = 0.5,
        [OPD_A] = 1.0 / sqrt((double)c->k), [OPD_B] = 1.0 / sqrt((double)c->rank), [OPD_Y] = 1.0,
    };
    for (int i = 0; i < OPD_COUNT; i++) {
        operand_buf *b = &wl->op[i];
        b->bytes = bytes[i];
        if (i == OPD_BIAS && !c->bias)
            continue;
        size_t dev_bytes = i == OPD_Y ? bytes[i] + 2 * wl->y_guard : bytes[i];
        b->host = malloc(bytes[i] ? bytes[i] : 1);
        if (!b->host) {
            errorf("out of host memory (%.1f MB for one operand)", (double)bytes[i] / 1e6);
            workload_free(wl);
            return LF_ERR_OUT_OF_MEMORY;
        }
        /* y's initial value matters only when beta != 0; otherwise it is poison. */
        if (i == OPD_Y && c->beta == 0.0f)
            fill_nan(b->host, c->dtype, rows[i] * cols[i]);
        else
            fill_random(b->host, c->dtype, rows[i] * cols[i], amp[i], c->seed * 0x100000001b3ull + (uint64_t)i);
        lf_status st = lf_malloc(ctx, &b->dev, dev_bytes);
        if (st != LF_OK) {
            report_lf_error(ctx, "lf_malloc", st);
            workload_free(wl);
            return st;
        }
        void *data = i == OPD_Y ? (char *)b->dev + wl->y_guard : b->dev;
        if (i != OPD_Y && (st = upload(ctx, b->dev, b->host, bytes[i])) != LF_OK) {
            workload_free(wl);
            return st;
        }
        wl->dev[i] = lf_matrix_make(c->dtype, data, rows[i], cols[i]);
        wl->host[i] = lf_matrix_make(c->dtype, b->host, rows[i], cols[i]);
    }
    return LF_OK;
}

/* The validated problem for the delta (with_w = 0) or the layer, on device or host views. The
 * library's own validation runs here, so what bench times is what lf_lora_forward accepts. */
static lf_status workload_problem(workload *wl, int with_w, int on_host, lf_lora_problem *p)
{
    const lf_matrix *v = on_host ? wl->host : wl->dev;
    const problem_cfg *c = &wl->cfg;
    lf_status st = lf_lora_problem_from_views(wl->ctx, c->layout, &v[OPD_X], with_w ? &v[OPD_W] : NULL,
                                              c->bias ? &v[OPD_BIAS] : NULL, &v[OPD_A], &v[OPD_B],
                                              c->scale, c->beta, &v[OPD_Y], p);
    if (st != LF_OK)
        report_lf_error(wl->ctx, "lf_lora_problem_from_views", st);
    return st;
}

static lf_status run_fused(workload *wl, int with_w)
{
    const lf_matrix *v = wl->dev;
    const problem_cfg *c = &wl->cfg;
    return lf_lora_forward(wl->ctx, c->layout, &v[OPD_X], with_w ? &v[OPD_W] : NULL,
                           c->bias ? &v[OPD_BIAS] : NULL, &v[OPD_A], &v[OPD_B], c->scale, c->beta,
                           &v[OPD_Y]);
}

/* ============================================================================================== */
/* Checking against the reference                                                                 */
/* ============================================================================================== */

typedef struct check_result {
    double max_abs_err, max_abs_ref;
    double worst_ratio, worst_err, worst_tol; /* the element closest to (or beyond) its tolerance */
    int64_t worst_i, worst_j;
    int64_t failures, rows_checked;
    int guards_ok;
} check_result;

static double unit_roundoff(lf_dtype d)
{
    return d == LF_BF16 ? 0x1p-8 : d == LF_F16 ? 0x1p-11 : 0x1p-24;
}

/* The tolerance of one element, the same as tests/lf_test.c (lft_tolerance, where its derivation is):
 * the final rounding to the dtype, plus an fp32 evaluation's accumulation error bounded through the
 * reference's mag (Σ|terms|) with c = 2, plus half the dtype's smallest subnormal spacing. The
 * contract is "accumulate in fp32, round once": an intermediate rounded to f16/bf16 fails it. */
static double tolerance(const problem_cfg *c, double exact, double mag)
{
    const double eta = c->dtype == LF_F16 ? 0x1p-25 : c->dtype == LF_BF16 ? 0x1p-134 : 0x1p-150;
    return unit_roundoff(c->dtype) * fabs(exact) + 2.0 * (double)(c->k + c->rank + 4) * 0x1p-24 * mag + eta;
}

/* Compares rows [i0, i1) of the kernel's y (dense, host) with the reference. */
static void compare_rows(const workload *wl, const lf_lora_problem *hp, const void *got, int64_t i0, int64_t i1,
                         double *ref, double *mag, check_result *res)
{
    const problem_cfg *c = &wl->cfg;
    const size_t es = lf_dtype_size(c->dtype);
    lf_lora_problem sub = *hp;
    sub.m = i1 - i0;
    sub.x = (const char *)hp->x + (size_t)(i0 * hp->ldx) * es;
    sub.y = (char *)hp->y + (size_t)(i0 * hp->ldy) * es; /* initial y: read when beta != 0 */
    lf_ref_lora_forward_f64(&sub, ref, mag);
    for (int64_t i = i0; i < i1; i++) {
        for (int64_t j = 0; j < c->n; j++) {
            const int64_t e = (i - i0) * c->n + j;
            const double want = ref[e];
            const double have = lf_load_f32(got, c->dtype, i * c->n + j);
            const double tol = tolerance(c, want, mag[e]);
            double err = fabs(have - want);
            if (!isfinite(have))
                err = INFINITY; /* poison left in place, or an overflow: never within tolerance */
            if (err > res->max_abs_err)
                res->max_abs_err = err;
            if (fabs(want) > res->max_abs_ref)
                res->max_abs_ref = fabs(want);
            const double ratio = err / tol;
            if (!(ratio <= 1.0))
                res->failures++;
            if (ratio > res->worst_ratio || res->worst_i < 0) {
                res->worst_ratio = ratio, res->worst_err = err, res->worst_tol = tol;
                res->worst_i = i, res->worst_j = j;
            }
        }
    }
    res->rows_checked += i1 - i0;
}

static int guards_intact(const unsigned char *buf, size_t guard, size_t body)
{
    for (size_t i = 0; i < guard; i++)
        if (buf[i] != GUARD_BYTE || buf[guard + body + i] != GUARD_BYTE)
            return 0;
    return 1;
}

/* Row ranges to check: everything, or blocks at the start, middle and end when the reference would
 * take too long (a wrong kernel shows up in every row block of a random problem). */
static int check_ranges(int64_t m, int full, int64_t ranges[3][2])
{
    if (full || m <= 3 * SAMPLE_BLOCK_ROWS) {
        ranges[0][0] = 0, ranges[0][1] = m;
        return 1;
    }
    const int64_t b = SAMPLE_BLOCK_ROWS, mid = m / 2 - b / 2;
    ranges[0][0] = 0, ranges[0][1] = b;
    ranges[1][0] = mid, ranges[1][1] = mid + b;
    ranges[2][0] = m - b, ranges[2][1] = m;
    return 3;
}

static double op_flops(const problem_cfg *c, int with_w)
{
    double m = (double)c->m, k = (double)c->k, n = (double)c->n, r = (double)c->rank;
    return (with_w ? 2 * m * k * n : 0) + 2 * m * k * r + 2 * m * r * n;
}

/* Runs the fused op once on poisoned output with canaries around it and checks every checked element
 * against the reference. Returns LF_OK when it could run (res says whether it passed). */
static lf_status verify_op(workload *wl, int with_w, int full, check_result *res)
{
    lf_context *ctx = wl->ctx;
    const problem_cfg *c = &wl->cfg;
    operand_buf *yb = &wl->op[OPD_Y];
    const size_t guard = wl->y_guard, total = yb->bytes + 2 * guard;
    memset(res, 0, sizeof *res);
    res->worst_i = -1;

    lf_lora_problem hp;
    lf_status st = workload_problem(wl, with_w, 1, &hp);
    if (st != LF_OK)
        return st;
    unsigned char *img = malloc(total);
    const int64_t chunk_rows = c->n >= CHECK_CHUNK_ELEMS ? 1 : CHECK_CHUNK_ELEMS / c->n;
    const int64_t chunk = chunk_rows < c->m ? chunk_rows : c->m;
    double *ref = malloc((size_t)(chunk * c->n) * sizeof(double));
    double *mag = malloc((size_t)(chunk * c->n) * sizeof(double));
    if (!img || !ref || !mag) {
        errorf("out of host memory for the reference check");
        st = LF_ERR_OUT_OF_MEMORY;
        goto done;
    }
    /* y image: canaries, then poison (beta = 0) or the initial y the reference also reads. */
    memset(img, GUARD_BYTE, total);
    memcpy(img + guard, yb->host, yb->bytes);
    if ((st = upload(ctx, yb->dev, img, total)) != LF_OK)
        goto done;
    if ((st = run_fused(wl, with_w)) != LF_OK) {
        report_lf_error(ctx, "lf_lora_forward", st);
        goto done;
    }
    if ((st = lf_synchronize(ctx)) != LF_OK) {
        report_lf_error(ctx, "lf_synchronize", st);
        goto done;
    }
    memset(img, 0, total);
    if ((st = lf_memcpy(ctx, img, yb->dev, total, LF_COPY_DEVICE_TO_HOST)) != LF_OK) {
        report_lf_error(ctx, "lf_memcpy (device to host)", st);
        goto done;
    }
    res->guards_ok = guards_intact(img, guard, yb->bytes);
    int64_t ranges[3][2];
    const int count = check_ranges(c->m, full, ranges);
    for (int r = 0; r < count; r++)
        for (int64_t i0 = ranges[r][0]; i0 < ranges[r][1]; i0 += chunk) {
            int64_t i1 = i0 + chunk < ranges[r][1] ? i0 + chunk : ranges[r][1];
            compare_rows(wl, &hp, img + guard, i0, i1, ref, mag, res);
        }
done:
    free(img), free(ref), free(mag);
    return st;
}

static int check_passed(const check_result *r) { return r->failures == 0 && r->guards_ok; }

static void print_check(const char *op, const workload *wl, const check_result *r)
{
    printf("  %-6s max |err| %.3e   max rel err %.3e (to max |ref| %.3g)   worst err/tol %.3g "
           "(tol there %.3e)   rows %lld/%lld   %s",
           op, r->max_abs_err, r->max_abs_ref > 0 ? r->max_abs_err / r->max_abs_ref : 0.0, r->max_abs_ref,
           r->worst_ratio, r->worst_tol, (long long)r->rows_checked, (long long)wl->cfg.m,
           check_passed(r) ? "PASS" : "FAIL");
    if (r->failures)
        printf("  (%lld elements out of tolerance; worst at [%lld, %lld])", (long long)r->failures,
               (long long)r->worst_i, (long long)r->worst_j);
    if (!r->guards_ok)
        printf("  (wrote outside y: canaries overwritten)");
    putchar('\n');
}

/* ============================================================================================== */
/* Context and environment                                                                        */
/* ============================================================================================== */

static int open_context(const options *o, lf_context **ctx)
{
    lf_status st = lf_context_create(ctx, o->backend);
    if (st != LF_OK) {
        if (st == LF_ERR_BACKEND_UNAVAILABLE)
            errorf("the %s backend is not available (%s)", lf_backend_name(o->backend),
                   lf_cuda_backend_ops() ? "no usable CUDA device" : "this build has no CUDA backend");
        else
            report_lf_error(NULL, "lf_context_create", st);
        return exit_status_of(st) == EXIT_USAGE ? EXIT_USAGE : EXIT_RUNTIME;
    }
    if (o->threads_given && (st = lf_context_set_threads(*ctx, (int)o->threads)) != LF_OK) {
        report_lf_error(*ctx, "lf_context_set_threads", st);
        lf_context_destroy(*ctx);
        *ctx = NULL;
        return exit_status_of(st);
    }
    return EXIT_PASS;
}

/* Worker threads a CPU context uses: the number set, or one per core this process may run on. */
static int cpu_threads(const options *o)
{
    if (o->threads > 0)
        return (int)o->threads;
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void print_header(const char *cmd, const options *o, lf_context *ctx)
{
    lf_backend b = lf_context_backend(ctx);
    printf("lorafuse %s %s: backend %s%s, device %s", cmd, lf_version_string(), lf_backend_name(b),
           o->backend == LF_BACKEND_AUTO ? " (auto)" : "", lf_context_device_name(ctx));
    if (b == LF_BACKEND_CPU)
        printf(", %d thread%s", cpu_threads(o), cpu_threads(o) == 1 ? "" : "s");
    putchar('\n');
}

static problem_cfg cfg_of(const options *o)
{
    problem_cfg c = {.m = o->m, .k = o->k, .n = o->n, .rank = o->rank, .dtype = o->dtype,
                     .layout = o->layout, .scale = (float)o->scale, .beta = (float)o->beta,
                     .bias = o->bias != 0, .seed = (uint64_t)o->seed};
    return c;
}

static void print_problem(const problem_cfg *c)
{
    printf("problem: M %lld, K %lld, N %lld, rank %lld, %s, %s layout, scale %g, beta %g, bias %s\n",
           (long long)c->m, (long long)c->k, (long long)c->n, (long long)c->rank, lf_dtype_name(c->dtype),
           c->layout == LF_LAYOUT_PEFT ? "peft" : "kn", (double)c->scale, (double)c->beta,
           c->bias ? "yes" : "no");
}

/* ============================================================================================== */
/* check                                                                                          */
/* ============================================================================================== */

static int cmd_check(const options *o)
{
    lf_context *ctx = NULL;
    int rc = open_context(o, &ctx);
    if (rc != EXIT_PASS)
        return rc;
    print_header("check", o, ctx);
    problem_cfg c = cfg_of(o);
    print_problem(&c);
    printf("tolerance per element: u|ref| + 2(K+r+4) 2^-24 sum|terms| + eta, u = 2^%d (%s)\n",
           (int)log2(unit_roundoff(c.dtype)), lf_dtype_name(c.dtype));
    workload wl;
    lf_status st = workload_create(ctx, &c, &wl);
    if (st != LF_OK) {
        lf_context_destroy(ctx);
        return exit_status_of(st);
    }
    int failed = 0;
    for (int with_w = 0; with_w <= 1 && st == LF_OK; with_w++) {
        check_result r;
        st = verify_op(&wl, with_w, 1, &r);
        if (st == LF_OK) {
            print_check(with_w ? "layer" : "delta", &wl, &r);
            failed |= !check_passed(&r);
        }
    }
    workload_free(&wl);
    lf_context_destroy(ctx);
    if (st != LF_OK)
        return exit_status_of(st);
    printf("%s\n", failed ? "FAIL" : "PASS");
    return failed ? EXIT_NUMERIC : EXIT_PASS;
}

/* ============================================================================================== */
/* Timing                                                                                         */
/* ============================================================================================== */

typedef enum call_kind { CALL_FUSED, CALL_BASE, CALL_UNFUSED } call_kind;

/* What time_calls runs: one closure per measured sequence. */
typedef struct timed_call {
    workload *wl;
    call_kind kind;
    int with_w;
    lf_lora_problem prob; /* device problem, for the baselines */
} timed_call;

static lf_status timed_call_run(void *arg)
{
    timed_call *tc = arg;
    lf_context *ctx = tc->wl->ctx;
    switch (tc->kind) {
    case CALL_FUSED:
        return run_fused(tc->wl, tc->with_w);
    case CALL_BASE:
        return ctx->ops->baseline_base_gemm(ctx, &tc->prob, tc->wl->ws);
    case CALL_UNFUSED:
        return ctx->ops->baseline_unfused(ctx, &tc->prob, tc->wl->ws);
    }
    return LF_ERR_INTERNAL;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* Per-call time in µs, NAN when it cannot be measured (said why). One untimed call first: it builds
 * the plan and its workspace (never inside a graph capture) and tells how slow a call is, so that
 * without --iters one measurement stays within TIME_BUDGET_US. */
static double measure(timed_call *tc, lf_timing_mode mode, int64_t iters_opt, const char *what)
{
    lf_context *ctx = tc->wl->ctx;
    double t0 = now_us();
    lf_status st = timed_call_run(tc);
    if (st == LF_OK)
        st = lf_synchronize(ctx);
    double first = now_us() - t0;
    int iters = (int)iters_opt;
    if (iters_opt == 0) {
        iters = DEFAULT_ITERS;
        if (first * iters > TIME_BUDGET_US)
            iters = first * MIN_TIMED_CALLS > TIME_BUDGET_US ? MIN_TIMED_CALLS : (int)(TIME_BUDGET_US / first);
    }
    double us = NAN;
    if (st == LF_OK)
        st = ctx->ops->time_calls(ctx, timed_call_run, tc, iters, mode, &us);
    if (st != LF_OK) {
        report_lf_error(ctx, what, st);
        return NAN;
    }
    return us;
}

/* ============================================================================================== */
/* Results                                                                                        */
/* ============================================================================================== */

typedef struct op_result {
    char name[40];
    const char *op; /* "delta" | "layer" */
    problem_cfg cfg;
    double fused_us, fused_host_us, base_us, unfused_us; /* NAN: not measured */
    double bytes, flops;
} op_result;

typedef struct results {
    op_result *v;
    size_t count, cap;
} results;

static int results_push(results *r, const op_result *o)
{
    if (r->count == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        op_result *v = realloc(r->v, cap * sizeof *v);
        if (!v)
            return 0;
        r->v = v, r->cap = cap;
    }
    r->v[r->count++] = *o;
    return 1;
}

/* The fewest bytes the op must move: each input read once, y written once, y read when beta != 0. */
static double op_bytes(const problem_cfg *c, int with_w)
{
    const double es = (double)lf_dtype_size(c->dtype);
    const double m = (double)c->m, k = (double)c->k, n = (double)c->n, r = (double)c->rank;
    double elems = m * k + r * k + n * r + m * n;
    if (with_w)
        elems += n * k;
    if (c->bias)
        elems += n;
    if (c->beta != 0.0f)
        elems += m * n;
    return elems * es;
}

static double base_bytes(const problem_cfg *c)
{
    const double es = (double)lf_dtype_size(c->dtype);
    return ((double)c->m * (double)c->k + (double)c->n * (double)c->k + (double)c->m * (double)c->n) * es;
}

/* Set when a row beat the copy bandwidth: its data fit in cache, worth a footnote. */
static int g_over_copy;

static void print_timing_row(const char *label, double us, double host_us, double bytes, double flops,
                             double copy_gbps)
{
    if (isnan(us)) {
        printf("  %-16s %12s\n", label, "n/a");
        return;
    }
    const double gbps = bytes / us * 1e-3, gflops = flops / us * 1e-3;
    printf("  %-16s %12.2f", label, us);
    if (!isnan(host_us))
        printf(" %12.2f", host_us);
    else
        printf(" %12s", "-");
    printf(" %10.2f", gbps);
    if (copy_gbps > 0) {
        printf(" %7.1f%%", 100.0 * gbps / copy_gbps);
        g_over_copy |= gbps > copy_gbps;
    } else
        printf(" %8s", "-");
    printf(" %10.1f\n", gflops);
}

static void print_ratio(const char *label, double a, double b)
{
    if (!isnan(a) && !isnan(b) && b > 0)
        printf("  %-30s %.2fx\n", label, a / b);
}

/* ============================================================================================== */
/* bench: one case                                                                                */
/* ============================================================================================== */

enum { OP_DELTA = 1u << 0, OP_LAYER = 1u << 1 }; /* which ops a case runs */

typedef struct case_outcome {
    int failed_check; /* a fused op disagreed with the reference: it was not timed */
    int runtime_error;
} case_outcome;

/* Allocates the baselines' workspace, sized for the larger of the delta and layer problems. */
static lf_status alloc_baseline_ws(workload *wl, const lf_lora_problem *pd, const lf_lora_problem *pl)
{
    const lf_backend_ops *bops = wl->ctx->ops;
    if (!bops->baseline_workspace_bytes)
        return LF_OK;
    size_t a = bops->baseline_workspace_bytes(pd), b = bops->baseline_workspace_bytes(pl);
    wl->ws_bytes = a > b ? a : b;
    lf_status st = lf_malloc(wl->ctx, &wl->ws, wl->ws_bytes);
    if (st != LF_OK)
        report_lf_error(wl->ctx, "lf_malloc (baseline workspace)", st);
    return st;
}

/* Correctness first: checks each requested op; ok[with_w] says which may be timed. */
static void bench_check_ops(workload *wl, unsigned ops, int ok[2], case_outcome *oc)
{
    const problem_cfg *c = &wl->cfg;
    for (int with_w = 0; with_w <= 1; with_w++) {
        ok[with_w] = 0;
        if (!(ops & (with_w ? OP_LAYER : OP_DELTA)))
            continue;
        const int full = op_flops(c, with_w) <= FULL_CHECK_MAX_FLOPS;
        check_result r;
        if (verify_op(wl, with_w, full, &r) != LF_OK) {
            oc->runtime_error = 1;
            continue;
        }
        print_check(with_w ? "layer" : "delta", wl, &r);
        if (!full)
            printf("         (checked %lld sampled rows: the full fp64 reference is %.1e flop, over %.0e)\n",
                   (long long)r.rows_checked, op_flops(c, with_w), FULL_CHECK_MAX_FLOPS);
        ok[with_w] = check_passed(&r);
        oc->failed_check |= !ok[with_w];
    }
}

/* Times one fused op (both modes on CUDA) and its unfused sequence; prints their rows. */
static void bench_time_op(workload *wl, int with_w, const lf_lora_problem *p, const options *o, double copy_gbps,
                          op_result *r)
{
    const lf_backend_ops *bops = wl->ctx->ops;
    const problem_cfg *c = &wl->cfg;
    r->op = with_w ? "layer" : "delta";
    r->cfg = *c;
    r->bytes = op_bytes(c, with_w);
    r->flops = op_flops(c, with_w);
    timed_call fused = {wl, CALL_FUSED, with_w, *p};
    timed_call unfused = {wl, CALL_UNFUSED, with_w, *p};
    r->fused_us = measure(&fused, LF_TIME_GRAPH, o->iters, "timing the fused op");
    /* On the CPU a graph is a host loop: both fields hold the one host measurement. */
    r->fused_host_us = lf_context_backend(wl->ctx) == LF_BACKEND_CUDA
                           ? measure(&fused, LF_TIME_HOST_LOOP, o->iters, "timing the fused op (host loop)")
                           : r->fused_us;
    r->unfused_us = bops->baseline_unfused ? measure(&unfused, LF_TIME_GRAPH, o->iters, "timing the unfused sequence")
                                           : NAN;
    print_timing_row(with_w ? "fused layer" : "fused delta", r->fused_us, r->fused_host_us, r->bytes, r->flops,
                     copy_gbps);
    print_timing_row(with_w ? "unfused layer" : "unfused delta", r->unfused_us, NAN, r->bytes, r->flops, copy_gbps);
}

/* What the fused op costs over the base GEMM, and what the unfused sequence costs. */
static void print_ratios(const op_result *r)
{
    if (strcmp(r->op, "layer") == 0) {
        print_ratio("fused layer / base GEMM", r->fused_us, r->base_us);
        print_ratio("unfused layer / base GEMM", r->unfused_us, r->base_us);
        print_ratio("fused layer / unfused layer", r->fused_us, r->unfused_us);
    } else {
        print_ratio("fused delta / unfused delta", r->fused_us, r->unfused_us);
        print_ratio("fused delta / base GEMM", r->fused_us, r->base_us);
    }
}

/* Checks, then times, one problem: fused ops and baselines measured in the same run. The base GEMM
 * is measured once: it is the reference point of both the delta and the layer. */
static case_outcome bench_case(lf_context *ctx, const char *name, const problem_cfg *c, unsigned ops,
                               const options *o, double copy_gbps, results *out)
{
    case_outcome oc = {0, 0};
    workload wl;
    if (workload_create(ctx, c, &wl) != LF_OK) {
        oc.runtime_error = 1;
        return oc;
    }
    lf_lora_problem prob[2]; /* [with_w]: the delta and the layer, on backend memory */
    int ok[2];
    if (workload_problem(&wl, 0, 0, &prob[0]) != LF_OK || workload_problem(&wl, 1, 0, &prob[1]) != LF_OK ||
        alloc_baseline_ws(&wl, &prob[0], &prob[1]) != LF_OK) {
        oc.runtime_error = 1;
        goto done;
    }
    bench_check_ops(&wl, ops, ok, &oc);
    if (!ok[0] && !ok[1])
        goto done;

    timed_call base = {&wl, CALL_BASE, 1, prob[1]};
    const double base_us =
        ctx->ops->baseline_base_gemm ? measure(&base, LF_TIME_GRAPH, o->iters, "timing the base GEMM") : NAN;
    op_result r[2];
    printf("  %-16s %12s %12s %10s %8s %10s\n", "per call", "us", "host-loop us", "GB/s", "% copy", "GFLOP/s");
    for (int with_w = 0; with_w <= 1; with_w++) {
        if (!ok[with_w])
            continue;
        memset(&r[with_w], 0, sizeof r[with_w]);
        snprintf(r[with_w].name, sizeof r[with_w].name, "%s", name);
        r[with_w].base_us = base_us;
        bench_time_op(&wl, with_w, &prob[with_w], o, copy_gbps, &r[with_w]);
    }
    print_timing_row("base GEMM", base_us, NAN, base_bytes(c), 2.0 * (double)c->m * (double)c->k * (double)c->n,
                     copy_gbps);
    for (int with_w = 0; with_w <= 1; with_w++) {
        if (!ok[with_w])
            continue;
        print_ratios(&r[with_w]);
        oc.runtime_error |= isnan(r[with_w].fused_us) || isnan(r[with_w].unfused_us) || isnan(base_us);
        /* An op whose fused time could not be measured is left out of the results entirely. */
        if (!isnan(r[with_w].fused_us) && !results_push(out, &r[with_w])) {
            errorf("out of memory for the results");
            oc.runtime_error = 1;
        }
    }
done:
    workload_free(&wl);
    return oc;
}

/* ============================================================================================== */
/* The standard suite (docs/architecture.md, "Standard suite": the names never change)           */
/* ============================================================================================== */

typedef struct suite_case {
    const char *name;
    unsigned ops;
    lf_dtype dtype;
    int64_t m, k, n, rank;
} suite_case;

static const suite_case suite_table[] = {
    {"seed", OP_DELTA | OP_LAYER, LF_F32, 128, 512, 512, 8},
    {"seed_b4", OP_DELTA | OP_LAYER, LF_F32, 512, 512, 512, 8},
    {"seed_b8", OP_DELTA | OP_LAYER, LF_F32, 1024, 512, 512, 8},
    {"seed_r4", OP_DELTA | OP_LAYER, LF_F32, 128, 512, 512, 4},
    {"seed_r16", OP_DELTA | OP_LAYER, LF_F32, 128, 512, 512, 16},
    {"seed_r32", OP_DELTA | OP_LAYER, LF_F32, 128, 512, 512, 32},
    {"seed_1024", OP_DELTA, LF_F32, 128, 1024, 1024, 8},
    {"seed_2048", OP_DELTA, LF_F32, 128, 2048, 2048, 8},
    {"decode_m1", OP_LAYER, LF_BF16, 1, 4096, 4096, 16},
    {"decode_m16", OP_LAYER, LF_BF16, 16, 4096, 4096, 16},
    {"decode_m16_r64", OP_LAYER, LF_BF16, 16, 4096, 4096, 64},
    {"decode_m16_mlp", OP_LAYER, LF_BF16, 16, 4096, 14336, 16},
    {"mid_m128", OP_LAYER, LF_BF16, 128, 4096, 4096, 16},
    {"mid_m1024", OP_LAYER, LF_BF16, 1024, 4096, 4096, 16},
    {"prefill_m4096", OP_LAYER, LF_BF16, 4096, 4096, 4096, 16},
    {"prefill_m8192", OP_LAYER, LF_BF16, 8192, 4096, 4096, 16},
    {"prefill_m4096_r64", OP_LAYER, LF_BF16, 4096, 4096, 4096, 64},
    {"prefill_m4096_mlp", OP_LAYER, LF_BF16, 4096, 4096, 14336, 16},
    {"prefill_m1024_mlp", OP_LAYER, LF_BF16, 1024, 4096, 14336, 16},
    {"prefill_m8192_mlp", OP_LAYER, LF_BF16, 8192, 4096, 14336, 16},
    {"square_8192", OP_LAYER, LF_BF16, 8192, 8192, 8192, 16},
};
#define SUITE_COUNT (sizeof suite_table / sizeof suite_table[0])

/* Multi-adapter cases: multi_L{1,8,64}_m{1,16,64,256,2048}, bf16, 4096 → 4096, rank 16. */
static const int multi_adapters[] = {1, 8, 64};
static const int multi_tokens[] = {1, 16, 64, 256, 2048};

/* ============================================================================================== */
/* JSON                                                                                           */
/* ============================================================================================== */

/* Short commit of the source tree this file was built from, "-dirty" when it has uncommitted changes;
 * "unknown" without git or commits. LF_GIT_COMMIT, when the build defines it, wins. */
static void source_commit(char *out, size_t cap)
{
#ifdef LF_GIT_COMMIT
    snprintf(out, cap, "%s", LF_GIT_COMMIT);
    return;
#else
    snprintf(out, cap, "unknown");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (!slash || dir[0] != '/' || strchr(dir, '\''))
        return; /* not an absolute path we can quote safely */
    *slash = '\0'; /* .../tools */
    char cmd[4300], line[128];
    snprintf(cmd, sizeof cmd, "git -C '%s' rev-parse --short HEAD 2>/dev/null", dir);
    FILE *f = popen(cmd, "r");
    if (!f)
        return;
    int got = fgets(line, sizeof line, f) != NULL;
    int rc = pclose(f);
    if (!got || rc != 0)
        return;
    line[strcspn(line, " \r\n")] = '\0';
    if (!*line)
        return;
    snprintf(cmd, sizeof cmd, "git -C '%s' status --porcelain --untracked-files=no 2>/dev/null", dir);
    int dirty = 0;
    if ((f = popen(cmd, "r")) != NULL) {
        char tmp[8];
        dirty = fgets(tmp, sizeof tmp, f) != NULL;
        pclose(f);
    }
    snprintf(out, cap, "%s%s", line, dirty ? "-dirty" : "");
#endif
}

static void set_num(json_t *obj, const char *key, double v)
{
    if (!isnan(v)) /* no measurement: the field is left out, never written as 0 */
        json_object_set_new(obj, key, json_real(v));
}

static void set_str(json_t *obj, const char *key, const char *s)
{
    json_t *v = json_string(s);
    json_object_set_new(obj, key, v ? v : json_string("(not valid UTF-8)"));
}

static json_t *case_json(const op_result *r)
{
    json_t *c = json_object();
    set_str(c, "name", r->name);
    set_str(c, "op", r->op);
    set_str(c, "dtype", lf_dtype_name(r->cfg.dtype));
    json_object_set_new(c, "m", json_integer(r->cfg.m));
    json_object_set_new(c, "k", json_integer(r->cfg.k));
    json_object_set_new(c, "n", json_integer(r->cfg.n));
    json_object_set_new(c, "rank", json_integer(r->cfg.rank));
    json_object_set_new(c, "adapters", json_integer(1));
    set_num(c, "fused_us", r->fused_us);
    set_num(c, "fused_host_us", r->fused_host_us);
    set_num(c, "base_us", r->base_us);
    set_num(c, "unfused_us", r->unfused_us);
    json_object_set_new(c, "bytes", json_integer((json_int_t)r->bytes));
    json_object_set_new(c, "flops", json_integer((json_int_t)r->flops));
    return c;
}

/* Writes FILE.tmp.PID, flushes it to disk, then renames it over FILE: readers never see half a file. */
static int write_json(const char *path, lf_context *ctx, const options *o, double copy_gbps, const results *res)
{
    char date[16] = "unknown", commit[160];
    time_t now = time(NULL);
    struct tm tm;
    if (localtime_r(&now, &tm))
        strftime(date, sizeof date, "%Y-%m-%d", &tm);
    source_commit(commit, sizeof commit);

    json_t *root = json_object(), *cases = json_array();
    set_str(root, "device", lf_context_device_name(ctx));
    set_str(root, "backend", lf_backend_name(lf_context_backend(ctx)));
    set_str(root, "date", date);
    set_str(root, "commit", commit);
    set_num(root, "copy_GBps", copy_gbps > 0 ? copy_gbps : NAN);
    if (lf_context_backend(ctx) == LF_BACKEND_CPU)
        json_object_set_new(root, "threads", json_integer(cpu_threads(o)));
    for (size_t i = 0; i < res->count; i++)
        json_array_append_new(cases, case_json(&res->v[i]));
    json_object_set_new(root, "cases", cases);

    size_t len = strlen(path) + 32;
    char *tmp = malloc(len);
    int ok = 0;
    if (tmp) {
        snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid());
        FILE *f = fopen(tmp, "w");
        if (f) {
            ok = json_dumpf(root, f, JSON_INDENT(2) | JSON_REAL_PRECISION(7)) == 0 && fputc('\n', f) != EOF && fflush(f) == 0 &&
                 fsync(fileno(f)) == 0;
            ok = (fclose(f) == 0) && ok;
            ok = ok && rename(tmp, path) == 0;
            if (!ok)
                remove(tmp);
        }
    }
    if (!ok)
        errorf("cannot write %s: %s", path, strerror(errno));
    else
        printf("wrote %s (%zu cases)\n", path, res->count);
    free(tmp);
    json_decref(root);
    return ok;
}

/* ============================================================================================== */
/* bench                                                                                          */
/* ============================================================================================== */

static void print_summary(const results *res)
{
    if (res->count == 0)
        return;
    printf("\n%-18s %-5s %-5s %6s %6s %6s %4s %11s %11s %11s %11s %8s %8s %8s\n", "name", "op", "dtype", "M",
           "K", "N", "r", "fused_us", "host_us", "base_us", "unfused_us", "f/base", "u/base", "f/u");
    for (size_t i = 0; i < res->count; i++) {
        const op_result *r = &res->v[i];
        printf("%-18s %-5s %-5s %6lld %6lld %6lld %4lld %11.2f %11.2f %11.2f %11.2f %7.2fx %7.2fx %7.2fx\n",
               r->name, r->op, lf_dtype_name(r->cfg.dtype), (long long)r->cfg.m, (long long)r->cfg.k,
               (long long)r->cfg.n, (long long)r->cfg.rank, r->fused_us, r->fused_host_us, r->base_us,
               r->unfused_us, r->fused_us / r->base_us, r->unfused_us / r->base_us, r->fused_us / r->unfused_us);
    }
}

static void print_bench_notes(lf_context *ctx, double copy_gbps)
{
    if (copy_gbps > 0)
        printf("copy bandwidth (measured, read + write): %.1f GB/s\n", copy_gbps);
    else
        printf("copy bandwidth: not measured\n");
    if (lf_context_backend(ctx) == LF_BACKEND_CPU)
        printf("times: median per call; on the CPU fused_host_us is the same measurement as fused_us\n");
    else
        printf("times: per call, CUDA-graph replay (us) and plain host loop (host-loop us)\n");
}

static int run_suite(lf_context *ctx, const options *o, double copy_gbps, results *res, case_outcome *all)
{
    const int cpu = lf_context_backend(ctx) == LF_BACKEND_CPU;
    for (size_t i = 0; i < SUITE_COUNT; i++) {
        const suite_case *s = &suite_table[i];
        problem_cfg c = {.m = s->m, .k = s->k, .n = s->n, .rank = s->rank, .dtype = s->dtype,
                         .layout = o->layout, .scale = 2.0f, .beta = 0.0f, .bias = 0, .seed = (uint64_t)o->seed};
        const double base_flops = 2.0 * (double)s->m * (double)s->k * (double)s->n;
        printf("\n== %s: ", s->name);
        print_problem(&c);
        if (cpu && !o->suite_all && base_flops > CPU_SUITE_MAX_BASE_FLOPS) {
            printf("  skipped on the CPU: the base GEMM is %.0f GFLOP (over %.0f; --suite-all runs it)\n",
                   base_flops * 1e-9, CPU_SUITE_MAX_BASE_FLOPS * 1e-9);
            continue;
        }
        fflush(stdout);
        case_outcome oc = bench_case(ctx, s->name, &c, s->ops, o, copy_gbps, res);
        all->failed_check |= oc.failed_check;
        all->runtime_error |= oc.runtime_error;
    }
    printf("\n");
    for (size_t a = 0; a < sizeof multi_adapters / sizeof multi_adapters[0]; a++)
        for (size_t t = 0; t < sizeof multi_tokens / sizeof multi_tokens[0]; t++)
            printf("== multi_L%d_m%d: multi_delta + multi_layer, bf16, 4096 -> 4096, rank 16: not implemented\n",
                   multi_adapters[a], multi_tokens[t]);
    return 0;
}

/* A long suite should not end in "cannot write": try the JSON file's directory first. */
static int json_path_writable(const char *path)
{
    size_t len = strlen(path) + 32;
    char *tmp = malloc(len);
    if (!tmp)
        return 0;
    snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (f) {
        fclose(f);
        remove(tmp);
    } else {
        errorf("--json: cannot create %s: %s", tmp, strerror(errno));
    }
    free(tmp);
    return f != NULL;
}

static int cmd_bench(const options *o)
{
    if (o->json_path && !json_path_writable(o->json_path))
        return EXIT_USAGE;
    lf_context *ctx = NULL;
    int rc = open_context(o, &ctx);
    if (rc != EXIT_PASS)
        return rc;
    const lf_backend_ops *bops = ctx->ops;
    if (!bops->time_calls) {
        errorf("the %s backend has no timing support", lf_backend_name(lf_context_backend(ctx)));
        lf_context_destroy(ctx);
        return EXIT_RUNTIME;
    }
    print_header("bench", o, ctx);
    const problem_cfg single = cfg_of(o);
    if (!o->suite)
        print_problem(&single);
    double copy_gbps = NAN;
    lf_status st = bops->measure_copy_bandwidth ? bops->measure_copy_bandwidth(ctx, &copy_gbps) : LF_ERR_UNSUPPORTED;
    if (st != LF_OK) {
        report_lf_error(ctx, "measuring the copy bandwidth", st);
        copy_gbps = NAN;
    }
    print_bench_notes(ctx, copy_gbps);

    results res = {NULL, 0, 0};
    case_outcome all = {0, 0};
    if (o->suite) {
        run_suite(ctx, o, copy_gbps, &res, &all);
    } else {
        all = bench_case(ctx, "custom", &single, OP_DELTA | OP_LAYER, o, copy_gbps, &res);
        /* The default problem is the standard suite's "seed": name it so, results stay comparable. */
        const options d = default_options();
        if (!o->shape_given && o->layout == d.layout)
            for (size_t i = 0; i < res.count; i++)
                snprintf(res.v[i].name, sizeof res.v[i].name, "seed");
    }
    if (g_over_copy)
        printf("(%% copy over 100: the operands fit in cache, the copy bandwidth is measured on a buffer "
               "larger than cache)\n");
    print_summary(&res);
    if (o->json_path && !write_json(o->json_path, ctx, o, copy_gbps, &res))
        all.runtime_error = 1;
    if (all.failed_check)
        errorf("a fused op failed its check against the reference: it was not timed");
    free(res.v);
    lf_context_destroy(ctx);
    return all.failed_check ? EXIT_NUMERIC : all.runtime_error ? EXIT_RUNTIME : EXIT_PASS;
}

/* ============================================================================================== */
/* main                                                                                           */
/* ============================================================================================== */

static int cmd_version(void)
{
    printf("lorafuse %s (header %d.%d.%d)\n", lf_version_string(), LF_VERSION_MAJOR, LF_VERSION_MINOR,
           LF_VERSION_PATCH);
    printf("backends: cpu; cuda %s\n", !lf_cuda_backend_ops()                ? "not built"
                                       : lf_backend_available(LF_BACKEND_CUDA) ? "built, device present"
                                                                               : "built, no device");
    return EXIT_PASS;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        print_usage(stdout);
        return EXIT_PASS;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0)
        return cmd_version();
    unsigned which = strcmp(cmd, "bench") == 0 ? CMD_BENCH : strcmp(cmd, "check") == 0 ? CMD_CHECK : 0;
    if (!which) {
        errorf("unknown command '%s' (bench, check, help, --version)", cmd);
        return EXIT_USAGE;
    }
    options o = default_options();
    int parsed = parse_options(argc, argv, 2, which, &o);
    if (parsed < 0) {
        print_usage(stdout);
        return EXIT_PASS;
    }
    if (!parsed)
        return EXIT_USAGE;
    /* Everything the tool prints goes out in order with the library's (none) and errors. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    return which == CMD_BENCH ? cmd_bench(&o) : cmd_check(&o);
}

/*
 * lorafuse — the command-line tool: `bench`, `check`, `help`, `--version`.
 *
 *   lorafuse bench                      the seed's LoRALayer problem (f32, 128×512→512, r 8, scale 2)
 *   lorafuse bench --m 16 --k 4096 --n 4096 --rank 16 --dtype bf16
 *   lorafuse bench --suite --json bench/results/h100.json
 *   lorafuse bench --tp                 tensor-parallel layers over every GPU (lorafuse_tp_bench.c)
 *   lorafuse check --m 37 --k 129 --n 67 --rank 7 --dtype bf16
 *
 * bench measures lorafuse's fused op beside the baselines of the same backend, measured in the same
 * run (the base GEMM alone and the unfused PyTorch/PEFT sequence), and never times an op before it
 * has been checked against the double-precision reference. check runs the fused delta and the fused
 * layer on random inputs against the reference. Timed calls rotate over several copies of the
 * operands (buffer sets) so that, when one set fits in the cache, they still read memory.
 *
 * Exit status: 0 success, 1 a numerical check failed, 2 invalid options, 3 a runtime failure (out of
 * memory, device error, unsupported request, a JSON file that cannot be written).
 *
 * Device memory only goes through lf_malloc/lf_memcpy, so this file needs no CUDA header. It uses the
 * backend's benchmark hooks (lf_backend_ops in lf_internal.h) through ctx->ops.
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */

#include "lf_dtype.h"
#include "lf_internal.h"
#include "cpu/lora_ref.h"
#include "lorafuse.h"
#include "cli.h"
#include "lorafuse_adapter.h" /* info, merge, bench-merge */
#include "lorafuse_tp_bench.h" /* bench --tp */

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
#define LF_STR_(x) #x
#define LF_STR(x) LF_STR_(x)

static const char *progname = "lorafuse";

/* ============================================================================================== */
/* Messages                                                                                       */
/* ============================================================================================== */

/* A failing library call: its status and the context's own sentence about it. */
static void report_lf_error(lf_context *ctx, const char *what, lf_status st)
{
    const char *detail = ctx ? lf_context_last_error(ctx) : "";
    lf_cli_error("%s failed: %s (%s)%s%s", what, lf_status_name(st), lf_status_string(st),
                 detail && *detail ? ": " : "", detail ? detail : "");
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
    int64_t suite, suite_all, multi_only, tp;
    int64_t adapters; /* bench: one many-adapter case with this many adapters and --m tokens; 0 none */
    const char *json_path;
    const char *cases; /* --cases: suite cases to run (comma-separated names; "x*" is a prefix) */
    int threads_given;
    unsigned shape_given; /* which shape options were given: they conflict with --suite */
    uint64_t given;       /* bit i: opt_table[i] was given (--tp takes only a few) */
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
    {"multi-only", OPT_FLAG, OFF(multi_only), 0, 0, CMD_BENCH, 0, NULL,
     "with --suite: only the multi-adapter cases (multi_L*_m*)"},
    {"cases", OPT_PATH, OFF(cases), 0, 0, CMD_BENCH, 0, "LIST",
     "with --suite: only these cases (comma-separated names; a trailing * matches a prefix)"},
    {"tp", OPT_FLAG, OFF(tp), 0, 0, CMD_BENCH, 0, NULL,
     "tensor-parallel layers over every GPU (NCCL), fixed cases"},
    {"adapters", OPT_INT, OFF(adapters), 1, LF_MAX_ADAPTERS, CMD_BENCH, 0, "L",
     "one many-adapter case as the suite's multi_L*_m* (bf16, 4096 -> 4096, r 16) with L adapters, --m tokens"},
};
#define OPT_COUNT (sizeof opt_table / sizeof opt_table[0])
_Static_assert(OPT_COUNT <= 64, "options.given has one bit per option");

static void print_usage(FILE *f)
{
    fprintf(f,
            "usage: %s <command> [options]\n"
            "\n"
            "commands:\n"
            "  bench      time the fused LoRA delta and layer beside the base GEMM and the unfused\n"
            "             PyTorch/PEFT sequence (default: the seed's f32 128x512x512 rank-8 problem)\n"
            "  check      run the fused delta and layer on random inputs against the fp64 reference\n"
            "%s"
            "  help       this text           --version   versions of the tool and library\n"
            "\n"
            "options (as --name VALUE or --name=VALUE):\n",
            progname, lf_cli_adapter_usage);
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
            "  u|ref| + 2(K+r+4) 2^-24 sum|terms| + half the smallest subnormal (as the tests):\n"
            "one final rounding plus fp32 accumulation error.\n"
            "Times are per call: the median of the timed calls on the CPU (fused_host_us is then the same\n"
            "measurement as fused_us); CUDA-graph replay (fused_us) and a host loop (fused_host_us) on CUDA.\n"
            "Timed calls rotate over copies of the operands (buffer sets, up to 64) until one round reads\n"
            "256 MiB, more than any cache; --iters is then rounded up to a multiple of the sets.\n"
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
            lf_cli_error("--%s: '%s' is %s", s->name, val, got ? "out of range" : "not an integer");
            return 0;
        }
        if (v < s->min || v > s->max) {
            lf_cli_error("--%s: %lld is outside %lld..%lld", s->name, (long long)v, (long long)s->min,
                         (long long)s->max);
            return 0;
        }
        memcpy(base, &v, sizeof v);
        return 1;
    }
    case OPT_REAL: {
        double v;
        if (!parse_real(val, &v)) {
            lf_cli_error("--%s: '%s' is not a finite number", s->name, val);
            return 0;
        }
        if (fabs(v) > 3.4e38) {
            lf_cli_error("--%s: %g does not fit in a float", s->name, v);
            return 0;
        }
        memcpy(base, &v, sizeof v);
        return 1;
    }
    case OPT_DTYPE:
        if (!parse_dtype(val, (lf_dtype *)(void *)base)) {
            lf_cli_error("--dtype: unknown dtype '%s' (f32, f16 or bf16)", val);
            return 0;
        }
        return 1;
    case OPT_BACKEND:
        if (!parse_backend(val, (lf_backend *)(void *)base)) {
            lf_cli_error("--backend: unknown backend '%s' (auto, cpu or cuda)", val);
            return 0;
        }
        return 1;
    case OPT_LAYOUT:
        if (!parse_layout(val, (lf_layout *)(void *)base)) {
            lf_cli_error("--layout: unknown layout '%s' (peft or kn)", val);
            return 0;
        }
        return 1;
    case OPT_PATH:
        if (!*val) {
            lf_cli_error("--%s: empty %s", s->name, s->arg);
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

/* The first option given that is not in allowed[0..count), or NULL. */
static const char *option_outside(const options *o, const char *const *allowed, size_t count)
{
    for (size_t i = 0; i < OPT_COUNT; i++) {
        int ok = 0;
        for (size_t j = 0; j < count; j++)
            ok |= strcmp(opt_table[i].name, allowed[j]) == 0;
        if (!ok && ((o->given >> i) & 1))
            return opt_table[i].name;
    }
    return NULL;
}

/* --adapters runs the suite's many-adapter case at any L and M: its shape, dtype and rank are fixed. */
static int adapters_options_ok(const options *o)
{
    static const char *const allowed[] = {"adapters", "m", "iters", "seed", "json", "backend", "threads"};
    const char *bad = option_outside(o, allowed, sizeof allowed / sizeof allowed[0]);
    if (bad)
        lf_cli_error("--adapters runs the suite's many-adapter case (bf16, 4096 -> 4096, rank 16) with --m tokens: "
                     "it takes --m, --iters, --seed, --json, --backend and --threads, not --%s",
                     bad);
    return bad == NULL;
}

/* --tp runs its own fixed cases (lorafuse_tp_bench.h) on the CUDA backend: it takes a few options. */
static int tp_options_ok(const options *o)
{
    static const char *const allowed[] = {"tp", "iters", "seed", "json", "backend"};
    const char *bad = option_outside(o, allowed, sizeof allowed / sizeof allowed[0]);
    if (bad) {
        lf_cli_error("--tp runs fixed cases (bf16, rank 16): it takes --iters, --seed, --json and --backend cuda, "
                     "not --%s",
                     bad);
        return 0;
    }
    if (o->backend == LF_BACKEND_CPU) {
        lf_cli_error("--tp runs on the CUDA backend (NCCL), not on the CPU");
        return 0;
    }
    return 1;
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
            lf_cli_error("%s: unexpected argument '%s' (options start with --)", cmd_name(cmd), arg);
            return 0;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const opt_spec *s = NULL;
        for (size_t j = 0; j < OPT_COUNT; j++)
            if (strlen(opt_table[j].name) == len && strncmp(opt_table[j].name, name, len) == 0)
                s = &opt_table[j];
        if (!s) {
            lf_cli_error("%s: unknown option '%.*s' (see '%s help')", cmd_name(cmd), (int)(len + 2), arg, progname);
            return 0;
        }
        if (!(s->cmds & cmd)) {
            lf_cli_error("--%s is an option of 'bench' only", s->name);
            return 0;
        }
        const char *val = NULL;
        if (s->kind == OPT_FLAG) {
            if (eq) {
                lf_cli_error("--%s takes no value", s->name);
                return 0;
            }
        } else if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i]; /* taken as is, so "--m -1" reports a negative size, not an option */
        } else {
            lf_cli_error("--%s needs a value (%s)", s->name, s->arg);
            return 0;
        }
        if (!set_option(o, s, val))
            return 0;
        if (s->is_shape)
            o->shape_given |= 1u << (s - opt_table);
        o->given |= (uint64_t)1 << (s - opt_table);
        if (s->offset == OFF(threads))
            o->threads_given = 1;
    }
    if (o->multi_only && !o->suite) {
        lf_cli_error("--multi-only goes with --suite");
        return 0;
    }
    if (o->suite_all && !o->suite) {
        lf_cli_error("--suite-all goes with --suite");
        return 0;
    }
    if (o->cases && !o->suite) {
        lf_cli_error("--cases goes with --suite");
        return 0;
    }
    if (o->tp && !tp_options_ok(o))
        return 0;
    if (o->adapters && !adapters_options_ok(o))
        return 0;
    if (o->suite && o->shape_given) {
        lf_cli_error("--suite runs fixed shapes and dtypes: drop --m/--k/--n/--rank/--dtype/--scale/--beta/--bias");
        return 0;
    }
    return 1;
}

/* ============================================================================================== */
/* Host buffers, random inputs                                                                    */
/* ============================================================================================== */

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

/* The copies of the operands that timed calls rotate over (bench only; check uses set 0 alone).
 * Set 0 is the workload's own op[].dev, the one the correctness check runs on; sets 1.. are
 * uploads of the same host values at other addresses: what matters is that no two sets share
 * memory, not that their values differ. */
typedef struct buffer_sets {
    int count;             /* sets allocated, >= 1 */
    int w_count;           /* sets 0..w_count-1 have their own W: ops reading W need fewer sets */
    void **dev;            /* [count][OPD_COUNT] allocations; set 0's and shared ones are NULL */
    lf_matrix *view;       /* [count][OPD_COUNT] views of backend memory */
    lf_lora_problem *prob; /* [count][2]: the delta and the layer of each set */
} buffer_sets;

typedef struct workload {
    lf_context *ctx;
    problem_cfg cfg;
    operand_buf op[OPD_COUNT]; /* op[OPD_Y].dev holds guards around y; .host is y's initial value */
    size_t y_guard;            /* bytes before and after y */
    lf_matrix dev[OPD_COUNT];  /* views of backend memory */
    lf_matrix host[OPD_COUNT]; /* views of the host copies */
    void *ws;                  /* baseline workspace (backend memory), shared by all sets: calls
                                  run one after another on one stream */
    size_t ws_bytes;
    buffer_sets sets;          /* empty until workload_add_sets */
} workload;

static void buffer_sets_free(workload *wl)
{
    buffer_sets *s = &wl->sets;
    if (s->dev)
        for (int i = 0; i < s->count * OPD_COUNT; i++)
            if (s->dev[i])
                lf_free(wl->ctx, s->dev[i]);
    free(s->dev), free(s->view), free(s->prob);
    memset(s, 0, sizeof *s);
}

static void workload_free(workload *wl)
{
    buffer_sets_free(wl);
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
        lf_cli_error("the operands of this shape do not fit in memory's address space");
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
            lf_cli_error("out of host memory (%.1f MB for one operand)", (double)bytes[i] / 1e6);
            workload_free(wl);
            return LF_ERR_OUT_OF_MEMORY;
        }
        /* y's initial value matters only when beta != 0; otherwise it is poison. */
        if (i == OPD_Y && c->beta == 0.0f)
            fill_nan(b->host, c->dtype, rows[i] * cols[i]);
        else
            lf_cli_fill_random(b->host, c->dtype, rows[i] * cols[i], amp[i], c->seed * 0x100000001b3ull + (uint64_t)i);
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

/* The validated problem for the delta (with_w = 0) or the layer over views v of the operands. The
 * library's own validation runs here, so what bench times is what lf_lora_forward accepts. */
static lf_status problem_of_views(workload *wl, const lf_matrix *v, int with_w, lf_lora_problem *p)
{
    const problem_cfg *c = &wl->cfg;
    lf_status st = lf_lora_problem_from_views(wl->ctx, c->layout, &v[OPD_X], with_w ? &v[OPD_W] : NULL,
                                              c->bias ? &v[OPD_BIAS] : NULL, &v[OPD_A], &v[OPD_B],
                                              c->scale, c->beta, &v[OPD_Y], p);
    if (st != LF_OK)
        report_lf_error(wl->ctx, "lf_lora_problem_from_views", st);
    return st;
}

/* The problem on the host copies (for the reference) or on set 0 in backend memory. */
static lf_status workload_problem(workload *wl, int with_w, int on_host, lf_lora_problem *p)
{
    return problem_of_views(wl, on_host ? wl->host : wl->dev, with_w, p);
}

/* The fused op through the public API on views v (set 0: wl->dev). */
static lf_status run_fused(workload *wl, const lf_matrix *v, int with_w)
{
    const problem_cfg *c = &wl->cfg;
    return lf_lora_forward(wl->ctx, c->layout, &v[OPD_X], with_w ? &v[OPD_W] : NULL,
                           c->bias ? &v[OPD_BIAS] : NULL, &v[OPD_A], &v[OPD_B], c->scale, c->beta,
                           &v[OPD_Y]);
}

/* Allocates `count` buffer sets, of which the first w_count hold their own W (the rest share set 0's:
 * only the delta rotates over them, and it does not read W). Each new set gets the host values
 * uploaded once more (y included: its initial value, read when beta != 0), so generating the
 * random inputs stays a one-time cost whatever the count. */
static lf_status workload_add_sets(workload *wl, int count, int w_count)
{
    buffer_sets *s = &wl->sets;
    const size_t cells = (size_t)count * OPD_COUNT;
    s->count = count, s->w_count = w_count;
    s->dev = calloc(cells, sizeof *s->dev);
    s->view = calloc(cells, sizeof *s->view);
    s->prob = calloc((size_t)count * 2, sizeof *s->prob);
    if (!s->dev || !s->view || !s->prob) {
        lf_cli_error("out of host memory for %d buffer sets", count);
        buffer_sets_free(wl);
        return LF_ERR_OUT_OF_MEMORY;
    }
    lf_status st = LF_OK;
    for (int k = 0; k < count && st == LF_OK; k++) {
        lf_matrix *v = &s->view[(size_t)k * OPD_COUNT];
        for (int i = 0; i < OPD_COUNT && st == LF_OK; i++) {
            v[i] = wl->dev[i]; /* set 0's operand, and what later sets share */
            const operand_buf *b = &wl->op[i];
            if (k == 0 || !b->dev || (i == OPD_W && k >= w_count))
                continue;
            void **d = &s->dev[(size_t)k * OPD_COUNT + i];
            if ((st = lf_malloc(wl->ctx, d, b->bytes)) != LF_OK)
                report_lf_error(wl->ctx, "lf_malloc (buffer set)", st);
            else if ((st = upload(wl->ctx, *d, b->host, b->bytes)) == LF_OK)
                v[i].data = *d;
        }
        for (int with_w = 0; with_w <= 1 && st == LF_OK; with_w++)
            st = problem_of_views(wl, v, with_w, &s->prob[2 * k + with_w]);
    }
    if (st != LF_OK)
        buffer_sets_free(wl);
    return st;
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

/* Compares rows [i0, i1) of the kernel's y (dense, host) with the reference, element by element
 * within lf_ref_tolerance (its derivation is in src/cpu/lora_ref.c). */
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
            const double tol = lf_ref_tolerance(c->dtype, c->k, c->rank, want, mag[e]);
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
        lf_cli_error("out of host memory for the reference check");
        st = LF_ERR_OUT_OF_MEMORY;
        goto done;
    }
    /* y image: canaries, then poison (beta = 0) or the initial y the reference also reads. */
    memset(img, GUARD_BYTE, total);
    memcpy(img + guard, yb->host, yb->bytes);
    if ((st = upload(ctx, yb->dev, img, total)) != LF_OK)
        goto done;
    if ((st = run_fused(wl, wl->dev, with_w)) != LF_OK) {
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
            lf_cli_error("the %s backend is not available (%s)", lf_backend_name(o->backend),
                         lf_cuda_backend_ops() ? "no usable CUDA device" : "this build has no CUDA backend");
        else
            report_lf_error(NULL, "lf_context_create", st);
        return lf_cli_exit_status(st);
    }
    if (o->threads_given && (st = lf_context_set_threads(*ctx, (int)o->threads)) != LF_OK) {
        report_lf_error(*ctx, "lf_context_set_threads", st);
        lf_context_destroy(*ctx);
        *ctx = NULL;
        return lf_cli_exit_status(st);
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
           (int)log2(lf_ref_unit_roundoff(c.dtype)), lf_dtype_name(c.dtype));
    workload wl;
    lf_status st = workload_create(ctx, &c, &wl);
    if (st != LF_OK) {
        lf_context_destroy(ctx);
        return lf_cli_exit_status(st);
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
        return lf_cli_exit_status(st);
    printf("%s\n", failed ? "FAIL" : "PASS");
    return failed ? EXIT_NUMERIC : EXIT_PASS;
}

/* ============================================================================================== */
/* Timing                                                                                         */
/* ============================================================================================== */

typedef enum call_kind { CALL_FUSED, CALL_BASE, CALL_OWN_BASE, CALL_UNFUSED } call_kind;

/* What time_calls runs: one closure per measured sequence. Each call takes the next of the first
 * `sets` buffer sets, so a run of calls never finds its operands in the cache from the call before.
 * Under CUDA graph capture each captured call keeps the pointers of its own set. */
typedef struct timed_call {
    workload *wl;
    call_kind kind;
    int with_w; /* the layer (with W) or the delta */
    int sets;   /* rotates over sets 0..sets-1 of wl->sets */
    int next;   /* the set the next call uses */
} timed_call;

static lf_status timed_call_run(void *arg)
{
    timed_call *tc = arg;
    workload *wl = tc->wl;
    lf_context *ctx = wl->ctx;
    const int k = tc->next;
    tc->next = (k + 1) % tc->sets;
    switch (tc->kind) {
    case CALL_FUSED:
        return run_fused(wl, &wl->sets.view[(size_t)k * OPD_COUNT], tc->with_w);
    case CALL_BASE:
        return ctx->ops->baseline_base_gemm(ctx, &wl->sets.prob[2 * k + 1], wl->ws);
    case CALL_OWN_BASE:
        return ctx->ops->own_base_gemm(ctx, &wl->sets.prob[2 * k + 1]);
    case CALL_UNFUSED:
        return ctx->ops->baseline_unfused(ctx, &wl->sets.prob[2 * k + tc->with_w], wl->ws);
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
static double measure_fn(lf_context *ctx, lf_timed_fn fn, void *arg, int sets, lf_timing_mode mode,
                         int64_t iters_opt, const char *what)
{
    double t0 = now_us();
    lf_status st = fn(arg);
    if (st == LF_OK)
        st = lf_synchronize(ctx);
    double first = now_us() - t0;
    int iters = (int)iters_opt;
    if (iters_opt == 0) {
        iters = DEFAULT_ITERS;
        if (first * iters > TIME_BUDGET_US)
            iters = first * MIN_TIMED_CALLS > TIME_BUDGET_US ? MIN_TIMED_CALLS : (int)(TIME_BUDGET_US / first);
    }
    /* A multiple of the sets: every set is used equally often, whichever set the timed calls start
     * on (the warm-up calls before them rotate too). */
    iters = (iters + sets - 1) / sets * sets;
    double us = NAN;
    if (st == LF_OK)
        st = ctx->ops->time_calls(ctx, fn, arg, iters, mode, &us);
    if (st != LF_OK) {
        report_lf_error(ctx, what, st);
        return NAN;
    }
    return us;
}

static double measure(timed_call *tc, lf_timing_mode mode, int64_t iters_opt, const char *what)
{
    return measure_fn(tc->wl->ctx, timed_call_run, tc, tc->sets, mode, iters_opt, what);
}

/* ============================================================================================== */
/* Results                                                                                        */
/* ============================================================================================== */

typedef struct op_result {
    char name[40];
    const char *op; /* "delta" | "layer" | "multi_delta" | "multi_layer" */
    problem_cfg cfg;
    double fused_us, fused_host_us, base_us, unfused_us; /* NAN: not measured */
    double own_base_us; /* layer: lorafuse's own kernel for the base GEMM alone; NAN: none */
    double bytes, flops;
    int buffer_sets; /* the fused op and its unfused sequence rotated over this many */
    int adapters;       /* multi cases: L; 0 means 1 (single-adapter cases) */
    double reference_us; /* multi delta: the issue's Triton reference on this H100, NAN if none */
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

/* Times one fused op (both modes on CUDA) and its unfused sequence over `sets` buffer sets; prints
 * their rows. */
static void bench_time_op(workload *wl, int with_w, int sets, const options *o, double copy_gbps, op_result *r)
{
    const lf_backend_ops *bops = wl->ctx->ops;
    const problem_cfg *c = &wl->cfg;
    r->op = with_w ? "layer" : "delta";
    r->cfg = *c;
    r->bytes = op_bytes(c, with_w);
    r->flops = op_flops(c, with_w);
    r->buffer_sets = sets;
    timed_call fused = {wl, CALL_FUSED, with_w, sets, 0};
    timed_call unfused = {wl, CALL_UNFUSED, with_w, sets, 0};
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
        print_ratio("own base GEMM / base GEMM", r->own_base_us, r->base_us);
    } else {
        print_ratio("fused delta / unfused delta", r->fused_us, r->unfused_us);
        print_ratio("fused delta / base GEMM", r->fused_us, r->base_us);
    }
}

/* One line per rotation: how many sets, and how much distinct memory a round of calls reads. */
static void print_rotation(const char *who, int sets, double bytes)
{
    const double mib = (double)sets * bytes / (1024.0 * 1024.0);
    if (sets == 1)
        printf("  %s: one buffer set (%.1f MiB, over %.0f MiB: timed calls read memory, not cache)\n", who, mib,
               ROTATE_BYTES / (1024.0 * 1024.0));
    else
        printf("  %s: rotating over %d buffer sets (%.1f MiB%s) so timed calls read memory, not cache\n", who,
               sets, mib, (double)sets * bytes < ROTATE_BYTES ? "; at most " LF_STR(MAX_BUFFER_SETS) : "");
}

/* Decides the rotations of a case, prints them and allocates the sets. The layer and the base GEMM
 * share one count, the one the base GEMM needs (it reads x, W and y: the layer less A, B and bias,
 * so it needs as many sets or more). The delta, which skips W, usually needs more sets, but those
 * need no W of their own. */
static lf_status setup_rotation(workload *wl, const int ok[2], int sets[2])
{
    const problem_cfg *c = &wl->cfg;
    sets[1] = lf_cli_buffer_sets(base_bytes(c));
    sets[0] = ok[0] ? lf_cli_buffer_sets(op_bytes(c, 0)) : 1;
    if (ok[0])
        print_rotation("delta", sets[0], op_bytes(c, 0));
    print_rotation(ok[1] ? "layer, base GEMM" : "base GEMM", sets[1], ok[1] ? op_bytes(c, 1) : base_bytes(c));
    return workload_add_sets(wl, sets[0] > sets[1] ? sets[0] : sets[1], sets[1]);
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
    int sets[2]; /* [with_w]: buffer sets the delta and the layer (with the base GEMM) rotate over */
    if (setup_rotation(&wl, ok, sets) != LF_OK) {
        oc.runtime_error = 1;
        goto done;
    }

    timed_call base = {&wl, CALL_BASE, 1, sets[1], 0};
    const double base_us =
        ctx->ops->baseline_base_gemm ? measure(&base, LF_TIME_GRAPH, o->iters, "timing the base GEMM") : NAN;
    /* lorafuse's own kernel for the base GEMM, where the backend runs this layer with one (CUDA:
     * the Hopper kernel, whose base should match cuBLAS's); LF_ERR_UNSUPPORTED elsewhere */
    double own_base_us = NAN;
    if (ok[1] && ctx->ops->own_base_gemm) {
        const lf_status st = ctx->ops->own_base_gemm(ctx, &prob[1]);
        timed_call own = {&wl, CALL_OWN_BASE, 1, sets[1], 0};
        if (st == LF_OK)
            own_base_us = measure(&own, LF_TIME_GRAPH, o->iters, "timing the own base GEMM");
        else if (st != LF_ERR_UNSUPPORTED)
            report_lf_error(ctx, "the own base GEMM", st);
        /* a kernel that ran once but could not be timed (measure said why) is an error too */
        oc.runtime_error |= st == LF_OK ? isnan(own_base_us) : st != LF_ERR_UNSUPPORTED;
    }
    op_result r[2];
    printf("  %-16s %12s %12s %10s %8s %10s\n", "per call", "us", "host-loop us", "GB/s", "% copy", "GFLOP/s");
    for (int with_w = 0; with_w <= 1; with_w++) {
        if (!ok[with_w])
            continue;
        memset(&r[with_w], 0, sizeof r[with_w]);
        r[with_w].reference_us = NAN;
        snprintf(r[with_w].name, sizeof r[with_w].name, "%s", name);
        r[with_w].base_us = base_us;
        r[with_w].own_base_us = with_w ? own_base_us : NAN;
        bench_time_op(&wl, with_w, sets[with_w], o, copy_gbps, &r[with_w]);
    }
    print_timing_row("base GEMM", base_us, NAN, base_bytes(c), 2.0 * (double)c->m * (double)c->k * (double)c->n,
                     copy_gbps);
    if (!isnan(own_base_us))
        print_timing_row("own base GEMM", own_base_us, NAN, base_bytes(c),
                         2.0 * (double)c->m * (double)c->k * (double)c->n, copy_gbps);
    for (int with_w = 0; with_w <= 1; with_w++) {
        if (!ok[with_w])
            continue;
        print_ratios(&r[with_w]);
        oc.runtime_error |= isnan(r[with_w].fused_us) || isnan(r[with_w].unfused_us) || isnan(base_us);
        /* An op whose fused time could not be measured is left out of the results entirely. */
        if (!isnan(r[with_w].fused_us) && !results_push(out, &r[with_w])) {
            lf_cli_error("out of memory for the results");
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
#define MULTI_L_COUNT (sizeof multi_adapters / sizeof multi_adapters[0])
#define MULTI_M_COUNT (sizeof multi_tokens / sizeof multi_tokens[0])

static void multi_case_name(size_t li, size_t mi, char *name, size_t size)
{
    snprintf(name, size, "multi_L%d_m%d", multi_adapters[li], multi_tokens[mi]);
}

/* Whether `item` (len bytes of a --cases list) names `name`: exactly, or as a prefix with a
 * trailing '*'. */
static int case_item_matches(const char *item, size_t len, const char *name)
{
    if (len > 0 && item[len - 1] == '*')
        return strncmp(item, name, len - 1) == 0;
    return strlen(name) == len && strncmp(item, name, len) == 0;
}

/* Whether the suite runs case `name`: no --cases, or an item of it names the case. */
static int case_selected(const options *o, const char *name)
{
    if (!o->cases)
        return 1;
    for (const char *item = o->cases; *item;) {
        const size_t len = strcspn(item, ",");
        if (case_item_matches(item, len, name))
            return 1;
        item += len + (item[len] == ',');
    }
    return 0;
}

/* Every item of --cases must name a case: a typo would otherwise run nothing and report success. */
static int cases_option_ok(const options *o)
{
    for (const char *item = o->cases; item && *item;) {
        const size_t len = strcspn(item, ",");
        int found = 0;
        for (size_t i = 0; i < SUITE_COUNT && !found; i++)
            found = case_item_matches(item, len, suite_table[i].name);
        for (size_t li = 0; li < MULTI_L_COUNT && !found; li++)
            for (size_t mi = 0; mi < MULTI_M_COUNT && !found; mi++) {
                char name[32];
                multi_case_name(li, mi, name, sizeof name);
                found = case_item_matches(item, len, name);
            }
        if (!found) {
            lf_cli_error("--cases: no suite case is named '%.*s' (names: seed, decode_m1, mid_m1024, "
                         "multi_L8_m16, ...; a trailing * matches a prefix)",
                         (int)len, item);
            return 0;
        }
        item += len + (item[len] == ',');
    }
    return 1;
}
/* The issue's reference for the delta (a widely used Triton implementation, Punica-derived shrink +
 * expand, measured on this H100), µs, [L index][M index] as multi_adapters × multi_tokens. */
static const double multi_triton_us[3][5] = {
    {9.44, 7.76, 8.23, 11.66, 26.31}, {9.50, 11.19, 12.63, 14.05, 34.53}, {9.57, 16.39, 28.44, 30.94, 96.55}};
#define MULTI_DIM 4096
#define MULTI_RANK 16
#define MULTI_SCALE 2.0f

/* A multi case: host values (W in PEFT layout, adapters [r, K] and [N, r], ids uniform in 0..L-1)
 * and buffer sets in backend memory, each with its own adapter set, x, y, ids and grouping; the
 * first w_count sets also hold their own W. */
typedef struct multi_bench {
    lf_context *ctx;
    int L;
    int64_t m, k, n, r;
    lf_dtype dt;
    void *hx, *hw, **ha, **hb;
    int32_t *hids, *hperm;
    int64_t *group; /* [L + 1]: adapter i's tokens are hperm[group[i] .. group[i+1]) */
    int used;       /* adapters with at least one token */
    void **da, **db; /* the adapters uploaded once, loaded into every set from there */
    int count, w_count;
    lf_adapter_set **set;
    void **x, **y, **w, **ids, **perm;
    void *ws;
} multi_bench;

static void multi_bench_free(multi_bench *mb)
{
    lf_context *ctx = mb->ctx;
    for (int j = 0; j < mb->count; j++) {
        lf_adapter_set_destroy(mb->set ? mb->set[j] : NULL);
        void *bufs[5] = {mb->x ? mb->x[j] : NULL, mb->y ? mb->y[j] : NULL, mb->w ? mb->w[j] : NULL,
                         mb->ids ? mb->ids[j] : NULL, mb->perm ? mb->perm[j] : NULL};
        for (int i = 0; i < 5; i++)
            if (bufs[i])
                lf_free(ctx, bufs[i]);
    }
    for (int i = 0; i < mb->L; i++) {
        if (mb->ha)
            free(mb->ha[i]), free(mb->hb[i]);
        if (mb->da && mb->da[i])
            lf_free(ctx, mb->da[i]);
        if (mb->db && mb->db[i])
            lf_free(ctx, mb->db[i]);
    }
    if (mb->ws)
        lf_free(ctx, mb->ws);
    free(mb->hx), free(mb->hw), free(mb->ha), free(mb->hb), free(mb->hids), free(mb->hperm), free(mb->group);
    free(mb->da), free(mb->db), free(mb->set), free(mb->x), free(mb->y), free(mb->w), free(mb->ids), free(mb->perm);
    memset(mb, 0, sizeof *mb);
}

static lf_status multi_alloc_upload(lf_context *ctx, void **dev, const void *host, size_t bytes)
{
    lf_status st = lf_malloc(ctx, dev, bytes);
    if (st != LF_OK)
        report_lf_error(ctx, "lf_malloc (multi case)", st);
    else if (host)
        st = upload(ctx, *dev, host, bytes);
    return st;
}

/* The fewest bytes a call must move (the issue's floor): x read, y read and written, each used
 * adapter read once; the layer also reads W. */
static double multi_floor_bytes(const multi_bench *mb, int with_w)
{
    const double es = (double)lf_dtype_size(mb->dt);
    double elems = (double)mb->m * (double)mb->k + 2.0 * (double)mb->m * (double)mb->n +
                   (double)mb->used * (double)mb->r * (double)(mb->k + mb->n);
    if (with_w)
        elems += (double)mb->n * (double)mb->k;
    return elems * es;
}

static lf_status multi_bench_create(lf_context *ctx, int L, int64_t m, uint64_t seed, multi_bench *mb)
{
    memset(mb, 0, sizeof *mb);
    *mb = (multi_bench){.ctx = ctx, .L = L, .m = m, .k = MULTI_DIM, .n = MULTI_DIM, .r = MULTI_RANK, .dt = LF_BF16};
    const size_t es = lf_dtype_size(mb->dt);
    const size_t xb = (size_t)(m * mb->k) * es, yb = (size_t)(m * mb->n) * es, wb = (size_t)(mb->n * mb->k) * es;
    const size_t ab = (size_t)(mb->r * mb->k) * es, bb = (size_t)(mb->n * mb->r) * es;
    mb->hx = malloc(xb), mb->hw = malloc(wb), mb->ha = calloc((size_t)L, sizeof *mb->ha);
    mb->hb = calloc((size_t)L, sizeof *mb->hb), mb->hids = malloc((size_t)m * sizeof *mb->hids);
    mb->hperm = malloc((size_t)m * sizeof *mb->hperm), mb->group = calloc((size_t)L + 1, sizeof *mb->group);
    mb->da = calloc((size_t)L, sizeof *mb->da), mb->db = calloc((size_t)L, sizeof *mb->db);
    if (!mb->hx || !mb->hw || !mb->ha || !mb->hb || !mb->hids || !mb->hperm || !mb->group || !mb->da || !mb->db) {
        lf_cli_error("out of host memory for a multi case");
        multi_bench_free(mb);
        return LF_ERR_OUT_OF_MEMORY;
    }
    lf_cli_fill_random(mb->hx, mb->dt, m * mb->k, 1.0, seed * 31 + 1);
    lf_cli_fill_random(mb->hw, mb->dt, mb->n * mb->k, 1.0 / sqrt((double)mb->k), seed * 31 + 2);
    lf_status st = LF_OK;
    for (int i = 0; i < L && st == LF_OK; i++) {
        mb->ha[i] = malloc(ab), mb->hb[i] = malloc(bb);
        if (!mb->ha[i] || !mb->hb[i]) {
            st = LF_ERR_OUT_OF_MEMORY;
            break;
        }
        lf_cli_fill_random(mb->ha[i], mb->dt, mb->r * mb->k, 1.0 / sqrt((double)mb->k), seed * 31 + 3 + 2 * (uint64_t)i);
        lf_cli_fill_random(mb->hb[i], mb->dt, mb->n * mb->r, 1.0 / sqrt((double)mb->r), seed * 31 + 4 + 2 * (uint64_t)i);
        if ((st = multi_alloc_upload(ctx, &mb->da[i], mb->ha[i], ab)) == LF_OK)
            st = multi_alloc_upload(ctx, &mb->db[i], mb->hb[i], bb);
    }
    /* ids uniform in 0..L-1, and their grouping for the unfused loop */
    uint64_t state = seed * 0x9e3779b97f4a7c15ull + (uint64_t)L;
    for (int64_t t = 0; t < m; t++) {
        mb->hids[t] = (int32_t)(lf_cli_rng_next(&state) % (uint64_t)L);
        mb->group[mb->hids[t] + 1]++;
    }
    for (int i = 0; i < L; i++) {
        mb->used += mb->group[i + 1] > 0;
        mb->group[i + 1] += mb->group[i];
    }
    int64_t *fill = malloc((size_t)L * sizeof *fill);
    if (!fill)
        st = LF_ERR_OUT_OF_MEMORY;
    else {
        memcpy(fill, mb->group, (size_t)L * sizeof *fill);
        for (int64_t t = 0; t < m; t++)
            mb->hperm[fill[mb->hids[t]]++] = (int32_t)t;
        free(fill);
    }
    /* rotation: the delta over enough sets to read ROTATE_BYTES, the layer (and the base GEMM) over
     * the sets W needs */
    mb->w_count = lf_cli_buffer_sets((double)(xb + wb + yb));
    const int delta_sets = lf_cli_buffer_sets(multi_floor_bytes(mb, 0));
    mb->count = delta_sets > mb->w_count ? delta_sets : mb->w_count;
    const int c = mb->count;
    mb->set = calloc((size_t)c, sizeof *mb->set), mb->x = calloc((size_t)c, sizeof(void *));
    mb->y = calloc((size_t)c, sizeof(void *)), mb->w = calloc((size_t)c, sizeof(void *));
    mb->ids = calloc((size_t)c, sizeof(void *)), mb->perm = calloc((size_t)c, sizeof(void *));
    if (st == LF_OK && (!mb->set || !mb->x || !mb->y || !mb->w || !mb->ids || !mb->perm))
        st = LF_ERR_OUT_OF_MEMORY;
    for (int j = 0; j < c && st == LF_OK; j++) {
        if ((st = lf_adapter_set_create(ctx, mb->dt, mb->k, mb->n, L, mb->r, &mb->set[j])) != LF_OK) {
            report_lf_error(ctx, "lf_adapter_set_create", st);
            break;
        }
        for (int i = 0; i < L && st == LF_OK; i++) {
            lf_matrix a = lf_matrix_make(mb->dt, mb->da[i], mb->r, mb->k), b = lf_matrix_make(mb->dt, mb->db[i], mb->n, mb->r);
            if ((st = lf_adapter_set_load(mb->set[j], i, LF_LAYOUT_PEFT, &a, &b, MULTI_SCALE, LF_COPY_DEVICE_TO_DEVICE)) != LF_OK)
                report_lf_error(ctx, "lf_adapter_set_load", st);
        }
        if (st == LF_OK)
            st = multi_alloc_upload(ctx, &mb->x[j], mb->hx, xb);
        if (st == LF_OK)
            st = multi_alloc_upload(ctx, &mb->y[j], NULL, yb);
        if (st == LF_OK)
            st = multi_alloc_upload(ctx, &mb->ids[j], mb->hids, (size_t)m * sizeof(int32_t));
        if (st == LF_OK)
            st = multi_alloc_upload(ctx, &mb->perm[j], mb->hperm, (size_t)m * sizeof(int32_t));
        if (st == LF_OK && j < mb->w_count)
            st = multi_alloc_upload(ctx, &mb->w[j], mb->hw, wb);
    }
    /* One workspace for the two baselines that take one: the unfused loop and the base GEMM. */
    size_t ws_bytes = 0;
    if (ctx->ops->multi_unfused_workspace_bytes) {
        const lf_multi_problem q = {.dtype = mb->dt, .m = m, .k = mb->k, .n = mb->n, .set = mb->set[0]};
        ws_bytes = ctx->ops->multi_unfused_workspace_bytes(&q);
    }
    if (ctx->ops->baseline_workspace_bytes) {
        /* the problem multi_call_run's MULTI_BASE passes (the size depends on which operands exist) */
        const lf_lora_problem p = {.layout = LF_LAYOUT_PEFT, .dtype = mb->dt, .m = m, .k = mb->k, .n = mb->n,
                                   .rank = mb->r, .x = mb->x[0], .ldx = mb->k, .w = mb->w[0], .ldw = mb->k,
                                   .y = mb->y[0], .ldy = mb->n};
        const size_t base_bytes = ctx->ops->baseline_workspace_bytes(&p);
        ws_bytes = base_bytes > ws_bytes ? base_bytes : ws_bytes;
    }
    if (st == LF_OK && ws_bytes > 0)
        st = multi_alloc_upload(ctx, &mb->ws, NULL, ws_bytes);
    if (st == LF_OK)
        st = lf_synchronize(ctx);
    if (st != LF_OK) {
        lf_cli_error("setting up multi_L%d_m%lld failed (%s)", L, (long long)m, lf_status_name(st));
        multi_bench_free(mb);
    }
    return st;
}

typedef enum multi_call_kind { MULTI_FUSED, MULTI_UNFUSED, MULTI_BASE } multi_call_kind;

typedef struct multi_call {
    multi_bench *mb;
    multi_call_kind kind;
    int with_w;
    int sets, next; /* rotates over sets 0..sets-1 */
} multi_call;

static lf_status multi_call_run(void *arg)
{
    multi_call *mc = arg;
    multi_bench *mb = mc->mb;
    const int j = mc->next;
    mc->next = (j + 1) % mc->sets;
    lf_context *ctx = mb->ctx;
    lf_matrix x = lf_matrix_make(mb->dt, mb->x[j], mb->m, mb->k), y = lf_matrix_make(mb->dt, mb->y[j], mb->m, mb->n);
    lf_matrix w = lf_matrix_make(mb->dt, mc->with_w ? mb->w[j] : NULL, mb->n, mb->k);
    switch (mc->kind) {
    case MULTI_FUSED:
        return lf_lora_forward_multi(ctx, mb->set[j], LF_LAYOUT_PEFT, &x, mc->with_w ? &w : NULL, NULL, mb->ids[j], 0.0f,
                                     &y);
    case MULTI_UNFUSED: {
        const lf_multi_problem q = {.layout = LF_LAYOUT_PEFT, .dtype = mb->dt, .m = mb->m, .k = mb->k, .n = mb->n,
                                    .x = x.data, .ldx = mb->k, .w = mc->with_w ? w.data : NULL, .ldw = mb->k,
                                    .beta = 0.0f, .y = y.data, .ldy = mb->n, .token_adapter = mb->ids[j],
                                    .set = mb->set[j]};
        return ctx->ops->multi_unfused(ctx, &q, mb->perm[j], mb->group, mb->ws);
    }
    case MULTI_BASE: {
        const lf_lora_problem p = {.layout = LF_LAYOUT_PEFT, .dtype = mb->dt, .m = mb->m, .k = mb->k, .n = mb->n,
                                   .rank = mb->r, .x = x.data, .ldx = mb->k, .w = w.data, .ldw = mb->k,
                                   .y = y.data, .ldy = mb->n};
        return ctx->ops->baseline_base_gemm(ctx, &p, mb->ws);
    }
    }
    return LF_ERR_INTERNAL;
}

/* Checks the fused op on set 0 against the per-token reference: every row of the delta, sampled rows
 * of the layer (its reference costs K·N per row). Returns the number of elements out of tolerance. */
static int64_t multi_verify(multi_bench *mb, int with_w, double *max_err)
{
    multi_call mc = {mb, MULTI_FUSED, with_w, 1, 0};
    const size_t es = lf_dtype_size(mb->dt);
    lf_status st = multi_call_run(&mc);
    unsigned char *got = malloc((size_t)(mb->m * mb->n) * es);
    double *exact = malloc((size_t)mb->n * sizeof *exact), *mag = malloc((size_t)mb->n * sizeof *mag);
    lf_lora_problem *ads = calloc((size_t)mb->L, sizeof *ads);
    if (st == LF_OK && (!got || !exact || !mag || !ads))
        st = LF_ERR_OUT_OF_MEMORY;
    if (st == LF_OK)
        st = lf_memcpy(mb->ctx, got, mb->y[0], (size_t)(mb->m * mb->n) * es, LF_COPY_DEVICE_TO_HOST);
    int64_t bad = st == LF_OK ? 0 : -1;
    *max_err = 0.0;
    for (int i = 0; i < mb->L && st == LF_OK; i++)
        ads[i] = (lf_lora_problem){.a = mb->ha[i], .lda = mb->k, .b = mb->hb[i], .ldb = mb->r, .rank = mb->r,
                                   .scale = MULTI_SCALE};
    for (int64_t i = 0; i < mb->m && st == LF_OK; i++) {
        if (with_w && mb->m > 3 * SAMPLE_BLOCK_ROWS &&
            !(i < SAMPLE_BLOCK_ROWS || (i >= mb->m / 2 && i < mb->m / 2 + SAMPLE_BLOCK_ROWS) ||
              i >= mb->m - SAMPLE_BLOCK_ROWS))
            continue;
        const lf_lora_problem row = {.layout = LF_LAYOUT_PEFT, .dtype = mb->dt, .m = 1, .k = mb->k, .n = mb->n,
                                     .x = (const char *)mb->hx + (size_t)(i * mb->k) * es, .ldx = mb->k,
                                     .w = with_w ? mb->hw : NULL, .ldw = mb->k, .beta = 0.0f, .y = NULL, .ldy = mb->n};
        lf_ref_lora_multi_f64(&row, ads, mb->L, &mb->hids[i], exact, mag);
        for (int64_t j = 0; j < mb->n; j++) {
            const double v = lf_load_f32(got, mb->dt, i * mb->n + j), err = fabs(v - exact[j]);
            *max_err = err > *max_err ? err : *max_err;
            bad += !(err <= lf_ref_tolerance(mb->dt, mb->k, mb->r, exact[j], mag[j]));
        }
    }
    if (st != LF_OK)
        report_lf_error(mb->ctx, "checking a multi case", st);
    free(got), free(exact), free(mag), free(ads);
    return bad;
}

/* Per-call µs of one rotation, NAN when it could not be measured. */
static double multi_measure(multi_bench *mb, multi_call_kind kind, int with_w, lf_timing_mode mode, const options *o)
{
    const int sets = with_w || kind == MULTI_BASE ? mb->w_count : mb->count;
    multi_call mc = {mb, kind, with_w, sets, 0};
    return measure_fn(mb->ctx, multi_call_run, &mc, sets, mode, o->iters, "timing a multi-adapter call");
}

/* One many-adapter case: L adapters, m tokens, delta and layer, each checked, then timed beside the
 * base GEMM and the unfused per-adapter loop. reference_us: the issue's Triton time for the delta,
 * NAN if none. */
static void run_multi_case(lf_context *ctx, const options *o, int L, int64_t m, const char *name, double reference_us,
                           double copy_gbps, results *res, case_outcome *all)
{
    const int cuda = lf_context_backend(ctx) == LF_BACKEND_CUDA;
    printf("\n== %s: bf16, %d -> %d, rank %d, %d adapters, random per-token mapping\n", name, MULTI_DIM, MULTI_DIM,
           MULTI_RANK, L);
    if (!cuda && m * (int64_t)L > 256) {
        printf("  skipped on the CPU (the layer runs one GEMM per adapter group)\n");
        return;
    }
    fflush(stdout);
    multi_bench mb;
    if (multi_bench_create(ctx, L, m, (uint64_t)o->seed, &mb) != LF_OK) {
        all->runtime_error = 1;
        return;
    }
    printf("  adapters used %d; rotating over %d sets (delta), %d (layer, base GEMM)\n", mb.used, mb.count,
           mb.w_count);
    const double base_us = multi_measure(&mb, MULTI_BASE, 1, LF_TIME_GRAPH, o);
    all->runtime_error |= isnan(base_us);
    for (int with_w = 0; with_w <= 1; with_w++) {
        double max_err;
        const int64_t bad = multi_verify(&mb, with_w, &max_err);
        printf("  check %s: %s (max |err| %.3g)\n", with_w ? "multi_layer" : "multi_delta",
               bad == 0 ? "PASS" : "FAIL", max_err);
        if (bad != 0) {
            all->failed_check |= bad > 0;
            all->runtime_error |= bad < 0;
            continue;
        }
        op_result r;
        memset(&r, 0, sizeof r);
        snprintf(r.name, sizeof r.name, "%s", name);
        r.op = with_w ? "multi_layer" : "multi_delta";
        r.cfg = (problem_cfg){.m = m, .k = mb.k, .n = mb.n, .rank = mb.r, .dtype = mb.dt,
                              .layout = LF_LAYOUT_PEFT, .scale = MULTI_SCALE, .seed = (uint64_t)o->seed};
        r.adapters = L;
        r.reference_us = with_w ? NAN : reference_us;
        r.own_base_us = NAN;
        r.bytes = multi_floor_bytes(&mb, with_w);
        r.flops = 2.0 * (double)m * (double)mb.r * (double)(mb.k + mb.n) +
                  (with_w ? 2.0 * (double)m * (double)mb.k * (double)mb.n : 0.0);
        r.buffer_sets = with_w ? mb.w_count : mb.count;
        r.base_us = base_us;
        r.fused_us = multi_measure(&mb, MULTI_FUSED, with_w, LF_TIME_GRAPH, o);
        r.fused_host_us = cuda ? multi_measure(&mb, MULTI_FUSED, with_w, LF_TIME_HOST_LOOP, o) : r.fused_us;
        r.unfused_us = ctx->ops->multi_unfused ? multi_measure(&mb, MULTI_UNFUSED, with_w, LF_TIME_GRAPH, o) : NAN;
        print_timing_row(with_w ? "fused layer" : "fused delta", r.fused_us, r.fused_host_us, r.bytes, r.flops,
                         copy_gbps);
        print_timing_row(with_w ? "unfused layer" : "unfused delta", r.unfused_us, NAN, r.bytes, r.flops, copy_gbps);
        all->runtime_error |= isnan(r.fused_us);
        if (!isnan(r.fused_us) && !results_push(res, &r)) {
            lf_cli_error("out of memory for the results");
            all->runtime_error = 1;
        }
    }
    print_timing_row("base GEMM", base_us, NAN,
                     base_bytes(&(problem_cfg){.m = m, .k = mb.k, .n = mb.n, .dtype = mb.dt}),
                     2.0 * (double)m * (double)mb.k * (double)mb.n, copy_gbps);
    multi_bench_free(&mb);
}

static void run_multi_suite(lf_context *ctx, const options *o, double copy_gbps, results *res, case_outcome *all)
{
    for (size_t li = 0; li < MULTI_L_COUNT; li++)
        for (size_t mi = 0; mi < MULTI_M_COUNT; mi++) {
            char name[32];
            multi_case_name(li, mi, name, sizeof name);
            if (case_selected(o, name))
                run_multi_case(ctx, o, multi_adapters[li], multi_tokens[mi], name, multi_triton_us[li][mi], copy_gbps,
                               res, all);
        }
}

/* The issue's targets, per multi result: the delta at most half the reference or within 85% of the
 * bandwidth floor (whichever allows more time); the layer at decode (M <= 64, L = 8) at most 1.10×
 * the base GEMM. */
static void print_multi_targets(const results *res, double copy_gbps, const char *device)
{
    const int on_h100 = strstr(device, "H100") != NULL; /* the targets are H100 numbers */
    int header = 0;
    for (size_t i = 0; i < res->count; i++) {
        const op_result *r = &res->v[i];
        if (r->adapters <= 0)
            continue;
        if (!header++)
            printf("\n%-18s %-11s %9s %9s %9s %9s %9s %9s  %s\n", "multi case", "op", "fused_us", "unfused", "base_us",
                   "triton", "floor_us", "target", "verdict");
        const double floor_us = copy_gbps > 0 ? r->bytes / copy_gbps * 1e-3 : NAN;
        double target = NAN;
        if (strcmp(r->op, "multi_delta") == 0) {
            if (!isnan(r->reference_us)) /* the suite's cells only */
                target = fmax(r->reference_us / 2.0, floor_us / 0.85);
        } else if (r->adapters == 8 && r->cfg.m <= 64) {
            target = 1.10 * r->base_us;
        }
        printf("%-18s %-11s %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f  %s\n", r->name, r->op, r->fused_us, r->unfused_us,
               r->base_us, r->reference_us, floor_us, target,
               isnan(target) || !on_h100 ? "-" : r->fused_us <= target ? "MET" : "MISSED");
    }
}


/* ============================================================================================== */
/* JSON                                                                                           */
/* ============================================================================================== */

static json_t *case_json(const op_result *r)
{
    json_t *c = lf_cli_json_case(r->name, r->op, r->cfg.dtype, r->cfg.m, r->cfg.k, r->cfg.n, r->cfg.rank,
                                 r->adapters > 0 ? r->adapters : 1);
    if (r->adapters > 0)
        json_object_set_new(c, "L", json_integer(r->adapters));
    lf_cli_json_num(c, "triton_reference_us", r->reference_us);
    lf_cli_json_num(c, "own_base_us", r->own_base_us);
    lf_cli_json_measured(c, r->fused_us, r->fused_host_us, r->base_us, r->unfused_us, r->bytes, r->flops,
                         r->buffer_sets);
    return c;
}

static int write_json(const char *path, lf_context *ctx, const options *o, double copy_gbps, const results *res)
{
    json_t *root = lf_cli_json_root(lf_context_device_name(ctx), lf_backend_name(lf_context_backend(ctx)));
    json_t *cases = json_array();
    lf_cli_json_num(root, "copy_GBps", copy_gbps > 0 ? copy_gbps : NAN);
    if (lf_context_backend(ctx) == LF_BACKEND_CPU)
        json_object_set_new(root, "threads", json_integer(cpu_threads(o)));
    for (size_t i = 0; i < res->count; i++)
        json_array_append_new(cases, case_json(&res->v[i]));
    return lf_cli_write_bench_json(path, root, cases);
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
    printf("timed calls rotate over buffer sets; their number per measurement is a multiple of the sets\n");
}

static int run_suite(lf_context *ctx, const options *o, double copy_gbps, results *res, case_outcome *all)
{
    const int cpu = lf_context_backend(ctx) == LF_BACKEND_CPU;
    for (size_t i = 0; i < SUITE_COUNT && !o->multi_only; i++) {
        const suite_case *s = &suite_table[i];
        if (!case_selected(o, s->name))
            continue;
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
    run_multi_suite(ctx, o, copy_gbps, res, all);
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
        lf_cli_error("--json: cannot create %s: %s", tmp, strerror(errno));
    }
    free(tmp);
    return f != NULL;
}

static int cmd_bench(const options *o)
{
    if (o->json_path && !json_path_writable(o->json_path))
        return EXIT_USAGE;
    if (!cases_option_ok(o))
        return EXIT_USAGE;
    if (o->tp) {
        const lf_tp_bench_options tpo = {.iters = o->iters, .seed = (uint64_t)o->seed, .json_path = o->json_path};
        return lf_cli_bench_tp(&tpo);
    }
    lf_context *ctx = NULL;
    int rc = open_context(o, &ctx);
    if (rc != EXIT_PASS)
        return rc;
    const lf_backend_ops *bops = ctx->ops;
    if (!bops->time_calls) {
        lf_cli_error("the %s backend has no timing support", lf_backend_name(lf_context_backend(ctx)));
        lf_context_destroy(ctx);
        return EXIT_RUNTIME;
    }
    print_header("bench", o, ctx);
    const problem_cfg single = cfg_of(o);
    if (!o->suite && !o->adapters)
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
    } else if (o->adapters) {
        char name[64];
        snprintf(name, sizeof name, "multi_L%lld_m%lld", (long long)o->adapters, (long long)o->m);
        run_multi_case(ctx, o, (int)o->adapters, o->m, name, NAN, copy_gbps, &res, &all);
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
    print_multi_targets(&res, copy_gbps, lf_context_device_name(ctx));
    if (o->json_path && !write_json(o->json_path, ctx, o, copy_gbps, &res))
        all.runtime_error = 1;
    if (all.failed_check)
        lf_cli_error("a fused op failed its check against the reference: it was not timed");
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
    if (strcmp(cmd, "info") == 0)
        return lf_cli_info(argc - 1, argv + 1);
    if (strcmp(cmd, "merge") == 0)
        return lf_cli_merge(argc - 1, argv + 1);
    if (strcmp(cmd, "bench-merge") == 0)
        return lf_cli_bench_merge(argc - 1, argv + 1);
    unsigned which = strcmp(cmd, "bench") == 0 ? CMD_BENCH : strcmp(cmd, "check") == 0 ? CMD_CHECK : 0;
    if (!which) {
        lf_cli_error("unknown command '%s' (bench, check, info, merge, bench-merge, help, --version)", cmd);
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

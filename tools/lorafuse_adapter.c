/*
 * lorafuse_adapter.c — the CLI's PEFT adapter commands:
 *
 *   lorafuse info ADAPTER_DIR
 *   lorafuse merge --base MODEL.safetensors --adapter ADAPTER_DIR --out OUT.safetensors
 *   lorafuse bench-merge [--out-features 4096 --in-features 4096 --rank 16 --dtype bf16] [--json F]
 *
 * merge streams the base file tensor by tensor out of its mapping: untouched tensors are written
 * straight from it (byte for byte), each adapted weight is copied once into a buffer (the backend's
 * memory on CUDA), merged there and written. Memory holds the largest adapted weight, not the model.
 * Everything is checked before the output is created: a module without its base weight, or with
 * one of another shape, leaves no file behind.
 */
#define _GNU_SOURCE /* madvise */

#include "lorafuse_adapter.h"

#include "cli.h"

#include "lf_commit.h"
#include "lf_dtype.h"
#include "lf_internal.h"
#include "peft/safetensors_text.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>


const char lf_cli_adapter_usage[] =
    "  info       lorafuse info ADAPTER_DIR: a PEFT LoRA adapter's modules, ranks, scales, sizes\n"
    "  merge      lorafuse merge --base MODEL.safetensors --adapter ADAPTER_DIR --out OUT.safetensors\n"
    "             [--unmerge] [--backend auto|cpu|cuda]: W += scale*B*A into a new file (atomic;\n"
    "             other tensors copied byte for byte; never overwrites an input)\n"
    "  bench-merge  time W += scale*B*A [--out-features 4096 --in-features 4096 --rank 16\n"
    "             --dtype bf16 --backend B --json FILE]\n";

/* Reports a failed library call; bad input files are the user's to fix (exit 2), the rest are
 * runtime failures (exit 3). */
static int fail_status(lf_context *ctx, const char *what, lf_status st)
{
    lf_cli_error("%s: %s (%s)", what, ctx ? lf_context_last_error(ctx) : "", lf_status_name(st));
    return lf_cli_exit_status(st);
}

/* "--name VALUE" or "--name=VALUE" at argv[*i]; advances *i past what it used. */
static const char *option_value(int argc, char **argv, int *i, const char *name)
{
    const size_t n = strlen(name);
    const char *arg = argv[*i];
    if (strncmp(arg, "--", 2) != 0 || strncmp(arg + 2, name, n) != 0)
        return NULL;
    if (arg[2 + n] == '=')
        return arg + 3 + n;
    if (arg[2 + n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        lf_cli_error("--%s needs a value", name);
        return "";
    }
    return argv[++*i];
}

static int parse_backend(const char *s, lf_backend *b)
{
    static const char *const names[] = {"auto", "cpu", "cuda"};
    for (int i = 0; i < 3; i++)
        if (strcmp(s, names[i]) == 0) {
            *b = (lf_backend)i;
            return 1;
        }
    lf_cli_error("--backend %s: expected auto, cpu or cuda", s);
    return 0;
}

static int open_context(lf_backend backend, lf_context **ctx)
{
    lf_status st = lf_context_create(ctx, backend);
    if (st != LF_OK) {
        lf_cli_error("cannot create a %s context: %s", lf_backend_name(backend), lf_status_string(st));
        return st == LF_ERR_BACKEND_UNAVAILABLE ? EXIT_USAGE : EXIT_RUNTIME;
    }
    return EXIT_PASS;
}

/* ============================================================================================== */
/* info                                                                                           */
/* ============================================================================================== */

int lf_cli_info(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr, "usage: lorafuse info ADAPTER_DIR\n");
        return argc == 2 && strcmp(argv[1], "--help") == 0 ? EXIT_PASS : EXIT_USAGE;
    }
    lf_context *ctx;
    int rc = open_context(LF_BACKEND_CPU, &ctx);
    if (rc != EXIT_PASS)
        return rc;
    lf_peft_adapter *ad;
    lf_status st = lf_peft_adapter_open(ctx, argv[1], &ad);
    if (st != LF_OK) {
        rc = fail_status(ctx, argv[1], st);
        lf_context_destroy(ctx);
        return rc;
    }
    lf_peft_adapter_info ai;
    lf_peft_adapter_get_info(ad, &ai);
    printf("adapter %s\n", argv[1]);
    printf("base model: %s\n", ai.base_model[0] ? ai.base_model : "(not named)");
    printf("LoRA r %lld, lora_alpha %g, %s, fan_in_fan_out %s, bias %s\n", (long long)ai.r, ai.lora_alpha,
           ai.use_rslora ? "rsLoRA (scale = alpha/sqrt(r))" : "scale = alpha/r", ai.fan_in_fan_out ? "yes" : "no",
           ai.bias);
    printf("\n%-48s %7s %7s %5s %8s %9s %-5s %10s %11s\n", "module", "in", "out", "rank", "alpha", "scale", "dtype",
           "params", "bytes");
    uint64_t params = 0, bytes = 0;
    for (size_t i = 0; i < ai.module_count; i++) {
        lf_peft_module_info m;
        lf_peft_adapter_module(ad, i, &m);
        const uint64_t p = (uint64_t)m.rank * (uint64_t)(m.in_features + m.out_features);
        const uint64_t b = p * lf_dtype_size(m.dtype);
        params += p;
        bytes += b;
        printf("%-48s %7lld %7lld %5lld %8g %9.5g %-5s %10llu %11llu\n", m.name, (long long)m.in_features,
               (long long)m.out_features, (long long)m.rank, m.alpha, (double)m.scale, lf_dtype_name(m.dtype),
               (unsigned long long)p, (unsigned long long)b);
    }
    printf("\ntotal: %zu modules, %llu parameters, %llu bytes (%.2f MiB) of A and B\n", ai.module_count,
           (unsigned long long)params, (unsigned long long)bytes, (double)bytes / (1024.0 * 1024.0));
    for (size_t i = 0; i < ai.replacement_count; i++) {
        const char *name;
        lf_safetensors_tensor_info t;
        lf_peft_adapter_replacement(ad, i, &name, &t);
        printf("%s %s (%s, %zu bytes): replaces the base tensor in a merge\n", i == 0 ? "also:" : "     ", name,
               t.dtype_name, t.bytes);
    }
    lf_peft_adapter_close(ad);
    lf_context_destroy(ctx);
    return EXIT_PASS;
}

/* ============================================================================================== */
/* merge                                                                                          */
/* ============================================================================================== */

/* What the merge does with each base tensor. */
typedef struct tensor_plan {
    int module;      /* index of the adapter module merged into it, or -1 */
    int replacement; /* index of the adapter tensor that replaces it, or -1 */
} tensor_plan;

typedef struct merge_job {
    lf_context *ctx;
    lf_safetensors *base;
    lf_peft_adapter *ad;
    lf_peft_adapter_info info;
    tensor_plan *plan;
    size_t tensors;
    size_t largest_target; /* bytes */
    int unmerge;
} merge_job;

/* Finds every module's and replacement's base tensor and checks it; fills job->plan. */
static lf_status plan_merge(merge_job *job, const char *base_path)
{
    lf_context *ctx = job->ctx;
    if (job->unmerge && job->info.replacement_count > 0) {
        /* Merging overwrites those base tensors with the adapter's; their originals are nowhere. */
        const char *name;
        lf_safetensors_tensor_info rt;
        lf_peft_adapter_replacement(job->ad, 0, &name, &rt);
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "--unmerge: the adapter replaces %zu base tensor%s (%s%s: "
                       "modules_to_save or trained biases), and a replaced tensor cannot be restored from the "
                       "adapter; unmerge is refused", job->info.replacement_count,
                       job->info.replacement_count == 1 ? "" : "s", name,
                       job->info.replacement_count > 1 ? ", ..." : "");
    }
    job->tensors = lf_safetensors_count(job->base);
    job->plan = malloc((job->tensors ? job->tensors : 1) * sizeof *job->plan);
    if (!job->plan)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "no memory for the merge plan");
    for (size_t i = 0; i < job->tensors; i++)
        job->plan[i] = (tensor_plan){-1, -1};
    char s1[128], s2[128];
    for (size_t m = 0; m < job->info.module_count; m++) {
        lf_peft_module_info mi;
        lf_peft_adapter_module(job->ad, m, &mi);
        size_t ti;
        if (lf_safetensors_find(job->base, mi.base_tensor, &ti) != LF_OK)
            return lf_fail(ctx, LF_ERR_NOT_FOUND, "module %s: %s has no tensor %s", mi.name, base_path,
                           mi.base_tensor);
        lf_safetensors_tensor_info t;
        lf_safetensors_tensor(job->base, ti, &t);
        const int64_t rows = job->info.fan_in_fan_out ? mi.in_features : mi.out_features;
        const int64_t cols = job->info.fan_in_fan_out ? mi.out_features : mi.in_features;
        if (t.ndim != 2 || t.shape[0] != rows || t.shape[1] != cols)
            return lf_fail(ctx, LF_ERR_SHAPE_MISMATCH, "module %s: the base weight %s is %s but the adapter (lora_A "
                           "[%lld, %lld], lora_B [%lld, %lld]%s) needs [%lld, %lld]", mi.name, mi.base_tensor,
                           lf_safetensors_shape_text(&t, s1, sizeof s1), (long long)mi.rank, (long long)mi.in_features,
                           (long long)mi.out_features, (long long)mi.rank,
                           job->info.fan_in_fan_out ? ", fan_in_fan_out" : "", (long long)rows, (long long)cols);
        if (!t.has_lf_dtype)
            return lf_fail(ctx, LF_ERR_UNSUPPORTED, "module %s: the base weight %s is %s; merging needs F32, F16 or "
                           "BF16", mi.name, mi.base_tensor, t.dtype_name);
        job->plan[ti].module = (int)m;
        if (t.bytes > job->largest_target)
            job->largest_target = t.bytes;
    }
    for (size_t r = 0; r < job->info.replacement_count; r++) {
        const char *name;
        lf_safetensors_tensor_info rt, t;
        lf_peft_adapter_replacement(job->ad, r, &name, &rt);
        size_t ti;
        if (lf_safetensors_find(job->base, name, &ti) != LF_OK)
            return lf_fail(ctx, LF_ERR_NOT_FOUND, "the adapter's %s (modules_to_save or a trained bias) has no "
                           "tensor to replace in %s", name, base_path);
        lf_safetensors_tensor(job->base, ti, &t);
        if (strcmp(t.dtype_name, rt.dtype_name) != 0 || t.bytes != rt.bytes || t.ndim != rt.ndim ||
            memcmp(t.shape, rt.shape, sizeof t.shape) != 0)
            return lf_fail(ctx, LF_ERR_SHAPE_MISMATCH, "the adapter's %s is %s %s but the base's is %s %s", name,
                           rt.dtype_name, lf_safetensors_shape_text(&rt, s1, sizeof s1), t.dtype_name,
                           lf_safetensors_shape_text(&t, s2, sizeof s2));
        if (job->plan[ti].module >= 0)
            return lf_fail(ctx, LF_ERR_BAD_FORMAT, "the adapter both replaces and LoRA-adapts %s", name);
        job->plan[ti].replacement = (int)r;
    }
    return LF_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress(int shown, size_t done, size_t total, uint64_t bytes, uint64_t total_bytes)
{
    if (!shown)
        return;
    const int width = 30;
    const int fill = total_bytes ? (int)((double)width * (double)bytes / (double)total_bytes) : width;
    fprintf(stderr, "\rmerging [%.*s%*s] %3d%%  %zu/%zu tensors  %.2f/%.2f GB", fill,
            "##############################", width - fill, "", total_bytes ? (int)(100.0 * bytes / total_bytes) : 100,
            done, total, bytes * 1e-9, total_bytes * 1e-9);
    if (done == total)
        fputc('\n', stderr);
    fflush(stderr);
}

/* The mapping's pages of a tensor already written are dropped, so that reading a file larger than
 * memory does not push everything else out first (they are clean: the kernel may reread them). */
static void drop_pages(const void *data, size_t bytes)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)data + page - 1) / page * page, e = ((uintptr_t)data + bytes) / page * page;
    if (e > b)
        madvise((void *)b, e - b, MADV_DONTNEED);
}

/* Merges module m into the host copy `w` of its weight (dtype dt) on the job's backend. */
static lf_status merge_one(merge_job *job, size_t m, void *w, lf_dtype dt, void *dev_w)
{
    lf_context *ctx = job->ctx;
    lf_peft_module_info mi;
    lf_peft_adapter_module(job->ad, m, &mi);
    const int fif = job->info.fan_in_fan_out;
    const int64_t rows = fif ? mi.in_features : mi.out_features, cols = fif ? mi.out_features : mi.in_features;
    const size_t bytes = (size_t)rows * (size_t)cols * lf_dtype_size(dt);
    lf_matrix a, b;
    /* Uploaded copies: aligned whatever the file's offsets, and in device memory on CUDA. */
    lf_status st = lf_peft_adapter_upload_weights(ctx, job->ad, m, mi.dtype, &a, &b);
    if (st != LF_OK)
        return st;
    const int on_device = lf_context_backend(ctx) != LF_BACKEND_CPU;
    void *target = on_device ? dev_w : w;
    if (on_device)
        st = lf_memcpy(ctx, dev_w, w, bytes, LF_COPY_HOST_TO_DEVICE);
    const lf_matrix wv = lf_matrix_make(dt, target, rows, cols);
    if (st == LF_OK)
        st = job->unmerge ? lf_peft_unmerge(ctx, &wv, &a, &b, mi.scale, fif) : lf_peft_merge(ctx, &wv, &a, &b, mi.scale, fif);
    if (st == LF_OK && on_device)
        st = lf_memcpy(ctx, w, dev_w, bytes, LF_COPY_DEVICE_TO_HOST);
    lf_free(ctx, a.data);
    lf_free(ctx, b.data);
    return st;
}

static lf_status write_merged(merge_job *job, const char *out_path, const char *const *inputs, size_t ninputs,
                              int show_progress)
{
    lf_context *ctx = job->ctx;
    lf_safetensors_writer *wr;
    lf_status st = lf_safetensors_writer_create(ctx, out_path, inputs, ninputs, &wr);
    if (st != LF_OK)
        return st;
    for (size_t i = 0; i < lf_safetensors_metadata_count(job->base) && st == LF_OK; i++) {
        const char *k, *v;
        lf_safetensors_metadata_entry(job->base, i, &k, &v);
        st = lf_safetensors_writer_set_metadata(wr, k, v);
    }
    uint64_t total_bytes = 0;
    for (size_t i = 0; i < job->tensors && st == LF_OK; i++) {
        lf_safetensors_tensor_info t;
        lf_safetensors_tensor(job->base, i, &t);
        st = lf_safetensors_writer_add(wr, t.name, t.dtype_name, t.ndim, t.shape);
        total_bytes += t.bytes;
    }
    void *host_w = NULL, *dev_w = NULL;
    if (st == LF_OK && job->largest_target > 0) {
        host_w = malloc(job->largest_target);
        if (!host_w)
            st = lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "no memory for a %zu-byte weight", job->largest_target);
        else if (lf_context_backend(ctx) != LF_BACKEND_CPU)
            st = lf_malloc(ctx, &dev_w, job->largest_target);
    }
    uint64_t done_bytes = 0;
    for (size_t i = 0; i < job->tensors && st == LF_OK; i++) {
        lf_safetensors_tensor_info t;
        lf_safetensors_tensor(job->base, i, &t);
        const tensor_plan *p = &job->plan[i];
        if (p->module >= 0) {
            memcpy(host_w, t.data, t.bytes);
            st = merge_one(job, (size_t)p->module, host_w, t.lf_dtype, dev_w);
            if (st == LF_OK)
                st = lf_safetensors_writer_write(wr, host_w, t.bytes);
        } else if (p->replacement >= 0) {
            const char *name;
            lf_safetensors_tensor_info rt;
            lf_peft_adapter_replacement(job->ad, (size_t)p->replacement, &name, &rt);
            st = lf_safetensors_writer_write(wr, rt.data, rt.bytes);
        } else {
            st = lf_safetensors_writer_write(wr, t.data, t.bytes);
        }
        drop_pages(t.data, t.bytes);
        done_bytes += t.bytes;
        progress(show_progress, i + 1, job->tensors, done_bytes, total_bytes);
    }
    free(host_w);
    lf_free(ctx, dev_w);
    if (st != LF_OK) {
        if (show_progress)
            fputc('\n', stderr);
        lf_safetensors_writer_abort(wr);
        return st;
    }
    return lf_safetensors_writer_commit(wr);
}

int lf_cli_merge(int argc, char **argv)
{
    const char *base_path = NULL, *adapter_dir = NULL, *out_path = NULL, *v;
    lf_backend backend = LF_BACKEND_AUTO;
    int unmerge = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: lorafuse merge --base MODEL.safetensors --adapter ADAPTER_DIR --out OUT.safetensors\n"
                   "                      [--unmerge] [--backend auto|cpu|cuda]\n"
                   "W <- W + scale*B*A for every module of the PEFT LoRA adapter (W - ... with --unmerge), in W's\n"
                   "dtype with one rounding; the adapter's other tensors (modules_to_save, trained biases)\n"
                   "replace the base's; every other tensor is copied byte for byte. The output is written\n"
                   "to a temporary file beside OUT and renamed; nothing is written when a check fails.\n"
                   "--unmerge refuses an adapter with such replacement tensors: they cannot be undone.\n"
                   "exit status: 0 ok, 2 invalid options or input files, 3 runtime error\n");
            return EXIT_PASS;
        }
        if ((v = option_value(argc, argv, &i, "base")))
            base_path = v;
        else if ((v = option_value(argc, argv, &i, "adapter")))
            adapter_dir = v;
        else if ((v = option_value(argc, argv, &i, "out")))
            out_path = v;
        else if ((v = option_value(argc, argv, &i, "backend"))) {
            if (!parse_backend(v, &backend))
                return EXIT_USAGE;
        } else if (strcmp(argv[i], "--unmerge") == 0)
            unmerge = 1;
        else {
            lf_cli_error("merge: unknown option '%s' (lorafuse merge --help)", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!base_path || !adapter_dir || !out_path || !*base_path || !*adapter_dir || !*out_path) {
        lf_cli_error("merge needs --base, --adapter and --out (lorafuse merge --help)");
        return EXIT_USAGE;
    }
    merge_job job = {.unmerge = unmerge};
    int rc = open_context(backend, &job.ctx);
    if (rc != EXIT_PASS)
        return rc;
    lf_context *ctx = job.ctx;
    const double t0 = now_s();
    size_t cap = strlen(adapter_dir) + 64;
    char *adapter_file = malloc(cap), *adapter_config = malloc(cap);
    lf_status st = adapter_file && adapter_config ? LF_OK : LF_ERR_OUT_OF_MEMORY;
    const char *what = "merge";
    if (st == LF_OK) {
        snprintf(adapter_file, cap, "%s/adapter_model.safetensors", adapter_dir);
        snprintf(adapter_config, cap, "%s/adapter_config.json", adapter_dir);
        what = adapter_dir;
        st = lf_peft_adapter_open(ctx, adapter_dir, &job.ad);
    }
    if (st == LF_OK) {
        lf_peft_adapter_get_info(job.ad, &job.info);
        what = base_path;
        st = lf_safetensors_open(ctx, base_path, &job.base);
    }
    if (st == LF_OK) {
        what = "merge";
        st = plan_merge(&job, base_path);
    }
    if (st == LF_OK) {
        const char *inputs[3] = {base_path, adapter_file, adapter_config};
        what = out_path;
        st = write_merged(&job, out_path, inputs, 3, isatty(STDERR_FILENO));
    }
    if (st == LF_OK) {
        printf("%s %zu module%s%s into %s (%zu tensors, %s backend) in %.2f s\n", unmerge ? "unmerged" : "merged",
               job.info.module_count, job.info.module_count == 1 ? "" : "s",
               job.info.replacement_count ? " and replaced the adapter's other tensors" : "", out_path, job.tensors,
               lf_backend_name(lf_context_backend(ctx)), now_s() - t0);
        rc = EXIT_PASS;
    } else {
        rc = fail_status(ctx, what, st);
        lf_cli_error("nothing was written to %s", out_path);
    }
    free(job.plan);
    lf_safetensors_close(job.base);
    lf_peft_adapter_close(job.ad);
    free(adapter_file);
    free(adapter_config);
    lf_context_destroy(ctx);
    return rc;
}

/* ============================================================================================== */
/* bench-merge                                                                                    */
/* ============================================================================================== */

#define BENCH_ROTATE_BYTES (256.0 * 1024 * 1024) /* more than any cache: timed merges read HBM / DRAM */
#define BENCH_MAX_SETS 64

typedef struct merge_bench {
    lf_context *ctx;
    lf_matrix w[BENCH_MAX_SETS], a, b;
    int sets, next;
    float scale;
} merge_bench;

static lf_status bench_merge_call(void *arg)
{
    merge_bench *mb = arg;
    const lf_matrix *w = &mb->w[mb->next];
    mb->next = (mb->next + 1) % mb->sets;
    return lf_peft_merge(mb->ctx, w, &mb->a, &mb->b, mb->scale, 0);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Nonzero values of magnitude in [amp/8, amp), random signs. */
static void fill(void *buf, lf_dtype dt, int64_t count, double amp, uint64_t seed)
{
    for (int64_t i = 0; i < count; i++) {
        const uint64_t r = splitmix(&seed);
        const double v = amp * (0.125 + 0.875 * (double)(r >> 11) * 0x1.0p-53);
        lf_store_f32(buf, dt, i, (float)(r & 1 ? -v : v));
    }
}

/* Checks every element of the merged W against a double-precision W + s·B·A: within one rounding
 * of the dtype plus fp32 accumulation over r terms. @return the number of elements outside. */
static int64_t check_merge(const void *w0, const void *w1, const void *a, const void *b, lf_dtype dt, int64_t out,
                           int64_t in, int64_t r, float s)
{
    const double u = dt == LF_F32 ? 0x1.0p-24 : dt == LF_F16 ? 0x1.0p-11 : 0x1.0p-8;
    int64_t bad = 0;
    for (int64_t i = 0; i < out; i++)
        for (int64_t j = 0; j < in; j++) {
            double d = 0, mag = 0;
            for (int64_t t = 0; t < r; t++) {
                const double p = (double)lf_load_f32(b, dt, i * r + t) * lf_load_f32(a, dt, t * in + j);
                d += p;
                mag += fabs(p);
            }
            const double w = lf_load_f32(w0, dt, i * in + j), exact = w + (double)s * d;
            const double tol = u * fabs(exact) + 2.0 * (double)(r + 4) * 0x1.0p-24 * (fabs(w) + fabs(s) * mag);
            const double got = lf_load_f32(w1, dt, i * in + j);
            if (!(fabs(got - exact) <= tol) && bad++ < 5)
                fprintf(stderr, "  W[%lld, %lld] = %.8g, expected %.8g (tolerance %.3g)\n", (long long)i,
                        (long long)j, got, exact, tol);
        }
    return bad;
}

int lf_cli_bench_merge(int argc, char **argv)
{
    int64_t out = 4096, in = 4096, rank = 16;
    lf_dtype dt = LF_BF16;
    lf_backend backend = LF_BACKEND_AUTO;
    const char *json_path = NULL, *v;
    for (int i = 1; i < argc; i++) {
        int64_t *num = NULL;
        if ((v = option_value(argc, argv, &i, "out-features")))
            num = &out;
        else if ((v = option_value(argc, argv, &i, "in-features")))
            num = &in;
        else if ((v = option_value(argc, argv, &i, "rank")))
            num = &rank;
        else if ((v = option_value(argc, argv, &i, "dtype"))) {
            if (strcmp(v, "f32") == 0)
                dt = LF_F32;
            else if (strcmp(v, "f16") == 0)
                dt = LF_F16;
            else if (strcmp(v, "bf16") == 0)
                dt = LF_BF16;
            else {
                lf_cli_error("--dtype %s: expected f32, f16 or bf16", v);
                return EXIT_USAGE;
            }
            continue;
        } else if ((v = option_value(argc, argv, &i, "backend"))) {
            if (!parse_backend(v, &backend))
                return EXIT_USAGE;
            continue;
        } else if ((v = option_value(argc, argv, &i, "json"))) {
            json_path = v;
            continue;
        } else {
            fprintf(stderr, "usage: lorafuse bench-merge [--out-features N] [--in-features K] [--rank R] "
                            "[--dtype f32|f16|bf16] [--backend B] [--json FILE]\n");
            return strcmp(argv[i], "--help") == 0 ? EXIT_PASS : EXIT_USAGE;
        }
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || *end || end == v || x < 1 || x > (num == &rank ? LF_MAX_RANK : 65536)) {
            lf_cli_error("%s %s: expected an integer in 1..%d", argv[i - 1], v, num == &rank ? LF_MAX_RANK : 65536);
            return EXIT_USAGE;
        }
        *num = x;
    }
    merge_bench mb = {.scale = 2.0f};
    int rc = open_context(backend, &mb.ctx);
    if (rc != EXIT_PASS)
        return rc;
    lf_context *ctx = mb.ctx;
    const size_t es = lf_dtype_size(dt), wbytes = (size_t)out * (size_t)in * es;
    mb.sets = (int)ceil(BENCH_ROTATE_BYTES / (double)wbytes);
    mb.sets = mb.sets < 1 ? 1 : mb.sets > BENCH_MAX_SETS ? BENCH_MAX_SETS : mb.sets;
    void *hw0 = malloc(wbytes), *hw1 = malloc(wbytes), *ha = malloc((size_t)(rank * in) * es);
    void *hb = malloc((size_t)(rank * out) * es), *da = NULL, *db = NULL;
    lf_status st = hw0 && hw1 && ha && hb ? LF_OK : lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "no host memory");
    if (st == LF_OK) {
        fill(hw0, dt, out * in, 1.0, 1);
        /* A and B as PEFT initializes them in magnitude (A ~ 1/sqrt(in)), B nonzero. */
        fill(ha, dt, rank * in, 1.0 / sqrt((double)in), 2);
        fill(hb, dt, rank * out, 0.05, 3);
        if ((st = lf_malloc(ctx, &da, (size_t)(rank * in) * es)) == LF_OK &&
            (st = lf_malloc(ctx, &db, (size_t)(rank * out) * es)) == LF_OK &&
            (st = lf_memcpy(ctx, da, ha, (size_t)(rank * in) * es, LF_COPY_HOST_TO_DEVICE)) == LF_OK)
            st = lf_memcpy(ctx, db, hb, (size_t)(rank * out) * es, LF_COPY_HOST_TO_DEVICE);
    }
    int sets_made = 0;
    for (; st == LF_OK && sets_made < mb.sets; sets_made++) {
        void *d;
        if ((st = lf_malloc(ctx, &d, wbytes)) != LF_OK)
            break;
        mb.w[sets_made] = lf_matrix_make(dt, d, out, in);
        st = lf_memcpy(ctx, d, hw0, wbytes, LF_COPY_HOST_TO_DEVICE);
    }
    mb.a = lf_matrix_make(dt, da, rank, in);
    mb.b = lf_matrix_make(dt, db, out, rank);
    printf("lorafuse bench-merge: backend %s, device %s\nW [%lld, %lld] %s += %g * B [%lld, %lld] * A [%lld, %lld], "
           "%d buffer sets\n", lf_backend_name(lf_context_backend(ctx)), lf_context_device_name(ctx), (long long)out,
           (long long)in, lf_dtype_name(dt), (double)mb.scale, (long long)out, (long long)rank, (long long)rank,
           (long long)in, mb.sets);
    int64_t bad = -1;
    if (st == LF_OK && (st = lf_peft_merge(ctx, &mb.w[0], &mb.a, &mb.b, mb.scale, 0)) == LF_OK &&
        (st = lf_memcpy(ctx, hw1, mb.w[0].data, wbytes, LF_COPY_DEVICE_TO_HOST)) == LF_OK) {
        bad = check_merge(hw0, hw1, ha, hb, dt, out, in, rank, mb.scale);
        printf("check against the fp64 reference: %s (%lld of %lld elements outside the tolerance)\n",
               bad ? "FAILED" : "passed", (long long)bad, (long long)(out * in));
    }
    double us = NAN, host_us = NAN, copy_gbps = NAN;
    const int iters = mb.sets * (mb.sets < 20 ? (20 + mb.sets - 1) / mb.sets : 1);
    if (st == LF_OK && bad == 0) {
        if ((st = ctx->ops->measure_copy_bandwidth(ctx, &copy_gbps)) != LF_OK)
            copy_gbps = NAN;
        st = ctx->ops->time_calls(ctx, bench_merge_call, &mb, iters, LF_TIME_GRAPH, &us);
        if (st == LF_OK)
            st = ctx->ops->time_calls(ctx, bench_merge_call, &mb, iters, LF_TIME_HOST_LOOP, &host_us);
    }
    const double bytes = 2.0 * (double)wbytes + (double)((rank * (in + out)) * (int64_t)es);
    const double flops = 2.0 * (double)out * (double)in * (double)rank;
    if (st == LF_OK && bad == 0) {
        printf("merge: %.2f us per call (graph replay), %.2f us (host loop); %.1f GB/s moved", us, host_us,
               bytes / us * 1e-3);
        if (isfinite(copy_gbps))
            printf(" = %.0f%% of the copy bandwidth (%.1f GB/s)", 100.0 * bytes / us * 1e-3 / copy_gbps, copy_gbps);
        printf("\n");
    }
    if (st == LF_OK && bad == 0 && json_path) {
        char date[16] = "unknown", name[96];
        const time_t now = time(NULL);
        struct tm tm;
        if (localtime_r(&now, &tm))
            strftime(date, sizeof date, "%Y-%m-%d", &tm);
        snprintf(name, sizeof name, "merge_%lldx%lld_r%lld", (long long)out, (long long)in, (long long)rank);
        /* The schema of `lorafuse bench --json` (docs/architecture.md): m = 0 tokens, W [n, k]. */
        json_t *c = json_pack("{s:s, s:s, s:s, s:i, s:I, s:I, s:I, s:i, s:f, s:f, s:I, s:I, s:i}", "name", name, "op",
                              "merge", "dtype", lf_dtype_name(dt), "m", 0, "k", (json_int_t)in, "n", (json_int_t)out,
                              "rank", (json_int_t)rank, "adapters", 1, "fused_us", us, "fused_host_us", host_us,
                              "bytes", (json_int_t)bytes, "flops", (json_int_t)flops, "buffer_sets", mb.sets);
        json_t *root = json_pack("{s:s, s:s, s:s, s:s, s:o}", "device", lf_context_device_name(ctx), "backend",
                                 lf_backend_name(lf_context_backend(ctx)), "date", date, "commit", LF_GIT_COMMIT,
                                 "cases", json_pack("[o]", c));
        if (root && isfinite(copy_gbps))
            json_object_set_new(root, "copy_GBps", json_real(copy_gbps));
        if (!root || json_dump_file(root, json_path, JSON_INDENT(2) | JSON_REAL_PRECISION(7)) != 0) {
            lf_cli_error("cannot write %s", json_path);
            rc = EXIT_RUNTIME;
        } else {
            printf("wrote %s\n", json_path);
        }
        json_decref(root);
    }
    if (st != LF_OK)
        rc = fail_status(ctx, "bench-merge", st);
    else if (bad != 0)
        rc = EXIT_NUMERIC;
    for (int i = 0; i < sets_made; i++)
        lf_free(ctx, mb.w[i].data);
    lf_free(ctx, da);
    lf_free(ctx, db);
    free(hw0);
    free(hw1);
    free(ha);
    free(hb);
    lf_context_destroy(ctx);
    return rc;
}

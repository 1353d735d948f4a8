/*
 * peft_adapter.c — a PEFT LoRA adapter directory: adapter_config.json (peft_config.c) and
 * adapter_model.safetensors (safetensors.c), turned into a sorted list of modules whose A and B are
 * views into the mapped file.
 *
 * Tensor names, as PEFT saves them (adapter name removed): base_model.model.<module>.lora_A.weight
 * [r, in] and ...lora_B.weight [out, r]. <module> is the module's name in the base model, so its
 * weight in a Hugging Face checkpoint is <module>.weight. Other tensors under base_model.model. are
 * modules_to_save copies and biases trained with bias = "all" / "lora_only": complete tensors that
 * replace the base's in a merge, as merge_and_unload leaves them. Anything else with ".lora_" in its
 * name (embedding LoRA, DoRA magnitudes, lora_B biases) is refused as unsupported.
 */
#define _GNU_SOURCE /* strdup */

#include "peft_config.h"

#include "lf_dtype.h"
#include "safetensors_text.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PEFT_PREFIX "base_model.model."
#define CONFIG_MAX_BYTES (16u << 20) /* a config is a few kB; this only bounds a hostile one */

typedef struct peft_module {
    char *name, *base_tensor;
    size_t a, b; /* tensor indices */
    int64_t in, out, rank;
    double alpha;
    float scale;
    lf_dtype dtype;
} peft_module;

typedef struct peft_replacement {
    const char *base_name; /* points into the tensor's name, past the prefix */
    size_t tensor;
} peft_replacement;

struct lf_peft_adapter {
    lf_safetensors *st;
    lf_peft_config cfg;
    peft_module *modules;
    size_t module_count;
    peft_replacement *replacements;
    size_t replacement_count;
};

void lf_peft_adapter_close(lf_peft_adapter *ad)
{
    if (!ad)
        return;
    for (size_t i = 0; i < ad->module_count; i++) {
        free(ad->modules[i].name);
        free(ad->modules[i].base_tensor);
    }
    free(ad->modules);
    free(ad->replacements);
    lf_peft_config_free(&ad->cfg);
    lf_safetensors_close(ad->st);
    free(ad);
}

/* One LoRA tensor while pairing: module name (borrowed, not terminated) and which half. */
typedef struct lora_half {
    const char *module;
    size_t len;
    int is_b;
    size_t tensor;
} lora_half;

static int cmp_half(const void *pa, const void *pb)
{
    const lora_half *a = pa, *b = pb;
    const size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->module, b->module, n);
    if (c == 0 && a->len != b->len)
        c = a->len < b->len ? -1 : 1;
    return c ? c : a->is_b - b->is_b;
}

static int ends_with(const char *s, size_t len, const char *suffix)
{
    const size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* Checks one pair and fills the module. */
static lf_status make_module(lf_context *ctx, lf_peft_adapter *ad, const lora_half *a, const lora_half *b,
                             peft_module *m)
{
    lf_safetensors_tensor_info ta, tb;
    lf_safetensors_tensor(ad->st, a->tensor, &ta);
    lf_safetensors_tensor(ad->st, b->tensor, &tb);
    const int len = (int)a->len;
    char sa[128], sb[128];
    if (ta.ndim != 2 || tb.ndim != 2)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter: module %.*s: lora_A %s and lora_B %s must both be "
                       "matrices", len, a->module, lf_safetensors_shape_text(&ta, sa, sizeof sa),
                       lf_safetensors_shape_text(&tb, sb, sizeof sb));
    if (!ta.has_lf_dtype || !tb.has_lf_dtype)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter: module %.*s: lora_A is %s and lora_B %s; only F32, F16 "
                       "and BF16 are supported", len, a->module, ta.dtype_name, tb.dtype_name);
    if (ta.lf_dtype != tb.lf_dtype)
        return lf_fail(ctx, LF_ERR_DTYPE_MISMATCH, "adapter: module %.*s: lora_A is %s but lora_B is %s", len,
                       a->module, ta.dtype_name, tb.dtype_name);
    const int64_t rank_a = ta.shape[0], in = ta.shape[1], out = tb.shape[0], rank_b = tb.shape[1];
    if (rank_a != rank_b)
        return lf_fail(ctx, LF_ERR_SHAPE_MISMATCH, "adapter: module %.*s: lora_A %s has rank %lld but lora_B %s "
                       "has rank %lld", len, a->module, lf_safetensors_shape_text(&ta, sa, sizeof sa),
                       (long long)rank_a, lf_safetensors_shape_text(&tb, sb, sizeof sb), (long long)rank_b);
    if (in < 1 || out < 1)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter: module %.*s: empty lora_A %s or lora_B %s", len,
                       a->module, lf_safetensors_shape_text(&ta, sa, sizeof sa),
                       lf_safetensors_shape_text(&tb, sb, sizeof sb));
    m->name = strndup(a->module, a->len);
    m->base_tensor = malloc(a->len + 8);
    if (!m->name || !m->base_tensor)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "adapter: no memory");
    snprintf(m->base_tensor, a->len + 8, "%s.weight", m->name);
    const char *rank_key, *alpha_key;
    lf_peft_config_resolve(&ad->cfg, m->name, &m->rank, &m->alpha, &rank_key, &alpha_key);
    if (rank_a != m->rank) {
        char from[96];
        if (rank_key)
            snprintf(from, sizeof from, "rank_pattern[\"%.64s\"]", rank_key);
        else
            snprintf(from, sizeof from, "\"r\"");
        return lf_fail(ctx, LF_ERR_SHAPE_MISMATCH, "adapter: module %s: the config gives rank %lld (%s) but "
                       "lora_A and lora_B have rank %lld", m->name, (long long)m->rank, from, (long long)rank_a);
    }
    if (m->rank > LF_MAX_RANK)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter: module %s: rank %lld is over LF_MAX_RANK (%d)", m->name,
                       (long long)m->rank, LF_MAX_RANK);
    /* PEFT: scaling = lora_alpha / r, or lora_alpha / math.sqrt(r) with use_rslora (in double). */
    const double scale = ad->cfg.use_rslora ? m->alpha / sqrt((double)m->rank) : m->alpha / (double)m->rank;
    if (!isfinite((float)scale))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter: module %s: scale %g does not fit in a float", m->name,
                       scale);
    m->scale = (float)scale;
    m->a = a->tensor;
    m->b = b->tensor;
    m->in = in;
    m->out = out;
    m->dtype = ta.lf_dtype;
    return LF_OK;
}

/* Sorts the tensors into LoRA pairs and replacements. */
static lf_status collect(lf_context *ctx, lf_peft_adapter *ad)
{
    const size_t n = lf_safetensors_count(ad->st);
    const size_t plen = strlen(PEFT_PREFIX);
    lora_half *halves = calloc(n ? n : 1, sizeof *halves);
    ad->replacements = calloc(n ? n : 1, sizeof *ad->replacements);
    ad->modules = calloc(n ? n : 1, sizeof *ad->modules);
    if (!halves || !ad->replacements || !ad->modules) {
        free(halves);
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "adapter: no memory for %zu tensors", n);
    }
    size_t nh = 0;
    lf_status s = LF_OK;
    for (size_t i = 0; i < n && s == LF_OK; i++) {
        lf_safetensors_tensor_info t;
        lf_safetensors_tensor(ad->st, i, &t);
        if (strncmp(t.name, PEFT_PREFIX, plen) != 0 || t.name[plen] == '\0') {
            s = lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter: tensor \"%.96s\" is not named base_model.model.<module>... "
                        "as PEFT saves adapters", t.name);
            break;
        }
        const char *rest = t.name + plen;
        const size_t len = strlen(rest);
        const int is_a = ends_with(rest, len, ".lora_A.weight"), is_b = ends_with(rest, len, ".lora_B.weight");
        if (is_a || is_b) {
            const size_t mlen = len - strlen(".lora_A.weight");
            if (mlen == 0) {
                s = lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter: tensor \"%.96s\" names no module", t.name);
                break;
            }
            halves[nh++] = (lora_half){rest, mlen, is_b, i};
        } else if (strstr(rest, ".lora_") || strncmp(rest, "lora_", 5) == 0) {
            s = lf_fail(ctx, LF_ERR_UNSUPPORTED, "adapter: tensor \"%.96s\" is a LoRA tensor other than "
                        "lora_A.weight / lora_B.weight (embedding LoRA, DoRA or lora_bias): not supported", t.name);
        } else {
            ad->replacements[ad->replacement_count++] = (peft_replacement){rest, i};
        }
    }
    if (s == LF_OK) {
        qsort(halves, nh, sizeof *halves, cmp_half);
        for (size_t i = 0; i < nh && s == LF_OK;) {
            const lora_half *h = &halves[i];
            /* Sorted by module, then A before B: a pair is an A followed by the B of its module. */
            const int paired = i + 1 < nh && !h->is_b && halves[i + 1].is_b && halves[i + 1].len == h->len &&
                               memcmp(halves[i + 1].module, h->module, h->len) == 0;
            if (!paired) {
                s = lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter: module %.*s has lora_%c.weight but no lora_%c.weight",
                            (int)h->len, h->module, h->is_b ? 'B' : 'A', h->is_b ? 'A' : 'B');
                break;
            }
            s = make_module(ctx, ad, h, &halves[i + 1], &ad->modules[ad->module_count]);
            ad->module_count++; /* counted even on failure: close frees what make_module allocated */
            i += 2;
        }
    }
    free(halves);
    if (s == LF_OK && ad->module_count == 0)
        s = lf_fail(ctx, LF_ERR_BAD_FORMAT, "adapter: no lora_A / lora_B tensors");
    return s;
}

static lf_status open_parts(lf_context *ctx, const char *config_json, size_t config_len, lf_safetensors *st,
                            lf_peft_adapter **out)
{
    lf_peft_adapter *ad = calloc(1, sizeof *ad);
    if (!ad) {
        lf_safetensors_close(st);
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "adapter: no memory");
    }
    ad->st = st;
    lf_status s = lf_peft_config_parse(ctx, config_json, config_len, &ad->cfg);
    if (s == LF_OK)
        s = collect(ctx, ad);
    if (s != LF_OK) {
        lf_peft_adapter_close(ad);
        return s;
    }
    *out = ad;
    return LF_OK;
}

lf_status lf_peft_adapter_open_memory(lf_context *ctx, const char *config_json, size_t config_len,
                                      const void *tensors, size_t tensors_len, lf_peft_adapter **out)
{
    if (!out)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_peft_adapter_open_memory: out is NULL");
    *out = NULL;
    if (!config_json && config_len > 0)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_peft_adapter_open_memory: config_json is NULL");
    lf_safetensors *st;
    lf_status s = lf_safetensors_open_memory(ctx, tensors, tensors_len, &st);
    return s != LF_OK ? s : open_parts(ctx, config_json, config_len, st, out);
}

/* Reads a small file whole; *len excludes the terminating NUL added for convenience. */
static lf_status read_small_file(lf_context *ctx, const char *path, char **text, size_t *len)
{
    int fd;
    struct stat sb;
    lf_status s = lf_open_regular_file(ctx, path, &fd, &sb);
    if (s != LF_OK)
        return s;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        const int e = errno;
        close(fd);
        return lf_fail(ctx, LF_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    }
    char *buf = malloc(CONFIG_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, CONFIG_MAX_BYTES + 1, f) : 0;
    const int err = ferror(f);
    fclose(f);
    if (!buf)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "%s: no memory", path);
    if (err || n > CONFIG_MAX_BYTES) {
        free(buf);
        return lf_fail(ctx, err ? LF_ERR_IO : LF_ERR_BAD_FORMAT, "%s: %s", path,
                       err ? "read error" : "larger than 16 MiB: not an adapter config");
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return LF_OK;
}

lf_status lf_peft_adapter_open(lf_context *ctx, const char *dir, lf_peft_adapter **out)
{
    if (!out || !dir)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_peft_adapter_open: %s is NULL", !out ? "out" : "dir");
    *out = NULL;
    const size_t cap = strlen(dir) + 64;
    char *path = malloc(cap);
    if (!path)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_peft_adapter_open: no memory");
    char *config = NULL;
    size_t config_len = 0;
    snprintf(path, cap, "%s/adapter_config.json", dir);
    lf_status s = read_small_file(ctx, path, &config, &config_len);
    lf_safetensors *st = NULL;
    if (s == LF_OK) {
        snprintf(path, cap, "%s/adapter_model.safetensors", dir);
        struct stat sb;
        if (stat(path, &sb) != 0) {
            snprintf(path, cap, "%s/adapter_model.bin", dir);
            s = stat(path, &sb) == 0
                    ? lf_fail(ctx, LF_ERR_UNSUPPORTED, "%s: pickled adapters are not read (they can run code); "
                              "save the adapter with safe_serialization=True", path)
                    : lf_fail(ctx, LF_ERR_IO, "%s/adapter_model.safetensors: no such file", dir);
        } else {
            s = lf_safetensors_open(ctx, path, &st);
        }
    }
    if (s == LF_OK)
        s = open_parts(ctx, config, config_len, st, out);
    free(config);
    free(path);
    return s;
}

lf_status lf_peft_adapter_get_info(const lf_peft_adapter *ad, lf_peft_adapter_info *info)
{
    if (!ad || !info)
        return LF_ERR_NULL_POINTER;
    *info = (lf_peft_adapter_info){
        .r = ad->cfg.r, .lora_alpha = ad->cfg.lora_alpha, .use_rslora = ad->cfg.use_rslora,
        .fan_in_fan_out = ad->cfg.fan_in_fan_out, .bias = ad->cfg.bias, .base_model = ad->cfg.base_model,
        .module_count = ad->module_count, .replacement_count = ad->replacement_count,
    };
    return LF_OK;
}

size_t lf_peft_adapter_module_count(const lf_peft_adapter *ad) { return ad ? ad->module_count : 0; }

lf_status lf_peft_adapter_module(const lf_peft_adapter *ad, size_t index, lf_peft_module_info *info)
{
    if (!ad || !info)
        return LF_ERR_NULL_POINTER;
    if (index >= ad->module_count)
        return LF_ERR_INVALID_VALUE;
    const peft_module *m = &ad->modules[index];
    *info = (lf_peft_module_info){
        .name = m->name, .base_tensor = m->base_tensor, .in_features = m->in, .out_features = m->out,
        .rank = m->rank, .alpha = m->alpha, .scale = m->scale, .dtype = m->dtype,
    };
    return LF_OK;
}

lf_status lf_peft_adapter_find_module(const lf_peft_adapter *ad, const char *name, size_t *index)
{
    if (!ad || !name || !index)
        return LF_ERR_NULL_POINTER;
    size_t lo = 0, hi = ad->module_count; /* modules are sorted by name (the pairing sorted them) */
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        const int c = strcmp(ad->modules[mid].name, name);
        if (c == 0) {
            *index = mid;
            return LF_OK;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return LF_ERR_NOT_FOUND;
}

lf_status lf_peft_adapter_replacement(const lf_peft_adapter *ad, size_t index, const char **base_name,
                                      lf_safetensors_tensor_info *tensor)
{
    if (!ad || !base_name || !tensor)
        return LF_ERR_NULL_POINTER;
    if (index >= ad->replacement_count)
        return LF_ERR_INVALID_VALUE;
    *base_name = ad->replacements[index].base_name;
    return lf_safetensors_tensor(ad->st, ad->replacements[index].tensor, tensor);
}

static lf_status module_tensors(lf_context *ctx, const lf_peft_adapter *ad, size_t index, lf_matrix *a, lf_matrix *b,
                                lf_safetensors_tensor_info *ta, lf_safetensors_tensor_info *tb, const char *fn)
{
    if (!ad || !a || !b)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "%s: a NULL argument", fn);
    if (index >= ad->module_count)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: module %zu of %zu", fn, index, ad->module_count);
    const peft_module *m = &ad->modules[index];
    lf_safetensors_tensor(ad->st, m->a, ta);
    lf_safetensors_tensor(ad->st, m->b, tb);
    return LF_OK;
}

lf_status lf_peft_adapter_host_weights(lf_context *ctx, const lf_peft_adapter *ad, size_t index, lf_matrix *a,
                                       lf_matrix *b)
{
    lf_safetensors_tensor_info ta, tb;
    lf_status s = module_tensors(ctx, ad, index, a, b, &ta, &tb, "lf_peft_adapter_host_weights");
    if (s != LF_OK)
        return s;
    const peft_module *m = &ad->modules[index];
    const size_t es = lf_dtype_size(m->dtype);
    /* The format does not align tensors: a file may put one at an odd offset. */
    if ((uintptr_t)ta.data % es != 0 || (uintptr_t)tb.data % es != 0)
        return lf_fail(ctx, LF_ERR_UNSUPPORTED, "lf_peft_adapter_host_weights: module %s: the file stores A or B "
                       "at an offset that is not a multiple of %zu bytes; use lf_peft_adapter_upload_weights",
                       m->name, es);
    *a = lf_matrix_make(m->dtype, (void *)ta.data, m->rank, m->in);
    *b = lf_matrix_make(m->dtype, (void *)tb.data, m->out, m->rank);
    return LF_OK;
}

/* A copy of a tensor's elements in `dtype` (each rounded once), or NULL without memory. */
static void *converted(const lf_safetensors_tensor_info *t, lf_dtype from, lf_dtype to, size_t count)
{
    void *out = malloc(count * lf_dtype_size(to) + 1);
    void *in = malloc(t->bytes + 1); /* aligned for the loads: the file need not be */
    if (out && in) {
        memcpy(in, t->data, t->bytes);
        for (size_t i = 0; i < count; i++)
            lf_store_f32(out, to, (int64_t)i, lf_load_f32(in, from, (int64_t)i));
    }
    free(in);
    if (out && !in) {
        free(out);
        out = NULL;
    }
    return out;
}

static lf_status upload_one(lf_context *ctx, const lf_safetensors_tensor_info *t, lf_dtype from, lf_dtype to,
                            void **dev)
{
    const size_t count = t->bytes / lf_dtype_size(from), bytes = count * lf_dtype_size(to);
    void *host = to == from ? NULL : converted(t, from, to, count);
    if (to != from && !host)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_peft_adapter_upload_weights: no host memory");
    lf_status s = lf_malloc(ctx, dev, bytes);
    if (s == LF_OK && (s = lf_memcpy(ctx, *dev, host ? host : t->data, bytes, LF_COPY_HOST_TO_DEVICE)) != LF_OK) {
        lf_free(ctx, *dev);
        *dev = NULL;
    }
    free(host);
    return s;
}

lf_status lf_peft_adapter_upload_weights(lf_context *ctx, const lf_peft_adapter *ad, size_t index, lf_dtype dtype,
                                         lf_matrix *a, lf_matrix *b)
{
    if (!ctx)
        return LF_ERR_NULL_POINTER;
    lf_safetensors_tensor_info ta, tb;
    lf_status s = module_tensors(ctx, ad, index, a, b, &ta, &tb, "lf_peft_adapter_upload_weights");
    if (s != LF_OK)
        return s;
    if (lf_dtype_size(dtype) == 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_peft_adapter_upload_weights: unknown dtype %d", (int)dtype);
    const peft_module *m = &ad->modules[index];
    void *da = NULL, *db = NULL;
    if ((s = upload_one(ctx, &ta, m->dtype, dtype, &da)) != LF_OK)
        return s;
    if ((s = upload_one(ctx, &tb, m->dtype, dtype, &db)) != LF_OK) {
        lf_free(ctx, da);
        return s;
    }
    *a = lf_matrix_make(dtype, da, m->rank, m->in);
    *b = lf_matrix_make(dtype, db, m->out, m->rank);
    return LF_OK;
}

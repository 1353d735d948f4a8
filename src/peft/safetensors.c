/*
 * safetensors.c — the .safetensors reader (mmap, strict validation) and the atomic writer.
 *
 * Format: 8 bytes little-endian N, N bytes of a JSON object {name: {"dtype", "shape",
 * "data_offsets": [begin, end]}, optional "__metadata__": {str: str}}, then the data section, with
 * offsets relative to its start. Every byte of a file is hostile: every check below has its own
 * sentence in lf_context_last_error, and the reader touches no data byte, so a malformed file costs
 * at most a JSON parse of at most LF_SAFETENSORS_MAX_HEADER bytes.
 */
#define _GNU_SOURCE /* fsync, strdup, strndup, O_DIRECTORY */

#include "safetensors_text.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- dtypes ---------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
    int is_lf; /* F32/F16/BF16: the dtypes lorafuse computes in */
    lf_dtype lf;
} dtype_table[] = {
    {"BOOL", 1, 0, LF_F32}, {"U8", 1, 0, LF_F32},      {"I8", 1, 0, LF_F32},       {"F8_E5M2", 1, 0, LF_F32},
    {"F8_E4M3", 1, 0, LF_F32}, {"F8_E8M0", 1, 0, LF_F32}, {"I16", 2, 0, LF_F32},   {"U16", 2, 0, LF_F32},
    {"F16", 2, 1, LF_F16},  {"BF16", 2, 1, LF_BF16},   {"I32", 4, 0, LF_F32},      {"U32", 4, 0, LF_F32},
    {"F32", 4, 1, LF_F32},  {"F64", 8, 0, LF_F32},     {"I64", 8, 0, LF_F32},      {"U64", 8, 0, LF_F32},
};
#define DTYPE_COUNT (sizeof dtype_table / sizeof dtype_table[0])

static int dtype_index(const char *name)
{
    for (size_t i = 0; i < DTYPE_COUNT; i++)
        if (strcmp(dtype_table[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* ---- reader ---------------------------------------------------------------------------------- */

typedef struct st_tensor {
    char *name;
    int dtype; /* index into dtype_table */
    int ndim;
    int64_t shape[LF_SAFETENSORS_MAX_DIMS];
    uint64_t begin, end; /* relative to the data section */
} st_tensor;

struct lf_safetensors {
    const unsigned char *bytes;
    size_t size;
    int mapped; /* bytes is our mmap */
    uint64_t data_start;
    st_tensor *tensors; /* sorted by begin */
    size_t count;
    char **meta_keys, **meta_values;
    size_t meta_count;
};

void lf_safetensors_close(lf_safetensors *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->count; i++)
        free(st->tensors[i].name);
    free(st->tensors);
    for (size_t i = 0; i < st->meta_count; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->meta_keys);
    free(st->meta_values);
    if (st->mapped)
        munmap((void *)st->bytes, st->size);
    free(st);
}

static uint64_t read_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Reads a JSON integer into [0, INT64_MAX]; 0 when it is not one. */
static int json_nonneg(const json_t *v, int64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return 0;
    *out = (int64_t)json_integer_value(v);
    return 1;
}

static lf_status parse_metadata(lf_context *ctx, const char *label, json_t *meta, lf_safetensors *st)
{
    if (!json_is_object(meta))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: \"__metadata__\" is not a JSON object", label);
    size_t n = json_object_size(meta);
    st->meta_keys = calloc(n ? n : 1, sizeof *st->meta_keys);
    st->meta_values = calloc(n ? n : 1, sizeof *st->meta_values);
    if (!st->meta_keys || !st->meta_values)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "%s: no memory for the metadata", label);
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: metadata \"%.64s\" is not a string", label, key);
        st->meta_keys[st->meta_count] = strdup(key);
        st->meta_values[st->meta_count] = strdup(json_string_value(value));
        if (!st->meta_keys[st->meta_count] || !st->meta_values[st->meta_count]) {
            st->meta_count++; /* so that close frees the one that was allocated */
            return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "%s: no memory for the metadata", label);
        }
        st->meta_count++;
    }
    return LF_OK;
}

static lf_status parse_tensor(lf_context *ctx, const char *label, const char *name, json_t *entry, st_tensor *t)
{
    if (name[0] == '\0')
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: a tensor has an empty name", label);
    if (!json_is_object(entry))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\" is not a JSON object", label, name);
    json_t *dtype = json_object_get(entry, "dtype"), *shape = json_object_get(entry, "shape");
    json_t *offsets = json_object_get(entry, "data_offsets");
    if (!json_is_string(dtype) || !json_is_array(shape) || !json_is_array(offsets))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\" lacks a string \"dtype\", an array \"shape\" "
                       "or an array \"data_offsets\"", label, name);
    t->dtype = dtype_index(json_string_value(dtype));
    if (t->dtype < 0)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\" has unknown dtype \"%.16s\"", label, name,
                       json_string_value(dtype));
    size_t ndim = json_array_size(shape);
    if (ndim > LF_SAFETENSORS_MAX_DIMS)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\" has %zu dimensions (at most %d)", label, name,
                       ndim, LF_SAFETENSORS_MAX_DIMS);
    t->ndim = (int)ndim;
    uint64_t bytes = dtype_table[t->dtype].size;
    for (size_t d = 0; d < ndim; d++) {
        if (!json_nonneg(json_array_get(shape, d), &t->shape[d]))
            return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\": shape[%zu] is not a non-negative integer",
                           label, name, d);
        if (__builtin_mul_overflow(bytes, (uint64_t)t->shape[d], &bytes))
            return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\": the shape's byte count overflows", label,
                           name);
    }
    int64_t begin, end;
    if (json_array_size(offsets) != 2 || !json_nonneg(json_array_get(offsets, 0), &begin) ||
        !json_nonneg(json_array_get(offsets, 1), &end))
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\": data_offsets is not [begin, end] of "
                       "non-negative integers", label, name);
    if (end < begin)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\": data_offsets [%lld, %lld] end before they "
                       "begin", label, name, (long long)begin, (long long)end);
    if ((uint64_t)(end - begin) != bytes)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\": %s × shape is %llu bytes but data_offsets "
                       "span %llu", label, name, dtype_table[t->dtype].name, (unsigned long long)bytes,
                       (unsigned long long)(end - begin));
    t->begin = (uint64_t)begin;
    t->end = (uint64_t)end;
    t->name = strdup(name);
    if (!t->name)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "%s: no memory for a tensor name", label);
    return LF_OK;
}

static int cmp_tensor_offset(const void *pa, const void *pb)
{
    const st_tensor *a = pa, *b = pb;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    return (a->end > b->end) - (a->end < b->end); /* empty tensors first at one offset */
}

static lf_status parse_header(lf_context *ctx, const char *label, lf_safetensors *st)
{
    if (st->size < 8)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: %zu bytes is shorter than the 8-byte header length", label,
                       st->size);
    const uint64_t n = read_le64(st->bytes);
    if (n > LF_SAFETENSORS_MAX_HEADER)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: header length %llu is over the limit of %u bytes", label,
                       (unsigned long long)n, LF_SAFETENSORS_MAX_HEADER);
    if (n > st->size - 8)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                       label, (unsigned long long)n, st->size);
    if (n < 2 || st->bytes[8] != '{')
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: the header does not start with '{'", label);
    st->data_start = 8 + n;
    const uint64_t data_size = st->size - st->data_start;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)st->bytes + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: the header is not valid JSON: %s (byte %d of the header)",
                       label, jerr.text, jerr.position);
    lf_status s = LF_OK;
    if (!json_is_object(root)) {
        s = lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: the header is not a JSON object", label);
        goto done;
    }
    size_t entries = json_object_size(root);
    st->tensors = calloc(entries ? entries : 1, sizeof *st->tensors);
    if (!st->tensors) {
        s = lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "%s: no memory for %zu tensor entries", label, entries);
        goto done;
    }
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "__metadata__") == 0) {
            if ((s = parse_metadata(ctx, label, value, st)) != LF_OK)
                goto done;
            continue;
        }
        st_tensor *t = &st->tensors[st->count];
        s = parse_tensor(ctx, label, key, value, t);
        if (t->name)
            st->count++;
        if (s != LF_OK)
            goto done;
    }
    /* Offsets: sorted, the tensors must tile [0, data_size) exactly, as the reference writes them.
     * Any overlap or gap shows up as a begin that differs from the previous end. */
    qsort(st->tensors, st->count, sizeof *st->tensors, cmp_tensor_offset);
    uint64_t at = 0;
    for (size_t i = 0; i < st->count; i++) {
        const st_tensor *t = &st->tensors[i];
        if (t->end > data_size) {
            s = lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\": data_offsets [%llu, %llu] run past the data "
                        "section (%llu bytes)", label, t->name, (unsigned long long)t->begin,
                        (unsigned long long)t->end, (unsigned long long)data_size);
            goto done;
        }
        if (t->begin < at) {
            s = lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: tensor \"%.64s\" (bytes %llu..%llu) overlaps the tensor "
                        "before it (ending at %llu)", label, t->name, (unsigned long long)t->begin,
                        (unsigned long long)t->end, (unsigned long long)at);
            goto done;
        }
        if (t->begin > at) {
            s = lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: bytes %llu..%llu of the data section belong to no tensor",
                        label, (unsigned long long)at, (unsigned long long)t->begin);
            goto done;
        }
        at = t->end;
    }
    if (at != data_size)
        s = lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: bytes %llu..%llu of the data section belong to no tensor", label,
                    (unsigned long long)at, (unsigned long long)data_size);
done:
    json_decref(root);
    return s;
}

static lf_status open_bytes(lf_context *ctx, const char *label, const void *bytes, size_t size, int mapped,
                            lf_safetensors **out)
{
    lf_safetensors *st = calloc(1, sizeof *st);
    if (!st) {
        if (mapped)
            munmap((void *)bytes, size);
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "%s: no memory", label);
    }
    st->bytes = bytes;
    st->size = size;
    st->mapped = mapped;
    lf_status s = parse_header(ctx, label, st);
    if (s != LF_OK) {
        lf_safetensors_close(st);
        return s;
    }
    *out = st;
    return LF_OK;
}

lf_status lf_safetensors_open_memory(lf_context *ctx, const void *data, size_t size, lf_safetensors **out)
{
    if (!out)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_safetensors_open_memory: out is NULL");
    *out = NULL;
    if (!data && size > 0)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_safetensors_open_memory: data is NULL");
    return open_bytes(ctx, "safetensors (memory)", size ? data : "", size, 0, out);
}

lf_status lf_open_regular_file(lf_context *ctx, const char *path, int *fd, struct stat *sb)
{
    /* Without O_NONBLOCK, opening a FIFO waits for a writer: a hang before any check could run. */
    const int f = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f < 0)
        return lf_fail(ctx, LF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    const char *why = NULL;
    int e = 0;
    if (fstat(f, sb) != 0)
        e = errno;
    else if (!S_ISREG(sb->st_mode))
        why = "not a regular file";
    else if (fcntl(f, F_SETFL, fcntl(f, F_GETFL) & ~O_NONBLOCK) != 0) /* reads of the file block as usual */
        e = errno;
    if (why || e) {
        close(f);
        return lf_fail(ctx, LF_ERR_IO, "%s: %s", path, why ? why : strerror(e));
    }
    *fd = f;
    return LF_OK;
}

lf_status lf_safetensors_open(lf_context *ctx, const char *path, lf_safetensors **out)
{
    if (!out || !path)
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_safetensors_open: %s is NULL", !out ? "out" : "path");
    *out = NULL;
    struct stat sb;
    int fd;
    lf_status s = lf_open_regular_file(ctx, path, &fd, &sb);
    if (s != LF_OK)
        return s;
    if (sb.st_size < 8) {
        close(fd);
        return lf_fail(ctx, LF_ERR_BAD_FORMAT, "%s: %lld bytes is shorter than the 8-byte header length", path,
                       (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return lf_fail(ctx, LF_ERR_IO, "%s: larger than the address space", path);
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file */
    if (map == MAP_FAILED)
        return lf_fail(ctx, LF_ERR_IO, "%s: cannot map: %s", path, strerror(e));
    return open_bytes(ctx, path, map, (size_t)sb.st_size, 1, out);
}

size_t lf_safetensors_count(const lf_safetensors *st) { return st ? st->count : 0; }

lf_status lf_safetensors_tensor(const lf_safetensors *st, size_t index, lf_safetensors_tensor_info *info)
{
    if (!st || !info)
        return LF_ERR_NULL_POINTER;
    if (index >= st->count)
        return LF_ERR_INVALID_VALUE;
    const st_tensor *t = &st->tensors[index];
    memset(info, 0, sizeof *info);
    info->name = t->name;
    info->dtype_name = dtype_table[t->dtype].name;
    info->has_lf_dtype = dtype_table[t->dtype].is_lf;
    info->lf_dtype = dtype_table[t->dtype].lf;
    info->ndim = t->ndim;
    memcpy(info->shape, t->shape, sizeof info->shape);
    info->element_size = dtype_table[t->dtype].size;
    info->offset = st->data_start + t->begin;
    info->bytes = (size_t)(t->end - t->begin);
    info->data = st->bytes + st->data_start + t->begin;
    return LF_OK;
}

lf_status lf_safetensors_find(const lf_safetensors *st, const char *name, size_t *index)
{
    if (!st || !name || !index)
        return LF_ERR_NULL_POINTER;
    for (size_t i = 0; i < st->count; i++)
        if (strcmp(st->tensors[i].name, name) == 0) {
            *index = i;
            return LF_OK;
        }
    return LF_ERR_NOT_FOUND;
}

const char *lf_safetensors_metadata(const lf_safetensors *st, const char *key)
{
    if (!st || !key)
        return NULL;
    for (size_t i = 0; i < st->meta_count; i++)
        if (strcmp(st->meta_keys[i], key) == 0)
            return st->meta_values[i];
    return NULL;
}

size_t lf_safetensors_metadata_count(const lf_safetensors *st) { return st ? st->meta_count : 0; }

void lf_safetensors_metadata_entry(const lf_safetensors *st, size_t index, const char **key, const char **value)
{
    const int ok = st && index < st->meta_count;
    if (key)
        *key = ok ? st->meta_keys[index] : NULL;
    if (value)
        *value = ok ? st->meta_values[index] : NULL;
}

const char *lf_safetensors_shape_text(const lf_safetensors_tensor_info *t, char *buf, size_t cap)
{
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && at < cap; d++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (at < cap)
        snprintf(buf + at, cap - at, "]");
    return buf;
}

/* ---- writer ---------------------------------------------------------------------------------- */

struct lf_safetensors_writer {
    lf_context *ctx;
    char *path, *tmp;
    int fd;
    json_t *tensors;  /* name -> entry, in declaration order */
    json_t *metadata; /* NULL until the first pair */
    uint64_t declared, written;
    int header_written;
    int failed; /* a write failed part way: the file's contents are unknown, so it is never committed */
};

static void writer_free(lf_safetensors_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    if (w->tmp)
        unlink(w->tmp);
    json_decref(w->tensors);
    json_decref(w->metadata);
    free(w->path);
    free(w->tmp);
    free(w);
}

void lf_safetensors_writer_abort(lf_safetensors_writer *w)
{
    if (w)
        writer_free(w);
}

/* 1 when `path` is `input` by name, or both exist and are one file (links of any kind). */
static int same_file(const char *path, const char *input)
{
    if (strcmp(path, input) == 0)
        return 1;
    struct stat a, b;
    return stat(path, &a) == 0 && stat(input, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

lf_status lf_safetensors_writer_create(lf_context *ctx, const char *path, const char *const *protected_paths,
                                       size_t count, lf_safetensors_writer **out)
{
    if (!out || !path || (count > 0 && !protected_paths))
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_safetensors_writer_create: %s is NULL",
                       !out ? "out" : !path ? "path" : "protected_paths");
    *out = NULL;
    for (size_t i = 0; i < count; i++)
        if (protected_paths[i] && same_file(path, protected_paths[i]))
            return lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s is the input %s: refusing to overwrite an input", path,
                           protected_paths[i]);
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return lf_fail(ctx, LF_ERR_IO, "%s is a directory", path);

    lf_safetensors_writer *w = calloc(1, sizeof *w);
    if (!w)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_safetensors_writer_create: no memory");
    w->ctx = ctx;
    w->fd = -1;
    w->path = strdup(path);
    w->tensors = json_object();
    /* The temporary file sits beside the output, so that rename() replaces it atomically. */
    const char *slash = strrchr(path, '/');
    const size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
    const size_t tmp_len = strlen(path) + 32;
    w->tmp = malloc(tmp_len);
    if (!w->path || !w->tensors || !w->tmp) {
        writer_free(w);
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_safetensors_writer_create: no memory");
    }
    /* Not mkstemp: its mode is 0600 whatever the umask. Mode 0666 lets the umask decide, as for
     * any file a program creates; O_EXCL makes the name ours. */
    uint64_t salt = ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)w ^ (uint64_t)time(NULL);
    int e = EEXIST;
    for (int attempt = 0; attempt < 64 && w->fd < 0 && e == EEXIST; attempt++) {
        salt = salt * 6364136223846793005ull + 1442695040888963407ull;
        snprintf(w->tmp, tmp_len, "%.*s.%s.tmp.%06llx", (int)dir_len, path, path + dir_len,
                 (unsigned long long)(salt >> 40));
        w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        e = errno;
    }
    if (w->fd < 0) {
        free(w->tmp);
        w->tmp = NULL;
        writer_free(w);
        return lf_fail(ctx, LF_ERR_IO, "%s: cannot create a temporary file beside it: %s", path, strerror(e));
    }
    *out = w;
    return LF_OK;
}

lf_status lf_safetensors_writer_add(lf_safetensors_writer *w, const char *name, const char *dtype_name, int ndim,
                                    const int64_t *shape)
{
    if (!w)
        return LF_ERR_NULL_POINTER;
    lf_context *ctx = w->ctx;
    if (!name || !dtype_name || (ndim > 0 && !shape))
        return lf_fail(ctx, LF_ERR_NULL_POINTER, "lf_safetensors_writer_add: a NULL argument");
    if (w->header_written)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_safetensors_writer_add(%s): data was already written", name);
    if (name[0] == '\0' || strcmp(name, "__metadata__") == 0 || json_object_get(w->tensors, name))
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_safetensors_writer_add: tensor name \"%.64s\" is empty, "
                       "reserved or already declared", name);
    const int dt = dtype_index(dtype_name);
    if (dt < 0)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_safetensors_writer_add(%s): unknown dtype \"%.16s\"", name,
                       dtype_name);
    if (ndim < 0 || ndim > LF_SAFETENSORS_MAX_DIMS)
        return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_safetensors_writer_add(%s): %d dimensions", name, ndim);
    uint64_t bytes = dtype_table[dt].size;
    json_t *jshape = json_array();
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) {
            json_decref(jshape);
            return lf_fail(ctx, LF_ERR_INVALID_VALUE, "lf_safetensors_writer_add(%s): negative shape", name);
        }
        if (__builtin_mul_overflow(bytes, (uint64_t)shape[d], &bytes) ||
            __builtin_add_overflow(w->declared, bytes, &(uint64_t){0})) {
            json_decref(jshape);
            return lf_fail(ctx, LF_ERR_OVERFLOW, "lf_safetensors_writer_add(%s): the byte count overflows", name);
        }
        json_array_append_new(jshape, json_integer(shape[d]));
    }
    json_t *entry = json_pack("{s:s, s:o, s:[I,I]}", "dtype", dtype_table[dt].name, "shape", jshape, "data_offsets",
                              (json_int_t)w->declared, (json_int_t)(w->declared + bytes));
    if (!entry || json_object_set_new(w->tensors, name, entry) != 0)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "lf_safetensors_writer_add(%s): no memory (or a name that is "
                       "not UTF-8)", name);
    w->declared += bytes;
    return LF_OK;
}

lf_status lf_safetensors_writer_set_metadata(lf_safetensors_writer *w, const char *key, const char *value)
{
    if (!w)
        return LF_ERR_NULL_POINTER;
    if (!key || !value)
        return lf_fail(w->ctx, LF_ERR_NULL_POINTER, "lf_safetensors_writer_set_metadata: key or value is NULL");
    if (w->header_written || (w->metadata && json_object_get(w->metadata, key)))
        return lf_fail(w->ctx, LF_ERR_INVALID_VALUE, "lf_safetensors_writer_set_metadata(%.64s): duplicate key, or "
                       "data already written", key);
    if (!w->metadata && !(w->metadata = json_object()))
        return lf_fail(w->ctx, LF_ERR_OUT_OF_MEMORY, "lf_safetensors_writer_set_metadata: no memory");
    json_t *v = json_string(value);
    if (!v || json_object_set_new(w->metadata, key, v) != 0)
        return lf_fail(w->ctx, LF_ERR_INVALID_VALUE, "lf_safetensors_writer_set_metadata(%.64s): not UTF-8, or "
                       "no memory", key);
    return LF_OK;
}

static int write_all(int fd, const void *data, size_t bytes)
{
    const char *p = data;
    while (bytes > 0) {
        ssize_t n = write(fd, p, bytes > ((size_t)1 << 30) ? ((size_t)1 << 30) : bytes);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        p += n;
        bytes -= (size_t)n;
    }
    return 1;
}

static lf_status write_header(lf_safetensors_writer *w)
{
    json_t *root = json_object();
    if (!root)
        return lf_fail(w->ctx, LF_ERR_OUT_OF_MEMORY, "%s: no memory for the header", w->path);
    if (w->metadata)
        json_object_set(root, "__metadata__", w->metadata);
    json_object_update(root, w->tensors); /* keeps declaration order */
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text)
        return lf_fail(w->ctx, LF_ERR_OUT_OF_MEMORY, "%s: no memory for the header", w->path);
    /* Padded with spaces to a multiple of 8, so that the data section starts aligned. */
    const size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    unsigned char prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "        ";
    int ok = write_all(w->fd, prefix, 8) && write_all(w->fd, text, len) && write_all(w->fd, spaces, padded - len);
    const int e = errno;
    free(text);
    if (!ok) {
        w->failed = 1;
        return lf_fail(w->ctx, LF_ERR_IO, "%s: writing the header failed: %s", w->tmp, strerror(e));
    }
    w->header_written = 1;
    return LF_OK;
}

lf_status lf_safetensors_writer_write(lf_safetensors_writer *w, const void *data, size_t bytes)
{
    if (!w)
        return LF_ERR_NULL_POINTER;
    if (!data && bytes > 0)
        return lf_fail(w->ctx, LF_ERR_NULL_POINTER, "lf_safetensors_writer_write: data is NULL");
    if (w->failed)
        return lf_fail(w->ctx, LF_ERR_IO, "%s: an earlier write failed; abort the writer", w->path);
    if (bytes > w->declared - w->written)
        return lf_fail(w->ctx, LF_ERR_INVALID_VALUE, "%s: %zu more bytes would exceed the %llu declared", w->path,
                       bytes, (unsigned long long)w->declared);
    lf_status s;
    if (!w->header_written && (s = write_header(w)) != LF_OK)
        return s;
    if (!write_all(w->fd, data, bytes)) {
        w->failed = 1;
        return lf_fail(w->ctx, LF_ERR_IO, "%s: write failed: %s", w->tmp, strerror(errno));
    }
    w->written += bytes;
    return LF_OK;
}

/* Makes a rename in path's directory durable. Filesystems that cannot sync a directory say EINVAL;
 * one that cannot be opened for reading is skipped. */
static lf_status sync_directory(lf_context *ctx, const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return lf_fail(ctx, LF_ERR_OUT_OF_MEMORY, "%s: no memory", path);
    const int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd < 0)
        return LF_OK;
    const int e = fsync(fd) != 0 ? errno : 0;
    close(fd);
    if (e != 0 && e != EINVAL)
        return lf_fail(ctx, LF_ERR_IO, "%s: written and renamed into place, but syncing its directory failed: %s "
                       "(the new name may not survive a crash)", path, strerror(e));
    return LF_OK;
}

lf_status lf_safetensors_writer_commit(lf_safetensors_writer *w)
{
    if (!w)
        return LF_ERR_NULL_POINTER;
    lf_context *ctx = w->ctx;
    lf_status s = LF_OK;
    if (w->failed)
        s = lf_fail(ctx, LF_ERR_IO, "%s: an earlier write failed; nothing was committed", w->path);
    else if (w->written != w->declared)
        s = lf_fail(ctx, LF_ERR_INVALID_VALUE, "%s: %llu of %llu declared bytes were written", w->path,
                    (unsigned long long)w->written, (unsigned long long)w->declared);
    else if (!w->header_written)
        s = write_header(w);
    if (s == LF_OK) {
        const int fd = w->fd;
        w->fd = -1;
        int e = fsync(fd) != 0 ? errno : 0;
        if (close(fd) != 0 && e == 0) /* closed whatever fsync said */
            e = errno;
        if (e != 0)
            s = lf_fail(ctx, LF_ERR_IO, "%s: flushing to disk failed: %s", w->tmp, strerror(e));
        else if (rename(w->tmp, w->path) != 0)
            s = lf_fail(ctx, LF_ERR_IO, "%s: renaming the finished file into place failed: %s", w->path,
                        strerror(errno));
        else {
            free(w->tmp); /* renamed: nothing to remove */
            w->tmp = NULL;
            s = sync_directory(ctx, w->path);
        }
    }
    writer_free(w);
    return s;
}

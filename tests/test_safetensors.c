/*
 * test_safetensors.c — the safetensors reader against hostile files (each malformation its own
 * status and sentence, never a crash: every prefix of a valid file and every one-byte corruption of
 * it are opened too), and the writer: round trip, atomic replacement, never overwriting an input,
 * the umask's file mode, and failed writes, fsyncs and a synced directory (fault injection below).
 */
#define _GNU_SOURCE /* mkdtemp, syscall */

#include "lf_test.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static lf_context *ctx;

/* Fault injection: the library is linked statically, so its fsync calls land here. Every call is
 * counted; while fail_fsync is set, each fails with EIO. */
static int fsync_calls, fail_fsync;

int fsync(int fd)
{
    fsync_calls++;
    if (fail_fsync) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fsync, fd);
}

/* 8-byte length + header + data, in a malloc'd buffer. */
static unsigned char *make_file(const char *header, uint64_t header_len, const void *data, size_t data_len,
                                size_t *size)
{
    const size_t hl = strlen(header);
    *size = 8 + hl + data_len;
    unsigned char *f = malloc(*size);
    for (int i = 0; i < 8; i++)
        f[i] = (unsigned char)(header_len >> (8 * i));
    memcpy(f + 8, header, hl);
    if (data_len)
        memcpy(f + 8 + hl, data, data_len);
    return f;
}

/* Opens header + data_len bytes of data and expects `want`, and a message containing `needle`. */
static void expect(const char *what, const char *header, size_t data_len, lf_status want, const char *needle)
{
    lft_begin("test_safetensors hostile: %s", what);
    unsigned char data[256];
    memset(data, 0x5a, sizeof data);
    size_t size;
    unsigned char *f = make_file(header, strlen(header), data, data_len, &size);
    lf_safetensors *st = (lf_safetensors *)(uintptr_t)1;
    lf_status s = lf_safetensors_open_memory(ctx, f, size, &st);
    if (LFT_CHECK_STATUS(ctx, s, want) && want != LF_OK) {
        LFT_CHECKF(strstr(lf_context_last_error(ctx), needle) != NULL, "message \"%s\" lacks \"%s\"",
                   lf_context_last_error(ctx), needle);
        LFT_CHECK(st == NULL);
    }
    if (s == LF_OK)
        lf_safetensors_close(st);
    free(f);
    lft_end();
}

static const char *valid_header =
    "{\"__metadata__\":{\"format\":\"pt\"},\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"e\":{\"dtype\":\"I64\",\"shape\":[0,5],\"data_offsets\":[32,32]}}";

static void test_valid(void)
{
    lft_begin("test_safetensors valid file: tensors, order, metadata");
    float a[6] = {1, 2, 3, 4, 5, 6};
    unsigned char data[32];
    memcpy(data, a, 24);
    memset(data + 24, 0x3f, 8);
    size_t size;
    unsigned char *f = make_file(valid_header, strlen(valid_header), data, sizeof data, &size);
    lf_safetensors *st;
    if (LFT_CHECK_STATUS(ctx, lf_safetensors_open_memory(ctx, f, size, &st), LF_OK)) {
        LFT_CHECK(lf_safetensors_count(st) == 3);
        lf_safetensors_tensor_info t;
        size_t i = 99;
        LFT_CHECK(lf_safetensors_find(st, "a", &i) == LF_OK && i == 0); /* in data order */
        LFT_CHECK(lf_safetensors_tensor(st, 0, &t) == LF_OK && strcmp(t.name, "a") == 0 && t.ndim == 2 &&
                  t.shape[0] == 2 && t.shape[1] == 3 && t.has_lf_dtype && t.lf_dtype == LF_F32 && t.bytes == 24 &&
                  memcmp(t.data, a, 24) == 0 && t.offset == 8 + strlen(valid_header));
        LFT_CHECK(lf_safetensors_find(st, "b", &i) == LF_OK && lf_safetensors_tensor(st, i, &t) == LF_OK &&
                  t.lf_dtype == LF_BF16 && t.bytes == 8);
        LFT_CHECK(lf_safetensors_find(st, "e", &i) == LF_OK && lf_safetensors_tensor(st, i, &t) == LF_OK &&
                  !t.has_lf_dtype && strcmp(t.dtype_name, "I64") == 0 && t.bytes == 0);
        LFT_CHECK(lf_safetensors_find(st, "zz", &i) == LF_ERR_NOT_FOUND);
        LFT_CHECK(lf_safetensors_tensor(st, 3, &t) == LF_ERR_INVALID_VALUE);
        const char *v = lf_safetensors_metadata(st, "format");
        LFT_CHECK(v && strcmp(v, "pt") == 0 && lf_safetensors_metadata_count(st) == 1);
        lf_safetensors_close(st);
    }
    /* Every prefix is truncated somewhere: never LF_OK, never a crash. */
    for (size_t n = 0; n < size; n++) {
        lf_status s = lf_safetensors_open_memory(ctx, f, n, &st);
        if (!LFT_CHECKF(s == LF_ERR_BAD_FORMAT, "a file truncated to %zu of %zu bytes gave %s", n, size,
                        lf_status_name(s)))
            break;
    }
    /* Every byte of the header changed to a few values: whatever the status, no crash, no leak (ASan). */
    static const unsigned char values[] = {0x00, '"', '{', '9', '-', 0xff, ' ', 'x'};
    unsigned char *g = malloc(size);
    for (size_t p = 0; p < 8 + strlen(valid_header); p++)
        for (size_t v = 0; v < sizeof values; v++) {
            memcpy(g, f, size);
            g[p] = values[v];
            if (lf_safetensors_open_memory(ctx, g, size, &st) == LF_OK) {
                for (size_t i = 0; i < lf_safetensors_count(st); i++) {
                    lf_safetensors_tensor_info t;
                    lf_safetensors_tensor(st, i, &t);
                    LFT_CHECK((const unsigned char *)t.data >= g && (const unsigned char *)t.data + t.bytes <= g + size);
                }
                lf_safetensors_close(st);
            }
        }
    free(g);
    free(f);
    lft_end();
}

static void test_hostile(void)
{
    expect("header length 0", "", 0, LF_ERR_BAD_FORMAT, "does not start with");
    {
        lft_begin("test_safetensors hostile: header length beyond the file");
        size_t size;
        unsigned char *f = make_file("{}", 1000, NULL, 0, &size);
        lf_safetensors *st;
        LFT_CHECK_STATUS(ctx, lf_safetensors_open_memory(ctx, f, size, &st), LF_ERR_BAD_FORMAT);
        LFT_CHECK(strstr(lf_context_last_error(ctx), "runs past the end") != NULL);
        free(f);
        f = make_file("{}", (uint64_t)1 << 62, NULL, 0, &size);
        LFT_CHECK_STATUS(ctx, lf_safetensors_open_memory(ctx, f, size, &st), LF_ERR_BAD_FORMAT);
        LFT_CHECK(strstr(lf_context_last_error(ctx), "over the limit") != NULL);
        free(f);
        lft_end();
    }
    expect("empty header object", "{}", 0, LF_OK, "");
    expect("invalid JSON", "{\"a\":{\"dtype\":\"F32\",", 0, LF_ERR_BAD_FORMAT, "not valid JSON");
    expect("trailing garbage", "{} x", 0, LF_ERR_BAD_FORMAT, "not valid JSON");
    expect("not an object", "[1, 2]", 0, LF_ERR_BAD_FORMAT, "does not start with '{'");
    expect("duplicate keys",
           "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
           "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, LF_ERR_BAD_FORMAT, "duplicate");
    expect("unknown dtype", "{\"a\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
           LF_ERR_BAD_FORMAT, "unknown dtype");
    expect("shape × dtype ≠ bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12,
           LF_ERR_BAD_FORMAT, "data_offsets span 12");
    expect("offsets past the data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 16,
           LF_ERR_BAD_FORMAT, "run past the data section");
    expect("overlapping tensors",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, LF_ERR_BAD_FORMAT, "overlaps");
    expect("a gap in the data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16,
           LF_ERR_BAD_FORMAT, "belong to no tensor");
    expect("unreferenced tail", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16,
           LF_ERR_BAD_FORMAT, "belong to no tensor");
    expect("negative dimension", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
           LF_ERR_BAD_FORMAT, "shape[0]");
    expect("fractional dimension", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
           LF_ERR_BAD_FORMAT, "shape[0]");
    expect("byte count overflow",
           "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}}", 0,
           LF_ERR_BAD_FORMAT, "overflows");
    expect("end before begin", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
           LF_ERR_BAD_FORMAT, "end before");
    expect("offsets not a pair", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
           LF_ERR_BAD_FORMAT, "data_offsets");
    expect("missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, LF_ERR_BAD_FORMAT, "lacks");
    expect("too many dimensions",
           "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, LF_ERR_BAD_FORMAT,
           "dimensions");
    expect("metadata not strings", "{\"__metadata__\":{\"k\":1}}", 0, LF_ERR_BAD_FORMAT, "not a string");
    expect("metadata not an object", "{\"__metadata__\":[]}", 0, LF_ERR_BAD_FORMAT, "not a JSON object");
    expect("entry not an object", "{\"a\":5}", 0, LF_ERR_BAD_FORMAT, "not a JSON object");
    expect("empty name", "{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, LF_ERR_BAD_FORMAT,
           "empty name");
    expect("NUL inside a name", "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
           LF_ERR_BAD_FORMAT, "not valid JSON");

    lft_begin("test_safetensors hostile: files that are not there or not files, 7 bytes");
    lf_safetensors *st;
    LFT_CHECK_STATUS(ctx, lf_safetensors_open_memory(ctx, "1234567", 7, &st), LF_ERR_BAD_FORMAT);
    LFT_CHECK(strstr(lf_context_last_error(ctx), "shorter than the 8-byte") != NULL);
    LFT_CHECK_STATUS(ctx, lf_safetensors_open(ctx, "/nonexistent/x.safetensors", &st), LF_ERR_IO);
    LFT_CHECK_STATUS(ctx, lf_safetensors_open(ctx, "/", &st), LF_ERR_IO);
    LFT_CHECK_STATUS(ctx, lf_safetensors_open(ctx, NULL, &st), LF_ERR_NULL_POINTER);
    LFT_CHECK_STATUS(ctx, lf_safetensors_open_memory(ctx, NULL, 8, &st), LF_ERR_NULL_POINTER);
    lft_end();

    lft_begin("test_safetensors hostile: a FIFO is refused without waiting for a writer");
    char dir[] = "/tmp/lf_test_st_fifo_XXXXXX", fifo[64];
    if (LFT_CHECK(mkdtemp(dir) != NULL)) {
        snprintf(fifo, sizeof fifo, "%s/model.safetensors", dir);
        if (LFT_CHECK(mkfifo(fifo, 0600) == 0)) {
            alarm(20); /* a blocking open would otherwise hang the test until ctest's timeout */
            LFT_CHECK_STATUS(ctx, lf_safetensors_open(ctx, fifo, &st), LF_ERR_IO);
            alarm(0);
            LFT_CHECK(st == NULL && strstr(lf_context_last_error(ctx), "not a regular file") != NULL);
            unlink(fifo);
        }
        rmdir(dir);
    }
    lft_end();
}

static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    if (d)
        closedir(d);
    return n;
}

static void test_writer(void)
{
    char dir[] = "/tmp/lf_test_st_XXXXXX";
    if (!mkdtemp(dir)) {
        lft_begin("test_safetensors writer: mkdtemp");
        LFT_CHECK(0);
        lft_end();
        return;
    }
    char path[128], input[128], hard[128], soft[128];
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    snprintf(input, sizeof input, "%s/in.safetensors", dir);
    snprintf(hard, sizeof hard, "%s/hard.safetensors", dir);
    snprintf(soft, sizeof soft, "%s/soft.safetensors", dir);

    lft_begin("test_safetensors writer: round trip, atomic, data order");
    const float x[5] = {1.5f, -2, 3, 4, 5};
    const uint16_t y[3] = {0x3f80, 0x4000, 0xc040};
    lf_safetensors_writer *w;
    if (LFT_CHECK_STATUS(ctx, lf_safetensors_writer_create(ctx, path, NULL, 0, &w), LF_OK)) {
        const int64_t sx[1] = {5}, sy[2] = {3, 1};
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_add(w, "x", "F32", 1, sx), LF_OK);
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_add(w, "y", "BF16", 2, sy), LF_OK);
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_add(w, "x", "F32", 1, sx), LF_ERR_INVALID_VALUE);
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_add(w, "z", "F31", 1, sx), LF_ERR_INVALID_VALUE);
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_set_metadata(w, "format", "pt"), LF_OK);
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_write(w, x, 12), LF_OK); /* in pieces */
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_write(w, (const char *)x + 12, 8), LF_OK);
        LFT_CHECK(access(path, F_OK) != 0); /* nothing at the path before the commit */
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_write(w, y, 8), LF_ERR_INVALID_VALUE); /* 2 too many */
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_write(w, y, 6), LF_OK);
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_commit(w), LF_OK);
    }
    lf_safetensors *st;
    if (LFT_CHECK_STATUS(ctx, lf_safetensors_open(ctx, path, &st), LF_OK)) {
        lf_safetensors_tensor_info t;
        LFT_CHECK(lf_safetensors_count(st) == 2);
        LFT_CHECK(lf_safetensors_tensor(st, 0, &t) == LF_OK && strcmp(t.name, "x") == 0 && t.offset % 8 == 0 &&
                  memcmp(t.data, x, 20) == 0);
        LFT_CHECK(lf_safetensors_tensor(st, 1, &t) == LF_OK && strcmp(t.name, "y") == 0 && t.ndim == 2 &&
                  memcmp(t.data, y, 6) == 0);
        LFT_CHECK(strcmp(lf_safetensors_metadata(st, "format"), "pt") == 0);
        lf_safetensors_close(st);
    }
    LFT_CHECK(dir_entries(dir) == 1); /* no temporary file left */
    lft_end();

    lft_begin("test_safetensors writer: missing bytes or abort leave nothing");
    if (LFT_CHECK_STATUS(ctx, lf_safetensors_writer_create(ctx, input, NULL, 0, &w), LF_OK)) {
        const int64_t s4[1] = {4};
        lf_safetensors_writer_add(w, "a", "U8", 1, s4);
        lf_safetensors_writer_write(w, "ab", 2);
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_commit(w), LF_ERR_INVALID_VALUE);
    }
    if (LFT_CHECK_STATUS(ctx, lf_safetensors_writer_create(ctx, input, NULL, 0, &w), LF_OK))
        lf_safetensors_writer_abort(w);
    LFT_CHECK(dir_entries(dir) == 1 && access(input, F_OK) != 0);
    lft_end();

    lft_begin("test_safetensors writer: never overwrites an input (name, hard link, symbolic link)");
    rename(path, input);
    LFT_CHECK(link(input, hard) == 0 && symlink("in.safetensors", soft) == 0);
    const char *inputs[1] = {input};
    const char *targets[3] = {input, hard, soft};
    for (int i = 0; i < 3; i++) {
        w = (lf_safetensors_writer *)(uintptr_t)1;
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_create(ctx, targets[i], inputs, 1, &w), LF_ERR_INVALID_VALUE);
        LFT_CHECK(w == NULL && strstr(lf_context_last_error(ctx), "refusing to overwrite") != NULL);
    }
    LFT_CHECK(lf_safetensors_open(ctx, input, &st) == LF_OK && lf_safetensors_count(st) == 2);
    lf_safetensors_close(st);
    LFT_CHECK(dir_entries(dir) == 3);
    lft_end();
    unlink(input);
    unlink(hard);
    unlink(soft);
    rmdir(dir);
}

/* One U8 tensor "t" of `bytes` bytes, written in one piece; commit's status. */
static lf_status write_one(const char *path, const void *data, int64_t bytes)
{
    lf_safetensors_writer *w = NULL;
    lf_status s = lf_safetensors_writer_create(ctx, path, NULL, 0, &w);
    if (s == LF_OK && (s = lf_safetensors_writer_add(w, "t", "U8", 1, &bytes)) == LF_OK &&
        (s = lf_safetensors_writer_write(w, data, (size_t)bytes)) == LF_OK)
        return lf_safetensors_writer_commit(w);
    lf_safetensors_writer_abort(w); /* NULL when create failed: a no-op */
    return s;
}

static void test_writer_failures(void)
{
    char dir[] = "/tmp/lf_test_st_XXXXXX";
    if (!mkdtemp(dir)) {
        lft_begin("test_safetensors writer failures: mkdtemp");
        LFT_CHECK(0);
        lft_end();
        return;
    }
    char path[128];
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    static unsigned char data[16384];
    memset(data, 0x5a, sizeof data);

    lft_begin("test_safetensors writer: the output's mode is 0666 less the umask");
    const mode_t masks[2] = {027, 002};
    for (int i = 0; i < 2; i++) {
        const mode_t old = umask(masks[i]);
        struct stat sb;
        LFT_CHECK_STATUS(ctx, write_one(path, data, 16), LF_OK);
        umask(old);
        LFT_CHECKF(stat(path, &sb) == 0 && (sb.st_mode & 0777) == (0666 & ~masks[i]), "mode %03o under umask %03o, "
                   "expected %03o", (unsigned)(sb.st_mode & 0777), (unsigned)masks[i], (unsigned)(0666 & ~masks[i]));
        unlink(path);
    }
    lft_end();

    lft_begin("test_safetensors writer: commit syncs the file and then its directory");
    fsync_calls = 0;
    LFT_CHECK_STATUS(ctx, write_one(path, data, 16), LF_OK);
    LFT_CHECKF(fsync_calls == 2, "%d fsync calls, expected 2 (the file, the directory)", fsync_calls);
    unlink(path);
    lft_end();

    lft_begin("test_safetensors writer: a failed fsync leaks no descriptor and leaves nothing");
    const int fds = dir_entries("/proc/self/fd");
    fail_fsync = 1;
    LFT_CHECK_STATUS(ctx, write_one(path, data, 16), LF_ERR_IO);
    fail_fsync = 0;
    LFT_CHECK(strstr(lf_context_last_error(ctx), "flushing to disk failed") != NULL);
    LFT_CHECKF(dir_entries("/proc/self/fd") == fds, "%d open descriptors, %d before", dir_entries("/proc/self/fd"),
               fds);
    LFT_CHECK(dir_entries(dir) == 0);
    lft_end();

    lft_begin("test_safetensors writer: after a write fails part way, nothing can be committed");
    lf_safetensors_writer *w;
    const int64_t n = sizeof data;
    if (LFT_CHECK_STATUS(ctx, lf_safetensors_writer_create(ctx, path, NULL, 0, &w), LF_OK) &&
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_add(w, "t", "U8", 1, &n), LF_OK)) {
        /* A file size limit makes the write stop part way (EFBIG), as a full disk would. */
        struct rlimit saved, small;
        void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
        getrlimit(RLIMIT_FSIZE, &saved);
        small = saved;
        small.rlim_cur = 4096;
        fflush(stdout);
        setrlimit(RLIMIT_FSIZE, &small);
        const lf_status first = lf_safetensors_writer_write(w, data, sizeof data);
        setrlimit(RLIMIT_FSIZE, &saved);
        signal(SIGXFSZ, old_handler);
        LFT_CHECK_STATUS(ctx, first, LF_ERR_IO);
        /* A retry would append after the partial bytes: the file would say 16384 bytes and hold more. */
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_write(w, data, sizeof data), LF_ERR_IO);
        LFT_CHECK_STATUS(ctx, lf_safetensors_writer_commit(w), LF_ERR_IO);
    }
    LFT_CHECK(access(path, F_OK) != 0 && dir_entries(dir) == 0);
    lft_end();
    rmdir(dir);
}

int main(void)
{
    if (lf_context_create(&ctx, LF_BACKEND_CPU) != LF_OK) {
        printf("test_safetensors: no CPU context\n");
        return 1;
    }
    test_valid();
    test_hostile();
    test_writer();
    test_writer_failures();
    lf_context_destroy(ctx);
    return lft_summary("test_safetensors");
}

/*
 * cli.h — what the lorafuse command's files share: exit statuses, error messages, random inputs,
 * the rotation of timed calls over buffer sets, and the bench JSON file.
 */
#ifndef LF_CLI_H
#define LF_CLI_H

#include "lorafuse.h"

#include <jansson.h>
#include <stdint.h>

/* Exit statuses of every command. */
enum { EXIT_PASS = 0, EXIT_NUMERIC = 1, EXIT_USAGE = 2, EXIT_RUNTIME = 3 };

/* Prints "lorafuse: <message>" and a newline on stderr. */
void lf_cli_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* The exit status of a failed library call: a request the library refused as invalid is the
 * user's to fix (EXIT_USAGE); files, memory, the device and bugs are runtime failures. */
int lf_cli_exit_status(lf_status st);

/* splitmix64: tiny, good enough for test data, the same on every platform. */
uint64_t lf_cli_rng_next(uint64_t *state);

/* Nonzero values of magnitude in [amp/8, amp), random sign: a zero B (PEFT's init) would hide the
 * LoRA term, and zeros elsewhere would hide missing terms. */
void lf_cli_fill_random(void *buf, lf_dtype dtype, int64_t count, double amp, uint64_t seed);

/* Timed calls rotate over buffer sets so that one round of them reads ROTATE_BYTES of distinct
 * memory: more than any last-level cache (H100 L2: 50 MB), so they measure memory, not the cache.
 * The caps keep tiny ops from allocating thousands of sets and the total within reason. */
#define ROTATE_BYTES (256.0 * 1024 * 1024)
#define MAX_BUFFER_SETS 64
#define MAX_ROTATE_BYTES (2048.0 * 1024 * 1024)

/* How many buffer sets an op moving op_bytes per call rotates over: enough that a round of calls
 * reads ROTATE_BYTES, within the caps. An op larger than ROTATE_BYTES gets one set. */
int lf_cli_buffer_sets(double op_bytes);

/* The bench JSON (docs/architecture.md): a number (left out when NAN: no measurement is never
 * written as 0) and a string (a placeholder when it is not valid UTF-8). */
void lf_cli_json_num(json_t *obj, const char *key, double v);
void lf_cli_json_str(json_t *obj, const char *key, const char *s);
/* A case of the bench JSON with its identity: name, op, dtype, m, k, n, rank, adapters. */
json_t *lf_cli_json_case(const char *name, const char *op, lf_dtype dtype, int64_t m, int64_t k, int64_t n,
                         int64_t rank, int adapters);
/* Its measurements (NAN: left out) and what one call moves and computes. */
void lf_cli_json_measured(json_t *c, double fused_us, double fused_host_us, double base_us, double unfused_us,
                          double bytes, double flops, int buffer_sets);
/* A bench JSON file's root: device, backend, today's date and the build's commit. */
json_t *lf_cli_json_root(const char *device, const char *backend);
/* Adds `cases` (an array, taken over) to root, writes root to FILE.tmp.PID, flushes it to disk, then
 * renames it over FILE: readers never see half a file. Says so and returns 1, or says why not and
 * returns 0; root is freed either way. */
int lf_cli_write_bench_json(const char *path, json_t *root, json_t *cases);

#endif /* LF_CLI_H */

/*
 * lorafuse_tp_bench.h — `lorafuse bench --tp` (lorafuse_tp_bench.c), called from cmd_bench in
 * lorafuse.c once the options are parsed.
 */
#ifndef LORAFUSE_TP_BENCH_H
#define LORAFUSE_TP_BENCH_H

#include <stdint.h>

typedef struct lf_tp_bench_options {
    int64_t iters;         /* timed calls per measurement; 0 = adaptive */
    uint64_t seed;         /* of the random inputs */
    const char *json_path; /* NULL: no JSON file */
} lf_tp_bench_options;

/* The tensor-parallel cases over every visible GPU. Returns the process exit status: built without
 * CUDA or NCCL, EXIT_USAGE (an unsupported request, as the library's LF_ERR_UNSUPPORTED). */
int lf_cli_bench_tp(const lf_tp_bench_options *o);

#endif /* LORAFUSE_TP_BENCH_H */

/*
 * dev/cuda/lab_check.h — the standalone labs' error check: a failed CUDA call ends the lab run with
 * its file, line and CUDA's error text (a lab is a program, not the library: exiting is its answer).
 */
#ifndef LF_LAB_CHECK_H
#define LF_LAB_CHECK_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                                     \
    do {                                                                                             \
        cudaError_t e_ = (call);                                                                     \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

#endif /* LF_LAB_CHECK_H */

/*
 * cuda_absent.c — stands in for the CUDA backend in builds without nvcc, so the front end links
 * and LF_BACKEND_AUTO falls back to the CPU.
 */
#include "lf_internal.h"

const lf_backend_ops *lf_cuda_backend_ops(void) { return NULL; }

int lf_cuda_device_present(void) { return 0; }

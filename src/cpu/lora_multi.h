/*
 * lora_multi.h — the CPU backend's multi-adapter entries (lora_multi.c).
 */
#ifndef LF_CPU_LORA_MULTI_H
#define LF_CPU_LORA_MULTI_H

#include "lora_fwd.h"

/* Runs a validated multi-adapter call (either form) with the kernel set kern. */
lf_status lf_cpu_lora_multi(lf_context *ctx, const lf_cpu_kernels *kern, const lf_multi_problem *p);

#endif /* LF_CPU_LORA_MULTI_H */

/*
 * lora_merge.h — the CPU backend's merge (lora_merge.c): W ← W + scale·B·A in place.
 */
#ifndef LF_CPU_LORA_MERGE_H
#define LF_CPU_LORA_MERGE_H

#include "lf_internal.h"

lf_status lf_cpu_lora_merge(lf_context *ctx, const lf_merge_problem *p);

#endif /* LF_CPU_LORA_MERGE_H */

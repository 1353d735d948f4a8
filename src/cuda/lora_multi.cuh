/*
 * lora_multi.cuh — the CUDA backend's multi-adapter entries (lora_multi.cu), for its vtable.
 */
#ifndef LF_CUDA_LORA_MULTI_CUH
#define LF_CUDA_LORA_MULTI_CUH

#include "../lf_internal.h"

extern "C" {
lf_status lf_cuda_adapter_set_init(lf_context *ctx, lf_adapter_set *set);
void lf_cuda_adapter_set_destroy(lf_context *ctx, lf_adapter_set *set);
lf_status lf_cuda_adapter_load_device(lf_context *ctx, lf_adapter_set *set, int slot, const lf_adapter_source *src);
lf_status lf_cuda_lora_multi(lf_context *ctx, const lf_multi_problem *p);
size_t lf_cuda_multi_unfused_workspace_bytes(const lf_multi_problem *p);
lf_status lf_cuda_multi_unfused(lf_context *ctx, const lf_multi_problem *p, const int32_t *perm, const int64_t *group,
                                void *ws);
}

#endif /* LF_CUDA_LORA_MULTI_CUH */

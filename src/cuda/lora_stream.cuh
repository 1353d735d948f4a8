/*
 * lora_stream.cuh — the layer for 1–8 tokens with one adapter, 1–16 with one a token, W streamed
 * by plain loads (lora_stream.cu), for the backend (lora_fwd.cu's plan and dispatch,
 * lora_multi.cu's many-adapter layer). No lf_context: errors come back as cudaError_t.
 */
#ifndef LF_CUDA_LORA_STREAM_CUH
#define LF_CUDA_LORA_STREAM_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "../lf_internal.h" /* lf_lora_problem, lf_multi_problem */

/* Control words of one context (lf_stream_launch's ctl), 256-byte aligned: the launches' epoch and
 * the T workers' tagged values. Zero them once; every launch leaves them consistent. */
#define LF_STREAM_CTL_WORDS 1024

/* Once per context on the current device: raises the kernels' shared-memory limit; 1 when they can
 * run here (compute capability 9.0 or later: the K split runs in thread block clusters), else 0. */
int lf_stream_setup(void);

/* y = beta·y + x·Wᵀ + bias + scale·(x·Aᵀ)·Bᵀ for p in the PEFT layout, bf16 or f16, 1 ≤ m ≤ 8,
 * 1 ≤ rank ≤ 16, k a multiple of 8; x, W, A, B, y and their strides 16-byte aligned (bias: any). The plan's rule
 * (heuristics.h: lf_cuda_stream_fits) keeps N to one 16-row tile a block: ceil(n / 16) ≤
 * sm_count · 2 − 2. One launch on st, with programmatic dependent launch when pdl: no allocation,
 * no host synchronization (capture-safe). ctl: this context's LF_STREAM_CTL_WORDS control words (no
 * two launches that share them may run at the same time). */
cudaError_t lf_stream_launch(const lf_lora_problem *p, unsigned *ctl, int sm_count, bool pdl, cudaStream_t st);

/* The same layer with many adapters (lf_lora_forward_multi, per-token or segment form), 1 ≤ m ≤
 * 16: each token's LoRA term from its own slot of q->set (max_rank ≤ 16), none for a token without
 * one. Up to 8 T-worker blocks (lf_cuda_stream_multi_workers), and past 8 tokens K split over the
 * two blocks of a cluster, so the rule is lf_cuda_stream_multi_fits. x, W and their strides
 * 16-byte aligned (the set's storage is by construction). */
cudaError_t lf_stream_multi_launch(const lf_multi_problem *q, unsigned *ctl, int sm_count, bool pdl, cudaStream_t st);

#endif /* LF_CUDA_LORA_STREAM_CUH */

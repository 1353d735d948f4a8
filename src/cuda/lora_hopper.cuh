/*
 * lora_hopper.cuh — the Hopper layer kernel's host interface (lora_hopper.cu), for the backend
 * (lora_fwd.cu's plan and dispatch) and for the kernel lab (dev/cuda/hopper_gemm.cu, which times
 * the library's kernel as its v8-lib). No lf_context: errors come back as cudaError_t.
 */
#ifndef LF_CUDA_LORA_HOPPER_CUH
#define LF_CUDA_LORA_HOPPER_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "../lf_internal.h" /* lf_lora_problem */

/* Row blocks of 128 tokens that the control words can flag: 2^20 tokens. */
#define LF_HOPPER_MAX_M (1 << 20)
/* Control words of one context (lf_hopper_launch's ctl): a generation, a count of finished CTAs,
 * then one ready flag per row block. Zero them once; every launch leaves them consistent. */
#define LF_HOPPER_CTL_WORDS (64 + LF_HOPPER_MAX_M / 128)

/* Once per context on the current device: raises the kernels' shared-memory limit; 1 when the
 * kernel can run here (compute capability 9.0 and sm_90a code in this binary), else 0. */
int lf_hopper_setup(void);

/* Bytes of workspace a launch needs for m tokens and rank r (s·T as [hi | lo] per token). */
size_t lf_hopper_workspace_bytes(int64_t m, int64_t r);

/* y = beta·y + x·Wᵀ + bias + scale·(x·Aᵀ)·Bᵀ for p in the PEFT layout, bf16 or f16 (p->layout is not
 * read: the caller checked it). x, W, A, B: 16-byte aligned with strides of whole 16 bytes (the copy
 * engine's rule); bias and y: any alignment. 0 ≤ rank ≤ 64 (0: y = beta·y + x·Wᵀ + bias alone, A, B
 * and ws unused: the kernel's own base GEMM), m ≤ LF_HOPPER_MAX_M, sizes below 2^31.
 * One launch on st: no allocation, no host synchronization (capture-safe). ws: at least
 * lf_hopper_workspace_bytes(m, r) bytes, 256-byte aligned; ctl: this context's control words (no
 * two launches that share them may run at the same time). max_ctas caps the persistent grid (the
 * SM count; the lab passes fewer to give each CTA many tiles). */
cudaError_t lf_hopper_launch(const lf_lora_problem *p, void *ws, unsigned *ctl, int max_ctas, cudaStream_t st);

/* The split-K form for few tiles (lora_hopper.cu, "few tiles"): the same layer and operand limits
 * but rank ≤ 16, in one launch of tiles (128 × bn, bn 64 or 128) × split CTAs, clusters of `split`
 * (1..8) sharing each tile's K range; no workspace, no control words; pdl: launched with
 * programmatic dependent launch. */
cudaError_t lf_hopper_mid_launch(const lf_lora_problem *p, int split, int bn, bool pdl, cudaStream_t st);

/* The layer for M ≤ 64 tokens (LF_CUDA_HOPPER_DECODE_MAX_M), r ≤ 16: W streamed by TMA as the wgmma
 * A operand, T beside it (lora_hopper.cu, "few tokens"); pdl: launched with programmatic dependent
 * launch. */
cudaError_t lf_hopper_decode_launch(const lf_lora_problem *p, int sm_count, bool pdl, cudaStream_t st);
/* CTAs of the split-K form (either tile width) that run at once on the current device in clusters
 * of `split` (0: that cluster size cannot run); call after lf_hopper_setup returned 1. */
int lf_hopper_mid_slots(int split);

#endif /* LF_CUDA_LORA_HOPPER_CUH */

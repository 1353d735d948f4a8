/*
 * heuristics.h — how the CUDA backend chooses a kernel and its blocking for one plan key.
 *
 * Small pure functions of the key (and the SM count), plain C so that a CPU-only test can check
 * them. Numbers behind the rules are in dev/cuda/NOTES.md.
 */
#ifndef LF_CUDA_HEURISTICS_H
#define LF_CUDA_HEURISTICS_H

#include <stdint.h>

#include "../lf_internal.h"

/* Implementations (lf_plan.impl). */
enum {
    LF_CUDA_DELTA_FUSED = 1, /* delta, one launch: shrink into shared memory, then expand */
    LF_CUDA_DELTA_TWO = 2,   /* delta, T = x·Aᵀ into the workspace (fp32), then expand */
    LF_CUDA_DECODE = 3,      /* layer, small M: T in K-slices, then a W-streaming tensor-core GEMV (PDL) */
    LF_CUDA_GEMM = 4,        /* layer: cuBLAS T and base GEMM (fp32), then one epilogue kernel */
    LF_CUDA_DELTA_SMALL = 5, /* delta, short K and small rank: one launch, one memory round trip */
    LF_CUDA_DELTA_TSPLIT = 6, /* delta, T by cuBLAS in K-slices (workspace), then the GEMM epilogue */
    LF_CUDA_HOPPER = 7,       /* layer on sm_90a: one launch, T by worker CTAs, LoRA as one more K slab */
    LF_CUDA_HOPPER_MID = 8,   /* layer on sm_90a, few tiles: each tile's K split over a thread block cluster (PDL) */
    LF_CUDA_HOPPER_DECODE = 9, /* layer on sm_90a, few tokens: W streamed by TMA, T beside it, one launch (PDL) */
    LF_CUDA_STREAM = 10        /* layer, 1-8 tokens: W by plain loads from 32 warps an SM, T by worker blocks (PDL) */
};

/* Threads of every lorafuse CUDA kernel. */
#define LF_CUDA_THREADS 256
/* Shared memory a delta/shrink block uses at most: under the 48 KB that needs no opt-in, and small
 * enough for 4 blocks per SM. */
#define LF_CUDA_SMEM_BUDGET (48 * 1024)

/* Shrink blocking: bm rows of x, rc ranks, kc-long chunks of K. */
typedef struct lf_cuda_shrink_cfg {
    int bm, rc, kc;
} lf_cuda_shrink_cfg;

/* k-splits per output of the shrink: all threads of a block over its bm·rc outputs (a power of two;
 * beyond a warp the warps' partial sums meet in shared memory, in a fixed order). */
static inline int lf_cuda_shrink_splits(int bm, int rc)
{
    int s = 1;
    while (s < LF_CUDA_THREADS && (int64_t)bm * rc * s * 2 <= LF_CUDA_THREADS)
        s *= 2;
    return s;
}

/* Row stride (floats) of the staged x and A chunks: padding by the split count puts the lanes of a
 * warp, which read k = lane % s of consecutive ranks, on distinct banks. */
static inline int lf_cuda_stage_ld(int kc, int bm, int rc)
{
    int s = lf_cuda_shrink_splits(bm, rc);
    return kc + (s < 32 ? s : 0);
}

/* Shared bytes of a shrink block (T tile + staged x and A chunks). */
static inline int64_t lf_cuda_shrink_smem(int bm, int rc, int kc)
{
    return 4 * ((int64_t)bm * rc + (int64_t)(bm + rc) * lf_cuda_stage_ld(kc, bm, rc));
}

/* Longest K chunk (multiple of 32, at most K rounded up) that fits the budget; 0 when none does. */
static inline int lf_cuda_pick_kc(int64_t k, int bm, int rc)
{
    int64_t kmax = (k + 31) / 32 * 32;
    if (kmax > 4096)
        kmax = 4096;
    for (int64_t kc = kmax; kc >= 32; kc -= 32)
        if (lf_cuda_shrink_smem(bm, rc, (int)kc) <= LF_CUDA_SMEM_BUDGET)
            return (int)kc;
    return 0;
}

/* The fused delta: rows per block. Small blocks give the seed (M=128) enough blocks to cover the
 * GPU, which matters more than re-reading A: its K·r is tiny. */
static inline int lf_cuda_delta_bm(int64_t m)
{
    return m <= 256 ? 4 : m <= 2048 ? 8 : 16;
}

/* Output columns per block of the expand: one per thread, more when N is long and M short, so
 * that each block does enough work to hide its start. */
static inline int lf_cuda_delta_bn(int64_t n) { return n <= 1024 ? 256 : 512; }

/* One launch recomputes T once per column slice: fine while K·r is small or N has one slice.
 * Beyond that the two-kernel path reads A once per row block instead of once per block: f32,
 * M = 128, graph replay, fused against two-kernel: 512→512 r32 (K·r 16384) 17.4 against 13.4 µs,
 * 1024² r8 (8192) 9.5 against 6.3, 2048² r8 (16384) 16.5 against 9.2; the seed (512² r8, 4096)
 * stays fused at 2.3 (dev/cuda/NOTES.md v12b). */
static inline int lf_cuda_delta_fused_fits(int64_t m, int64_t k, int64_t n, int64_t r)
{
    int bm = lf_cuda_delta_bm(m);
    int64_t slices = (n + lf_cuda_delta_bn(n) - 1) / lf_cuda_delta_bn(n);
    if (lf_cuda_pick_kc(k, bm, (int)r) < 64)
        return 0; /* T and a useful chunk of A do not fit in shared memory together */
    return k * r <= 4096 || slices == 1;
}

/* The delta by cuBLAS's T (K-slices) and the GEMM path's epilogue, two launches: from K = 4096 it
 * beats the fused kernel (T recomputed per N-slice) and the two-kernel one (a CUDA-core K loop):
 * M = 1, 16, 128, 1024 at 4096², r16: 6.2, 6.5, 6.6, 17.3 µs against 7.9, 13.1, 31.7, 96.4 for the
 * best of the others; at K = 1024, 2048 (f32, M=128) the two-kernel delta still wins, 6.3 and 9.2
 * against 10.3 and 10.6 (dev/cuda/NOTES.md v12b). */
static inline int lf_cuda_delta_tsplit_wins(int64_t k) { return k >= 4096; }

/* The one-round-trip delta kernel (lora_delta_small_kernel): PEFT, 16-byte aligned, K a multiple
 * of the 16-byte vector and at most 128 of them (f32 512, 16-bit 1024: each lane holds 4 vectors
 * per row in registers), r ≤ 16 (two ranks per warp). */
static inline int lf_cuda_delta_small_fits(lf_dtype dtype, lf_layout layout, uint32_t flags, int64_t k, int64_t r)
{
    const int64_t v = dtype == LF_F32 ? 4 : 8;
    return layout == LF_LAYOUT_PEFT && (flags & LF_PLAN_ALIGNED16) && k % v == 0 && k / v <= 128 && r <= 16;
}

/* Shrink kernel alone (T into the workspace): enough blocks to cover the SMs, since its latency is
 * the loads of each chunk; ranks split in chunks of at most 16. */
static inline lf_cuda_shrink_cfg lf_cuda_shrink_pick(int64_t m, int64_t k, int64_t r, int sm_count)
{
    lf_cuda_shrink_cfg c;
    c.bm = m >= 16 ? 16 : (int)m;
    c.rc = r >= 16 ? 16 : (int)r;
    for (;;) {
        int64_t blocks = (m + c.bm - 1) / c.bm * ((r + c.rc - 1) / c.rc);
        if (blocks >= 2 * sm_count || (c.bm <= 4 && c.rc <= 1))
            break;
        if (c.bm >= 2 * c.rc && c.bm > 4)
            c.bm /= 2;
        else
            c.rc /= 2; /* here rc > 1: bm ≤ 4 with rc = 1 broke out, and bm > 4 with rc = 1 halves bm */
    }
    c.kc = lf_cuda_pick_kc(k, c.bm, c.rc);
    return c;
}

/* Largest rank of the decode path: a tile's B rows (16·RT × r, fp32) sit in shared memory. */
#define LF_CUDA_DECODE_MAX_RANK 64

/* Decode: K-slices of T (lora_tpart_kernel): 512 elements, two 16-byte vectors per lane. */
static inline int64_t lf_cuda_decode_t_slices(int64_t k) { return (k + 511) / 512; }

/* Decode: token columns of 8 (the MMA's N) the kernel is instantiated for, NT ∈ {1, 2, 4}. NT 1
 * runs two blocks per SM as NT 2 does, with one chunk of x per ring step instead of two (RT 1: 3
 * chunks, not 4; RT 2: 5, not 6), so the same shared memory holds more steps of W: H100, bf16 r16,
 * against NT 2, same run: M=1 4096² 14.62 µs against 14.96, M=1 4096 → 14336 44.8 against 45.9
 * (dev/cuda/NOTES.md, seventh session). */
static inline int lf_cuda_decode_nt(int64_t m) { return m <= 8 ? 1 : m <= 16 ? 2 : 4; }

/* Decode blocks per SM (lora_fwd.cu's decode_shape must agree): two for NT ≤ 2, whose blocks fit
 * twice, so that one block's epilogue overlaps the other's stream (M=16 4096²: 17.6 µs against
 * 20–25 with one); one otherwise. */
static inline int lf_cuda_decode_per_sm(int nt) { return nt <= 2 ? 2 : 1; }

/* Decode grid: persistent, at most `slots` blocks (per-SM blocks × SMs), each looping over its
 * 16·RT-row tiles. */
static inline int64_t lf_cuda_decode_grid(int64_t n, int rt, int slots)
{
    int64_t tiles = (n + 16 * rt - 1) / (16 * rt);
    return tiles < slots ? tiles : slots;
}

/* Rows of W per decode tile, in 16-row MMA tiles: the busiest block streams ceil(tiles/slots)
 * tiles; take the RT that gives it the fewest rows, and on a tie RT 2 (x re-read from L2 once per
 * tile, half as often). H100, bf16 r16, lab, 2026-11-25 (fifth session): the tie at N = 14336 with
 * two blocks per SM, RT 2 against RT 1: M=1 46.9 against 48.3 µs, M=16 48.7 against 50.4 (it
 * was the other way round before the copy ring ran across tiles); M=1 4096², one block per SM:
 * 18.9 against 21.5. Not a tie, RT 1 at 4096² with two blocks per SM: 15.5 against 17.7 (M=1). */
static inline int lf_cuda_decode_rt(int nt, int64_t n, int sm_count)
{
    const int per_sm = lf_cuda_decode_per_sm(nt), slots = per_sm * sm_count;
    int64_t t1 = (n + 15) / 16, t2 = (n + 31) / 32;
    int64_t busiest1 = (t1 + slots - 1) / slots * 16, busiest2 = (t2 + slots - 1) / slots * 32;
    return busiest1 < busiest2 ? 1 : 2;
}

/* Decode path: PEFT layout (W rows contiguous along K, as the tensor-core fragments want them),
 * 16-bit dtype, 16-byte aligned operands, r ≤ 64, and only where it beats the GEMM path. Every
 * block re-reads x from L2 for each of its tiles, so past 16 tokens it wins only while each block
 * streams one tile. H100, bf16 r16, lab, 2026-11-25 (fifth session), µs, decode / GEMM path /
 * cuBLAS base alone: M=32 4096² (128 tiles) 19.5 / 22.9 / 14.5, M=32 4096 → 14336 (7 tiles a
 * block) 62.1 / 53.1 / 43.7, M=64 4096² 25.8 / 23.2 / 14.8, M=64 → 14336 94.9 / 54.5 / 43.7. */
static inline int lf_cuda_decode_fits(lf_dtype dtype, lf_layout layout, uint32_t flags, int64_t m, int64_t n,
                                      int64_t r, int sm_count)
{
    if (!((dtype == LF_BF16 || dtype == LF_F16) && layout == LF_LAYOUT_PEFT && (flags & LF_PLAN_ALIGNED16) &&
          m <= 32 && r <= LF_CUDA_DECODE_MAX_RANK))
        return 0;
    if (m <= 16)
        return 1;
    const int nt = lf_cuda_decode_nt(m), rt = lf_cuda_decode_rt(nt, n, sm_count);
    return (n + 16 * rt - 1) / (16 * rt) <= (int64_t)lf_cuda_decode_per_sm(nt) * sm_count;
}

/* Many adapters, the layer: the decode kernels' MULTI form (one stream of W, each token's LoRA term
 * in the epilogue) against the cuBLAS GEMM beside the fused kernel on a side stream. H100, bf16
 * 4096², r16, L 8, graph replay, both in one call, interleaved (2026-11-25, fifth session): M=1
 * 18.4 against 19.0 µs, M=16 21.0 against 19.9. The MULTI form's cost grows with the tokens (each
 * token's A rows in T, its B columns in the epilogue), the other's hardly: the lines cross near 5
 * tokens (interpolated between the two, not measured). In a host loop the MULTI form won at both
 * (18.2 against 27.6, 21.1 against 26.8: two launches instead of a fork, three launches, a join). */
static inline int lf_cuda_multi_decode_wins(int64_t m) { return m <= 4; }

/* GEMM path, 16-bit dtypes: the base GEMM writes fp32 into the workspace, in chunks of rows of at
 * most 256 MiB. Chunks small enough to stay in L2 (16 MiB) made one fast GEMM into several slower
 * ones: 4096 → 14336 at M = 4096 took 1193 µs in 256-row chunks and 915 µs whole (cuBLAS base 717),
 * at M = 1024 299 against 238, and 4096² stayed within 2% (dev/cuda/NOTES.md v12c). The cap bounds
 * the workspace (M = 8192 at N = 14336: two chunks). */
static inline int64_t lf_cuda_gemm_chunk_rows(int64_t m, int64_t n)
{
    int64_t rows = (256 << 20) / (4 * n);
    rows = rows < 128 ? 128 : rows / 128 * 128;
    return rows < m ? rows : m;
}

/* GEMM epilogue: rows per thread. Eight keep twice the base bytes in flight and halve the staging
 * per output (M=1024: 72.7 → 69.5 µs); four give small M enough blocks (M=128: 24.1 against 25.4). */
static inline int lf_cuda_epilogue_rows(int64_t m) { return m >= 512 ? 8 : 4; }

/* GEMM path: K-slices of T = x·Aᵀ (one strided-batched cuBLAS call, partials summed in the
 * epilogue). Alone, an M × r × 4096 product runs on a handful of blocks, each a long serial K loop
 * (5.5 µs at M=128; 2.5 in 16 slices); slices of ≥ 256 spread it. Every epilogue block sums the
 * partials of its rows, so their number falls as M grows (slices · M ≤ 2048). Only exact slices
 * whose starts keep 16-byte alignment (multiples of 32 elements). */
static inline int lf_cuda_gemm_t_splits(int64_t m, int64_t k)
{
    for (int s = 16; s > 1; s /= 2)
        if (s * m <= 2048 && k % s == 0 && (k / s) % 32 == 0 && k / s >= 256)
            return s;
    return 1;
}

/* Hopper layer kernel (lora_hopper.cu): 128×256 tiles on a persistent grid (224, 192 or 128 columns
 * where those fill its rounds better: lf_cuda_hopper_tile_cols). Its limits: PEFT layout
 * (the wgmma descriptors read W's rows K-major; the KN layout keeps the GEMM path), 16-bit dtypes,
 * 16-byte aligned operands and strides (the copy engine's rule; with dense PEFT operands, K and r
 * multiples of 8), r ≤ 64 (T's width in the workers), M ≤ 2^20 (its row-block flags). */
#define LF_CUDA_HOPPER_MAX_RANK 64
#define LF_CUDA_HOPPER_MAX_M (1 << 20)
/* Where it wins: a 128×256 tile costs one SM its whole K loop, so with few tiles the kernel takes as
 * long as a full round (~50 µs at K = 4096) while the GEMM path's cuBLAS spreads any M over every
 * SM. It needs tiles for at least ¾ of the SMs it gives to tiles (the SMs less its T workers, 4 by default),
 * counted at the width lf_cuda_hopper_tile_cols takes: 128 columns bring in layers of a few
 * hundred tokens whose 256-column tiles would leave half the SMs idle (M = 256, N = 7168).
 * Measured on an H100 (132 SMs: ≥ 96 tiles), bf16, r 16, µs per call, GEMM path → Hopper kernel,
 * both in one run (dev/cuda/NOTES.md, "Hopper path in the library"; the Hopper times at M ≤ 512,
 * which the plan does not send there, are the lab's v8-lib). K = 4096, N = 4096: M = 128 (16
 * tiles) 24.1 → 50–60, M = 256 (32) 29.0 → 50, M = 512 (64) 38.8 → 50: lose; M = 768 (96) 56.3 →
 * 51.4, M = 1024 (128) 68.4 → 55.4: win. N = 14336, M = 256 (112 tiles): 75.7 → 61.4. Short K
 * wins too: M = 1024, K = 1024: 35.0 → 24.8; M = 2048, K = 512: 53.4 → 33.1.
 * And enough column tiles per row block: 4 workers compute T for every row block while a round
 * of tiles takes ~50 µs, so they keep up only while each row block carries enough tile work. With
 * their own 10-stage ring (r ≤ 16) a worker's row block got faster, and M = 4096, K = 4096 went
 * (lab, H100, 2026-11-25, µs, before → after, cuBLAS base / unfused in the same run): N = 2048
 * 165.4 → 122.9 (96.0 / 128.4; the GEMM path took 144.6 at base 94.9 in bench --tp), M = 2048
 * N = 2048 83.6 → 64.4 (47.5 / 65.2), N = 3072 207.7 → 204.5 (157 / 196), N = 1024 155.6 → 115.6
 * (46.9 / 73.0: lose; T took 8 row blocks a worker: lf_cuda_hopper_schedule now spreads it over
 * more, which admits r ≤ 16 from 4 column tiles, N > 768). So r ≤ 16 needed 8 column tiles (N > 1792); N = 3072 and M = 2048 N = 2048
 * only tie the unfused composition, but the GEMM path they would otherwise take ran 1.16× it at
 * N = 2048 (144.6 against 124.5 in bench --tp), so they win against what the plan has instead
 * (an estimate for those two: not timed against the GEMM path in one run). With r > 16 (T 64 wide, 8
 * stages) N = 2048 stays behind (147.3 against 121.2 unfused): 16 column tiles (N > 3840), where
 * the wins were measured (N = 4096, 14336). */
static inline int lf_cuda_hopper_tile_cols(int64_t m, int64_t n, int64_t tile_ctas);
static inline int lf_cuda_hopper_fits(lf_dtype dtype, lf_layout layout, uint32_t flags, int64_t m, int64_t n,
                                      int64_t r, int sm_count)
{
    /* the tiles at the width the launch takes (its tile CTAs: about the SMs less 4 workers) */
    const int64_t tiles_n = (n + 255) / 256, cols = lf_cuda_hopper_tile_cols(m, n, sm_count - 4);
    const int64_t tiles = (m + 127) / 128 * ((n + cols - 1) / cols);
    return (dtype == LF_BF16 || dtype == LF_F16) && layout == LF_LAYOUT_PEFT && (flags & LF_PLAN_HAS_W) &&
           (flags & LF_PLAN_ALIGNED16) && r >= 1 && r <= LF_CUDA_HOPPER_MAX_RANK && m <= LF_CUDA_HOPPER_MAX_M &&
           4 * tiles >= 3 * (int64_t)(sm_count - 4) && tiles_n >= (r <= 16 ? 4 : 16);
}

/* The Hopper kernel's tile width for m × n on tile_ctas CTAs (lora_hopper.cu, wide_shape): 256
 * columns, or 224 or 192 where those take fewer column-rounds — every CTA runs its tiles one after
 * another, so a launch lasts its rounds (ceil(tiles / CTAs)) times a tile's width. 14336 outputs
 * split into 56 tiles of 256 or 64 of 224: at M = 1024 on 128 tile CTAs 448 tiles take 4 rounds of
 * 256 columns (the last half full) and 512 tiles 4 rounds of 224. H100, one call, two rounds
 * (bench/results/cuda-h100-2026-11-27-tile-cols-224-ab.json), layer µs: prefill_m1024_mlp
 * 194.7 / 197.2 → 175.1 / 175.8, 1024 × 4096 → 7168 98.9 / 99.7 → 94.5 / 95.1 (−5% where the
 * rounds say −12.5%: a narrower tile costs more a column, reading more operand bytes for each);
 * mid_m1024 (256 either way) unchanged. So a narrower width is taken only where its rounds × width
 * is at least 10% below the best wider one's (8192 × 14336 on 132 CTAs: 192 would save 0.9%).
 * With that rule, an H200 in one call (cuda-h200-2026-11-27-tile-cols-192-ab.json): 1024 × 4096 →
 * 5120 (192) 91.6 / 90.5 → 76.0 / 72.3, 1100 × 4096 → 4360 (192) 90.9 / 90.3 → 76.2 / 75.9,
 * prefill_m1024_mlp (224) 197.1 / 197.4 → 186.0 / 188.0, 1024 × 4096 → 7168 (224) 100.2 / 100.5 →
 * 95.2 / 96.2, mid_m1024 (256) 53.7 / 53.0 → 53.2 / 53.8. */
/* 128 columns (one round where wider tiles leave SMs idle), H100, one call, two rounds
 * (bench/results/cuda-h100-2026-11-27-tile-cols-128-ab.json), layer µs, what the plan took before →
 * 128 columns (cuBLAS base): 256 × 4096 → 7168 (GEMM path) 43.1 / 43.1 → 30.8 / 30.8 (26.5–26.8),
 * 384 × 4096 → 4096 34.0 → 26.7 (20.1–20.2), 512 × 4096 → 4096 38.7 → 28.1 (24.1–24.2), 200 × 4096
 * → 6144 36.0 → 30.4 (23.4), 128 × 4096 → 14336 (split-K form, one CTA a tile) 50.0 → 48.2–48.5
 * (45.5–45.7: W's 117 MB bound both). A round of 128 × 128 × 4096 tiles takes ~30 µs (~4.5 TFLOP/s
 * an SM, against ~5.5 at 256 columns). */
static inline int lf_cuda_hopper_tile_cols(int64_t m, int64_t n, int64_t tile_ctas)
{
    if (tile_ctas < 1)
        return 256;
    /* widths, and the share of the best wider one's rounds × width below which each is taken (in
     * tenths): 128 columns read 4/3 of 256's operand bytes a column (x's box for half the columns) */
    static const int widths[] = {256, 224, 192, 128}, margin[] = {10, 9, 9, 7};
    const int64_t tiles_m = (m + 127) / 128;
    int best = 256;
    int64_t best_cost = 0;
    for (int i = 0; i < (int)(sizeof widths / sizeof widths[0]); i++) {
        const int cols = widths[i];
        const int64_t cost = (tiles_m * ((n + cols - 1) / cols) + tile_ctas - 1) / tile_ctas * cols;
        if (i == 0 || 10 * cost <= margin[i] * best_cost) {
            best = cols;
            best_cost = cost;
        }
    }
    return best;
}

/* The Hopper kernel's CTAs: the lowest `workers` compute T = x·Aᵀ first, row blocks w, w + workers,
 * … each, then `worker_tiles` tiles each in their own last row block; the other `tile_ctas` CTAs
 * take the remaining tiles. By default 4 workers (the lab's measured choice, NOTES.md v8: the SMs
 * a round of 128 tiles leaves idle at M = 1024, N = 4096) and no tiles for them. But T costs a
 * worker ~0.29 of a 256-column tile's time per row block whatever K (both stream K: a row block's
 * x, 1 MB at K = 4096, took ~13.7 µs through one SM, a tile ~47 µs; dev/cuda/NOTES.md,
 * twenty-sixth session, item 2), more against narrower tiles and half again with T 64 wide; so
 * where few column tiles share a row block T outlasts the tiles (M = 4096, N = 2048: 8 row blocks
 * a worker, 2.3 tiles' time, against 2 rounds of tiles). There the workers are as many as make the
 * span shortest, and take the tiles that balance their T against the other CTAs' tiles (256 tiles
 * on 132 CTAs: 8 workers, T in 1.2 tiles' time, then one tile each, as the other 124 CTAs finish
 * their second). Taken where this model's span is at least 5% shorter. H100, one call, two rounds
 * (bench/results/cuda-h100-2026-11-27-t-workers-take-tiles-ab.json), layer µs, before → after
 * (cuBLAS base): 4096 × 4096 → 2048 (8 workers with a tile each) 118.9 / 112.0 → 114.1 / 108.4
 * (84.4–85.0); 4096 × 4096 → 1024 (32, 28 of them with a tile; the GEMM path before) 80.1 / 79.3 →
 * 68.2 / 68.4 (43.3–43.5); 1600 × 4096 → 2000 (5 workers without tiles) 56.8 / 57.2 → 43.9 / 44.5
 * (37.8–37.9); mid_m1024 and prefill_m4096 (4 workers either way) unchanged. Since ties go to the
 * shorter T, 1600 × 2000 takes 13 workers without tiles and 4096 × 1024 32 with a tile each (about
 * 3% faster, and unchanged; dev/cuda/NOTES.md, twenty-ninth session, item 1). A worker's tiles lie
 * in its own last row block (worker_tiles ≤ the column tiles), so no worker waits for another CTA
 * (lora_hopper.cu, Progress). */
typedef struct lf_cuda_hopper_sched {
    int cols;         /* tile width (lf_cuda_hopper_tile_cols) */
    int workers;      /* CTAs [0, workers) compute T first */
    int worker_tiles; /* then this many tiles each, in their last row block */
    int tile_ctas;    /* the other CTAs (at most): ctas − workers */
} lf_cuda_hopper_sched;

static inline double lf_cuda_hopper_t_row_cost(int cols, int lw)
{
    return 0.29 * 256.0 / cols * (lw > 16 ? 1.5 : 1.0);
}

/* The span in tiles' time of w workers taking c tiles each, the other ctas − w CTAs the rest. */
static inline double lf_cuda_hopper_span(int64_t tiles_m, int64_t items, double row, int64_t w, int64_t c, int ctas)
{
    const double workers = (double)((tiles_m + w - 1) / w) * row + (double)c;
    const double others = (double)((items - w * c + (ctas - w) - 1) / (ctas - w));
    return workers > others ? workers : others;
}

/* lw: T's width (16 or 64; 0 without a LoRA term); ctas: the grid, one CTA an SM. */
static inline lf_cuda_hopper_sched lf_cuda_hopper_schedule(int64_t m, int64_t n, int lw, int ctas)
{
    const int64_t tiles_m = (m + 127) / 128;
    lf_cuda_hopper_sched s;
    s.workers = lw == 0 ? 0 : tiles_m < 4 ? (int)tiles_m : 4;
    if (s.workers > ctas - 1)
        s.workers = ctas - 1;
    s.worker_tiles = 0;
    s.tile_ctas = ctas - s.workers;
    s.cols = lf_cuda_hopper_tile_cols(m, n, s.tile_ctas);
    if (s.workers < 1)
        return s;
    const int64_t tiles_n = (n + s.cols - 1) / s.cols, items = tiles_m * tiles_n;
    const double row = lf_cuda_hopper_t_row_cost(s.cols, lw);
    const double span = lf_cuda_hopper_span(tiles_m, items, row, s.workers, 0, ctas);
    double best = span, best_t = 0.0;
    int64_t best_w = 0, best_c = 0;
    for (int64_t w = 1; w <= tiles_m && w < ctas; w++) {
        /* no tiles for the workers, or the count that ends their T and tiles with the others':
         * T + c = (items − w·c) / (ctas − w), at most a row block's columns */
        const double t_end = (double)((tiles_m + w - 1) / w) * row;
        const int64_t even = (int64_t)(((double)items - (double)(ctas - w) * t_end) / ctas);
        const int64_t tries[] = {0, even, even + 1, tiles_n};
        for (int i = 0; i < 4; i++) {
            const int64_t c = tries[i];
            if (c < 0 || c > tiles_n || w * c > items || (i > 0 && c == 0) || (i == 3 && even + 1 < tiles_n))
                continue;
            /* at a tie the shorter T: the last row blocks' tiles wait for it, which the model's
             * span leaves out (one worker for 3072 × 11008 tied 8 with a tile each, and ran
             * 21% longer in a simulation of the flags) */
            const double w_span = lf_cuda_hopper_span(tiles_m, items, row, w, c, ctas);
            if (w_span < best || (w_span == best && best_w > 0 && t_end < best_t)) {
                best = w_span;
                best_t = t_end;
                best_w = w;
                best_c = c;
            }
        }
    }
    if (best_w > 0 && best < 0.95 * span) {
        s.workers = (int)best_w;
        s.worker_tiles = (int)best_c;
        s.tile_ctas = ctas - s.workers;
    }
    return s;
}

/* Host and device: the kernel's tile order, which test_plan checks on the CPU. */
#ifdef __CUDACC__
#define LF_HOST_DEVICE __host__ __device__
#else
#define LF_HOST_DEVICE
#endif

/* Tile t of a region of row_count row blocks × col_count column blocks → (mb, nb) within it: 8 row
 * blocks side by side walk the column blocks together, so the x row blocks and W column blocks in
 * flight at once stay in L2. */
static inline LF_HOST_DEVICE void lf_cuda_hopper_raster(int t, int row_count, int col_count, int *mb, int *nb)
{
    const int per_group = 8 * col_count, g = t / per_group, first = g * 8;
    const int rows = row_count - first < 8 ? row_count - first : 8, in = t - g * per_group;
    *mb = first + in % rows;
    *nb = in / rows;
}

/* CTA cta's k-th tile of a grid of `grid` (0: past its last). A worker's tiles (cta < workers) are
 * the last worker_tiles columns of its last row block (≡ cta mod workers), whose T it computed
 * itself. The other CTAs take the rest, i = j, j + (grid − workers), … for the j-th from the top of
 * the grid: first the row blocks before the workers' last ones, then those less the workers'
 * columns (all of them where workers take none). */
static inline LF_HOST_DEVICE int lf_cuda_hopper_cta_tile(int tiles_m, int tiles_n, int workers, int worker_tiles,
                                                         int grid, int cta, int k, int *mb, int *nb)
{
    const int c = worker_tiles, tail_row = c > 0 ? tiles_m - workers : tiles_m; /* the workers' last row blocks */
    if (cta < workers) {
        if (k >= c)
            return 0;
        *mb = tail_row + ((cta - tail_row) % workers + workers) % workers;
        *nb = tiles_n - c + k;
        return 1;
    }
    const int head = tail_row * tiles_n, i = grid - 1 - cta + k * (grid - workers);
    if (i < head) {
        lf_cuda_hopper_raster(i, tail_row, tiles_n, mb, nb);
        return 1;
    }
    if (i - head >= (tiles_m - tail_row) * (tiles_n - c))
        return 0;
    lf_cuda_hopper_raster(i - head, tiles_m - tail_row, tiles_n - c, mb, nb);
    *mb += tail_row;
    return 1;
}

/* The grid: the workers, then as many other CTAs as have a tile. */
static inline int lf_cuda_hopper_grid(const lf_cuda_hopper_sched *s, int tiles_m, int tiles_n)
{
    const int rest = tiles_m * tiles_n - s->workers * s->worker_tiles;
    return s->workers + (rest < s->tile_ctas ? rest : s->tile_ctas);
}

/* The Hopper kernel's split-K form (lora_hopper.cu, "few tiles"), for the layers with too few
 * 128×256 tiles for lf_cuda_hopper_fits (M up to a few hundred tokens): 128 × bn tiles, each tile's
 * K range split over a cluster of `split` CTAs so that tiles × split CTAs run in one wave. The
 * kernel's operand limits, and r ≤ 16. The largest split of 8..1 whose CTAs all run at once
 * (slots[s]: CTAs that do in clusters of s; the GPCs decide it: an H200 runs 132 in pairs but 120
 * in clusters of 4 or 8) and that leaves every CTA a K stage of 64. Measured with 128 columns
 * against the GEMM path (NOTES.md, "Few tiles", H200, bf16, r 16): faster by 7–18% with a split
 * (M 96, 128, 256 at N 4096; M 256 at 4096 → 2048 and 7168 → 4096) and with one CTA a tile in one
 * row of tiles (M 128, 4096 → 14336: 42.6 against 49.8 µs); slower with one CTA a tile in 2–4 rows
 * (M 384, 512; even at M 256, 4096 → 7168). The persistent kernel's 128-column tiles now take
 * those, and M 128 at 4096 → 14336, before this form is asked (lf_cuda_hopper_fits). 64 columns
 * where they take a split of 2 or more on at least as many CTAs: less of each CTA's part goes through distributed shared memory, which bounds
 * the finish. Measured on an H100 (bf16, r 16, layer µs, NOTES.md "Fifteenth session"): 128 → 64
 * columns at M 128, 4096 → 4096 19.41–19.50 → 18.73–18.77 (split 2 on 128 CTAs against 3 on 96),
 * 256 × 4096 → 2048 16.42–16.48 → 16.34–16.37, and slower where the CTAs are fewer (128 × 4096 →
 * 2560: 80 against 100, 15.27–15.31 → 15.41); with each CTA finishing its share of the live rows
 * (a part-empty last row of tiles had left them all to the first CTAs), the rows part empty stopped
 * losing: M 64 23.12 → 20.93–21.00 and M 192 25.78–25.81 → 25.31–25.35 against the GEMM path, M 96
 * 19.18 → 18.96–18.98 with 64 columns. Returns the split (*bn set), 0 where the GEMM path is the
 * better choice. */
#define LF_CUDA_HOPPER_MID_MAX_RANK 16
static inline int lf_cuda_hopper_mid_largest_split(int64_t tiles, int64_t k_tiles, const int slots[9])
{
    for (int split = 8; split >= 1; split--)
        if (slots[split] > 0 && tiles * split <= slots[split] && split <= k_tiles)
            return split;
    return 0;
}

static inline int lf_cuda_hopper_mid_split(lf_dtype dtype, lf_layout layout, uint32_t flags, int64_t m, int64_t k,
                                           int64_t n, int64_t r, const int slots[9], int *bn)
{
    if (!((dtype == LF_BF16 || dtype == LF_F16) && layout == LF_LAYOUT_PEFT && (flags & LF_PLAN_HAS_W) &&
          (flags & LF_PLAN_ALIGNED16) && r >= 1 && r <= LF_CUDA_HOPPER_MID_MAX_RANK))
        return 0;
    const int64_t tiles_m = (m + 127) / 128, k_tiles = (k + 63) / 64;
    const int64_t narrow_tiles = tiles_m * ((n + 63) / 64), wide_tiles = tiles_m * ((n + 127) / 128);
    const int narrow = lf_cuda_hopper_mid_largest_split(narrow_tiles, k_tiles, slots);
    const int split = lf_cuda_hopper_mid_largest_split(wide_tiles, k_tiles, slots);
    if (narrow >= 2 && narrow * narrow_tiles >= split * wide_tiles) {
        *bn = 64;
        return narrow;
    }
    *bn = 128;
    return split > 1 || tiles_m == 1 ? split : 0;
}

/* Hopper decode form (lora_hopper.cu, "few tokens"): M ≤ 64, r ≤ 16, W streamed by TMA as the
 * wgmma A operand in 64-row tiles (or 32 or 48), one CTA per SM, T computed beside the first tile's
 * stream. Past 16 tokens (64 token columns) against what the plan took before, in one call
 * (bench/results/cuda-h100-2026-11-27-decode-64-columns-ab.json; cuBLAS base in brackets): 64 ×
 * 4096 → 4096 20.8 → 17.7 (14.8; the split-K form before), 48 × 4096 → 6144 26.0 → 21.2 (21.4),
 * 32 × 4096 → 4096 18.7 → 17.6 (14.3; the CUDA-core decode kernel before), but 24 × 4096 → 4096
 * 18.22 against the decode kernel's 18.14: up to 24 tokens the decode kernel keeps the layers it
 * takes (LF_CUDA_HOPPER_DECODE_KERNEL_UP_TO_M). It
 * wins where its tiles fill the SMs' rounds: H100, bf16, r 16, `lorafuse bench` against the decode
 * kernel in one call (dev/cuda/NOTES.md, tenth session), µs, cuBLAS base alone in brackets:
 * 4096 → 14336 (224 tiles: 2 rounds, the second 70% full) M 1 42.6 against 44.9 (41.3), M 4 43.1
 * against 45.2 (41.4), M 16 44.5 against 46.7 (42.0); 4096 → 11008 (172 tiles: the second round 30%
 * full) M 16 39.8 against 37.7 (33.2–36.4); 4096 → 4096 (64 tiles, half the SMs) M 16 17.0 against
 * 15.8 in the lab. So: rounds more than ¾ full on average (an interpolation between 70% and 30%).
 * Where 64-row tiles miss that and 32-row ones meet it (4096 → 4096: 128 tiles on 132 SMs; → 11008:
 * 344), the form takes 32-row tiles (the wgmma's other 32 rows discarded), so that every SM streams
 * W. Measured against the decode kernel in one call (bench/results/cuda-h100-2026-11-26-decode-32rows-
 * mid-runahead-ab.json; cuBLAS base in brackets): 4096 → 4096 M 1 14.0 against 14.7 (15.6), M 16
 * 14.7 against 15.8 (16.0); 4096 → 11008 M 16 35.0 against 37.8 (35.2); and 8192 → 8192 (128
 * 64-row tiles, one round 97% full, which the old "tiles ≥ SMs" rule sent to the decode kernel)
 * M 16 49.5–49.9 against 51.7 (47.5). */
#define LF_CUDA_HOPPER_DECODE_MAX_M 64
#define LF_CUDA_HOPPER_DECODE_MAX_RANK 16
/* Rows of W per tile of the decode form for N output features: up to 16 tokens 64, else 32, else
 * 48, the first whose rounds are more than ¾ full; 0 where none is. Past 16 tokens (64 token
 * columns: x's box is 512 KB a tile over K = 4096, re-read from L2 by every tile) 32 or 48 rows in
 * one round, else 64 rows (A's box then has a slot of its own: lora_hopper.cu, dec_shape) in
 * rounds more than ¾ full. With 448
 * tiles of 32 (3.4 a CTA) 64 × 4096 → 14336 ran 57.2 µs against the split-K form's 49.6 (cuBLAS
 * base 43.7; H100, bf16, r 16, dev/cuda/NOTES.md, twenty-fifth session, item 3); with 224 of 64
 * against the split-K form in one call (bench/results/cuda-h100-2026-11-28-decode-64-rows-64-
 * columns-ab.json; cuBLAS base in brackets): 64 × 4096 → 14336 50.0 → 46.6 (43.8), 25 × 4096 → 14336
 * 53.6 → 46.8 (43.5), 64 × 4096 → 7168 26.6 → 25.0 (23.5–24.7), 48 × 4096 → 8192 29.1 → 27.1
 * (26.0–26.6).
 * 48-row tiles (T in the wgmma's rows 48–63, as 32-row ones hold it in rows 32–47) take N that
 * neither of the others fills, 100–132 tiles on 132 SMs (4753–6336 outputs): on an H100 8 × 4096 → 6144 18.2 µs against 22.3 by the decode
 * kernel (cuBLAS 20.8); on an H200, 1–16 tokens at 4096 → 5120, 5632, 6144, 0.92–1.07× the cuBLAS
 * base against 1.08–1.28× (bench/results/cuda-h200-2026-11-27-decode-rows-48-ab.json). Tiles of
 * 56 and 40 rows (T by the mma.sync warp the form had then: A's box does not fit the slot's 8
 * spare rows at 56, and at 40 it would cross two warps' rows) were slower wherever tried, even
 * where they balance the SMs better: 1 × 4096 → 7168 27.2 against 26.6 with 112 tiles of 64, 16 ×
 * 4096 → 14336 42.7 against 41.7 with 224 of 64, 16 × 4096 → 5120 26.5 against 20.6 by the decode
 * kernel (H100, bf16, r 16, one call; dev/cuda/NOTES.md, twenty-fourth session, item 3). Idle SMs
 * cost 112 tiles of 64 little: with T by wgmma 1 × 4096 → 7168 runs 19.9 µs (cuBLAS 22.4), and 112
 * TMA-ring blocks read its 56 MiB faster than 132 (read_floor blocks; NOTES, twenty-ninth
 * session). */
static inline int lf_cuda_hopper_decode_rows(int64_t m, int64_t n, int sm_count)
{
    static const int few_tokens[] = {64, 32, 48}, more_tokens[] = {32, 48, 64};
    const int *rows_tried = m > 16 ? more_tokens : few_tokens;
    for (int i = 0; i < 3; i++) {
        const int rows = rows_tried[i];
        const int64_t tiles = (n + rows - 1) / rows, rounds = (tiles + sm_count - 1) / sm_count;
        if (4 * tiles > 3 * rounds * sm_count && (m <= 16 || rounds == 1 || rows == 64))
            return rows;
    }
    return 0;
}
#define LF_CUDA_HOPPER_DECODE_KERNEL_UP_TO_M 24
static inline int lf_cuda_hopper_decode_fits(lf_dtype dtype, lf_layout layout, uint32_t flags, int64_t m, int64_t n,
                                             int64_t r, int sm_count)
{
    return (dtype == LF_BF16 || dtype == LF_F16) && layout == LF_LAYOUT_PEFT && (flags & LF_PLAN_HAS_W) &&
           (flags & LF_PLAN_ALIGNED16) && m >= 1 && m <= LF_CUDA_HOPPER_DECODE_MAX_M && r >= 1 &&
           r <= LF_CUDA_HOPPER_DECODE_MAX_RANK && lf_cuda_hopper_decode_rows(m, n, sm_count) != 0 &&
           !(m > 16 && m <= LF_CUDA_HOPPER_DECODE_KERNEL_UP_TO_M &&
             lf_cuda_decode_fits(dtype, layout, flags, m, n, r, sm_count));
}

/* The plain-load stream (lora_stream.cu): M ≤ 8, r ≤ 16, two blocks of 16 warps an SM, each W
 * block one 16-row tile over all K, two T-worker blocks. `lorafuse bench` against the decode form
 * in one call (H100, bf16, r 16, µs; bench/results/cuda-h100-2026-11-26-stream-ab.json): 1 × 4096
 * → 4096 13.9–14.0 → 12.3–12.4, 4 × 4096 → 4096 14.3 → 12.6, 8 × 4096 → 4096 14.3 → 13.4, 1 × 4096
 * → 3072 12.1 → 9.7, 1 × 8192 → 4096 25.2 → 23.6. With more tiles than blocks (4096 → 6144 and up)
 * a block would stream two tiles, which the lab measured slower than the decode form's rounds. So:
 * one tile a block, and at least as many tiles as SMs (with fewer, half the SMs would stream
 * alone). x is staged whole in shared memory: M rows of K, each padded. K a multiple of 8: every
 * 16-byte chunk of x, W and A it loads lies inside K (the others zero-fill a K tail by TMA or
 * masked loads). */
#define LF_CUDA_STREAM_MAX_M 8
#define LF_CUDA_STREAM_MAX_RANK 16
#define LF_CUDA_STREAM_T_WORKERS 2
/* lora_stream.cu's shared memory before x, with nt = ceil(M / 8) groups of 8 token columns, K split
 * over s blocks and many adapters or one: the warps' partial sums (16 warps × 128 floats a group),
 * s·T (8 tokens × 16 ranks a group), the T workers' values (many: [token][rank]; one: two
 * workers' [token][rank]), the finishing tile's sums a K half (s > 1), the tile's B rows (many:
 * every token's, 16 × 16 bf16 each; one: 16 × 16). */
#define LF_CUDA_STREAM_FIXED_SMEM(nt, s, multi)                                                             \
    (4 * (nt) * (16 * 128 + 128 + ((multi) ? 128 : 2 * 128) + ((s) > 1 ? (s) * 128 : 0)) +                  \
     ((multi) ? 8 * (nt) * 512 : 512))
#define LF_CUDA_STREAM_BLOCK_SMEM (110 * 1024) /* two blocks an SM (228 KB on sm_90, 1 KB of it per block reserved) */
/* K split: up to 8 tokens a block streams one 16-row tile over all of K. Past 8 tokens (many
 * adapters) x whole would not fit two blocks an SM, so consecutive blocks pair up in a two-CTA
 * cluster: each streams two tiles over its half of K, stages that half of x, and the pair swaps
 * the halves' sums through distributed shared memory (16 × 4096 → 4096 with one adapter: 15.1–15.7
 * µs against the decode form's 14.6, so the one-adapter plan keeps the decode form there;
 * dev/cuda/NOTES.md, seventeenth session). */
static inline int lf_cuda_stream_split(int64_t m)
{
    return m > 8 ? 2 : 1;
}
/* Bytes of a token's row of x in a block's shared memory: its K range (whole 32-wide steps of
 * bf16/f16) and 64 bytes of padding (tokens 2i and 2i + 1 on other banks). */
static inline int64_t lf_cuda_stream_x_row(int64_t k, int split)
{
    return ((k + 31) / 32 + split - 1) / split * 64 + 64;
}
static inline int64_t lf_cuda_stream_smem(int64_t m, int64_t k, int multi)
{
    const int split = lf_cuda_stream_split(m);
    return LF_CUDA_STREAM_FIXED_SMEM((m + 7) / 8, split, multi) + m * lf_cuda_stream_x_row(k, split);
}
/* Many adapters (lf_stream_multi_launch), 1–16 tokens: T workers each take tokens b, b + 8 (their
 * own slots' A), so up to 8 of them hold block slots; a W block stages every token's B rows. Taken
 * before the decode kernels' MULTI form and the side stream where it fits: 1 × 4096 → 4096, L 1, 8
 * and 64, 17.1 → 13.4–13.5 µs, 8 × 4096 → 4096 19.0 → 14.4 in one call (H100, bf16, r 16;
 * bench/results/cuda-h100-2026-11-26-multi-stream-ab.json, -multi-stream-tokens-ab.json), as the
 * one-adapter stream beats the decode form; past 8 tokens against the side stream (cuBLAS beside
 * the fused delta), 16 × 4096 → 4096 with 1 / 8 / 64 adapters 18.4 / 19.1 / 24.7 → 17.4 / 18.3 /
 * 19.3, 12 tokens 18.8 → 18.6 (-multi-stream-16tok-ab.json); with both tokens of a T worker in one
 * loop 17.4 / 18.0 / 18.8 → 16.4 / 16.9 / 17.7 (base GEMM 16.1; -multi-stream-tworker-ab.json). */
#define LF_CUDA_STREAM_MULTI_MAX_M 16
static inline int lf_cuda_stream_multi_workers(int64_t m)
{
    return m < 8 ? (int)m : 8;
}
static inline int lf_cuda_stream_multi_fits(lf_dtype dtype, int64_t m, int64_t k, int64_t n, int64_t max_rank,
                                            int sm_count)
{
    const int split = lf_cuda_stream_split(m);
    const int64_t tiles = (n + 15) / 16, w_blocks = (tiles + split - 1) / split * split;
    return (dtype == LF_BF16 || dtype == LF_F16) && m >= 1 && m <= LF_CUDA_STREAM_MULTI_MAX_M && max_rank >= 1 &&
           max_rank <= LF_CUDA_STREAM_MAX_RANK && k % 8 == 0 &&
           lf_cuda_stream_smem(m, k, 1) <= LF_CUDA_STREAM_BLOCK_SMEM && tiles >= sm_count &&
           lf_cuda_stream_multi_workers(m) + w_blocks <= 2 * (int64_t)sm_count;
}
static inline int lf_cuda_stream_fits(lf_dtype dtype, lf_layout layout, uint32_t flags, int64_t m, int64_t k,
                                      int64_t n, int64_t r, int sm_count)
{
    const int64_t tiles = (n + 15) / 16;
    return (dtype == LF_BF16 || dtype == LF_F16) && layout == LF_LAYOUT_PEFT && (flags & LF_PLAN_HAS_W) &&
           (flags & LF_PLAN_ALIGNED16) && m >= 1 && m <= LF_CUDA_STREAM_MAX_M && r >= 1 &&
           r <= LF_CUDA_STREAM_MAX_RANK && k % 8 == 0 && lf_cuda_stream_smem(m, k, 0) <= LF_CUDA_STREAM_BLOCK_SMEM &&
           tiles >= sm_count && tiles <= 2 * (int64_t)sm_count - LF_CUDA_STREAM_T_WORKERS;
}

#endif /* LF_CUDA_HEURISTICS_H */

/*
 * dev/cuda/decode_lab.cuh — lab-only variants of the decode layer kernel (v11), not in the library.
 * Verbatim copies of src/cuda/lora_fwd.cu's decode pieces (args, tpart, v8 decode kernel, launch)
 * in namespace lab, with:
 *   PF      an L2 prefetch-size hint on every W/x cp.async of the v8 kernel (0: none, 128, 256 B;
 *           1128: 128 B plus the L2 evict-first policy)
 *   line    lora_decode_line_kernel: 64-wide K steps whose copy layout is decoupled from the MMA
 *           fragment layout: lane L copies row L/8, 16-byte chunk L%8, so one cp.async instruction
 *           fetches 4 whole 128-byte lines (v8: 8 rows × 64 bytes); the chunks land where the
 *           consuming lane's fragment wants them, and the ring is shared by the warp (wait +
 *           __syncwarp before reading, refills after it).
 */
#pragma once
#include "cuda/common.cuh"
#include "cuda/heuristics.h"

namespace lab {
/* Everything a kernel needs, by value. Sizes fit in int (the plan checks). */
struct lora_args {
    int m, k, n, r;
    const void *x;
    int64_t ldx;
    const void *w;
    int64_t ldw;
    const void *a;
    int64_t lda;
    const void *b;
    int64_t ldb;
    const void *bias;
    const float *t;    /* T = x·Aᵀ, [m, r] fp32, from the shrink kernel; NULL: the block computes it */
    const float *base; /* GEMM path: x·Wᵀ (+ beta·y for f32) from cuBLAS, fp32, row stride ldbase */
    int64_t ldbase;
    int tsplit;        /* GEMM path: T comes as tsplit K-slice partials, tstride floats apart */
    int64_t tstride;
    float scale, beta;
    void *y;
    int64_t ldy;
};

/* Adds the rest of the layer to an fp32 partial result and rounds once into y. */
template <typename T>
__device__ __forceinline__ void store_out(const lora_args &p, int row, int j, float acc)
{
    float v = acc;
    if (p.bias)
        v += lf_dt<T>::to_f32(((const T *)p.bias)[j]);
    T *y = (T *)p.y + (int64_t)row * p.ldy + j;
    if (p.beta != 0.0f) /* beta = 0 must not read y: it may hold NaN */
        v = fmaf(p.beta, lf_dt<T>::to_f32(*y), v);
    *y = lf_dt<T>::from_f32(v);
}

/* Programmatic dependent launch (sm_90; every launch here asks for it when the plan says so): wait
 * for the preceding grid in the stream (complete, its writes visible) before the first global
 * access, then let the next kernel launch, so that its launch and block setup overlap this one's
 * work instead of following it. Without the launch attribute both are no-ops. */
__device__ __forceinline__ void pdl_wait_and_release()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

/* ---- decode ------------------------------------------------------------------------------------ */

template <typename T> __device__ __forceinline__ void mma16816(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                               uint32_t a3, uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                                    uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__half>(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                             uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* One 32-wide K step of a warp. The sum over k does not care which k sits where in the MMA, so
 * each thread's 16-byte vector (8 consecutive k of one row) feeds two m16n8k16: thread (g, q)
 * holds physical k = q·8 + 4j + {0,1,2,3} as the logical k {2q, 2q+1, 2q+8, 2q+9} of MMA j, in the
 * A fragment (W rows g and g+8) and in the B fragment (token g) alike. */
template <typename T, int NT, int RT>
__device__ __forceinline__ void decode_step(float (&acc)[RT][NT][4], const uint4 (&wv)[RT][2], const uint4 (&xv)[NT])
{
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            mma16816<T>(acc[rt][nt], wv[rt][0].x, wv[rt][1].x, wv[rt][0].y, wv[rt][1].y, xv[nt].x, xv[nt].y);
            mma16816<T>(acc[rt][nt], wv[rt][0].z, wv[rt][1].z, wv[rt][0].w, wv[rt][1].w, xv[nt].z, xv[nt].w);
        }
}

/* 8 elements from p (the row's element kbase), zeros at or past k: the K tail. */
template <typename T> __device__ __forceinline__ uint4 load8_masked(const T *p, int kbase, int k)
{
    union {
        uint4 v;
        T e[8];
    } u;
#pragma unroll
    for (int e = 0; e < 8; e++)
        u.e[e] = kbase + e < k ? p[e] : lf_dt<T>::from_f32(0.0f);
    return u.v;
}

/* 16-byte asynchronous copy global → shared, cached in L2 only: W is read once per call. */
template <int PF = 0> __device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(smem);
    if (PF == 1128) { /* 128 B and the evict-first policy: W is read once, keep x, A, B and T resident */
        uint64_t pol;
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
        asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::128B [%0], [%1], 16, %2;" ::"r"(d), "l"(gmem), "l"(pol));
    } else if (PF == 256)
        asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(d), "l"(gmem));
    else if (PF == 128)
        asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;" ::"r"(d), "l"(gmem));
    else
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
/* The memory clobber keeps the compiler from moving shared-memory reads of the ring above the wait. */
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

/* Decode's T = x·Aᵀ as K-slice partials, part[z][i][t] = Σ over slice z of x[i][k]·A[t][k] (16-bit
 * dtypes, 16-byte aligned rows). Block (t, z): each lane holds TP_NJ 16-byte vectors of A row t's
 * slice; warp w takes tokens w, w + 8, ... (M ≤ 64); a lane issues all its loads before it uses
 * any, and each dot product ends in a fixed xor tree. One memory round trip on r × K/512 blocks,
 * where the generic shrink kernel ran a serial, instruction-bound K loop on a few. The decode
 * kernel sums the slices in slice order. */
constexpr int TP_NJ = 2, TP_SLICE = 32 * 8 * TP_NJ;
static_assert(TP_SLICE == 512, "lf_cuda_decode_t_slices assumes 512-element slices");

template <typename T> __device__ __forceinline__ uint4 load8_tail(const T *row, int kb, int k)
{
    return kb + 8 <= k ? *(const uint4 *)(row + kb) : load8_masked<T>(row + kb, kb, k);
}

template <typename T>
__global__ void __launch_bounds__(LF_CUDA_THREADS) lora_tpart_kernel(lora_args p, float *part)
{
    constexpr int WARPS = LF_CUDA_THREADS / 32, TPW = 64 / WARPS;
    const int t = blockIdx.x, z = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int k0 = z * TP_SLICE;
    /* After the wait: the decode kernel, released here, streams x and W before it waits for T, so
     * whatever wrote them before this grid must be complete by then. */
    pdl_wait_and_release();
    const T *arow = (const T *)p.a + (int64_t)t * p.lda;
    uint4 av[TP_NJ], xv[TPW][TP_NJ];
#pragma unroll
    for (int v = 0; v < TP_NJ; v++)
        av[v] = load8_tail<T>(arow, k0 + (lane + 32 * v) * 8, p.k);
#pragma unroll
    for (int u = 0; u < TPW; u++) {
        const int i = warp + WARPS * u;
        if (i < p.m)
#pragma unroll
            for (int v = 0; v < TP_NJ; v++)
                xv[u][v] = load8_tail<T>((const T *)p.x + (int64_t)i * p.ldx, k0 + (lane + 32 * v) * 8, p.k);
    }
#pragma unroll
    for (int u = 0; u < TPW; u++) {
        const int i = warp + WARPS * u;
        if (i >= p.m)
            break;
        float acc = 0.0f;
#pragma unroll
        for (int v = 0; v < TP_NJ; v++) {
            const T *xe = (const T *)&xv[u][v], *ae = (const T *)&av[v];
#pragma unroll
            for (int c = 0; c < 8; c++)
                acc = fmaf(lf_dt<T>::to_f32(xe[c]), lf_dt<T>::to_f32(ae[c]), acc);
        }
#pragma unroll
        for (int off = 16; off > 0; off /= 2)
            acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (lane == 0)
            part[((int64_t)z * p.m + i) * p.r + t] = acc;
    }
}

/* Blocks per SM (lf_cuda_decode_per_sm): two for 9..16 tokens (NT 2: ≤ 128 registers and ≤ ~95 KB
 * of shared memory each), so that one block's reduction and epilogue, during which it requests no
 * W, overlap the other's stream; one otherwise. Depth of each warp's copy ring: as many 32-wide K steps (at most 8) as
 * 144 KB (one block per SM) or 80 KB (two) of shared memory hold. Each step is 2·RT chunks of W
 * and NT chunks of x per lane (16 bytes each). */
template <int NT, int RT> struct decode_shape {
    static constexpr int PER_SM = NT == 2 ? 2 : 1;
    static constexpr int RING_BUDGET = PER_SM == 2 ? 80 * 1024 : 144 * 1024;
    static constexpr int CHUNKS = 2 * RT + NT;
    static constexpr int STAGE_BYTES = CHUNKS * 16 * LF_CUDA_THREADS;
    static constexpr int STAGES = RING_BUDGET / STAGE_BYTES > 8 ? 8 : RING_BUDGET / STAGE_BYTES;
    static constexpr int RING = STAGES * STAGE_BYTES;
    static constexpr int T_BYTES = NT * 8 * LF_CUDA_DECODE_MAX_RANK * 4;
    static constexpr int SMEM = RING + T_BYTES + 16 * RT * (LF_CUDA_DECODE_MAX_RANK + 1) * 4; /* ring, T, B rows */
};

/* The whole layer for M ≤ 8·NT tokens, rank ≤ LF_CUDA_DECODE_MAX_RANK. Persistent: the grid is at
 * most PER_SM blocks per SM, and block b owns the 16·RT-row tiles b, b + gridDim.x, ... of W, each over
 * all of K (no split-K across blocks); its 8 warps take contiguous eighths of K. Each lane streams
 * the very 16-byte chunks it later feeds to the MMA through a private cp.async ring STAGES steps
 * deep that runs on across tile boundaries, so the stream does not drain and refill per tile, and no
 * lane waits for another inside the loop. The epilogue reads only shared memory: the tile's B rows
 * (loaded into registers before its K loop) and T (summed from its slices once per block, after
 * the wait for lora_tpart_kernel; read from global memory per output it cost a dependent L2 round
 * trip per rank, per tile).
 * Rows past N and tokens past M are clamped to valid memory and never stored. */
template <typename T, int NT, int RT, int PF>
__global__ void __launch_bounds__(LF_CUDA_THREADS, decode_shape<NT, RT>::PER_SM) lora_decode_kernel(lora_args p)
{
    using shape = decode_shape<NT, RT>;
    constexpr int ROWS = 16 * RT, WARPS = LF_CUDA_THREADS / 32, S = shape::STAGES, C = shape::CHUNKS;
    constexpr int BPT = ROWS * LF_CUDA_DECODE_MAX_RANK / LF_CUDA_THREADS; /* B values per thread */
    __shared__ float red[WARPS / 2][RT][NT][4][32];        /* the fixed-order tree over warps */
    __shared__ float out_s[NT * 8][ROWS];                  /* x·Wᵀ of the tile, [token][feature] */
    extern __shared__ uint4 ring[]; /* [warp][stage][chunk][lane], then T and the B rows */
    float *t_sh = (float *)((char *)ring + shape::RING);        /* T, [token][rank], once per block */
    float *b_s = (float *)((char *)ring + shape::RING + shape::T_BYTES); /* tile's B, [feature][rank + 1] */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    /* Its primary is the shrink, released only after what preceded it completed: x and W are
     * final, so they stream now; T is waited for before the first epilogue. The next kernel waits
     * for all of this grid, so it may launch now. */
    asm volatile("griddepcontrol.launch_dependents;");
#endif

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const T *W = (const T *)p.w, *X = (const T *)p.x, *B = (const T *)p.b;
    const int tiles = (p.n + ROWS - 1) / ROWS;
    const int my_tiles = (int)blockIdx.x < tiles ? (tiles - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    const int steps = p.k / 32, per = (steps + WARPS - 1) / WARPS;
    const int s0 = warp * per, n_my = max(0, min(s0 + per, steps) - s0);
    const T *xsrc[NT]; /* token chunks of this lane at the warp's first step */
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
        xsrc[nt] = X + (int64_t)min(nt * 8 + g, p.m - 1) * p.ldx + q * 8 + s0 * 32;
    uint4 *my = ring + (size_t)warp * S * C * 32 + lane;

    /* Fetch cursor over this warp's (tile, step) sequence; past its end a fetch commits an empty
     * group, which keeps the group count uniform. */
    int f_tile = 0, f_i = 0, fetched = 0;
    const int total = my_tiles * n_my;
    auto fetch = [&](int slot) {
        if (fetched < total) {
            const int n0 = ((int)blockIdx.x + f_tile * (int)gridDim.x) * ROWS;
            uint4 *d = my + slot * C * 32;
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    cp_async16<PF>(d + (rt * 2 + h) * 32,
                               W + (int64_t)min(n0 + rt * 16 + h * 8 + g, p.n - 1) * p.ldw + q * 8 + (s0 + f_i) * 32);
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
                cp_async16<PF>(d + (2 * RT + nt) * 32, xsrc[nt] + f_i * 32);
            fetched++;
            if (++f_i == n_my) {
                f_i = 0;
                f_tile++;
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < S - 1; i++)
        fetch(i);

    int L = 0; /* steps consumed */
    for (int tl = 0; tl < my_tiles; tl++) {
        const int n0 = ((int)blockIdx.x + tl * (int)gridDim.x) * ROWS;
        /* B rows of the tile, [feature][rank] flattened; in flight during the K loop */
        float bpre[BPT];
#pragma unroll
        for (int u = 0; u < BPT; u++) {
            const int idx = threadIdx.x + u * LF_CUDA_THREADS, f = idx / p.r;
            bpre[u] = idx < ROWS * p.r && n0 + f < p.n ? lf_dt<T>::load(B + (int64_t)(n0 + f) * p.ldb + idx % p.r) : 0.0f;
        }
        float acc[RT][NT][4];
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++)
                    acc[rt][nt][c] = 0.0f;
        for (int i = 0; i < n_my; i++, L++) {
            fetch((L + S - 1) % S); /* refills the slot this lane consumed in the previous step */
            cp_async_wait<S - 1>(); /* step L's group has landed (this lane's own copies) */
            const uint4 *st = my + (L % S) * C * 32;
            uint4 wv[RT][2], xv[NT];
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    wv[rt][h] = st[(rt * 2 + h) * 32];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
                xv[nt] = st[(2 * RT + nt) * 32];
            decode_step<T, NT, RT>(acc, wv, xv);
        }
        if (warp == WARPS - 1 && p.k % 32) { /* K tail, zero-filled: the last warp has the least work */
            const int kb = steps * 32 + q * 8;
            uint4 wv[RT][2], xv[NT];
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    wv[rt][h] = load8_masked<T>(W + (int64_t)min(n0 + rt * 16 + h * 8 + g, p.n - 1) * p.ldw +
                                                    q * 8 + steps * 32,
                                                kb, p.k);
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
                xv[nt] = load8_masked<T>(X + (int64_t)min(nt * 8 + g, p.m - 1) * p.ldx + q * 8 + steps * 32, kb, p.k);
            decode_step<T, NT, RT>(acc, wv, xv);
        }

        /* Sum the 8 warps' partial products in a fixed tree: 4..7 onto 0..3, 2..3 onto 0..1, 1 onto 0. */
#pragma unroll
        for (int half = WARPS / 2; half >= 1; half /= 2) {
            if (warp >= half && warp < 2 * half)
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
#pragma unroll
                        for (int c = 0; c < 4; c++)
                            red[warp - half][rt][nt][c][lane] = acc[rt][nt][c];
            __syncthreads();
            if (warp < half)
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
#pragma unroll
                        for (int c = 0; c < 4; c++)
                            acc[rt][nt][c] += red[warp][rt][nt][c][lane];
            __syncthreads();
        }
        if (warp == 0)
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int c = 0; c < 4; c++) /* accumulator c: feature g (+8 for c ≥ 2), token 2q + (c & 1) */
                        out_s[nt * 8 + 2 * q + (c & 1)][rt * 16 + g + (c >> 1) * 8] = acc[rt][nt][c];
#pragma unroll
        for (int u = 0; u < BPT; u++) { /* rows padded by one: the epilogue's lanes read distinct banks */
            const int idx = threadIdx.x + u * LF_CUDA_THREADS;
            if (idx < ROWS * p.r)
                b_s[idx + idx / p.r] = bpre[u];
        }
        if (tl == 0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            asm volatile("griddepcontrol.wait;" ::: "memory"); /* T is complete and visible from here on */
#endif
            for (int idx = threadIdx.x; idx < p.m * p.r; idx += blockDim.x) {
                float v = 0.0f; /* T = the sum of its K-slice partials, in slice order */
                for (int z = 0; z < p.tsplit; z++)
                    v += p.t[z * p.tstride + idx];
                t_sh[idx] = v;
            }
        }
        __syncthreads();

        for (int idx = threadIdx.x; idx < p.m * ROWS; idx += blockDim.x) {
            const int tok = idx / ROWS, f = idx % ROWS, j = n0 + f;
            if (j >= p.n)
                continue;
            const float *tr = t_sh + tok * p.r, *br = b_s + f * (p.r + 1);
            float lora = 0.0f;
            for (int t = 0; t < p.r; t++)
                lora = fmaf(tr[t], br[t], lora);
            store_out<T>(p, tok, j, fmaf(p.scale, lora, out_s[tok][f]));
        }
        __syncthreads(); /* out_s and b_s are rewritten by the next tile */
    }
}



/* ---- v11: whole 128-byte lines per copy instruction ------------------------------------------- */

/* Each 64-wide K step of a warp: CW = 4·RT chunks of W and CX = 2·NT chunks of x per lane (16 bytes
 * each), i.e. 16·RT rows × 128 bytes and 8·NT tokens × 128 bytes. NT ≤ 2 only (x would crowd out W
 * beyond). Two blocks per SM for NT 2 (96 KB rings: 3 stages at RT 1), one otherwise (160 KB). */
template <int NT, int RT> struct line_shape {
    static_assert(NT <= 2, "line kernel: at most 16 tokens");
    static constexpr int PER_SM = NT == 2 ? 2 : 1;
    static constexpr int RING_BUDGET = PER_SM == 2 ? 96 * 1024 : 160 * 1024;
    static constexpr int CW = 4 * RT, CX = 2 * NT, CHUNKS = CW + CX;
    static constexpr int STAGE_BYTES = CHUNKS * 16 * LF_CUDA_THREADS;
    static constexpr int STAGES = RING_BUDGET / STAGE_BYTES > 8 ? 8 : RING_BUDGET / STAGE_BYTES;
    static_assert(STAGES >= 2, "line kernel: ring needs two stages");
    static constexpr int RING = STAGES * STAGE_BYTES;
    static constexpr int T_BYTES = NT * 8 * LF_CUDA_DECODE_MAX_RANK * 4;
    static constexpr int SMEM = RING + T_BYTES + 16 * RT * (LF_CUDA_DECODE_MAX_RANK + 1) * 4;
};

/* As lora_decode_kernel, but the copy layout is decoupled from the fragment layout. A warp's ring
 * stage is CHUNKS fragment blocks of 32 lanes × 16 bytes: W block (rt·2 + h)·2 + kh holds, at slot
 * g·4 + q, row rt·16 + h·8 + g's chunk kh·4 + q of the step (x block CW + nt·2 + kh likewise for
 * token nt·8 + g). Lane L copies row 4j + L/8, chunk L%8 for j < CW (one instruction: 4 rows × one
 * 128-byte line each), into the slot of the lane that consumes it; each lane reads its fragments as
 * consecutive 16-byte slots (conflict-free). Thread (g, q) thus holds 8 consecutive k of row g per
 * half-step, exactly as in lora_decode_kernel's 32-wide steps (decode_step unchanged). A lane reads
 * what other lanes copied: wait for its own groups, __syncwarp, and only then refill the slot all
 * lanes finished reading in the previous step. */
template <typename T, int NT, int RT, int PF>
__global__ void __launch_bounds__(LF_CUDA_THREADS, line_shape<NT, RT>::PER_SM) lora_decode_line_kernel(lora_args p)
{
    using shape = line_shape<NT, RT>;
    constexpr int ROWS = 16 * RT, WARPS = LF_CUDA_THREADS / 32, S = shape::STAGES, C = shape::CHUNKS;
    constexpr int CW = shape::CW, CX = shape::CX;
    constexpr int BPT = ROWS * LF_CUDA_DECODE_MAX_RANK / LF_CUDA_THREADS; /* B values per thread */
    __shared__ float red[WARPS / 2][RT][NT][4][32];
    __shared__ float out_s[NT * 8][ROWS];
    extern __shared__ uint4 ring[]; /* [warp][stage][block][slot], then T and the B rows */
    float *t_sh = (float *)((char *)ring + shape::RING);
    float *b_s = (float *)((char *)ring + shape::RING + shape::T_BYTES);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const int cr = lane >> 3, cc = lane & 7; /* copy role: row cr of each 4-row group, chunk cc */
    const int wo = (cc >> 2) * 32 + cr * 4 + (cc & 3); /* + (j >> 1)·64 + (j & 1)·16 for copy j */
    const T *W = (const T *)p.w, *X = (const T *)p.x, *B = (const T *)p.b;
    const int tiles = (p.n + ROWS - 1) / ROWS;
    const int my_tiles = (int)blockIdx.x < tiles ? (tiles - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    const int steps = p.k / 64, per = (steps + WARPS - 1) / WARPS;
    const int s0 = warp * per, n_my = max(0, min(s0 + per, steps) - s0);
    uint4 *my = ring + (size_t)warp * S * C * 32;

    int f_tile = 0, f_i = 0, fetched = 0;
    const int total = my_tiles * n_my;
    auto fetch = [&](int slot) {
        if (fetched < total) {
            const int n0 = ((int)blockIdx.x + f_tile * (int)gridDim.x) * ROWS;
            const int64_t kof = (int64_t)(s0 + f_i) * 64 + cc * 8;
            uint4 *d = my + slot * C * 32 + wo;
#pragma unroll
            for (int j = 0; j < CW; j++)
                cp_async16<PF>(d + (j >> 1) * 64 + (j & 1) * 16,
                               W + (int64_t)min(n0 + 4 * j + cr, p.n - 1) * p.ldw + kof);
#pragma unroll
            for (int j = 0; j < CX; j++)
                cp_async16<PF>(d + CW * 32 + (j >> 1) * 64 + (j & 1) * 16,
                               X + (int64_t)min(4 * j + cr, p.m - 1) * p.ldx + kof);
            fetched++;
            if (++f_i == n_my) {
                f_i = 0;
                f_tile++;
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < S - 1; i++)
        fetch(i);

    int L = 0;
    for (int tl = 0; tl < my_tiles; tl++) {
        const int n0 = ((int)blockIdx.x + tl * (int)gridDim.x) * ROWS;
        float bpre[BPT];
#pragma unroll
        for (int u = 0; u < BPT; u++) {
            const int idx = threadIdx.x + u * LF_CUDA_THREADS, f = idx / p.r;
            bpre[u] = idx < ROWS * p.r && n0 + f < p.n ? lf_dt<T>::load(B + (int64_t)(n0 + f) * p.ldb + idx % p.r) : 0.0f;
        }
        float acc[RT][NT][4];
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++)
                    acc[rt][nt][c] = 0.0f;
        for (int i = 0; i < n_my; i++, L++) {
            cp_async_wait<S - 2>(); /* this lane's copies of step L have landed */
            __syncwarp();           /* ... and every lane's; all finished reading step L - 1 */
            fetch((L + S - 1) % S);
            const uint4 *st = my + (L % S) * C * 32 + lane;
            uint4 wv[2][RT][2], xv[2][NT];
#pragma unroll
            for (int kh = 0; kh < 2; kh++) {
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        wv[kh][rt][h] = st[((rt * 2 + h) * 2 + kh) * 32];
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    xv[kh][nt] = st[(CW + nt * 2 + kh) * 32];
            }
            decode_step<T, NT, RT>(acc, wv[0], xv[0]);
            decode_step<T, NT, RT>(acc, wv[1], xv[1]);
        }
        if (warp == WARPS - 1) /* K tail (< 64), zero-filled, in 32-wide pieces: the last warp has the least work */
            for (int kt = steps * 64; kt < p.k; kt += 32) {
                const int kb = kt + q * 8;
                uint4 wv[RT][2], xv[NT];
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        wv[rt][h] = load8_masked<T>(W + (int64_t)min(n0 + rt * 16 + h * 8 + g, p.n - 1) * p.ldw + kb, kb, p.k);
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    xv[nt] = load8_masked<T>(X + (int64_t)min(nt * 8 + g, p.m - 1) * p.ldx + kb, kb, p.k);
                decode_step<T, NT, RT>(acc, wv, xv);
            }

        /* Sum the 8 warps' partial products in a fixed tree: 4..7 onto 0..3, 2..3 onto 0..1, 1 onto 0. */
#pragma unroll
        for (int half = WARPS / 2; half >= 1; half /= 2) {
            if (warp >= half && warp < 2 * half)
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
#pragma unroll
                        for (int c = 0; c < 4; c++)
                            red[warp - half][rt][nt][c][lane] = acc[rt][nt][c];
            __syncthreads();
            if (warp < half)
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
#pragma unroll
                        for (int c = 0; c < 4; c++)
                            acc[rt][nt][c] += red[warp][rt][nt][c][lane];
            __syncthreads();
        }
        if (warp == 0)
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int c = 0; c < 4; c++) /* accumulator c: feature g (+8 for c ≥ 2), token 2q + (c & 1) */
                        out_s[nt * 8 + 2 * q + (c & 1)][rt * 16 + g + (c >> 1) * 8] = acc[rt][nt][c];
#pragma unroll
        for (int u = 0; u < BPT; u++) { /* rows padded by one: the epilogue's lanes read distinct banks */
            const int idx = threadIdx.x + u * LF_CUDA_THREADS;
            if (idx < ROWS * p.r)
                b_s[idx + idx / p.r] = bpre[u];
        }
        if (tl == 0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            asm volatile("griddepcontrol.wait;" ::: "memory"); /* T is complete and visible from here on */
#endif
            for (int idx = threadIdx.x; idx < p.m * p.r; idx += blockDim.x) {
                float v = 0.0f; /* T = the sum of its K-slice partials, in slice order */
                for (int z = 0; z < p.tsplit; z++)
                    v += p.t[z * p.tstride + idx];
                t_sh[idx] = v;
            }
        }
        __syncthreads();

        for (int idx = threadIdx.x; idx < p.m * ROWS; idx += blockDim.x) {
            const int tok = idx / ROWS, f = idx % ROWS, j = n0 + f;
            if (j >= p.n)
                continue;
            const float *tr = t_sh + tok * p.r, *br = b_s + f * (p.r + 1);
            float lora = 0.0f;
            for (int t = 0; t < p.r; t++)
                lora = fmaf(tr[t], br[t], lora);
            store_out<T>(p, tok, j, fmaf(p.scale, lora, out_s[tok][f]));
        }
        __syncthreads(); /* out_s and b_s are rewritten by the next tile */
    }
}

/* Launches kernel with LF_CUDA_THREADS threads, with programmatic dependent launch when pdl. */
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, size_t smem, bool pdl, cudaStream_t st, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(LF_CUDA_THREADS);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}


/* ---- lab launchers ----------------------------------------------------------------------------- */

enum { LAB_V8_PF128, LAB_V8_PF256, LAB_LINE, LAB_LINE_PF256, LAB_V8_PF128_EF };

template <typename T, int NT, int RT, int PF> cudaError_t setup_one()
{
    cudaError_t e = cudaFuncSetAttribute(lora_decode_kernel<T, NT, RT, PF>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         decode_shape<NT, RT>::SMEM);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(lora_decode_line_kernel<T, NT, RT, PF>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, line_shape<NT, RT>::SMEM);
    return e;
}
template <typename T, int PF> cudaError_t setup_pf()
{
    cudaError_t e = setup_one<T, 1, 1, PF>();
    if (e == cudaSuccess)
        e = setup_one<T, 1, 2, PF>();
    if (e == cudaSuccess)
        e = setup_one<T, 2, 1, PF>();
    if (e == cudaSuccess)
        e = setup_one<T, 2, 2, PF>();
    return e;
}
inline cudaError_t setup()
{
    cudaError_t e = setup_pf<__nv_bfloat16, 0>();
    if (e == cudaSuccess)
        e = setup_pf<__nv_bfloat16, 128>();
    if (e == cudaSuccess)
        e = setup_pf<__nv_bfloat16, 256>();
    if (e == cudaSuccess)
        e = setup_pf<__nv_bfloat16, 1128>();
    if (e == cudaSuccess)
        e = setup_pf<__half, 1128>();
    if (e == cudaSuccess)
        e = setup_pf<__half, 0>();
    if (e == cudaSuccess)
        e = setup_pf<__half, 128>();
    if (e == cudaSuccess)
        e = setup_pf<__half, 256>();
    return e;
}

template <typename T, int NT, int RT, int PF>
cudaError_t launch_k(const lora_args &p, bool line, int sms, bool pdl, cudaStream_t st)
{
    if (line)
        return launch(lora_decode_line_kernel<T, NT, RT, PF>,
                      dim3((unsigned)lf_cuda_decode_grid(p.n, RT, line_shape<NT, RT>::PER_SM * sms)),
                      (size_t)line_shape<NT, RT>::SMEM, pdl, st, p);
    return launch(lora_decode_kernel<T, NT, RT, PF>,
                  dim3((unsigned)lf_cuda_decode_grid(p.n, RT, decode_shape<NT, RT>::PER_SM * sms)),
                  (size_t)decode_shape<NT, RT>::SMEM, pdl, st, p);
}
template <typename T, int PF>
cudaError_t launch_pf(const lora_args &p, bool line, int nt, int rt, int sms, bool pdl, cudaStream_t st)
{
    if (nt == 1)
        return rt == 2 ? launch_k<T, 1, 2, PF>(p, line, sms, pdl, st) : launch_k<T, 1, 1, PF>(p, line, sms, pdl, st);
    return rt == 2 ? launch_k<T, 2, 2, PF>(p, line, sms, pdl, st) : launch_k<T, 2, 1, PF>(p, line, sms, pdl, st);
}
template <typename T>
cudaError_t launch_t(const lora_args &p, int variant, int nt, int rt, int sms, bool pdl, cudaStream_t st)
{
    switch (variant) {
    case LAB_V8_PF128:
        return launch_pf<T, 128>(p, false, nt, rt, sms, pdl, st);
    case LAB_V8_PF256:
        return launch_pf<T, 256>(p, false, nt, rt, sms, pdl, st);
    case LAB_LINE:
        return launch_pf<T, 0>(p, true, nt, rt, sms, pdl, st);
    case LAB_V8_PF128_EF:
        return launch_pf<T, 1128>(p, false, nt, rt, sms, pdl, st);
    default:
        return launch_pf<T, 256>(p, true, nt, rt, sms, pdl, st);
    }
}

/* The library's LF_CUDA_DECODE forward with the decode kernel replaced by a lab variant (NT ≤ 2:
 * M ≤ 16; the caller sends other plans to the library). */
inline lf_status forward(lf_context *ctx, const lf_plan *plan, const lf_lora_problem *pr, int variant)
{
    const cudaStream_t st = lf_cuda_stream(ctx);
    lora_args a = {};
    a.m = (int)pr->m, a.k = (int)pr->k, a.n = (int)pr->n, a.r = (int)pr->rank;
    a.x = pr->x, a.ldx = pr->ldx, a.w = pr->w, a.ldw = pr->ldw, a.a = pr->a, a.lda = pr->lda;
    a.b = pr->b, a.ldb = pr->ldb, a.bias = pr->bias, a.scale = pr->scale, a.beta = pr->beta;
    a.y = pr->y, a.ldy = pr->ldy;
    float *ws = (float *)ctx->workspace;
    const bool pdl = plan->param[5] != 0;
    const dim3 tgrid((unsigned)pr->rank, (unsigned)plan->param[2]);
    if (plan->key.dtype == LF_BF16)
        launch(lora_tpart_kernel<__nv_bfloat16>, tgrid, 0, pdl, st, a, ws);
    else
        launch(lora_tpart_kernel<__half>, tgrid, 0, pdl, st, a, ws);
    LF_CUDA_CHECK_LAUNCH(ctx);
    a.t = ws;
    a.tsplit = (int)plan->param[2];
    a.tstride = pr->m * pr->rank;
    const int nt = (int)plan->param[1], rt = (int)plan->param[0], sms = lf_cuda_state_of(ctx)->sm_count;
    cudaError_t e = plan->key.dtype == LF_BF16 ? launch_t<__nv_bfloat16>(a, variant, nt, rt, sms, pdl, st)
                                               : launch_t<__half>(a, variant, nt, rt, sms, pdl, st);
    LF_CUDA_CHECK(ctx, e);
    return LF_OK;
}

} /* namespace lab */

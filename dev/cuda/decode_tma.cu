/*
 * decode_tma.cu — lab for the Hopper decode form (src/cuda/lora_hopper.cu, "few tokens"): every
 * element of y against a double-precision reference on awkward shapes (M, N and K tails, ranks 1–16,
 * bias, beta 0 / 0.5 / 1; y poisoned with NaN first where beta = 0), then graph-replay timings beside
 * cuBLAS's base GEMM in the same process, W rotated over enough copies that every call reads HBM.
 * Build here with `make decode-tma` (sm_90a), run on the device: dev/cuda/bin/decode_tma.
 */
#include "cuda/lora_hopper.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <vector>

static void check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        std::printf("%s: %s\n", what, cudaGetErrorString(e));
        std::exit(1);
    }
}

static unsigned rng_state = 12345;
static float uniform() /* in [-0.5, 0.5) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (rng_state >> 9) / 8388608.0f - 0.5f;
}

struct matrix { /* bf16 on the host and the device, random */
    std::vector<__nv_bfloat16> h;
    void *d = nullptr;
    matrix(size_t n, float scale) : h(n)
    {
        for (auto &v : h)
            v = __float2bfloat16(uniform() * scale);
        check(cudaMalloc(&d, n * 2), "cudaMalloc");
        check(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
    }
    matrix(const matrix &) = delete;
    ~matrix() { cudaFree(d); }
    double at(size_t i) const { return __bfloat162float(h[i]); }
};

/* Median µs per call of fn, captured 20 times into a graph and replayed. */
template <typename F> static float graph_us(cudaStream_t st, F fn)
{
    cudaGraph_t g;
    cudaGraphExec_t ge;
    check(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal), "capture");
    for (int i = 0; i < 20; i++)
        fn();
    check(cudaStreamEndCapture(st, &g), "end capture");
    check(cudaGraphInstantiate(&ge, g, 0), "instantiate");
    for (int i = 0; i < 3; i++)
        check(cudaGraphLaunch(ge, st), "warm-up");
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    std::vector<float> ts;
    for (int r = 0; r < 9; r++) {
        cudaEventRecord(e0, st);
        cudaGraphLaunch(ge, st);
        cudaEventRecord(e1, st);
        check(cudaEventSynchronize(e1), "replay");
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        ts.push_back(ms * 1000 / 20);
    }
    std::sort(ts.begin(), ts.end());
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    return ts[ts.size() / 2];
}

/* `decode_tma [SMS ...]`: the timed shapes once a count, the launch given that many SMs (its grid
 * and tile rows follow, lf_cuda_hopper_decode_rows): e.g. 64 for 64-row tiles at 4096 outputs.
 * DECODE_TMA_ONLY="M K N" keeps one shape (for ncu). */
int main(int argc, char **argv)
{
    if (!lf_hopper_setup()) {
        std::printf("no sm_90a device: the decode form needs compute capability 9.0\n");
        return 1;
    }
    int sms;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "SM count");
    std::vector<int> counts;
    for (int i = 1; i < argc; i++)
        counts.push_back(std::atoi(argv[i]));
    if (counts.empty())
        counts.push_back(sms);
    cudaStream_t st;
    cudaStreamCreate(&st);
    cublasHandle_t blas;
    cublasCreate(&blas);
    cublasSetStream(blas, st);
    struct shape {
        int m, k, ld, n, r, bias;
        float beta;
        int timed;
    } shapes[] = {{16, 4096, 4096, 14336, 16, 0, 0.0f, 1}, {16, 4096, 4096, 4096, 16, 0, 0.0f, 1},
                  {1, 4096, 4096, 14336, 16, 0, 0.0f, 1},  {1, 4096, 4096, 4096, 16, 0, 0.0f, 1},
                  {64, 4096, 4096, 4096, 16, 0, 0.0f, 1},  {32, 4096, 4096, 4096, 16, 0, 0.0f, 1},
                  {48, 4096, 4096, 6144, 16, 0, 0.0f, 1},  {64, 4096, 4096, 14336, 16, 0, 0.0f, 1},
                  {5, 4100, 4104, 1000, 5, 1, 0.5f, 0},    {16, 200, 208, 4160, 16, 1, 0.0f, 0},
                  {3, 64, 64, 65, 1, 0, 1.0f, 0},          {16, 8192, 8192, 8200, 16, 1, 0.0f, 0},
                  {40, 1000, 1000, 4200, 7, 1, 1.0f, 0},   {17, 520, 520, 6136, 9, 1, 0.0f, 0},
                  {64, 72, 72, 4129, 16, 0, 0.5f, 0}};
    /* DECODE_TMA_ONLY="M K N": that shape alone (for ncu) */
    const char *only = std::getenv("DECODE_TMA_ONLY");
    int failed = 0;
    for (const shape &s : shapes) {
        const int m = s.m, k = s.k, n = s.n, r = s.r;
        char key[48];
        std::snprintf(key, sizeof key, "%d %d %d", m, k, n);
        if (only && std::strcmp(only, key) != 0)
            continue;
        const long long ld = s.ld;
        matrix x((size_t)m * ld, 1.0f), w((size_t)n * ld, 0.1f), a((size_t)r * ld, 0.1f), b((size_t)n * r, 0.5f),
            bias(n, 1.0f), y((size_t)m * n, 1.0f);
        lf_lora_problem p = {};
        p.layout = LF_LAYOUT_PEFT;
        p.dtype = LF_BF16;
        p.m = m, p.k = k, p.n = n, p.rank = r;
        p.x = x.d, p.ldx = ld, p.w = w.d, p.ldw = ld, p.a = a.d, p.lda = ld, p.b = b.d, p.ldb = r;
        p.scale = 2.0f, p.beta = s.beta, p.bias = s.bias ? bias.d : nullptr, p.y = y.d, p.ldy = n;
        std::vector<double> t((size_t)m * r, 0.0), ref((size_t)m * n);
        for (int i = 0; i < m; i++)
            for (int q = 0; q < r; q++)
                for (int kk = 0; kk < k; kk++)
                    t[(size_t)i * r + q] += x.at((size_t)i * ld + kk) * a.at((size_t)q * ld + kk);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double acc = 0, lora = 0;
                for (int kk = 0; kk < k; kk++)
                    acc += x.at((size_t)i * ld + kk) * w.at((size_t)j * ld + kk);
                for (int q = 0; q < r; q++)
                    lora += t[(size_t)i * r + q] * b.at((size_t)j * r + q);
                ref[(size_t)i * n + j] = acc + 2.0 * lora + (s.bias ? bias.at(j) : 0.0) + s.beta * y.at((size_t)i * n + j);
            }
        std::vector<__nv_bfloat16> got((size_t)m * n);
        if (s.beta == 0.0f) /* NaN everywhere: beta = 0 must not read y */
            check(cudaMemset(y.d, 0xff, (size_t)m * n * 2), "poison");
        else
            check(cudaMemcpy(y.d, y.h.data(), (size_t)m * n * 2, cudaMemcpyHostToDevice), "y");
        check(lf_hopper_decode_launch(&p, sms, false, st), "launch");
        check(cudaStreamSynchronize(st), "run");
        check(cudaMemcpy(got.data(), y.d, got.size() * 2, cudaMemcpyDeviceToHost), "y");
        double worst = 0;
        long bad = 0;
        for (size_t e = 0; e < got.size(); e++) {
            const double g = __bfloat162float(got[e]), tol = 0.0079 * std::fabs(ref[e]) + 2e-3;
            const double err = std::isnan(g) ? INFINITY : std::fabs(g - ref[e]);
            bad += !(err <= tol);
            worst = std::max(worst, err / tol);
        }
        std::printf("M %2d K %4d N %5d r %2d bias %d beta %.1f: %s (worst err/tol %.3f, %ld bad)", m, k, n, r, s.bias,
                    s.beta, bad ? "FAIL" : "ok", worst, bad);
        failed += bad != 0;
        if (s.timed) {
            const float one = 1.0f, zero = 0.0f;
            const int sets = std::max(2, (int)(200e6 / ((double)n * ld * 2)));
            std::vector<void *> ws(sets);
            for (auto &c : ws) {
                check(cudaMalloc(&c, (size_t)n * ld * 2), "W copy");
                check(cudaMemcpy(c, w.d, (size_t)n * ld * 2, cudaMemcpyDeviceToDevice), "W copy");
            }
            int next = 0;
            for (int count : counts) {
                    std::printf("  | %d SMs:", count);
                for (int round = 0; round < 3; round++) {
                    const float ours = graph_us(st, [&] {
                        p.w = ws[next++ % sets];
                        check(lf_hopper_decode_launch(&p, count, true, st), "launch");
                    });
                    const float base = graph_us(st, [&] {
                        cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, ws[next++ % sets], CUDA_R_16BF, ld,
                                     x.d, CUDA_R_16BF, ld, &zero, y.d, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT);
                    });
                    std::printf(" layer %.2f cuBLAS base %.2f |", ours, base);
                }
            }
            p.w = w.d;
            for (auto c : ws)
                cudaFree(c);
        }
        std::printf("\n");
    }
    std::printf("%s\n", failed ? "SOME FAILED" : "all ok");
    return failed != 0;
}

#include "lora_hopper_dbg.cu"
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
static void ck(cudaError_t e, const char *w) { if (e != cudaSuccess) { printf("%s: %s\n", w, cudaGetErrorString(e)); exit(1); } }
static void *dev_rand(size_t n) {
    std::vector<__nv_bfloat16> h(n);
    unsigned s = 12345;
    for (size_t i = 0; i < n; i++) { s = s * 1664525u + 1013904223u; h[i] = __float2bfloat16(((s >> 9) / 8388608.0f - 0.5f) * 0.1f); }
    void *d; ck(cudaMalloc(&d, n * 2), "malloc"); ck(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice), "cpy"); return d;
}
static int pick(long long m, long long k, long long n, const int *slots) {
    long long tiles = (m + 127) / 128 * ((n + 255) / 256), kt = (k + 63) / 64;
    for (int s = 8; s >= 2; s--) if (slots[s] > 0 && tiles * s <= slots[s] && s <= kt) return s;
    return 0;
}
static float time_mode(lf_lora_problem &p, int split, int mode, cudaStream_t st) {
    ck(cudaMemcpyToSymbol(g_mode, &mode, 4), "mode");
    cudaGraph_t g; cudaGraphExec_t ge;
    ck(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal), "cap");
    for (int i = 0; i < 20; i++) ck(lf_hopper_mid_launch(&p, split, st), "launch");
    ck(cudaStreamEndCapture(st, &g), "endcap");
    ck(cudaGraphInstantiate(&ge, g, 0), "inst");
    for (int i = 0; i < 5; i++) cudaGraphLaunch(ge, st);
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    std::vector<float> ts;
    for (int r = 0; r < 15; r++) {
        cudaEventRecord(a, st); cudaGraphLaunch(ge, st); cudaEventRecord(b, st); ck(cudaEventSynchronize(b), "sync");
        float ms; cudaEventElapsedTime(&ms, a, b); ts.push_back(ms * 1000 / 20);
    }
    std::sort(ts.begin(), ts.end());
    cudaGraphExecDestroy(ge); cudaGraphDestroy(g);
    return ts[ts.size() / 2];
}
int main(int argc, char **argv) {
    if (!lf_hopper_setup()) { printf("setup failed\n"); return 1; }
    int slots[9] = {0};
    for (int s = 1; s <= 8; s++) slots[s] = lf_hopper_mid_slots(s);
    printf("slots:"); for (int s = 1; s <= 8; s++) printf(" %d:%d", s, slots[s]); printf("\n");
    long long shapes[][3] = {{128, 4096, 4096}, {256, 4096, 2048}, {256, 2048, 4096}, {64, 4096, 4096}};
    cudaStream_t st; cudaStreamCreate(&st);
    for (auto &sh : shapes) {
        long long m = sh[0], k = sh[1], n = sh[2], r = 16;
        lf_lora_problem p = {};
        p.layout = LF_LAYOUT_PEFT; p.dtype = LF_BF16; p.m = m; p.k = k; p.n = n; p.rank = r;
        p.x = dev_rand(m * k); p.ldx = k; p.w = dev_rand(n * k); p.ldw = k; p.a = dev_rand(r * k); p.lda = k;
        p.b = dev_rand(n * r); p.ldb = r; p.scale = 2.0f; p.beta = 0.0f; p.bias = nullptr;
        ck(cudaMalloc(&p.y, m * n * 2), "y"); p.ldy = n;
        int split = pick(m, k, n, slots);
        printf("\n== M=%lld K=%lld N=%lld split=%d ctas=%lld\n", m, k, n, split, (m + 127) / 128 * ((n + 255) / 256) * split);
        const int modes[] = {0, 1, 2, 3, 4, 5, 7};
        const char *names[] = {"baseline", "no B loads", "no finish", "no B, no finish", "no mainloop", "no mainloop, no B", "no mainloop/B/finish"};
        for (int i = 0; i < 7; i++) printf("  mode %d %-22s %7.2f us\n", modes[i], names[i], time_mode(p, split, modes[i], st));
        for (int s = 2; s <= 8; s++) if ((m + 127) / 128 * ((n + 255) / 256) * s <= slots[s]) printf("  split %d baseline %7.2f us | no mainloop %7.2f\n", s, time_mode(p, s, 0, st), time_mode(p, s, 4, st));
        /* stamps: one launch, after a warm graph */
        int mode = 8; ck(cudaMemcpyToSymbol(g_mode, &mode, 4), "mode");
        for (int i = 0; i < 3; i++) ck(lf_hopper_mid_launch(&p, split, st), "l");
        ck(cudaStreamSynchronize(st), "s");
        int ctas = (int)((m + 127) / 128 * ((n + 255) / 256) * split);
        std::vector<unsigned long long> h(ctas * 32);
        ck(cudaMemcpyFromSymbol(h.data(), g_dbg, ctas * 32 * 8), "dbg");
        unsigned long long t0 = ~0ull, tend = 0; for (int c = 0; c < ctas; c++) { t0 = std::min(t0, h[c * 32]); tend = std::max(tend, h[c*32+9]); }
        const char *ph[] = {"entry", "init+syncthreads", "first stage full", "mainloop end", "B loads done", "bar.sync", "parts written", "cluster_sync 1", "finish", "cluster_sync 2"};
        printf("  globaltimer (ns, from first CTA entry; min/median/max over CTAs), span %llu ns\n", tend - t0);
        for (int k2 = 0; k2 < 10; k2++) {
            std::vector<long long> v; for (int c = 0; c < ctas; c++) v.push_back((long long)(h[c * 32 + k2] - t0));
            std::sort(v.begin(), v.end());
            std::vector<long long> d; for (int c = 0; c < ctas; c++) d.push_back(k2 ? (long long)(h[c*32+16+k2] - h[c*32+16+k2-1]) : 0);
            std::sort(d.begin(), d.end());
            printf("   %-18s %7lld %7lld %7lld   | clk from prev: med %7lld max %7lld\n", ph[k2], v[0], v[v.size()/2], v.back(), d[d.size()/2], d.back());
        }
    }
    return 0;
}

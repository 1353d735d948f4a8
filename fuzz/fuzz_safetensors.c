/*
 * fuzz_safetensors.c — libFuzzer target: any bytes as a .safetensors file. Whatever the input, the
 * reader must return a status without a crash, leak or out-of-bounds access, and every tensor it
 * accepts must lie inside the input (read at both ends, so ASan checks it).
 */
#include "lorafuse.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static lf_context *ctx;
    if (!ctx && lf_context_create(&ctx, LF_BACKEND_CPU) != LF_OK)
        abort();
    lf_safetensors *st;
    if (lf_safetensors_open_memory(ctx, data, size, &st) != LF_OK)
        return 0;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < lf_safetensors_count(st); i++) {
        lf_safetensors_tensor_info t;
        if (lf_safetensors_tensor(st, i, &t) != LF_OK)
            abort();
        const uint8_t *p = t.data;
        if (p < data || p + t.bytes > data + size)
            abort();
        if (t.bytes)
            sink ^= p[0] ^ p[t.bytes - 1];
        size_t found;
        if (lf_safetensors_find(st, t.name, &found) != LF_OK || found != i)
            abort();
    }
    for (size_t i = 0; i < lf_safetensors_metadata_count(st); i++) {
        const char *k, *v;
        lf_safetensors_metadata_entry(st, i, &k, &v);
        if (!k || !v || lf_safetensors_metadata(st, k) == NULL)
            abort();
    }
    (void)sink;
    lf_safetensors_close(st);
    return 0;
}

/*
 * fuzz_peft_adapter.c — libFuzzer target for the adapter_config.json parser and the adapter loader:
 * the input is CONFIG_JSON, a NUL byte, then the bytes of adapter_model.safetensors (the seed
 * corpus joins the fixtures' two files so). Both parts are hostile; the loader must answer with a
 * status, never crash, and every module it accepts must be consistent with its tensors.
 */
#include "lorafuse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static lf_context *ctx;
    if (!ctx && lf_context_create(&ctx, LF_BACKEND_CPU) != LF_OK)
        abort();
    const uint8_t *nul = memchr(data, 0, size);
    const size_t config_len = nul ? (size_t)(nul - data) : size;
    const uint8_t *tensors = nul ? nul + 1 : data + size;
    const size_t tensors_len = nul ? size - config_len - 1 : 0;
    lf_peft_adapter *ad;
    if (lf_peft_adapter_open_memory(ctx, (const char *)data, config_len, tensors, tensors_len, &ad) != LF_OK)
        return 0;
    for (size_t i = 0; i < lf_peft_adapter_module_count(ad); i++) {
        lf_peft_module_info m;
        lf_matrix a, b;
        size_t found;
        if (lf_peft_adapter_module(ad, i, &m) != LF_OK || m.rank < 1 || m.rank > LF_MAX_RANK || m.in_features < 1 ||
            m.out_features < 1 || lf_peft_adapter_find_module(ad, m.name, &found) != LF_OK || found != i)
            abort();
        if (lf_peft_adapter_host_weights(ctx, ad, i, &a, &b) == LF_OK) {
            const uint8_t *pa = a.data, *pb = b.data;
            const size_t ab = (size_t)(a.rows * a.cols) * lf_dtype_size(a.dtype);
            const size_t bb = (size_t)(b.rows * b.cols) * lf_dtype_size(b.dtype);
            if (pa < tensors || pa + ab > tensors + tensors_len || pb < tensors || pb + bb > tensors + tensors_len)
                abort();
        }
    }
    lf_peft_adapter_close(ad);
    return 0;
}

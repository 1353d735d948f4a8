/*
 * token_map.cuh — which adapter slot each token of a many-adapter call uses, on the device: the
 * per-token ids, or the runs of the segment form. Shared by lora_multi.cu's kernels and the decode
 * kernel's many-adapter epilogue (lora_fwd.cu), so that both read a mapping the same way.
 */
#ifndef LF_CUDA_TOKEN_MAP_CUH
#define LF_CUDA_TOKEN_MAP_CUH

#include <stdint.h>

#include "../lf_internal.h"

struct lf_token_map {
    const int32_t *ids; /* per-token form, or NULL */
    const int32_t *seg_starts, *seg_adapter;
    int segments;
    const lf_adapter_slot *slots; /* the set's, [capacity] */
    int capacity;
};

/* The raw id of token t (per-token array, or the run holding t; starts / adapters may be staged). */
__device__ inline int lf_token_id(const lf_token_map &p, const int *starts, const int *adapters, int t)
{
    if (p.ids)
        return p.ids[t];
    int lo = -1, hi = p.segments - 1; /* the last run whose start is <= t */
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (starts[mid] <= t)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo >= 0 && t < starts[lo + 1] ? adapters[lo] : -1;
}

/* The slot token t uses, or -1 (none): an id out of range or naming an empty slot means none. */
__device__ inline int lf_token_slot(const lf_token_map &p, int t)
{
    const int id = lf_token_id(p, p.seg_starts, p.seg_adapter, t);
    if (id < 0 || id >= p.capacity || p.slots[id].rank <= 0)
        return -1;
    return id;
}

#endif /* LF_CUDA_TOKEN_MAP_CUH */

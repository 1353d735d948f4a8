/*
 * lf_dtype.h — scalar conversions between f32 and the 16-bit storage types, on the host.
 *
 * Rounding is round-to-nearest-even everywhere, the same as CUDA's __float2half_rn /
 * __float2bfloat16_rn, so that every backend rounds a given fp32 result to the same bits.
 * NaN stays NaN (quiet); overflow rounds to infinity.
 */
#ifndef LF_DTYPE_H
#define LF_DTYPE_H

#include <stdint.h>
#include <string.h>

#include "lorafuse.h"

static inline uint32_t lf_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float lf_f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float lf_bf16_to_f32(uint16_t h) { return lf_f32_from_bits((uint32_t)h << 16); }

static inline uint16_t lf_f32_to_bf16(float f)
{
    uint32_t u = lf_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign, force a quiet payload */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u); /* round half to even on the dropped 16 bits */
    return (uint16_t)(u >> 16);
}

#if defined(__F16C__)
/* With F16C (the AVX2 and AVX-512 builds of the CPU kernels) the hardware converts, with the same
 * rounding as below, eight or sixteen at a time once GCC vectorizes a loop of these; only NaN
 * payloads may differ. */
static inline float lf_f16_to_f32(uint16_t h)
{
    _Float16 f;
    memcpy(&f, &h, sizeof f);
    return (float)f;
}

static inline uint16_t lf_f32_to_f16(float f)
{
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, sizeof u);
    return u;
}
#else
static inline float lf_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1fu) /* inf or NaN */
        return lf_f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp != 0) /* normal: rebias 15 -> 127 */
        return lf_f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
    /* zero or subnormal: man · 2^-24, exact in f32 */
    float mag = (float)man * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
}

static inline uint16_t lf_f32_to_f16(float f)
{
    uint32_t u = lf_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u);
    if (abs >= 0x477ff000u) /* >= 65520 rounds to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (abs >= 0x38800000u) { /* normal f16 (>= 2^-14) */
        uint32_t r = abs + 0x0fffu + ((abs >> 13) & 1u);
        return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    }
    /* subnormal f16 or zero: value / 2^-24, rounded to even. Exact: f32 has the bits. */
    float mag = lf_f32_from_bits(abs) * 16777216.0f; /* · 2^24 */
    uint32_t q = (uint32_t)mag;
    float rem = mag - (float)q;
    if (rem > 0.5f || (rem == 0.5f && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}
#endif /* __F16C__ */

/* Element i of a buffer of `dtype`, as f32. */
static inline float lf_load_f32(const void *p, lf_dtype dtype, int64_t i)
{
    switch (dtype) {
    case LF_F16:
        return lf_f16_to_f32(((const uint16_t *)p)[i]);
    case LF_BF16:
        return lf_bf16_to_f32(((const uint16_t *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}

/* Stores f rounded once to `dtype` as element i. */
static inline void lf_store_f32(void *p, lf_dtype dtype, int64_t i, float f)
{
    switch (dtype) {
    case LF_F16:
        ((uint16_t *)p)[i] = lf_f32_to_f16(f);
        break;
    case LF_BF16:
        ((uint16_t *)p)[i] = lf_f32_to_bf16(f);
        break;
    default:
        ((float *)p)[i] = f;
        break;
    }
}

#endif /* LF_DTYPE_H */

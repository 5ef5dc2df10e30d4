/* Deterministic exp/log and a memory-free permutation; see include/fedtiny/ft_math.h. */
#include "fedtiny/ft_math.h"

#include <string.h>

static float ft_bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t ft_float_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float ft_expf(float x)
{
    if (x != x) {
        return x;
    }
    if (x > 88.0f) {
        x = 88.0f;
    }
    if (x < -87.0f) {
        x = -87.0f;
    }
    /* x = n ln2 + r, |r| <= ln2/2; ln2 split in a high part exact in float and a low part. */
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693145751953125f;
    const float ln2_lo = 1.428606765330187e-06f;
    const float t = x * log2e;
    const int32_t n = (int32_t)(t >= 0.0f ? t + 0.5f : t - 0.5f);
    const float nf = (float)n;
    const float r = (x - nf * ln2_hi) - nf * ln2_lo;
    /* Taylor polynomial to degree 7 in Horner form: error < 3e-8 for |r| <= 0.35. */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^n for n in [-126, 127]; n >= -126 because x >= -87. */
    return p * ft_bits_to_float((uint32_t)(n + 127) << 23);
}

float ft_logf(float x)
{
    if (!(x > 0.0f)) {
        return -1e30f;
    }
    uint32_t u = ft_float_to_bits(x);
    int32_t e = (int32_t)((u >> 23) & 0xFFu) - 127;
    if (e == -127) { /* subnormal: scale up by 2^23 */
        x = x * 8388608.0f;
        u = ft_float_to_bits(x);
        e = (int32_t)((u >> 23) & 0xFFu) - 127 - 23;
    }
    /* mantissa m in [1, 2); move to [sqrt(1/2), sqrt(2)) */
    float m = ft_bits_to_float((u & 0x007FFFFFu) | 0x3F800000u);
    if (m > 1.41421356f) {
        m = m * 0.5f;
        e += 1;
    }
    /* log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172 */
    const float s = (m - 1.0f) / (m + 1.0f);
    const float s2 = s * s;
    float p = 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    const float ef = (float)e;
    return (2.0f * s * p + ef * 1.428606765330187e-06f) + ef * 0.693145751953125f;
}

uint32_t ft_hash32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

float ft_sqrtf(float x)
{
    if (!(x > 0.0f)) {
        return x == 0.0f ? 0.0f : -1.0f;
    }
    if (!(x <= 3.4028235e38f)) {
        return x;
    }
    /* halve the exponent for a first guess, then Newton steps y <- (y + x / y) / 2 */
    float y = ft_bits_to_float((ft_float_to_bits(x) >> 1) + 0x1FC00000u);
    for (int i = 0; i < 5; i++) {
        y = 0.5f * (y + x / y);
    }
    return y;
}

float ft_gaussian(uint32_t key, uint32_t ctr)
{
    /* Marsaglia's polar method on draws (2 ctr + 2 k, 2 ctr + 2 k + 1) of ft_uniform, k = 0, 1, ... */
    for (uint32_t k = 0;; k++) {
        const uint32_t c = ft_hash32(ctr) ^ (k * 0x9E3779B9u);
        const float u = 2.0f * ft_uniform(key, 2u * c) - 1.0f;
        const float v = 2.0f * ft_uniform(key, 2u * c + 1u) - 1.0f;
        const float s = u * u + v * v;
        if (s > 0.0f && s < 1.0f) {
            return u * ft_sqrtf(-2.0f * ft_logf(s) / s);
        }
    }
}

float ft_uniform(uint32_t key, uint32_t ctr)
{
    return (float)(ft_hash32(key ^ ft_hash32(ctr)) >> 8) * (1.0f / 16777216.0f);
}

uint32_t ft_permute(uint32_t i, uint32_t n, uint32_t key)
{
    if (n <= 1) {
        return 0;
    }
    uint32_t bits = 2;
    while (bits < 32 && (1u << bits) < n) {
        bits += 2;
    }
    const uint32_t half = bits / 2;
    const uint32_t mask = (1u << half) - 1u;
    uint32_t x = i;
    do {
        uint32_t left = x >> half, right = x & mask;
        for (uint32_t round = 0; round < 4; round++) {
            const uint32_t f = ft_hash32(right ^ ft_hash32(key + round)) & mask;
            const uint32_t next = left ^ f;
            left = right;
            right = next;
        }
        x = (left << half) | right;
    } while (x >= n);
    return x;
}

/* Update codec: stochastic uniform / sign quantization with error feedback. See ft_codec.h. */
#include "fedtiny/ft_codec.h"

#include <stddef.h>
#include <string.h>

#include "fedtiny/ft_math.h"

static int ft_bits_ok(int32_t bits)
{
    return bits == 32 || bits == 16 || bits == 8 || bits == 4 || bits == 2 || bits == 1;
}

static int ft_params_ok(const ft_codec_params *p, int32_t n)
{
    return p != NULL && ft_bits_ok(p->bits) && (p->per_channel == 0 || p->per_channel == 1) &&
           (p->channel_last == 0 || p->channel_last == 1) && (p->nearest == 0 || p->nearest == 1) && p->channels >= 1 && p->channels <= 0xFFFF && n >= 1 &&
           n % p->channels == 0 && n <= (1L << 26);
}

static uint32_t ft_groups(const ft_codec_params *p) { return p->per_channel ? (uint32_t)p->channels : 1u; }

static uint32_t ft_payload_bytes(const ft_codec_params *p, int32_t n)
{
    if (p->bits == 32) {
        return 4u * (uint32_t)n;
    }
    return 4u * ft_groups(p) + (uint32_t)(((uint64_t)n * (uint32_t)p->bits + 7u) / 8u);
}

uint32_t ft_codec_blob_bytes(const ft_codec_params *p, int32_t n)
{
    return ft_params_ok(p, n) ? FT_CODEC_HEADER_BYTES + ft_payload_bytes(p, n) : 0u;
}

/* Group (scale index) of value i. */
static inline int32_t ft_group(const ft_codec_params *p, int32_t i, int32_t row)
{
    if (!p->per_channel) {
        return 0;
    }
    return p->channel_last ? i % p->channels : i / row;
}

static void ft_put_u16(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
}
static void ft_put_u32(uint8_t *b, uint32_t v)
{
    ft_put_u16(b, v & 0xFFFFu);
    ft_put_u16(b + 2, v >> 16);
}
static uint32_t ft_get_u16(const uint8_t *b) { return (uint32_t)b[0] | ((uint32_t)b[1] << 8); }
static uint32_t ft_get_u32(const uint8_t *b) { return ft_get_u16(b) | (ft_get_u16(b + 2) << 16); }

static float ft_levels(int32_t bits) { return bits == 1 ? 1.0f : (float)((1 << (bits - 1)) - 1); }

/* Value of code c in a group with scale s. */
static inline float ft_dequant(int32_t bits, uint32_t c, float s)
{
    if (bits == 1) {
        return c ? s : -s;
    }
    return (float)((int32_t)c - ((1 << (bits - 1)) - 1)) * s;
}

static inline uint32_t ft_get_code(const uint8_t *codes, int32_t i, int32_t bits)
{
    const uint64_t bit = (uint64_t)i * (uint32_t)bits;
    uint32_t c = 0;
    for (int32_t k = 0; k < bits; k++) {
        const uint64_t at = bit + (uint64_t)k;
        c |= (uint32_t)((codes[at >> 3] >> (at & 7u)) & 1u) << k;
    }
    return c;
}

static inline void ft_put_code(uint8_t *codes, int32_t i, int32_t bits, uint32_t c)
{
    const uint64_t bit = (uint64_t)i * (uint32_t)bits;
    for (int32_t k = 0; k < bits; k++) {
        const uint64_t at = bit + (uint64_t)k;
        codes[at >> 3] |= (uint8_t)(((c >> k) & 1u) << (at & 7u));
    }
}

ft_status ft_codec_encode(const ft_codec_params *p, const float *v, int32_t n, uint32_t key, float *residual,
                          uint8_t *out, uint32_t out_size, uint32_t *written)
{
    if (p == NULL || v == NULL || out == NULL || written == NULL) {
        return FT_ERR_NULL_ARG;
    }
    if (!ft_params_ok(p, n)) {
        return FT_ERR_BAD_CONFIG;
    }
    const uint32_t total = ft_codec_blob_bytes(p, n);
    if (out_size < total) {
        return FT_ERR_TRUNCATED;
    }
    memset(out, 0, total);
    out[0] = 'F';
    out[1] = 'Q';
    out[2] = (uint8_t)FT_CODEC_VERSION;
    out[3] = (uint8_t)(p->bits == 32 ? FT_CODEC_FLOAT32 : (p->bits == 1 ? FT_CODEC_SIGN : FT_CODEC_UNIFORM));
    out[4] = (uint8_t)p->bits;
    out[5] = (uint8_t)((p->per_channel ? 1u : 0u) | (p->channel_last ? 2u : 0u) | (p->nearest ? 4u : 0u));
    ft_put_u16(out + 6, (uint32_t)p->channels);
    ft_put_u32(out + 8, (uint32_t)n);
    ft_put_u32(out + 12, total - FT_CODEC_HEADER_BYTES);
    uint8_t *payload = out + FT_CODEC_HEADER_BYTES;
    const int32_t row = n / p->channels;
    /* the value to send: v, plus the carried residual under error feedback */
#define FT_TARGET(i) (residual != NULL ? v[(i)] + residual[(i)] : v[(i)])
    if (p->bits == 32) {
        for (int32_t i = 0; i < n; i++) {
            const float t = FT_TARGET(i);
            memcpy(payload + 4u * (uint32_t)i, &t, 4);
            if (residual != NULL) {
                residual[i] = 0.0f;
            }
        }
        *written = total;
        return FT_OK;
    }
    const uint32_t groups = ft_groups(p);
    const float levels = ft_levels(p->bits);
    /* scales: max |target| per group (NaN if the group holds a non-finite value, so the receiver
     * rejects the blob), divided by the number of positive levels; payload may be unaligned */
    const uint32_t nan_bits = 0x7FC00000u;
    float nan;
    memcpy(&nan, &nan_bits, 4);
    for (int32_t i = 0; i < n; i++) {
        const uint32_t g = (uint32_t)ft_group(p, i, row);
        float amax;
        memcpy(&amax, payload + 4u * g, 4);
        const float t = FT_TARGET(i);
        const float a = t < 0.0f ? -t : t;
        if (!(a <= 3.4028235e38f)) {
            amax = nan;
        } else if (a > amax) {
            amax = a;
        }
        memcpy(payload + 4u * g, &amax, 4);
    }
    const int sign_mean = p->bits == 1 && p->nearest; /* scaled sign: s = mean |v| of the group */
    if (sign_mean) {
        for (uint32_t g = 0; g < groups; g++) { /* keep NaN marks, restart the finite groups' sums */
            float m;
            memcpy(&m, payload + 4u * g, 4);
            m = m == m ? 0.0f : m;
            memcpy(payload + 4u * g, &m, 4);
        }
        for (int32_t i = 0; i < n; i++) {
            const uint32_t g = (uint32_t)ft_group(p, i, row);
            float m;
            memcpy(&m, payload + 4u * g, 4);
            const float t = FT_TARGET(i);
            m = m + (t < 0.0f ? -t : t);
            memcpy(payload + 4u * g, &m, 4);
        }
    }
    const float count = (float)(p->per_channel ? row : n);
    for (uint32_t g = 0; g < groups; g++) {
        float s;
        memcpy(&s, payload + 4u * g, 4);
        s = sign_mean ? s / count : s / levels;
        memcpy(payload + 4u * g, &s, 4);
    }
    uint8_t *codes = payload + 4u * groups;
    const int32_t lmax = (int32_t)levels;
    for (int32_t i = 0; i < n; i++) {
        const uint32_t g = (uint32_t)ft_group(p, i, row);
        float s;
        memcpy(&s, payload + 4u * g, 4);
        const float t = FT_TARGET(i);
        float x = s > 0.0f ? t / s : 0.0f;
        int32_t q;
        if (sign_mean) {
            q = t >= 0.0f ? 1 : 0;
        } else {
            if (p->bits == 1) {
                x = (x + 1.0f) * 0.5f;
            }
            /* x lies in [-L, L] (one bit: [0, 1]) up to rounding; clamp before rounding */
            const float lo = p->bits == 1 ? 0.0f : -levels, hi = p->bits == 1 ? 1.0f : levels;
            x = !(x > lo) ? lo : (x > hi ? hi : x);
            if (p->nearest) {
                q = (int32_t)x;
                const float frac = x - (float)q;
                q += frac >= 0.5f ? 1 : (frac <= -0.5f ? -1 : 0);
            } else {
                int32_t fl = (int32_t)x;
                fl = (float)fl > x ? fl - 1 : fl;
                const float u = ft_uniform(key, (uint32_t)i);
                q = fl + (u < x - (float)fl ? 1 : 0);
            }
        }
        uint32_t code;
        if (p->bits == 1) {
            code = q > 0 ? 1u : 0u;
        } else {
            q = q > lmax ? lmax : (q < -lmax ? -lmax : q);
            code = (uint32_t)(q + lmax);
        }
        ft_put_code(codes, i, p->bits, code);
        if (residual != NULL) {
            residual[i] = t - ft_dequant(p->bits, code, s);
        }
    }
#undef FT_TARGET
    *written = total;
    return FT_OK;
}

ft_status ft_codec_decode(const uint8_t *blob, uint32_t size, float *out, int32_t max_n, ft_codec_params *p,
                          int32_t *n_out)
{
    if (blob == NULL || out == NULL || p == NULL || n_out == NULL) {
        return FT_ERR_NULL_ARG;
    }
    if (size < FT_CODEC_HEADER_BYTES) {
        return FT_ERR_CODEC_LENGTH;
    }
    if (blob[0] != 'F' || blob[1] != 'Q' || blob[2] != FT_CODEC_VERSION || blob[3] > FT_CODEC_SIGN ||
        (blob[5] & ~7u) != 0) {
        return FT_ERR_CODEC_HEADER;
    }
    const int32_t bits = blob[4];
    const ft_codec_scheme scheme = (ft_codec_scheme)blob[3];
    if (!ft_bits_ok(bits) || (scheme == FT_CODEC_FLOAT32) != (bits == 32) || (scheme == FT_CODEC_SIGN) != (bits == 1)) {
        return FT_ERR_CODEC_BITS;
    }
    ft_codec_params q = {bits, blob[5] & 1u, (int32_t)ft_get_u16(blob + 6), (blob[5] >> 1) & 1u, (blob[5] >> 2) & 1u};
    const uint32_t n_u = ft_get_u32(blob + 8);
    if (n_u > (1u << 26) || (int32_t)n_u > max_n || !ft_params_ok(&q, (int32_t)n_u) ||
        ft_get_u32(blob + 12) != size - FT_CODEC_HEADER_BYTES || ft_codec_blob_bytes(&q, (int32_t)n_u) != size) {
        return FT_ERR_CODEC_LENGTH;
    }
    const int32_t n = (int32_t)n_u;
    const uint8_t *payload = blob + FT_CODEC_HEADER_BYTES;
    if (bits == 32) {
        memcpy(out, payload, 4u * (uint32_t)n);
    } else {
        const uint32_t groups = ft_groups(&q);
        for (uint32_t g = 0; g < groups; g++) {
            float s;
            memcpy(&s, payload + 4u * g, 4);
            const float top = s * ft_levels(bits); /* the largest magnitude a code can decode to */
            if (!(s >= 0.0f) || !(top <= 3.4028235e38f)) {
                return FT_ERR_CODEC_SCALE;
            }
        }
        const uint8_t *codes = payload + 4u * groups;
        const int32_t row = n / q.channels;
        const uint32_t lmax2 = bits == 1 ? 1u : (2u << (bits - 1)) - 2u; /* largest valid code: 2L */
        for (int32_t i = 0; i < n; i++) {
            const uint32_t c = ft_get_code(codes, i, bits);
            if (c > lmax2) {
                return FT_ERR_CODEC_CODE; /* the one unused code (2^bits - 1) of a symmetric grid */
            }
            float s;
            memcpy(&s, payload + 4u * (uint32_t)ft_group(&q, i, row), 4);
            out[i] = ft_dequant(bits, c, s);
        }
    }
    *p = q;
    *n_out = n;
    return FT_OK;
}

static float ft_sum_sq(const float *v, int32_t n, float scale)
{
    float acc = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        const float x = v[i] * scale;
        acc += x * x;
    }
    return acc;
}

/* Encode every tensor with its values scaled by f (plus noise); returns the decoded norm^2. */
static ft_status ft_encode_all(ft_codec_tensor *t, int32_t count, float f, float noise_std, uint32_t noise_key,
                               float *scratch, float *sent_sq)
{
    uint32_t ctr = 0;
    float acc = 0.0f;
    for (int32_t k = 0; k < count; k++) {
        for (int32_t i = 0; i < t[k].n; i++) {
            scratch[i] = t[k].v[i] * f;
            if (noise_std > 0.0f) {
                scratch[i] = scratch[i] + noise_std * ft_gaussian(noise_key, ctr++);
            }
        }
        ft_status st = ft_codec_encode(&t[k].p, scratch, t[k].n, t[k].key, NULL, t[k].out, t[k].out_size,
                                       &t[k].written);
        if (st != FT_OK) {
            return st;
        }
        ft_codec_params q;
        int32_t n = 0;
        st = ft_codec_decode(t[k].out, t[k].written, scratch, t[k].n, &q, &n);
        if (st != FT_OK) {
            return st;
        }
        acc += ft_sum_sq(scratch, n, 1.0f);
    }
    *sent_sq = acc;
    return FT_OK;
}

ft_status ft_codec_encode_update(ft_codec_tensor *tensors, int32_t count, float clip, float noise_std,
                                 uint32_t noise_key, float *scratch, int32_t scratch_n, float *norm_before,
                                 float *norm_sent)
{
    if (tensors == NULL || scratch == NULL || norm_before == NULL || norm_sent == NULL) {
        return FT_ERR_NULL_ARG;
    }
    if (count < 1 || !(clip > 0.0f) || !(noise_std >= 0.0f)) {
        return FT_ERR_BAD_CONFIG;
    }
    float sq = 0.0f;
    for (int32_t k = 0; k < count; k++) {
        if (tensors[k].v == NULL || tensors[k].n > scratch_n) {
            return FT_ERR_BAD_CONFIG;
        }
        sq += ft_sum_sq(tensors[k].v, tensors[k].n, 1.0f);
    }
    if (!(sq <= 3.4028235e38f)) {
        return FT_ERR_BAD_DATA; /* a non-finite update cannot be clipped */
    }
    const float norm = ft_sqrtf(sq);
    *norm_before = norm;
    float f = norm > clip ? clip / norm : 1.0f;
    float sent_sq = 0.0f;
    ft_status st = ft_encode_all(tensors, count, f, noise_std, noise_key, scratch, &sent_sq);
    for (int tries = 0; st == FT_OK && noise_std == 0.0f && sent_sq > clip * clip; tries++) {
        f = tries < 8 ? f * (clip / ft_sqrtf(sent_sq)) * (1.0f - 1.0f / 1048576.0f) : 0.0f;
        st = ft_encode_all(tensors, count, f, noise_std, noise_key, scratch, &sent_sq);
    }
    *norm_sent = ft_sqrtf(sent_sq);
    return st;
}

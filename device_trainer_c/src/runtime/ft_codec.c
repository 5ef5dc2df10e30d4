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

/*
 * Whether sum_i x_i^2 <= clip^2, decided in float32 with a proven bound (no double on the
 * device: it is soft-float on Cortex-M4F).
 *
 * Every value is multiplied by a power of two 2^k chosen from the largest magnitude a (so that
 * a 2^k lies in [1/2, 1), or is the largest a subnormal a can reach): exact unless the product
 * is subnormal, which costs at most 2^-149 per square in absolute terms. The squares (one
 * rounding each) are summed pairwise with a binary counter: a term takes part in at most 32
 * merges and 33 final additions, so with u = 2^-24 the computed sum S' satisfies
 * S <= S' / (1 - u)^66 + N 2^-149 <= S' (1 + 4e-6) (Higham, Accuracy and Stability, 4.2-4.3;
 * S' >= 2^-48 since the largest scaled value is >= 2^-24). The test is
 * fl(S' (1 + 2^-14)) <= fl(c^2), c = clip 2^k: both products round by at most u, and the margin
 * 2^-14 = 6.1e-5 exceeds 4e-6 + 2u, so a pass proves S <= clip^2. A true norm within 6.1e-5 of
 * the clip may fail the test: it is then scaled down by that much.
 */
typedef struct {
    float scale;      /* 2^k */
    float part[40];   /* partial sums of 2^level[j] squares, levels decreasing */
    uint8_t level[40];
    int32_t top;
} ft_sumsq;

typedef struct {
    int within; /* proven: norm <= clip */
    float ratio; /* about norm / clip (a little above: the bound), 0 for a zero vector */
    float norm;  /* about the norm (reporting only) */
} ft_norm_check;

static float ft_pow2(int32_t k)
{
    uint32_t b = k >= -126 ? (uint32_t)(k + 127) << 23 : 1u << (uint32_t)(k + 149); /* k in [-149, 127] */
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static int32_t ft_scale_exponent(float amax)
{
    uint32_t b;
    memcpy(&b, &amax, 4);
    const int32_t e = (int32_t)((b >> 23) & 0xFFu);
    return 126 - (e == 0 ? 1 : e); /* in [-128, 125] */
}

static void ft_sumsq_add(ft_sumsq *a, float x)
{
    const float y = x * a->scale;
    float s = y * y;
    uint8_t lv = 0;
    while (a->top > 0 && a->level[a->top - 1] == lv) {
        s = a->part[--a->top] + s;
        lv++;
    }
    a->part[a->top] = s;
    a->level[a->top++] = lv;
}

static float ft_sumsq_total(const ft_sumsq *a)
{
    float s = 0.0f;
    for (int32_t j = a->top - 1; j >= 0; j--) {
        s = s + a->part[j];
    }
    return s;
}

/* The values of the update: tensor k's blob decoded (decoded = 1), or its change times f. */
static const float *ft_values(const ft_codec_tensor *t, int decoded, float f, float *scratch, int32_t *n,
                              ft_status *st)
{
    *st = FT_OK;
    if (decoded) {
        ft_codec_params q;
        *st = ft_codec_decode(t->out, t->written, scratch, t->n, &q, n);
        return scratch;
    }
    for (int32_t i = 0; i < t->n; i++) {
        scratch[i] = t->v[i] * f;
    }
    *n = t->n;
    return scratch;
}

static ft_status ft_check_norm(const ft_codec_tensor *t, int32_t count, int decoded, float f, float clip,
                               float *scratch, ft_norm_check *out)
{
    float amax = 0.0f;
    ft_sumsq acc;
    acc.top = 0;
    /* pass 0: the largest magnitude (and the power-of-two scale from it); pass 1: the scaled
     * squares, summed pairwise */
    for (int pass = 0; pass < 2; pass++) {
        for (int32_t k = 0; k < count; k++) {
            int32_t n = 0;
            ft_status st;
            const float *x = ft_values(&t[k], decoded, f, scratch, &n, &st);
            if (st != FT_OK) {
                return st;
            }
            for (int32_t i = 0; pass == 0 && i < n; i++) {
                const float a = x[i] < 0.0f ? -x[i] : x[i];
                if (!(a <= 3.4028235e38f)) {
                    return FT_ERR_BAD_DATA; /* a non-finite update cannot be clipped */
                }
                amax = a > amax ? a : amax;
            }
            for (int32_t i = 0; pass == 1 && i < n; i++) {
                ft_sumsq_add(&acc, x[i]);
            }
        }
        if (pass == 0 && amax == 0.0f) {
            *out = (ft_norm_check){1, 0.0f, 0.0f};
            return FT_OK;
        }
        acc.scale = ft_pow2(ft_scale_exponent(amax));
    }
    const float total = ft_sumsq_total(&acc);
    const float bound = total * (1.0f + 1.0f / 16384.0f);
    const float m = amax * acc.scale; /* exact: in [2^-24, 1) */
    const float c = clip * acc.scale; /* exact when >= m: then normal */
    const float root = ft_sqrtf(bound);
    out->norm = ft_sqrtf(total) / acc.scale;
    if (!(c >= m)) { /* clip < largest value <= norm */
        out->within = 0;
        out->ratio = c > 0.0f ? root / c : 3.4028235e38f;
    } else {
        out->within = bound <= c * c;
        out->ratio = root / c;
    }
    return FT_OK;
}

/* Encode every tensor with its values scaled by f (plus noise). */
static ft_status ft_encode_all(ft_codec_tensor *t, int32_t count, float f, float noise_std, uint32_t noise_key,
                               float *scratch)
{
    uint32_t ctr = 0;
    for (int32_t k = 0; k < count; k++) {
        for (int32_t i = 0; i < t[k].n; i++) {
            scratch[i] = t[k].v[i] * f;
            if (noise_std > 0.0f) {
                scratch[i] = scratch[i] + noise_std * ft_gaussian(noise_key, ctr++);
            }
        }
        const ft_status st = ft_codec_encode(&t[k].p, scratch, t[k].n, t[k].key, NULL, t[k].out, t[k].out_size,
                                             &t[k].written);
        if (st != FT_OK) {
            return st;
        }
    }
    return FT_OK;
}

/* f scaled to bring a norm `ratio` times the clip under it, with a margin that grows per try. */
static float ft_shrink(float f, float ratio, int tries)
{
    const int32_t e = tries < 11 ? tries : 11; /* margin 2^-12 ... 2^-1 */
    return f / ratio * (1.0f - ft_pow2(-12 + e));
}

#define FT_CLIP_TRIES 64

ft_status ft_codec_encode_update(ft_codec_tensor *tensors, int32_t count, float clip, float noise_std,
                                 uint32_t noise_key, float *scratch, int32_t scratch_n, float *norm_before,
                                 float *norm_sent)
{
    if (tensors == NULL || scratch == NULL || norm_before == NULL || norm_sent == NULL) {
        return FT_ERR_NULL_ARG;
    }
    if (count < 1 || !(clip > 0.0f) || !(clip <= 3.4028235e38f) || !(noise_std >= 0.0f) ||
        !(noise_std <= 3.4028235e38f)) {
        return FT_ERR_BAD_CONFIG;
    }
    for (int32_t k = 0; k < count; k++) {
        if (tensors[k].v == NULL || tensors[k].n > scratch_n) {
            return FT_ERR_BAD_CONFIG;
        }
    }
    ft_norm_check chk;
    ft_status st = ft_check_norm(tensors, count, 0, 1.0f, clip, scratch, &chk);
    if (st != FT_OK) {
        return st;
    }
    *norm_before = chk.norm;
    float f = chk.within ? 1.0f : 1.0f / chk.ratio;
    if (!(f >= 1.1754944e-38f)) {
        return FT_ERR_BAD_DATA; /* norm / clip beyond 2^126: no float32 scale factor clips it */
    }
    if (noise_std > 0.0f) { /* local DP: the values before noise must be within the clip */
        for (int tries = 0;; tries++) {
            st = ft_check_norm(tensors, count, 0, f, clip, scratch, &chk);
            if (st != FT_OK || chk.within) {
                break;
            }
            f = tries < FT_CLIP_TRIES ? ft_shrink(f, chk.ratio, tries) : 0.0f;
        }
        if (st == FT_OK) {
            st = ft_encode_all(tensors, count, f, noise_std, noise_key, scratch);
        }
    } else { /* central DP: what the server decodes must be within the clip */
        for (int tries = 0;; tries++) {
            st = ft_encode_all(tensors, count, f, 0.0f, noise_key, scratch);
            if (st == FT_OK) {
                st = ft_check_norm(tensors, count, 1, 1.0f, clip, scratch, &chk);
            }
            if (st != FT_OK || chk.within) {
                break;
            }
            f = tries < FT_CLIP_TRIES ? ft_shrink(f, chk.ratio, tries) : 0.0f; /* f = 0 sends zeros: within */
        }
    }
    if (st == FT_OK && noise_std > 0.0f) { /* central DP's loop ended on the sent blobs' check */
        st = ft_check_norm(tensors, count, 1, 1.0f, clip, scratch, &chk);
    }
    *norm_sent = chk.norm;
    return st;
}

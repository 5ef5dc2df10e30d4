/*
 * fedtiny update codec: what a device sends after training, version 1.
 *
 * One tensor's update v (n float32 values, e.g. w_local - w_global of the channels the device
 * trained) is encoded into one blob:
 *
 *   header (16 bytes, little-endian)
 *     0 u8[2] magic "FQ"    2 u8 version (1)    3 u8 scheme (ft_codec_scheme)    4 u8 bits
 *     5 u8 flags: bit 0 per-channel scales, bit 1 channel axis is the last (depthwise layout),
 *                 bit 2 deterministic rounding (informational: decoding is the same)
 *     6 u16 channels (output channels the tensor carries; rows of per-channel scales)
 *     8 u32 n (values)      12 u32 payload bytes (everything after the header)
 *   payload
 *     FT_CODEC_FLOAT32: n float32 values
 *     otherwise:        scales (float32, one per channel or one per tensor), then n codes of
 *                       `bits` bits each, packed LSB first (code i at bit i * bits), zero padded
 *                       to a whole byte
 *
 * Quantization grid of a group (a channel, or the whole tensor) with scale s:
 *   bits >= 2: values q * s, q in [-L, L], L = 2^(bits-1) - 1, s = max|v| / L; code = q + L.
 *   bits == 1: values -s and +s; code 1 = +s.
 * Stochastic rounding (unbiased; for use without error feedback): bits == 1 uses s = max|v|;
 * x = v / s (bits == 1: (v / s + 1) / 2), then floor(x) + [u_i < x - floor(x)] with
 * u_i = ft_uniform(key, i) for value i; so the error of a value has mean 0 and variance
 * frac (1 - frac) Delta^2 <= Delta^2 / 4 (Delta = s, or 2 s for one bit).
 * Deterministic rounding (biased but contractive, the compressor error feedback needs):
 * bits >= 2 round x = v / s to nearest (halves away from zero); bits == 1 is the scaled sign,
 * s = mean |v| over the group (summed in index order), +s for v >= 0.
 * A group of zeros gets s = 0 and decodes to zeros.
 *
 * Error feedback: with a residual buffer r (n floats, kept by the device between rounds), the
 * encoder quantizes v + r and stores r <- (v + r) - decode(blob).
 */
#ifndef FT_CODEC_H
#define FT_CODEC_H

#include <stdint.h>

#include "fedtiny/ft_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FT_CODEC_HEADER_BYTES 16u
#define FT_CODEC_VERSION 1u

typedef enum { FT_CODEC_FLOAT32 = 0, FT_CODEC_UNIFORM = 1, FT_CODEC_SIGN = 2 } ft_codec_scheme;

typedef struct {
    int32_t bits;         /* 32 (float32), 16, 8, 4, 2 or 1 */
    int32_t per_channel;  /* 1: one scale per channel; 0: one per tensor */
    int32_t channels;     /* output channels in the tensor (>= 1); n must be a multiple */
    int32_t channel_last; /* 1: value i belongs to channel i % channels; 0: to i / (n / channels) */
    int32_t nearest;      /* 1: deterministic rounding (see above); 0: stochastic */
} ft_codec_params;

/* Bytes of the blob for n values (header included); 0 for invalid parameters. */
uint32_t ft_codec_blob_bytes(const ft_codec_params *p, int32_t n);

/* Encode v[0..n) into out (out_size >= ft_codec_blob_bytes). residual: NULL, or n floats
 * updated in place (error feedback). *written = blob bytes. */
ft_status ft_codec_encode(const ft_codec_params *p, const float *v, int32_t n, uint32_t key, float *residual,
                          uint8_t *out, uint32_t out_size, uint32_t *written);

/* Validate a blob (header fields, exact length, scales non-negative and finite with the largest
 * code, codes on the grid) and decode its n
 * values into out (max_n floats). Fills *p from the header and *n. */
ft_status ft_codec_decode(const uint8_t *blob, uint32_t size, float *out, int32_t max_n, ft_codec_params *p,
                          int32_t *n);

/* One tensor of a device's update, for ft_codec_encode_update. */
typedef struct {
    ft_codec_params p;
    const float *v;    /* n values: the tensor's change */
    int32_t n;
    uint32_t key;      /* rounding key */
    uint8_t *out;      /* blob buffer (out_size >= ft_codec_blob_bytes) */
    uint32_t out_size;
    uint32_t written;  /* set: blob bytes */
} ft_codec_tensor;

/* Encode a whole update (all its tensors) for client-level differential privacy, so that the
 * L2 norm of what the receiver decodes (central) or of the values before noise (local), over
 * all tensors, is <= clip: proven in float32 by a pairwise sum of power-of-two-scaled squares
 * with a margin above its error bound (see ft_codec.c), for any n the codec accepts.
 *   1. clip: scale every value by f = min(1, clip / ||v||);
 *   2. local DP (noise_std > 0): shrink f until the scaled values pass the proven test, then add
 *      noise_std * ft_gaussian(noise_key, i) to value i (i counts through all tensors in order)
 *      and encode;
 *   3. central DP (noise_std == 0): encode, decode, and while the proven test fails, scale f by
 *      about clip / decoded norm times (1 - 2^-12) (the margin doubles per try up to 1/2; the
 *      rounding keys are unchanged, so the codes repeat and the scales shrink) and encode again.
 *      One retry almost always suffices; a nonzero update is never sent as zeros unless 64
 *      tries fail (not seen in tests with 10^6-value adversarial vectors).
 * A vector whose norm passes within 6.1e-5 of the clip may be scaled down by that much.
 * FT_ERR_BAD_DATA: a non-finite value, or norm / clip beyond 2^126 (no float32 factor clips it).
 * scratch: max n floats. *norm_before: ||v|| before clipping; *norm_sent: decoded norm sent
 * (both about, for reports). */
ft_status ft_codec_encode_update(ft_codec_tensor *tensors, int32_t count, float clip, float noise_std,
                                 uint32_t noise_key, float *scratch, int32_t scratch_n, float *norm_before,
                                 float *norm_sent);

#ifdef __cplusplus
}
#endif

#endif /* FT_CODEC_H */

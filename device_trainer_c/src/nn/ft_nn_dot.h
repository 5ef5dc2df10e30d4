/*
 * Cortex-M4/M7 (DSP extension) core of the bundled int8 kernels: acc[o] = bias[o] + sum_k (x[k] +
 * offset) * (w[o][k] + w_offset) for `rows` rows of `depth` int8 weights. Four rows share each widened input
 * word; SXTB16/SXTAB16 widen bytes 0,2 and 1,3 of a word to halfword pairs (the offset added to
 * the input's), SMLAD adds two 16x16 products to the accumulator. The sums are the reference
 * kernels': exact products, 32-bit wrap-around addition, in any order. Private to src/nn/.
 */
#ifndef FT_NN_DOT_H
#define FT_NN_DOT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ft_nn_support.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define FT_NN_DSP 1

static inline int32_t ft_word(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* SXTB16 / SXTAB16 of the word rotated by 8 (bytes 1 and 3), in one instruction each */
static inline int32_t ft_sxtb16_ror8(int32_t x)
{
    int32_t r;
    __asm("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

static inline int32_t ft_sxtab16_ror8(int32_t a, int32_t x)
{
    int32_t r;
    __asm("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}

static inline int32_t ft_dot_tail(const int8_t *in, const int8_t *w, int32_t from, int32_t depth, int32_t offset,
                                  int32_t w_offset, int32_t acc)
{
    for (int32_t k = from; k < depth; k++) {
        acc = ft_nn_add(acc, ((int32_t)in[k] + offset) * ((int32_t)w[k] + w_offset));
    }
    return acc;
}

/* Weight bytes 0,2 and 1,3 as halfword pairs, the weight offset added (SXTAB16) unless it is the
 * constant 0 (SXTB16: one register fewer). */
#define FT_W02(v, w_offset, woff2) ((w_offset) == 0 ? __sxtb16(v) : __sxtab16((woff2), (v)))
#define FT_W13(v, w_offset, woff2) ((w_offset) == 0 ? ft_sxtb16_ror8(v) : ft_sxtab16_ror8((woff2), (v)))

/* w_offset is a compile-time 0 for the convolutions; fully connected layers with a weight offset
 * (|w_offset| <= 255, so each widened weight fits a halfword) pass theirs. */
static inline __attribute__((always_inline)) void ft_nn_dot_rows(const int8_t *in, const int8_t *filter,
                                                                 const int32_t *bias, int32_t depth, int32_t rows,
                                                                 int32_t offset, int32_t w_offset, int32_t *acc)
{
    const int32_t off2 = (int32_t)(((uint32_t)(uint16_t)offset << 16) | (uint16_t)offset);
    const int32_t woff2 = (int32_t)(((uint32_t)(uint16_t)w_offset << 16) | (uint16_t)w_offset);
    const int32_t quads = depth & ~3;
    int32_t o = 0;
    for (; o + 3 < rows; o += 4) {
        const int8_t *w0 = filter + (size_t)o * depth, *w1 = w0 + depth, *w2 = w1 + depth, *w3 = w2 + depth;
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        if (bias != NULL) {
            a0 = bias[o], a1 = bias[o + 1], a2 = bias[o + 2], a3 = bias[o + 3];
        }
        for (int32_t k = 0; k < quads; k += 4) {
            const int32_t x = ft_word(in + k);
            const int32_t x02 = __sxtab16(off2, x), x13 = ft_sxtab16_ror8(off2, x);
            int32_t v = ft_word(w0 + k);
            a0 = __smlad(x13, FT_W13(v, w_offset, woff2), __smlad(x02, FT_W02(v, w_offset, woff2), a0));
            v = ft_word(w1 + k);
            a1 = __smlad(x13, FT_W13(v, w_offset, woff2), __smlad(x02, FT_W02(v, w_offset, woff2), a1));
            v = ft_word(w2 + k);
            a2 = __smlad(x13, FT_W13(v, w_offset, woff2), __smlad(x02, FT_W02(v, w_offset, woff2), a2));
            v = ft_word(w3 + k);
            a3 = __smlad(x13, FT_W13(v, w_offset, woff2), __smlad(x02, FT_W02(v, w_offset, woff2), a3));
        }
        acc[o] = ft_dot_tail(in, w0, quads, depth, offset, w_offset, a0);
        acc[o + 1] = ft_dot_tail(in, w1, quads, depth, offset, w_offset, a1);
        acc[o + 2] = ft_dot_tail(in, w2, quads, depth, offset, w_offset, a2);
        acc[o + 3] = ft_dot_tail(in, w3, quads, depth, offset, w_offset, a3);
    }
    for (; o < rows; o++) {
        const int8_t *w0 = filter + (size_t)o * depth;
        int32_t a0 = bias != NULL ? bias[o] : 0;
        for (int32_t k = 0; k < quads; k += 4) {
            const int32_t x = ft_word(in + k), v = ft_word(w0 + k);
            a0 = __smlad(ft_sxtab16_ror8(off2, x), FT_W13(v, w_offset, woff2),
                         __smlad(__sxtab16(off2, x), FT_W02(v, w_offset, woff2), a0));
        }
        acc[o] = ft_dot_tail(in, w0, quads, depth, offset, w_offset, a0);
    }
}
#undef FT_W02
#undef FT_W13
#else
#define FT_NN_DSP 0
#endif

#endif /* FT_NN_DOT_H */

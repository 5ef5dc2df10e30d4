/*
 * Reference int8 depthwise convolution with CMSIS-NN's arithmetic, and the same sums on the DSP
 * extension (the wrapper, under __ARM_FEATURE_DSP). Output channel oc = ic * ch_mult + m reads
 * input channel ic; filter [1, HK, WK, C_OUT].
 */
#include "fedtiny/ft_nn.h"
#include "ft_nn_dot.h"
#include "ft_nn_support.h"

#include <stddef.h>
#include <string.h>

int32_t arm_depthwise_conv_wrapper_s8_get_buffer_size(const cmsis_nn_dw_conv_params *dw_conv_params,
                                                      const cmsis_nn_dims *input_dims,
                                                      const cmsis_nn_dims *filter_dims,
                                                      const cmsis_nn_dims *output_dims)
{
    (void)dw_conv_params;
    (void)input_dims;
    (void)filter_dims;
    (void)output_dims;
    return 0;
}

arm_cmsis_nn_status arm_depthwise_conv_s8(const cmsis_nn_context *ctx,
                                          const cmsis_nn_dw_conv_params *dw_conv_params,
                                          const cmsis_nn_per_channel_quant_params *quant_params,
                                          const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                          const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                          const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                          const cmsis_nn_dims *output_dims, int8_t *output_data)
{
    (void)ctx;
    (void)bias_dims;
    const int32_t ch_mult = dw_conv_params->ch_mult;
    const int32_t in_h = input_dims->h, in_w = input_dims->w, in_c = input_dims->c;
    const int32_t k_h = filter_dims->h, k_w = filter_dims->w;
    const int32_t out_h = output_dims->h, out_w = output_dims->w, out_c = output_dims->c;
    if (ch_mult < 1 || out_c != in_c * ch_mult || filter_dims->c != out_c) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    const int32_t in_off = dw_conv_params->input_offset, out_off = dw_conv_params->output_offset;
    const int32_t act_min = dw_conv_params->activation.min, act_max = dw_conv_params->activation.max;

    for (int32_t b = 0; b < input_dims->n; b++) {
        const int8_t *in = input_data + (size_t)b * in_h * in_w * in_c;
        int8_t *out = output_data + (size_t)b * out_h * out_w * out_c;
        for (int32_t oy = 0; oy < out_h; oy++) {
            const int32_t base_y = oy * dw_conv_params->stride.h - dw_conv_params->padding.h;
            for (int32_t ox = 0; ox < out_w; ox++) {
                const int32_t base_x = ox * dw_conv_params->stride.w - dw_conv_params->padding.w;
                for (int32_t ic = 0; ic < in_c; ic++) {
                    for (int32_t m = 0; m < ch_mult; m++) {
                        const int32_t oc = ic * ch_mult + m;
                        int32_t acc = bias_data != NULL ? bias_data[oc] : 0;
                        for (int32_t ky = 0; ky < k_h; ky++) {
                            const int32_t iy = base_y + ky * dw_conv_params->dilation.h;
                            if (iy < 0 || iy >= in_h) {
                                continue;
                            }
                            for (int32_t kx = 0; kx < k_w; kx++) {
                                const int32_t ix = base_x + kx * dw_conv_params->dilation.w;
                                if (ix < 0 || ix >= in_w) {
                                    continue;
                                }
                                const int32_t x = in[((size_t)iy * in_w + ix) * in_c + ic];
                                const int32_t w = filter_data[((size_t)ky * k_w + kx) * out_c + oc];
                                acc = ft_nn_add(acc, (x + in_off) * w);
                            }
                        }
                        acc = ft_nn_requantize(acc, quant_params->multiplier[oc], quant_params->shift[oc]);
                        acc = ft_nn_add(acc, out_off);
                        out[((size_t)oy * out_w + ox) * out_c + oc] = (int8_t)ft_nn_clamp(acc, act_min, act_max);
                    }
                }
            }
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}

#if FT_NN_DSP
static inline int32_t ft_dw_out(int32_t acc, const cmsis_nn_dw_conv_params *p, int32_t mult, int32_t shift)
{
    const int32_t v = ft_nn_add(ft_nn_requantize(acc, mult, shift), p->output_offset);
    return ft_nn_clamp(v, p->activation.min, p->activation.max);
}

/* One tap's input for four output channels c..c+3 as two halfword pairs, the input offset added:
 * x02 feeds channels c and c+2, x13 channels c+1 and c+3. `mult` is the depth multiplier's case:
 * 1 (channels c..c+3 read input channels c..c+3), 2 (input channels c/2 and c/2+1, each read
 * twice), 4 (any multiple of 4: one input channel read four times) or 0 (any other multiplier:
 * channel c+i reads the input byte d[i] after xp's, d[0] = 0). */
static inline __attribute__((always_inline)) void ft_dw_in(const int8_t *xp, int32_t mult, const int32_t *d,
                                                           int32_t off2, int32_t *x02, int32_t *x13)
{
    if (mult == 1) {
        const int32_t x = ft_word(xp);
        *x02 = __sxtab16(off2, x);
        *x13 = ft_sxtab16_ror8(off2, x);
    } else if (mult == 2) {
        uint16_t h;
        memcpy(&h, xp, 2);
        *x02 = *x13 = __sxtab16(off2, (int32_t)((uint32_t)h | ((uint32_t)h << 8))); /* bytes 0, 2 = x[0], x[1] */
    } else if (mult == 4) {
        const uint32_t b = (uint8_t)*xp;
        *x02 = *x13 = __sxtab16(off2, (int32_t)(b | (b << 16)));
    } else { /* bytes 0 and 2 of each word are the two channels' inputs */
        *x02 = __sxtab16(off2, (int32_t)((uint32_t)(uint8_t)xp[0] | ((uint32_t)(uint8_t)xp[d[2]] << 16)));
        *x13 = __sxtab16(off2, (int32_t)((uint32_t)(uint8_t)xp[d[1]] | ((uint32_t)(uint8_t)xp[d[3]] << 16)));
    }
}

/* One output pixel: every output channel over n_y x n_x taps (n_y, n_x >= 1), four channels at a
 * time with their accumulators in registers; px/wk point at the first tap's channel 0, `row` and
 * `step` step the input, `wrow` and c_out the weights. */
static inline __attribute__((always_inline)) void ft_dw_pixel(const int8_t *px, const int8_t *wk, int32_t n_y,
                                                              int32_t n_x, size_t row, size_t step, size_t wrow,
                                                              int32_t c_out, int32_t mult, int32_t ch_mult,
                                                              const cmsis_nn_dw_conv_params *p,
                                                              const cmsis_nn_per_channel_quant_params *q,
                                                              const int32_t *bias, int8_t *o)
{
    const int32_t off = p->input_offset, off2 = (int32_t)(((uint32_t)(uint16_t)off << 16) | (uint16_t)off);
    const int32_t quads = c_out & ~3;
    for (int32_t c = 0; c < quads; c += 4) {
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        const int8_t *xr = px + (mult == 1 ? c : mult == 2 ? c >> 1 : c / ch_mult), *wr = wk + c;
        int32_t d[4] = {0, 0, 0, 0}; /* the generic multiplier's input channel of c+i, after c's */
        if (mult == 0) {
            for (int32_t i = 1; i < 4; i++) {
                d[i] = (c + i) / ch_mult - c / ch_mult;
            }
        }
#define FT_DW_TAP(xp, wp)                                                                                        \
    do {                                                                                                         \
        int32_t x02, x13;                                                                                        \
        ft_dw_in(xp, mult, d, off2, &x02, &x13);                                                                 \
        const int32_t v = ft_word(wp), v02 = __sxtb16(v), v13 = ft_sxtb16_ror8(v);                               \
        a0 = __smlabb(x02, v02, a0);                                                                             \
        a2 = __smlatt(x02, v02, a2);                                                                             \
        a1 = __smlabb(x13, v13, a1);                                                                             \
        a3 = __smlatt(x13, v13, a3);                                                                             \
    } while (0)
        if (n_x == 3) { /* the 3x3 fast path: a row of taps unrolled */
            for (int32_t ky = 0; ky < n_y; ky++, xr += row, wr += wrow) {
                FT_DW_TAP(xr, wr);
                FT_DW_TAP(xr + step, wr + c_out);
                FT_DW_TAP(xr + 2 * step, wr + 2 * c_out);
            }
        } else {
            for (int32_t ky = 0; ky < n_y; ky++, xr += row, wr += wrow) {
                const int8_t *x_p = xr, *w_p = wr;
                for (int32_t kx = 0; kx < n_x; kx++, x_p += step, w_p += c_out) {
                    FT_DW_TAP(x_p, w_p);
                }
            }
        }
#undef FT_DW_TAP
        if (bias != NULL) {
            a0 = ft_nn_add(a0, bias[c]), a1 = ft_nn_add(a1, bias[c + 1]);
            a2 = ft_nn_add(a2, bias[c + 2]), a3 = ft_nn_add(a3, bias[c + 3]);
        }
        o[c] = (int8_t)ft_dw_out(a0, p, q->multiplier[c], q->shift[c]);
        o[c + 1] = (int8_t)ft_dw_out(a1, p, q->multiplier[c + 1], q->shift[c + 1]);
        o[c + 2] = (int8_t)ft_dw_out(a2, p, q->multiplier[c + 2], q->shift[c + 2]);
        o[c + 3] = (int8_t)ft_dw_out(a3, p, q->multiplier[c + 3], q->shift[c + 3]);
    }
    for (int32_t c = quads; c < c_out; c++) { /* the last channels when C_OUT is not a multiple of 4 */
        int32_t a = bias != NULL ? bias[c] : 0;
        const int8_t *xr = px + c / ch_mult, *wr = wk + c;
        for (int32_t ky = 0; ky < n_y; ky++, xr += row, wr += wrow) {
            for (int32_t kx = 0; kx < n_x; kx++) {
                a = ft_nn_add(a, ((int32_t)xr[(size_t)kx * step] + off) * (int32_t)wr[(size_t)kx * c_out]);
            }
        }
        o[c] = (int8_t)ft_dw_out(a, p, q->multiplier[c], q->shift[c]);
    }
}

#define FT_DW_PIXEL_FN(name, mult)                                                                               \
    __attribute__((noinline)) static void name(const int8_t *px, const int8_t *wk, int32_t n_y, int32_t n_x,     \
                                               size_t row, size_t step, size_t wrow, int32_t c_out,              \
                                               int32_t ch_mult, const cmsis_nn_dw_conv_params *p,                \
                                               const cmsis_nn_per_channel_quant_params *q, const int32_t *bias,  \
                                               int8_t *o)                                                        \
    {                                                                                                            \
        ft_dw_pixel(px, wk, n_y, n_x, row, step, wrow, c_out, mult, mult == 1 || mult == 2 ? mult : ch_mult, p, q, \
                    bias, o);                                                                                    \
    }
FT_DW_PIXEL_FN(ft_dw_pixel_m1, 1)
FT_DW_PIXEL_FN(ft_dw_pixel_m2, 2)
FT_DW_PIXEL_FN(ft_dw_pixel_m4, 4)
FT_DW_PIXEL_FN(ft_dw_pixel_any, 0)
#undef FT_DW_PIXEL_FN

/* Any depth multiplier on the DSP extension (1, 2 and multiples of 4 with fewer loads): four
 * output channels at a time (contiguous in weights and output); SXTB16/SXTAB16 widen them to
 * halfword pairs and SMLABB/SMLATT add each channel's product to its own accumulator. Padding is
 * skipped, as in the reference. */
static void ft_dw_dsp(const cmsis_nn_dw_conv_params *p, const cmsis_nn_per_channel_quant_params *q,
                      const cmsis_nn_dims *id, const int8_t *in, const cmsis_nn_dims *fd, const int8_t *w,
                      const int32_t *bias, const cmsis_nn_dims *od, int8_t *out)
{
    const int32_t c_in = id->c, c_out = od->c, k_w = fd->w, m = p->ch_mult;
    for (int32_t oy = 0; oy < od->h; oy++) {
        const int32_t y0 = oy * p->stride.h - p->padding.h;
        int32_t ky0, ky1;
        ft_nn_taps(y0, p->dilation.h, id->h, fd->h, &ky0, &ky1);
        for (int32_t ox = 0; ox < od->w; ox++) {
            const int32_t x0 = ox * p->stride.w - p->padding.w;
            int32_t kx0, kx1;
            ft_nn_taps(x0, p->dilation.w, id->w, k_w, &kx0, &kx1);
            int8_t *o = out + ((size_t)oy * od->w + ox) * c_out;
            if (ky1 <= ky0 || kx1 <= kx0) { /* the window lies wholly in the padding: the bias alone */
                for (int32_t c = 0; c < c_out; c++) {
                    o[c] = (int8_t)ft_dw_out(bias != NULL ? bias[c] : 0, p, q->multiplier[c], q->shift[c]);
                }
                continue;
            }
            const int8_t *px = in + ((size_t)(y0 + ky0 * p->dilation.h) * id->w + (size_t)(x0 + kx0 * p->dilation.w)) * c_in;
            const int8_t *wk = w + ((size_t)ky0 * k_w + kx0) * c_out;
            const size_t row = (size_t)p->dilation.h * id->w * c_in, step = (size_t)p->dilation.w * c_in;
            const size_t wrow = (size_t)k_w * c_out;
            if (m == 1) {
                ft_dw_pixel_m1(px, wk, ky1 - ky0, kx1 - kx0, row, step, wrow, c_out, m, p, q, bias, o);
            } else if (m == 2) {
                ft_dw_pixel_m2(px, wk, ky1 - ky0, kx1 - kx0, row, step, wrow, c_out, m, p, q, bias, o);
            } else if (m % 4 == 0) {
                ft_dw_pixel_m4(px, wk, ky1 - ky0, kx1 - kx0, row, step, wrow, c_out, m, p, q, bias, o);
            } else {
                ft_dw_pixel_any(px, wk, ky1 - ky0, kx1 - kx0, row, step, wrow, c_out, m, p, q, bias, o);
            }
        }
    }
}
#endif

arm_cmsis_nn_status arm_depthwise_conv_wrapper_s8(const cmsis_nn_context *ctx,
                                                  const cmsis_nn_dw_conv_params *dw_conv_params,
                                                  const cmsis_nn_per_channel_quant_params *quant_params,
                                                  const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                                  const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                                  const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                                  const cmsis_nn_dims *output_dims, int8_t *output_data)
{
#if FT_NN_DSP
    const int32_t m = dw_conv_params->ch_mult;
    if (m >= 1 && output_dims->c == input_dims->c * m && filter_dims->c == output_dims->c) {
        for (int32_t b = 0; b < input_dims->n; b++) {
            ft_dw_dsp(dw_conv_params, quant_params, input_dims,
                      input_data + (size_t)b * input_dims->h * input_dims->w * input_dims->c, filter_dims, filter_data,
                      bias_data, output_dims, output_data + (size_t)b * output_dims->h * output_dims->w * output_dims->c);
        }
        return ARM_CMSIS_NN_SUCCESS;
    }
#endif
    return arm_depthwise_conv_s8(ctx, dw_conv_params, quant_params, input_dims, input_data, filter_dims, filter_data,
                                 bias_dims, bias_data, output_dims, output_data);
}

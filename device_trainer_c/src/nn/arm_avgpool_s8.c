/*
 * Reference int8 average pooling with CMSIS-NN's arithmetic: the sum over the part of
 * the window inside the input, divided by that count with rounding half away from
 * zero, then clamped. No offsets (input and output share one quantization).
 */
#include "fedtiny/ft_nn.h"
#include "ft_nn_dot.h"
#include "ft_nn_support.h"

#include <stddef.h>

int32_t arm_avgpool_s8_get_buffer_size(const int dim_dst_width, const int ch_src)
{
    (void)dim_dst_width;
    (void)ch_src;
    return 0;
}

static inline int8_t ft_pool_out(int32_t sum, int32_t count, const cmsis_nn_pool_params *p)
{
    sum = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
    return (int8_t)ft_nn_clamp(sum, p->activation.min, p->activation.max);
}

#if FT_NN_DSP
/* One output pixel on the DSP extension: four channels at a time, their sums in the halfwords of
 * two words (SXTAB16 adds bytes 0,2 and 1,3 of each input word); the halfwords are moved into
 * 32-bit sums every 128 taps, before they could overflow (128 x 128 < 2^15). */
__attribute__((noinline)) static void ft_pool_pixel(const int8_t *px, int32_t n_y, int32_t n_x, size_t row,
                                                    int32_t ch, const cmsis_nn_pool_params *p, int8_t *o)
{
    const int32_t count = n_y * n_x, quads = ch & ~3;
    for (int32_t c = 0; c < quads; c += 4) {
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, h02 = 0, h13 = 0, taps = 0;
        const int8_t *r = px + c;
        for (int32_t ky = 0; ky < n_y; ky++, r += row) {
            const int8_t *x_p = r;
            for (int32_t kx = 0; kx < n_x; kx++, x_p += ch) {
                const int32_t x = ft_word(x_p);
                h02 = __sxtab16(h02, x);
                h13 = ft_sxtab16_ror8(h13, x);
                if (++taps == 128) {
                    s0 += (int16_t)h02, s2 += h02 >> 16, s1 += (int16_t)h13, s3 += h13 >> 16;
                    h02 = h13 = taps = 0;
                }
            }
        }
        s0 += (int16_t)h02, s2 += h02 >> 16, s1 += (int16_t)h13, s3 += h13 >> 16;
        o[c] = ft_pool_out(s0, count, p);
        o[c + 1] = ft_pool_out(s1, count, p);
        o[c + 2] = ft_pool_out(s2, count, p);
        o[c + 3] = ft_pool_out(s3, count, p);
    }
    for (int32_t c = quads; c < ch; c++) {
        int32_t sum = 0;
        const int8_t *r = px + c;
        for (int32_t ky = 0; ky < n_y; ky++, r += row) {
            for (int32_t kx = 0; kx < n_x; kx++) {
                sum += r[(size_t)kx * ch];
            }
        }
        o[c] = ft_pool_out(sum, count, p);
    }
}
#endif

arm_cmsis_nn_status arm_avgpool_s8(const cmsis_nn_context *ctx,
                                   const cmsis_nn_pool_params *pool_params,
                                   const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                   const cmsis_nn_dims *filter_dims,
                                   const cmsis_nn_dims *output_dims, int8_t *output_data)
{
    (void)ctx;
    const int32_t in_h = input_dims->h, in_w = input_dims->w, ch = input_dims->c;
    const int32_t out_h = output_dims->h, out_w = output_dims->w;
    const int32_t k_h = filter_dims->h, k_w = filter_dims->w;
    for (int32_t b = 0; b < input_dims->n; b++) {
        const int8_t *in = input_data + (size_t)b * in_h * in_w * ch;
        int8_t *out = output_data + (size_t)b * out_h * out_w * ch;
        for (int32_t oy = 0; oy < out_h; oy++) {
            const int32_t base_y = oy * pool_params->stride.h - pool_params->padding.h;
            for (int32_t ox = 0; ox < out_w; ox++) {
                const int32_t base_x = ox * pool_params->stride.w - pool_params->padding.w;
#if FT_NN_DSP
                {
                    const int32_t y0 = base_y < 0 ? 0 : base_y, x0 = base_x < 0 ? 0 : base_x;
                    const int32_t y1 = base_y + k_h > in_h ? in_h : base_y + k_h;
                    const int32_t x1 = base_x + k_w > in_w ? in_w : base_x + k_w;
                    if (y1 <= y0 || x1 <= x0) {
                        return ARM_CMSIS_NN_ARG_ERROR;
                    }
                    ft_pool_pixel(in + ((size_t)y0 * in_w + x0) * ch, y1 - y0, x1 - x0, (size_t)in_w * ch, ch,
                                  pool_params, out + ((size_t)oy * out_w + ox) * ch);
                    continue;
                }
#endif
                for (int32_t c = 0; c < ch; c++) {
                    int32_t sum = 0, count = 0;
                    for (int32_t ky = 0; ky < k_h; ky++) {
                        const int32_t iy = base_y + ky;
                        if (iy < 0 || iy >= in_h) {
                            continue;
                        }
                        for (int32_t kx = 0; kx < k_w; kx++) {
                            const int32_t ix = base_x + kx;
                            if (ix < 0 || ix >= in_w) {
                                continue;
                            }
                            sum += in[((size_t)iy * in_w + ix) * ch + c];
                            count++;
                        }
                    }
                    if (count == 0) {
                        return ARM_CMSIS_NN_ARG_ERROR;
                    }
                    out[((size_t)oy * out_w + ox) * ch + c] = ft_pool_out(sum, count, pool_params);
                }
            }
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}

/*
 * Reference int8 convolution with CMSIS-NN's arithmetic (fedtiny's own implementation).
 *   acc = bias[oc] + sum (in + input_offset) * w      over the window inside the input
 *   out = clamp(requantize(acc, mult[oc], shift[oc]) + output_offset, act.min, act.max)
 * Padded positions contribute nothing, as the input zero point would.
 * Direct loops: no scratch buffer is needed.
 */
#include "fedtiny/ft_nn.h"
#include "ft_nn_dot.h"
#include "ft_nn_support.h"

#include <stddef.h>
#include <string.h>

/* One window of the input in the weights' layout (KH, KW, C_IN), padding as the value that adds
 * nothing (-input_offset): the im2col column the DSP core multiplies with every filter row. The
 * same size on every build, so the trainer's arena plan is the board's. */
int32_t arm_convolve_s8_get_buffer_size(const cmsis_nn_dims *input_dims, const cmsis_nn_dims *filter_dims)
{
    (void)input_dims;
    return (filter_dims->h * filter_dims->w * filter_dims->c + 3) & ~3;
}

#if FT_NN_DSP
static void ft_conv_dsp(const cmsis_nn_conv_params *p, const cmsis_nn_per_channel_quant_params *q,
                        const cmsis_nn_dims *id, const int8_t *in, const cmsis_nn_dims *fd, const int8_t *w,
                        const int32_t *bias, const cmsis_nn_dims *od, int8_t *out, int8_t *col)
{
    const int32_t in_c = id->c, k_h = fd->h, k_w = fd->w, depth = k_h * k_w * in_c, out_c = od->c;
    const int8_t pad_value = (int8_t)(-p->input_offset);
    int32_t acc[64];
    for (int32_t oy = 0; oy < od->h; oy++) {
        for (int32_t ox = 0; ox < od->w; ox++) {
            const int32_t y0 = oy * p->stride.h - p->padding.h, x0 = ox * p->stride.w - p->padding.w;
            const int8_t *x = col;
            if (k_h == 1 && k_w == 1 && y0 >= 0 && x0 >= 0 && y0 < id->h && x0 < id->w) { /* the pixel itself */
                x = in + ((size_t)y0 * id->w + x0) * in_c;
            } else {
                int8_t *c = col;
                for (int32_t ky = 0; ky < k_h; ky++) {
                    const int32_t iy = y0 + ky * p->dilation.h;
                    for (int32_t kx = 0; kx < k_w; kx++, c += in_c) {
                        const int32_t ix = x0 + kx * p->dilation.w;
                        if (iy < 0 || iy >= id->h || ix < 0 || ix >= id->w) {
                            memset(c, pad_value, (size_t)in_c);
                        } else {
                            memcpy(c, in + ((size_t)iy * id->w + ix) * in_c, (size_t)in_c);
                        }
                    }
                }
            }
            int8_t *o = out + ((size_t)oy * od->w + ox) * out_c;
            for (int32_t o0 = 0; o0 < out_c; o0 += 64) {
                const int32_t n = out_c - o0 < 64 ? out_c - o0 : 64;
                ft_nn_dot_rows(x, w + (size_t)o0 * depth, bias != NULL ? bias + o0 : NULL, depth, n, p->input_offset, 0,
                               acc);
                for (int32_t i = 0; i < n; i++) {
                    const int32_t v = ft_nn_add(ft_nn_requantize(acc[i], q->multiplier[o0 + i], q->shift[o0 + i]),
                                                p->output_offset);
                    o[o0 + i] = (int8_t)ft_nn_clamp(v, p->activation.min, p->activation.max);
                }
            }
        }
    }
}
#endif

arm_cmsis_nn_status arm_convolve_s8(const cmsis_nn_context *ctx,
                                    const cmsis_nn_conv_params *conv_params,
                                    const cmsis_nn_per_channel_quant_params *quant_params,
                                    const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                    const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                    const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                    const cmsis_nn_dims *upscale_dims,
                                    const cmsis_nn_dims *output_dims, int8_t *output_data)
{
    (void)ctx;
    (void)bias_dims;
    if (filter_dims->c != input_dims->c || filter_dims->n != output_dims->c) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    if (upscale_dims != NULL && (upscale_dims->h != 1 || upscale_dims->w != 1)) {
        return ARM_CMSIS_NN_NO_IMPL_ERROR; /* transposed convolution (upscaling by 2) is CMSIS-NN's only */
    }
#if FT_NN_DSP
    if (ctx != NULL && ctx->buf != NULL && ctx->size >= arm_convolve_s8_get_buffer_size(input_dims, filter_dims)) {
        for (int32_t b = 0; b < input_dims->n; b++) {
            ft_conv_dsp(conv_params, quant_params, input_dims,
                        input_data + (size_t)b * input_dims->h * input_dims->w * input_dims->c, filter_dims,
                        filter_data, bias_data, output_dims,
                        output_data + (size_t)b * output_dims->h * output_dims->w * output_dims->c, (int8_t *)ctx->buf);
        }
        return ARM_CMSIS_NN_SUCCESS;
    }
#endif
    const int32_t in_h = input_dims->h, in_w = input_dims->w, in_c = input_dims->c;
    const int32_t k_h = filter_dims->h, k_w = filter_dims->w;
    const int32_t out_h = output_dims->h, out_w = output_dims->w, out_c = output_dims->c;
    const int32_t in_off = conv_params->input_offset, out_off = conv_params->output_offset;
    const int32_t act_min = conv_params->activation.min, act_max = conv_params->activation.max;

    for (int32_t b = 0; b < input_dims->n; b++) {
        const int8_t *in = input_data + (size_t)b * in_h * in_w * in_c;
        int8_t *out = output_data + (size_t)b * out_h * out_w * out_c;
        for (int32_t oy = 0; oy < out_h; oy++) {
            const int32_t base_y = oy * conv_params->stride.h - conv_params->padding.h;
            for (int32_t ox = 0; ox < out_w; ox++) {
                const int32_t base_x = ox * conv_params->stride.w - conv_params->padding.w;
                for (int32_t oc = 0; oc < out_c; oc++) {
                    int32_t acc = bias_data != NULL ? bias_data[oc] : 0;
                    const int8_t *w = filter_data + (size_t)oc * k_h * k_w * in_c;
                    for (int32_t ky = 0; ky < k_h; ky++) {
                        const int32_t iy = base_y + ky * conv_params->dilation.h;
                        if (iy < 0 || iy >= in_h) {
                            continue;
                        }
                        for (int32_t kx = 0; kx < k_w; kx++) {
                            const int32_t ix = base_x + kx * conv_params->dilation.w;
                            if (ix < 0 || ix >= in_w) {
                                continue;
                            }
                            const int8_t *px = in + ((size_t)iy * in_w + ix) * in_c;
                            const int8_t *wk = w + ((size_t)ky * k_w + kx) * in_c;
                            for (int32_t ic = 0; ic < in_c; ic++) {
                                acc = ft_nn_add(acc, ((int32_t)px[ic] + in_off) * (int32_t)wk[ic]);
                            }
                        }
                    }
                    acc = ft_nn_requantize(acc, quant_params->multiplier[oc], quant_params->shift[oc]);
                    acc = ft_nn_add(acc, out_off);
                    out[((size_t)oy * out_w + ox) * out_c + oc] = (int8_t)ft_nn_clamp(acc, act_min, act_max);
                }
            }
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}

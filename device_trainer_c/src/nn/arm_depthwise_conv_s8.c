/*
 * Reference int8 depthwise convolution with CMSIS-NN's arithmetic.
 * Output channel oc = ic * ch_mult + m reads input channel ic; filter [1, HK, WK, C_OUT].
 */
#include "fedtiny/ft_nn.h"
#include "ft_nn_support.h"

#include <stddef.h>

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

arm_cmsis_nn_status arm_depthwise_conv_wrapper_s8(const cmsis_nn_context *ctx,
                                                  const cmsis_nn_dw_conv_params *dw_conv_params,
                                                  const cmsis_nn_per_channel_quant_params *quant_params,
                                                  const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                                  const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                                  const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                                  const cmsis_nn_dims *output_dims, int8_t *output_data)
{
    return arm_depthwise_conv_s8(ctx, dw_conv_params, quant_params, input_dims, input_data, filter_dims, filter_data,
                                 bias_dims, bias_data, output_dims, output_data);
}

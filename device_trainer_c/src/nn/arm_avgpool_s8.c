/*
 * Reference int8 average pooling with CMSIS-NN's arithmetic: the sum over the part of
 * the window inside the input, divided by that count with rounding half away from
 * zero, then clamped. No offsets (input and output share one quantization).
 */
#include "fedtiny/ft_nn.h"
#include "ft_nn_support.h"

#include <stddef.h>

int32_t arm_avgpool_s8_get_buffer_size(const int dim_dst_width, const int ch_src)
{
    (void)dim_dst_width;
    (void)ch_src;
    return 0;
}

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
                    sum = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
                    sum = ft_nn_clamp(sum, pool_params->activation.min, pool_params->activation.max);
                    out[((size_t)oy * out_w + ox) * ch + c] = (int8_t)sum;
                }
            }
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}

/* One frozen int8 layer through the CMSIS-NN-compatible kernel API. */
#include "fedtiny/ft_model.h"
#include "fedtiny/ft_nn.h"

#include <stddef.h>
#include <string.h>

static void ft_fill_dims(const ft_layer *l, cmsis_nn_dims *in, cmsis_nn_dims *filter, cmsis_nn_dims *bias,
                         cmsis_nn_dims *out)
{
    *in = (cmsis_nn_dims){1, l->in_h, l->in_w, l->in_c};
    *out = (cmsis_nn_dims){1, l->out_h, l->out_w, l->out_c};
    *bias = (cmsis_nn_dims){1, 1, 1, l->out_c};
    switch (l->type) {
    case FT_LAYER_CONV2D:
        *filter = (cmsis_nn_dims){l->out_c, l->k_h, l->k_w, l->in_c};
        break;
    case FT_LAYER_DWCONV2D:
        *filter = (cmsis_nn_dims){1, l->k_h, l->k_w, l->out_c};
        break;
    case FT_LAYER_FC:
        *in = (cmsis_nn_dims){1, 1, 1, ft_layer_in_count(l)};
        *filter = (cmsis_nn_dims){ft_layer_in_count(l), 1, 1, l->out_c};
        break;
    default:
        *filter = (cmsis_nn_dims){1, l->k_h, l->k_w, 1};
        break;
    }
}

int32_t ft_layer_scratch_bytes_s8(const ft_layer *l)
{
    cmsis_nn_dims in, filter, bias, out;
    ft_fill_dims(l, &in, &filter, &bias, &out);
    switch (l->type) {
    case FT_LAYER_CONV2D:
        return arm_convolve_s8_get_buffer_size(&in, &filter);
    case FT_LAYER_DWCONV2D: {
        const cmsis_nn_dw_conv_params p = {l->input_offset, l->output_offset, l->ch_mult, {l->stride_w, l->stride_h},
                                           {l->pad_w, l->pad_h}, {l->dil_w, l->dil_h}, {l->act_min, l->act_max}};
        return arm_depthwise_conv_wrapper_s8_get_buffer_size(&p, &in, &filter, &out);
    }
    case FT_LAYER_FC:
        return arm_fully_connected_s8_get_buffer_size(&filter);
    case FT_LAYER_AVGPOOL:
        return arm_avgpool_s8_get_buffer_size(l->out_w, l->in_c);
    default:
        return 0;
    }
}

ft_status ft_layer_forward_s8(const ft_layer *l, const int8_t *input, int8_t *output, void *scratch,
                              int32_t scratch_bytes)
{
    if (l == NULL || input == NULL || output == NULL) {
        return FT_ERR_NULL_ARG;
    }
    if (l->trainable) {
        return FT_ERR_BAD_CONFIG;
    }
    if (scratch_bytes < ft_layer_scratch_bytes_s8(l)) {
        return FT_ERR_ARENA_TOO_SMALL;
    }
    cmsis_nn_dims in, filter, bias, out;
    ft_fill_dims(l, &in, &filter, &bias, &out);
    const cmsis_nn_context ctx = {scratch, scratch_bytes};
    const cmsis_nn_activation act = {l->act_min, l->act_max};
    cmsis_nn_per_channel_quant_params quant = {(int32_t *)l->mult, (int32_t *)l->shift};
    arm_cmsis_nn_status rc = ARM_CMSIS_NN_SUCCESS;
    switch (l->type) {
    case FT_LAYER_CONV2D: {
        const cmsis_nn_conv_params p = {l->input_offset, l->output_offset, {l->stride_w, l->stride_h},
                                        {l->pad_w, l->pad_h}, {l->dil_w, l->dil_h}, act};
        const cmsis_nn_dims no_upscale = {1, 1, 1, 1};
        rc = arm_convolve_s8(&ctx, &p, &quant, &in, input, &filter, l->w_s8, &bias, l->b_s32, &no_upscale, &out,
                             output);
        break;
    }
    case FT_LAYER_DWCONV2D: {
        const cmsis_nn_dw_conv_params p = {l->input_offset, l->output_offset, l->ch_mult, {l->stride_w, l->stride_h},
                                           {l->pad_w, l->pad_h}, {l->dil_w, l->dil_h}, act};
        rc = arm_depthwise_conv_wrapper_s8(&ctx, &p, &quant, &in, input, &filter, l->w_s8, &bias, l->b_s32, &out,
                                           output);
        break;
    }
    case FT_LAYER_FC: {
        const cmsis_nn_fc_params p = {l->input_offset, 0, l->output_offset, act};
        rc = arm_fully_connected_per_channel_s8(&ctx, &p, &quant, &in, input, &filter, l->w_s8, &bias, l->b_s32,
                                                &out, output);
        break;
    }
    case FT_LAYER_AVGPOOL: {
        const cmsis_nn_pool_params p = {{l->stride_w, l->stride_h}, {l->pad_w, l->pad_h}, act};
        rc = arm_avgpool_s8(&ctx, &p, &in, input, &filter, &out, output);
        break;
    }
    case FT_LAYER_FLATTEN:
        memmove(output, input, (size_t)ft_layer_in_count(l));
        break;
    default:
        return FT_ERR_BAD_LAYER_TYPE;
    }
    return rc == ARM_CMSIS_NN_SUCCESS ? FT_OK : FT_ERR_KERNEL;
}

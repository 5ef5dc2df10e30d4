/*
 * Reference int8 fully connected layers with CMSIS-NN's arithmetic:
 *   acc = bias[o] + sum_k (in[k] + input_offset) * (w[o][k] + filter_offset)
 *   out = clamp(requantize(acc, mult, shift) + output_offset, act.min, act.max)
 * Per-tensor (arm_fully_connected_s8) and per-channel (arm_fully_connected_per_channel_s8).
 */
#include "fedtiny/ft_nn.h"
#include "ft_nn_dot.h"
#include "ft_nn_support.h"

#include <stddef.h>

int32_t arm_fully_connected_s8_get_buffer_size(const cmsis_nn_dims *filter_dims)
{
    (void)filter_dims;
    return 0;
}

#if FT_NN_DSP
/* The DSP core over all batches, 64 outputs at a time (a bounded stack). */
static inline __attribute__((always_inline)) void ft_fc_dsp(const cmsis_nn_fc_params *p, const int32_t *mult,
                                                            const int32_t *shift, int32_t per_channel,
                                                            int32_t batches, int32_t depth, int32_t out_c,
                                                            const int8_t *input, const int8_t *filter,
                                                            const int32_t *bias, int8_t *output, int32_t w_offset)
{
    for (int32_t b = 0; b < batches; b++) {
        int32_t acc[64];
        for (int32_t o0 = 0; o0 < out_c; o0 += 64) {
            const int32_t n = out_c - o0 < 64 ? out_c - o0 : 64;
            ft_nn_dot_rows(input + (size_t)b * depth, filter + (size_t)o0 * depth, bias != NULL ? bias + o0 : NULL,
                           depth, n, p->input_offset, w_offset, acc);
            for (int32_t i = 0; i < n; i++) {
                const int32_t ch = per_channel ? o0 + i : 0;
                const int32_t v = ft_nn_add(ft_nn_requantize(acc[i], mult[ch], shift[ch]), p->output_offset);
                output[(size_t)b * out_c + o0 + i] = (int8_t)ft_nn_clamp(v, p->activation.min, p->activation.max);
            }
        }
    }
}

/* Separate functions, so that the symmetric case (TFLite's) keeps its registers. */
#define FT_FC_DSP_FN(name, w_offset)                                                                             \
    __attribute__((noinline)) static void name(const cmsis_nn_fc_params *p, const int32_t *mult,                 \
                                               const int32_t *shift, int32_t per_channel, int32_t batches,       \
                                               int32_t depth, int32_t out_c, const int8_t *input,                \
                                               const int8_t *filter, const int32_t *bias, int8_t *output)        \
    {                                                                                                            \
        ft_fc_dsp(p, mult, shift, per_channel, batches, depth, out_c, input, filter, bias, output, w_offset);    \
    }
FT_FC_DSP_FN(ft_fc_dsp_symmetric, 0)
FT_FC_DSP_FN(ft_fc_dsp_offset, p->filter_offset)
#undef FT_FC_DSP_FN
#endif

static void ft_fc_rows(const cmsis_nn_fc_params *p, const int32_t *mult, const int32_t *shift, int32_t per_channel,
                       int32_t batches, int32_t depth, int32_t out_c, const int8_t *input, const int8_t *filter,
                       const int32_t *bias, int8_t *output)
{
#if FT_NN_DSP
    if (p->filter_offset == 0) {
        ft_fc_dsp_symmetric(p, mult, shift, per_channel, batches, depth, out_c, input, filter, bias, output);
        return;
    }
    if (p->filter_offset >= -255 && p->filter_offset <= 255) { /* every widened weight fits a halfword */
        ft_fc_dsp_offset(p, mult, shift, per_channel, batches, depth, out_c, input, filter, bias, output);
        return;
    }
#endif
    for (int32_t b = 0; b < batches; b++) {
        const int8_t *in = input + (size_t)b * depth;
        for (int32_t o = 0; o < out_c; o++) {
            const int8_t *w = filter + (size_t)o * depth;
            int32_t acc = bias != NULL ? bias[o] : 0;
            for (int32_t k = 0; k < depth; k++) {
                acc = ft_nn_add(acc, ((int32_t)in[k] + p->input_offset) * ((int32_t)w[k] + p->filter_offset));
            }
            const int32_t ch = per_channel ? o : 0;
            acc = ft_nn_add(ft_nn_requantize(acc, mult[ch], shift[ch]), p->output_offset);
            output[(size_t)b * out_c + o] = (int8_t)ft_nn_clamp(acc, p->activation.min, p->activation.max);
        }
    }
}

arm_cmsis_nn_status arm_fully_connected_s8(const cmsis_nn_context *ctx,
                                           const cmsis_nn_fc_params *fc_params,
                                           const cmsis_nn_per_tensor_quant_params *quant_params,
                                           const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                           const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                           const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                           const cmsis_nn_dims *output_dims, int8_t *output_data)
{
    (void)ctx;
    (void)bias_dims;
    if (filter_dims->c != output_dims->c) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    ft_fc_rows(fc_params, &quant_params->multiplier, &quant_params->shift, 0, input_dims->n, filter_dims->n,
               output_dims->c, input_data, filter_data, bias_data, output_data);
    return ARM_CMSIS_NN_SUCCESS;
}

arm_cmsis_nn_status arm_fully_connected_per_channel_s8(const cmsis_nn_context *ctx,
                                                       const cmsis_nn_fc_params *fc_params,
                                                       const cmsis_nn_per_channel_quant_params *quant_params,
                                                       const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                                       const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                                       const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                                       const cmsis_nn_dims *output_dims, int8_t *output_data)
{
    (void)ctx;
    (void)bias_dims;
    if (filter_dims->c != output_dims->c) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    ft_fc_rows(fc_params, quant_params->multiplier, quant_params->shift, 1, input_dims->n, filter_dims->n,
               output_dims->c, input_data, filter_data, bias_data, output_data);
    return ARM_CMSIS_NN_SUCCESS;
}

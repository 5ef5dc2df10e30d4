/*
 * Float32 forward and backward of trainable layers, one sample, NHWC, fixed loop order.
 * Weight layouts match the int8 kernels: conv [C_OUT, HK, WK, C_IN], depthwise
 * [HK, WK, C_OUT], fully connected [C_OUT][IN]. Private to the runtime.
 */
#ifndef FT_LAYERS_F32_H
#define FT_LAYERS_F32_H

#include "fedtiny/ft_model.h"

/* The weights a layer computes with. Float: f holds every weight (layer layout), q == NULL.
 * Int8 (precision FT_PRECISION_INT8): the updated channels live in q as int8 times a float
 * scale per channel, in the gradient layout: with `slot`, channel oc (slot[oc] = r >= 0) has
 * weight j at q[r * row + j] and scale[r], and channels with slot -1 are read from f; without
 * `slot`, q has the layer layout and channel oc's scale is scale[oc]. */
typedef struct {
    const float *f;
    const int8_t *q;
    const float *scale;
    const int16_t *slot;
    int32_t row;
} ft_wview;

/* out = act(layer(in)) */
void ft_layer_forward_f32(const ft_layer *l, const ft_wview *w, const float *b, const float *in, float *out);

/* Weights of one output channel: conv k_h*k_w*in_c, depthwise k_h*k_w, FC the input size. */
int32_t ft_layer_row_f32(const ft_layer *l);
/* Index in the weight tensor of weight j of output channel oc (see ft_layer_row_f32). */
static inline int32_t ft_layer_widx_f32(const ft_layer *l, int32_t oc, int32_t j, int32_t row)
{
    return l->type == FT_LAYER_DWCONV2D ? j * l->out_c + oc : oc * row + j;
}

/* gout: dL/d(out) of the post-activation output `out`; it is masked in place by the
 * activation derivative. Adds dL/dw to gw and dL/db to gb (either may be NULL: not
 * updated) and, if gin != NULL, writes dL/d(in). Without `slot`, gw has the weight layout;
 * with `slot` (one entry per output channel, -1 = not updated), gw is compact: the weights
 * of the updated channel oc are at slot[oc] * row + j. */
void ft_layer_backward_f32(const ft_layer *l, const ft_wview *w, const float *in, const float *out, float *gout,
                           float *gin, float *gw, float *gb, const int16_t *slot);

#endif /* FT_LAYERS_F32_H */

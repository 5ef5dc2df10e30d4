/*
 * Float32 forward and backward of trainable layers, one sample, NHWC, fixed loop order.
 * Weight layouts match the int8 kernels: conv [C_OUT, HK, WK, C_IN], depthwise
 * [HK, WK, C_OUT], fully connected [C_OUT][IN]. Private to the runtime.
 */
#ifndef FT_LAYERS_F32_H
#define FT_LAYERS_F32_H

#include "fedtiny/ft_model.h"

/* out = act(layer(in)) */
void ft_layer_forward_f32(const ft_layer *l, const float *w, const float *b, const float *in, float *out);

/* gout: dL/d(out) of the post-activation output `out`; it is masked in place by the
 * activation derivative. Adds dL/dw and dL/db to gw, gb (NULL for layers without
 * parameters) and, if gin != NULL, writes dL/d(in). */
void ft_layer_backward_f32(const ft_layer *l, const float *w, const float *in, const float *out, float *gout,
                           float *gin, float *gw, float *gb);

#endif /* FT_LAYERS_F32_H */

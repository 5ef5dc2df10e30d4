/* Float32 trainable layers: forward and backward for one sample. See ft_layers_f32.h. */
#include "ft_layers_f32.h"

#include <stddef.h>
#include <string.h>

static float ft_act_f32(int32_t act, float v)
{
    if (act != FT_ACT_NONE && v < 0.0f) {
        return 0.0f;
    }
    if (act == FT_ACT_RELU6 && v > 6.0f) {
        return 6.0f;
    }
    return v;
}

/* Visit every (output position, kernel tap) pair that lands inside the input. */
#define FT_WINDOW_LOOP(l, BODY)                                                                 \
    for (int32_t oy = 0; oy < (l)->out_h; oy++) {                                               \
        for (int32_t ox = 0; ox < (l)->out_w; ox++) {                                           \
            for (int32_t ky = 0; ky < (l)->k_h; ky++) {                                         \
                const int32_t iy = oy * (l)->stride_h - (l)->pad_h + ky * (l)->dil_h;           \
                if (iy < 0 || iy >= (l)->in_h) continue;                                         \
                for (int32_t kx = 0; kx < (l)->k_w; kx++) {                                     \
                    const int32_t ix = ox * (l)->stride_w - (l)->pad_w + kx * (l)->dil_w;       \
                    if (ix < 0 || ix >= (l)->in_w) continue;                                     \
                    BODY                                                                        \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }

static int32_t ft_pool_count(const ft_layer *l, int32_t oy, int32_t ox)
{
    int32_t count = 0;
    for (int32_t ky = 0; ky < l->k_h; ky++) {
        const int32_t iy = oy * l->stride_h - l->pad_h + ky;
        for (int32_t kx = 0; kx < l->k_w; kx++) {
            const int32_t ix = ox * l->stride_w - l->pad_w + kx;
            count += (iy >= 0 && iy < l->in_h && ix >= 0 && ix < l->in_w);
        }
    }
    return count;
}

void ft_layer_forward_f32(const ft_layer *l, const float *w, const float *b, const float *in, float *out)
{
    const int32_t in_w = l->in_w, in_c = l->in_c, out_w = l->out_w, out_c = l->out_c;
    const int32_t n_out = ft_layer_out_count(l);
    switch (l->type) {
    case FT_LAYER_FC: {
        const int32_t depth = ft_layer_in_count(l);
        for (int32_t o = 0; o < out_c; o++) {
            float acc = b[o];
            const float *wr = w + (size_t)o * depth;
            for (int32_t k = 0; k < depth; k++) {
                acc += wr[k] * in[k];
            }
            out[o] = acc;
        }
        break;
    }
    case FT_LAYER_CONV2D:
        for (int32_t p = 0; p < n_out; p++) {
            out[p] = b[p % out_c];
        }
        FT_WINDOW_LOOP(l, {
            const float *px = in + ((size_t)iy * in_w + ix) * in_c;
            float *po = out + ((size_t)oy * out_w + ox) * out_c;
            for (int32_t oc = 0; oc < out_c; oc++) {
                const float *wk = w + (((size_t)oc * l->k_h + ky) * l->k_w + kx) * in_c;
                float acc = po[oc];
                for (int32_t ic = 0; ic < in_c; ic++) {
                    acc += px[ic] * wk[ic];
                }
                po[oc] = acc;
            }
        })
        break;
    case FT_LAYER_DWCONV2D:
        for (int32_t p = 0; p < n_out; p++) {
            out[p] = b[p % out_c];
        }
        FT_WINDOW_LOOP(l, {
            const float *px = in + ((size_t)iy * in_w + ix) * in_c;
            const float *wk = w + ((size_t)ky * l->k_w + kx) * out_c;
            float *po = out + ((size_t)oy * out_w + ox) * out_c;
            for (int32_t oc = 0; oc < out_c; oc++) {
                po[oc] += px[oc / l->ch_mult] * wk[oc];
            }
        })
        break;
    case FT_LAYER_AVGPOOL:
        memset(out, 0, (size_t)n_out * sizeof(float));
        FT_WINDOW_LOOP(l, {
            const float *px = in + ((size_t)iy * in_w + ix) * in_c;
            float *po = out + ((size_t)oy * out_w + ox) * out_c;
            for (int32_t c = 0; c < out_c; c++) {
                po[c] += px[c];
            }
        })
        for (int32_t oy = 0; oy < l->out_h; oy++) {
            for (int32_t ox = 0; ox < out_w; ox++) {
                const float count = (float)ft_pool_count(l, oy, ox);
                float *po = out + ((size_t)oy * out_w + ox) * out_c;
                for (int32_t c = 0; c < out_c; c++) {
                    po[c] = po[c] / count;
                }
            }
        }
        break;
    default: /* flatten */
        memmove(out, in, (size_t)n_out * sizeof(float));
        break;
    }
    for (int32_t p = 0; p < n_out; p++) {
        out[p] = ft_act_f32(l->act, out[p]);
    }
}

int32_t ft_layer_row_f32(const ft_layer *l)
{
    switch (l->type) {
    case FT_LAYER_CONV2D:
        return l->k_h * l->k_w * l->in_c;
    case FT_LAYER_DWCONV2D:
        return l->k_h * l->k_w;
    case FT_LAYER_FC:
        return ft_layer_in_count(l);
    default:
        return 0;
    }
}

/* Where the gradient of weight j of channel oc goes (-1: channel not updated). */
static inline int32_t ft_gidx(const ft_layer *l, const int16_t *slot, int32_t oc, int32_t j, int32_t row)
{
    if (slot != NULL) {
        return slot[oc] < 0 ? -1 : slot[oc] * row + j;
    }
    return ft_layer_widx_f32(l, oc, j, row);
}

void ft_layer_backward_f32(const ft_layer *l, const float *w, const float *in, const float *out, float *gout,
                           float *gin, float *gw, float *gb, const int16_t *slot)
{
    const int32_t in_w = l->in_w, in_c = l->in_c, out_w = l->out_w, out_c = l->out_c;
    const int32_t n_out = ft_layer_out_count(l);
    const int32_t row = ft_layer_row_f32(l);
    for (int32_t p = 0; p < n_out; p++) {
        const float y = out[p];
        const int dead = (l->act != FT_ACT_NONE && y <= 0.0f) || (l->act == FT_ACT_RELU6 && y >= 6.0f);
        if (dead) {
            gout[p] = 0.0f;
        }
    }
    if (gin != NULL) {
        memset(gin, 0, (size_t)ft_layer_in_count(l) * sizeof(float));
    }
    if (gb != NULL) {
        for (int32_t p = 0; p < n_out; p++) {
            gb[p % out_c] += gout[p];
        }
    }
    switch (l->type) {
    case FT_LAYER_FC:
        if (gw != NULL) {
            for (int32_t o = 0; o < out_c; o++) {
                if (slot != NULL && slot[o] < 0) {
                    continue;
                }
                const float g = gout[o];
                float *gwr = gw + ft_gidx(l, slot, o, 0, row);
                for (int32_t k = 0; k < row; k++) {
                    gwr[k] += g * in[k];
                }
            }
        }
        if (gin != NULL) {
            for (int32_t o = 0; o < out_c; o++) {
                const float g = gout[o];
                const float *wr = w + (size_t)o * row;
                for (int32_t k = 0; k < row; k++) {
                    gin[k] += g * wr[k];
                }
            }
        }
        break;
    case FT_LAYER_CONV2D:
        FT_WINDOW_LOOP(l, {
            const float *px = in + ((size_t)iy * in_w + ix) * in_c;
            const float *go = gout + ((size_t)oy * out_w + ox) * out_c;
            float *gi = gin != NULL ? gin + ((size_t)iy * in_w + ix) * in_c : NULL;
            const int32_t tap = (ky * l->k_w + kx) * in_c;
            for (int32_t oc = 0; oc < out_c; oc++) {
                const float g = go[oc];
                const int32_t gi0 = gw != NULL ? ft_gidx(l, slot, oc, tap, row) : -1;
                if (gi0 >= 0) {
                    for (int32_t ic = 0; ic < in_c; ic++) {
                        gw[gi0 + ic] += g * px[ic];
                    }
                }
                if (gi != NULL) {
                    const float *wk = w + (size_t)oc * row + tap;
                    for (int32_t ic = 0; ic < in_c; ic++) {
                        gi[ic] += g * wk[ic];
                    }
                }
            }
        })
        break;
    case FT_LAYER_DWCONV2D:
        FT_WINDOW_LOOP(l, {
            const float *px = in + ((size_t)iy * in_w + ix) * in_c;
            const float *go = gout + ((size_t)oy * out_w + ox) * out_c;
            const int32_t tap = ky * l->k_w + kx;
            if (gw != NULL) {
                for (int32_t oc = 0; oc < out_c; oc++) {
                    const int32_t gi0 = ft_gidx(l, slot, oc, tap, row);
                    if (gi0 >= 0) {
                        gw[gi0] += go[oc] * px[oc / l->ch_mult];
                    }
                }
            }
            if (gin != NULL) {
                float *gi = gin + ((size_t)iy * in_w + ix) * in_c;
                const float *wk = w + (size_t)tap * out_c;
                for (int32_t oc = 0; oc < out_c; oc++) {
                    gi[oc / l->ch_mult] += go[oc] * wk[oc];
                }
            }
        })
        break;
    case FT_LAYER_AVGPOOL:
        if (gin != NULL) {
            FT_WINDOW_LOOP(l, {
                const float count = (float)ft_pool_count(l, oy, ox);
                const float *go = gout + ((size_t)oy * out_w + ox) * out_c;
                float *gi = gin + ((size_t)iy * in_w + ix) * in_c;
                for (int32_t c = 0; c < out_c; c++) {
                    gi[c] += go[c] / count;
                }
            })
        }
        break;
    default: /* flatten */
        if (gin != NULL) {
            memmove(gin, gout, (size_t)n_out * sizeof(float));
        }
        break;
    }
}

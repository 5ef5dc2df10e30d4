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

/* Weight j of channel oc of an int8 view: its int8 row times the row's scale, or the float
 * weight for channels the view does not hold. */
static inline float ft_wq(const ft_wview *v, int32_t oc, int32_t j, int32_t idx)
{
    const int32_t r = v->slot != NULL ? v->slot[oc] : oc;
    if (r < 0) {
        return v->f[idx];
    }
    return (float)v->q[v->slot != NULL ? r * v->row + j : idx] * v->scale[r];
}

#define FT_NAME(x) ft_##x##_plain
#define FT_W(oc, j, idx) (v->f[(idx)])
#include "ft_layers_f32_impl.inc"
#undef FT_NAME
#undef FT_W

#define FT_NAME(x) ft_##x##_int8
#define FT_W(oc, j, idx) ft_wq(v, (oc), (j), (idx))
#include "ft_layers_f32_impl.inc"
#undef FT_NAME
#undef FT_W

void ft_layer_forward_f32(const ft_layer *l, const ft_wview *w, const float *b, const float *in, float *out)
{
    if (w->q != NULL) {
        ft_forward_int8(l, w, b, in, out);
    } else {
        ft_forward_plain(l, w, b, in, out);
    }
}

void ft_layer_backward_f32(const ft_layer *l, const ft_wview *w, const float *in, const float *out, float *gout,
                           float *gin, float *gw, float *gb, const int16_t *slot)
{
    if (w->q != NULL) {
        ft_backward_int8(l, w, in, out, gout, gin, gw, gb, slot);
    } else {
        ft_backward_plain(l, w, in, out, gout, gin, gw, gb, slot);
    }
}

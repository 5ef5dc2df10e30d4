/* Float32 trainable layers: forward and backward for one sample. See ft_layers_f32.h. */
#include "ft_layers_f32.h"
#include "ft_nn_support.h"

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

/* A convolution's window at output position (oy, ox) as runs of contiguous taps: rows ky0..ky1,
 * and per row `runs` runs of `len` values from column kx0 on (input and weights alike): with
 * dilation 1 the row's taps inside the input are one run of (kx1 - kx0) * in_c values, otherwise
 * each tap is a run of in_c. Run r of row ky starts at input row by + ky * dil_h, column
 * bx + (kx0 + r) * dil_w, and at weight (ky * k_w + kx0 + r) * in_c of a channel's row. */
typedef struct {
    int32_t by, bx, ky0, ky1, kx0, runs, len;
} ft_win;

static inline ft_win ft_window(const ft_layer *l, int32_t oy, int32_t ox)
{
    ft_win w;
    int32_t kx1;
    w.by = oy * l->stride_h - l->pad_h;
    w.bx = ox * l->stride_w - l->pad_w;
    ft_nn_taps(w.by, l->dil_h, l->in_h, l->k_h, &w.ky0, &w.ky1);
    ft_nn_taps(w.bx, l->dil_w, l->in_w, l->k_w, &w.kx0, &kx1);
    w.runs = kx1 <= w.kx0 ? 0 : (l->dil_w == 1 ? 1 : kx1 - w.kx0);
    w.len = l->dil_w == 1 ? (kx1 - w.kx0) * l->in_c : l->in_c;
    return w;
}

/* Every run of every window, in window order; BODY sees oy, ox, iy, ix, tap and w.len. */
#define FT_RUN_LOOP(l, BODY)                                                                    \
    for (int32_t oy = 0; oy < (l)->out_h; oy++) {                                               \
        for (int32_t ox = 0; ox < (l)->out_w; ox++) {                                           \
            const ft_win w = ft_window((l), oy, ox);                                            \
            for (int32_t ky = w.ky0; ky < w.ky1; ky++) {                                        \
                const int32_t iy = w.by + ky * (l)->dil_h;                                      \
                for (int32_t r = 0; r < w.runs; r++) {                                          \
                    const int32_t ix = w.bx + (w.kx0 + r) * (l)->dil_w;                         \
                    const int32_t tap = (ky * (l)->k_w + w.kx0 + r) * (l)->in_c;                \
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

/* The inner loops over contiguous runs of weights, unrolled by four by hand (the tail after).
 * Each sum is still added in index order with one rounding per operation (-ffp-contract=off), so
 * the results are the rolled loops' to the bit on every build. */
static inline float ft_dot_f32(float acc, const float *w, const float *x, int32_t n)
{
    for (const float *end = w + (n & ~3); w != end; w += 4, x += 4) {
        acc += w[0] * x[0];
        acc += w[1] * x[1];
        acc += w[2] * x[2];
        acc += w[3] * x[3];
    }
    for (int32_t j = 0; j < (n & 3); j++) {
        acc += w[j] * x[j];
    }
    return acc;
}

static inline float ft_dot_s8(float acc, const int8_t *q, float s, const float *x, int32_t n)
{
    for (const int8_t *end = q + (n & ~3); q != end; q += 4, x += 4) {
        acc += ((float)q[0] * s) * x[0];
        acc += ((float)q[1] * s) * x[1];
        acc += ((float)q[2] * s) * x[2];
        acc += ((float)q[3] * s) * x[3];
    }
    for (int32_t j = 0; j < (n & 3); j++) {
        acc += ((float)q[j] * s) * x[j];
    }
    return acc;
}

/* y[j] += a * x[j] */
static inline void ft_axpy_f32(float *restrict y, float a, const float *restrict x, int32_t n)
{
    for (const float *end = x + (n & ~3); x != end; y += 4, x += 4) {
        const float y0 = y[0], y1 = y[1], y2 = y[2], y3 = y[3];
        y[0] = y0 + a * x[0];
        y[1] = y1 + a * x[1];
        y[2] = y2 + a * x[2];
        y[3] = y3 + a * x[3];
    }
    for (int32_t j = 0; j < (n & 3); j++) {
        y[j] += a * x[j];
    }
}

static inline void ft_axpy_s8(float *restrict y, float a, const int8_t *restrict q, float s, int32_t n)
{
    for (const int8_t *end = q + (n & ~3); q != end; y += 4, q += 4) {
        const float y0 = y[0], y1 = y[1], y2 = y[2], y3 = y[3];
        y[0] = y0 + a * ((float)q[0] * s);
        y[1] = y1 + a * ((float)q[1] * s);
        y[2] = y2 + a * ((float)q[2] * s);
        y[3] = y3 + a * ((float)q[3] * s);
    }
    for (int32_t j = 0; j < (n & 3); j++) {
        y[j] += a * ((float)q[j] * s);
    }
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

/* The same over n weights of channel oc from weight j (index idx in the weight layout) on, which
 * lie next to each other in both layouts (fully connected and convolution rows). */
static inline float ft_dot_wq(float acc, const ft_wview *v, int32_t oc, int32_t j, int32_t idx, const float *x,
                              int32_t n)
{
    const int32_t r = v->slot != NULL ? v->slot[oc] : oc;
    if (r < 0) {
        return ft_dot_f32(acc, v->f + idx, x, n);
    }
    return ft_dot_s8(acc, v->q + (v->slot != NULL ? r * v->row + j : idx), v->scale[r], x, n);
}

static inline void ft_axpy_wq(float *y, float a, const ft_wview *v, int32_t oc, int32_t j, int32_t idx, int32_t n)
{
    const int32_t r = v->slot != NULL ? v->slot[oc] : oc;
    if (r < 0) {
        ft_axpy_f32(y, a, v->f + idx, n);
    } else {
        ft_axpy_s8(y, a, v->q + (v->slot != NULL ? r * v->row + j : idx), v->scale[r], n);
    }
}

#define FT_NAME(x) ft_##x##_plain
#define FT_W(oc, j, idx) (v->f[(idx)])
#define FT_DOT(acc, oc, j, idx, x, n) ft_dot_f32((acc), v->f + (idx), (x), (n))
#define FT_AXPY(y, a, oc, j, idx, n) ft_axpy_f32((y), (a), v->f + (idx), (n))
#define FT_PLAIN_WEIGHTS 1
#include "ft_layers_f32_impl.inc"
#undef FT_NAME
#undef FT_W
#undef FT_DOT
#undef FT_AXPY
#undef FT_PLAIN_WEIGHTS

#define FT_NAME(x) ft_##x##_int8
#define FT_W(oc, j, idx) ft_wq(v, (oc), (j), (idx))
#define FT_DOT(acc, oc, j, idx, x, n) ft_dot_wq((acc), v, (oc), (j), (idx), (x), (n))
#define FT_AXPY(y, a, oc, j, idx, n) ft_axpy_wq((y), (a), v, (oc), (j), (idx), (n))
#define FT_PLAIN_WEIGHTS 0
#include "ft_layers_f32_impl.inc"
#undef FT_NAME
#undef FT_W
#undef FT_DOT
#undef FT_AXPY
#undef FT_PLAIN_WEIGHTS

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

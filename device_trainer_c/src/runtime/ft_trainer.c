/* Trainer runtime: init, per-sample forward/backward, SGD, epochs, evaluation. */
#include "fedtiny/ft_trainer.h"

#include <stddef.h>
#include <string.h>

#include "fedtiny/ft_math.h"
#include "ft_layers_f32.h"

ft_status ft_trainer_layout(const ft_model *m, const ft_train_config *cfg, uint8_t *base, ft_trainer *tr,
                            ft_plan *plan);

/* Channel subsets: the `nsel` output channels with the largest weight L2 norm in the model
 * (ties: lower index) get gradient rows in increasing channel order. */
static void ft_select_channels(const ft_layer *l, ft_layer_state *s)
{
    for (int32_t oc = 0; oc < l->out_c; oc++) {
        s->slot[oc] = -1;
    }
    for (int32_t n = 0; n < s->nsel; n++) {
        int32_t best = -1;
        float best_norm = 0.0f;
        for (int32_t oc = 0; oc < l->out_c; oc++) {
            if (s->slot[oc] >= 0) {
                continue;
            }
            float norm = 0.0f;
            for (int32_t j = 0; j < s->row; j++) {
                const float v = l->w_f32[ft_layer_widx_f32(l, oc, j, s->row)];
                norm += v * v;
            }
            if (best < 0 || norm > best_norm) {
                best = oc;
                best_norm = norm;
            }
        }
        s->slot[best] = 0; /* chosen; rows are numbered below */
    }
    int16_t next = 0;
    for (int32_t oc = 0; oc < l->out_c; oc++) {
        if (s->slot[oc] >= 0) {
            s->slot[oc] = next++;
        }
    }
}

static const float *ft_b(const ft_trainer *tr, int32_t k)
{
    return tr->ls[k].b != NULL ? tr->ls[k].b : tr->model->layers[tr->model->first_trainable + k].b_f32;
}

/* Gradient row of output channel oc: itself for full updates, its slot (or -1) for subsets. */
static inline int32_t ft_grad_row(const ft_layer_state *s, int32_t oc) { return s->slot != NULL ? s->slot[oc] : oc; }

/* Index of weight j of channel oc in the layer's gradient (and momentum/anchor/int8) storage. */
static inline int32_t ft_grad_index(const ft_layer *l, const ft_layer_state *s, int32_t oc, int32_t j)
{
    return s->slot != NULL ? s->slot[oc] * s->row + j : ft_layer_widx_f32(l, oc, j, s->row);
}

/* The weights trainable layer k computes with (see ft_wview). */
static ft_wview ft_wv(const ft_trainer *tr, int32_t k)
{
    const ft_layer_state *s = &tr->ls[k];
    const ft_wview v = {s->w != NULL ? s->w : tr->model->layers[tr->model->first_trainable + k].w_f32, s->q, s->qs,
                        s->slot, s->row};
    return v;
}

/* Current value of weight j of channel oc of trainable layer k. */
static float ft_weight(const ft_trainer *tr, int32_t k, int32_t oc, int32_t j)
{
    const ft_layer *l = &tr->model->layers[tr->model->first_trainable + k];
    const ft_layer_state *s = &tr->ls[k];
    if (s->q != NULL && ft_grad_row(s, oc) >= 0) {
        return (float)s->q[ft_grad_index(l, s, oc, j)] * s->qs[ft_grad_row(s, oc)];
    }
    return ft_wv(tr, k).f[ft_layer_widx_f32(l, oc, j, s->row)];
}

/* floor(x) for |x| < 2^23, and x clamped to the int8 weight range first. */
static float ft_clampf(float x, float lo, float hi) { return !(x > lo) ? lo : (x > hi ? hi : x); }
static int32_t ft_floor_i32(float x)
{
    int32_t t = (int32_t)x;
    return (float)t > x ? t - 1 : t;
}
/* Nearest integer in [-127, 127], halves away from zero. */
static int8_t ft_round_s8(float x)
{
    x = ft_clampf(x, -127.0f, 127.0f);
    int32_t t = (int32_t)x;
    const float frac = x - (float)t;
    t += frac >= 0.5f ? 1 : (frac <= -0.5f ? -1 : 0);
    return (int8_t)t;
}

/* Per-channel int8 quantization of the updated channels of layer k from float weights w (layer layout). */
static void ft_quantize_rows(const ft_layer *l, ft_layer_state *s, const float *w)
{
    for (int32_t oc = 0; oc < l->out_c; oc++) {
        const int32_t r = ft_grad_row(s, oc);
        if (r < 0) {
            continue;
        }
        float amax = 0.0f;
        for (int32_t j = 0; j < s->row; j++) {
            const float v = w[ft_layer_widx_f32(l, oc, j, s->row)];
            const float a = v < 0.0f ? -v : v;
            amax = a > amax ? a : amax;
        }
        const float sc = amax > 0.0f ? amax / 127.0f : 1.0f;
        s->qs[r] = sc;
        for (int32_t j = 0; j < s->row; j++) {
            s->q[ft_grad_index(l, s, oc, j)] = ft_round_s8(w[ft_layer_widx_f32(l, oc, j, s->row)] / sc);
        }
    }
}

ft_status ft_trainer_init(ft_trainer *tr, const ft_model *model, const ft_train_config *cfg, void *arena,
                          uint32_t arena_size)
{
    if (tr == NULL || model == NULL || cfg == NULL || arena == NULL) {
        return FT_ERR_NULL_ARG;
    }
    memset(tr, 0, sizeof *tr);
    ft_plan plan;
    ft_status st = ft_trainer_plan(model, cfg, &plan);
    if (st != FT_OK) {
        return st;
    }
    if (arena_size < plan.arena_bytes) {
        return FT_ERR_ARENA_TOO_SMALL;
    }
    if (((uintptr_t)arena & (FT_ARENA_ALIGN - 1u)) != 0) {
        return FT_ERR_BAD_CONFIG;
    }
    st = ft_trainer_layout(model, cfg, (uint8_t *)arena, tr, &tr->plan);
    if (st != FT_OK) {
        return st;
    }
    tr->model = model;
    tr->cfg = *cfg;
    tr->arena = (uint8_t *)arena;
    tr->arena_size = arena_size;
    const int32_t n_train = model->num_layers - model->first_trainable;
    for (int32_t k = 0; k < n_train; k++) {
        const ft_layer *l = &model->layers[model->first_trainable + k];
        ft_layer_state *s = &tr->ls[k];
        if (s->w != NULL) {
            memcpy(s->w, l->w_f32, (size_t)l->weight_count * sizeof(float));
        }
        if (s->b != NULL) {
            memcpy(s->b, l->b_f32, (size_t)l->bias_count * sizeof(float));
        }
        if (s->slot != NULL) {
            ft_select_channels(l, s);
        }
        if (s->q != NULL) {
            ft_quantize_rows(l, s, l->w_f32);
        }
        if (s->mw != NULL) {
            memset(s->mw, 0, (size_t)s->nsel * (size_t)s->row * sizeof(float));
        }
        if (s->mb != NULL) {
            memset(s->mb, 0, (size_t)l->out_c * sizeof(float));
        }
    }
    memset(tr->grads, 0, tr->plan.grads_bytes);
    tr->rng_key = ft_rounding_key(0);
    tr->rng_ctr = 0;
    tr->initialized = 1;
    return ft_trainer_set_anchor(tr);
}

ft_status ft_trainer_set_anchor(ft_trainer *tr)
{
    if (tr == NULL) {
        return FT_ERR_NULL_ARG;
    }
    if (!tr->initialized) {
        return FT_ERR_NOT_INITIALIZED;
    }
    const ft_model *m = tr->model;
    for (int32_t k = 0; k < m->num_layers - m->first_trainable; k++) {
        const ft_layer *l = &m->layers[m->first_trainable + k];
        ft_layer_state *s = &tr->ls[k];
        if (s->aw != NULL) {
            for (int32_t oc = 0; oc < l->out_c; oc++) {
                for (int32_t j = 0; ft_grad_row(s, oc) >= 0 && j < s->row; j++) {
                    s->aw[ft_grad_index(l, s, oc, j)] = ft_weight(tr, k, oc, j);
                }
            }
        }
        if (s->ab != NULL) {
            memcpy(s->ab, s->b, (size_t)l->out_c * sizeof(float));
        }
    }
    return FT_OK;
}

uint32_t ft_trainer_arena_hwm(const ft_trainer *tr) { return tr != NULL ? tr->hwm : 0; }

uint32_t ft_epoch_key(uint32_t seed, uint32_t epoch) { return ft_hash32(ft_hash32(seed) ^ (epoch * 0x9E3779B9u)); }

uint32_t ft_rounding_key(uint32_t seed) { return ft_hash32(seed ^ 0xA511E9B3u); }

static ft_status ft_check_data(const ft_trainer *tr, const ft_dataset *data)
{
    if (tr == NULL || data == NULL) {
        return FT_ERR_NULL_ARG;
    }
    if (!tr->initialized) {
        return FT_ERR_NOT_INITIALIZED;
    }
    const int floats = tr->cfg.start_layer > 0;
    if (data->count < 0 || data->sample_size != tr->plan.sample_size ||
        (data->count > 0 && ((floats ? (const void *)data->xf : (const void *)data->x) == NULL || data->y == NULL))) {
        return FT_ERR_BAD_DATA;
    }
    for (int32_t i = 0; i < data->count; i++) {
        if (data->y[i] >= tr->model->num_classes) {
            return FT_ERR_BAD_LABEL;
        }
    }
    return FT_OK;
}

#define FT_PROBE(tr, ev, layer)                                                                              \
    do {                                                                                                       \
        if ((tr)->probe != NULL) {                                                                             \
            (tr)->probe((tr)->probe_ctx, (ev), (layer));                                                       \
        }                                                                                                      \
    } while (0)

/* Forward sample i; the logits end in acts[L]. */
static ft_status ft_forward(ft_trainer *tr, const ft_dataset *data, uint32_t i)
{
    const ft_model *m = tr->model;
    FT_PROBE(tr, FT_PROBE_BEGIN, -1);
    const int32_t first = m->first_trainable;
    const int32_t k0 = tr->cfg.start_layer;
    if (k0 > 0) { /* cached float activations enter trainable layer k0 (read only) */
        tr->acts[k0] = (float *)(uintptr_t)(data->xf + (size_t)i * (size_t)data->sample_size);
        for (int32_t k = k0; k < m->num_layers - first; k++) {
            const ft_wview v = ft_wv(tr, k);
            ft_layer_forward_f32(&m->layers[first + k], &v, ft_b(tr, k), tr->acts[k], tr->acts[k + 1]);
            FT_PROBE(tr, FT_PROBE_FORWARD, k);
        }
        return FT_OK;
    }
    const int8_t *x = data->x + (size_t)i * (size_t)data->sample_size;
    const int8_t *feat = x;
    float scale = m->input_scale;
    int32_t zp = m->input_zero_point;
    if (tr->cfg.with_prefix && first > 0) {
        int slot = 0;
        for (int32_t i = 0; i < first; i++) {
            const ft_layer *l = &m->layers[i];
            if (l->type == FT_LAYER_FLATTEN) {
                continue;
            }
            ft_status st = ft_layer_forward_s8(l, feat, tr->prefix[slot], tr->scratch, (int32_t)tr->plan.scratch_bytes);
            if (st != FT_OK) {
                return st;
            }
            feat = tr->prefix[slot];
            slot ^= 1;
            FT_PROBE(tr, FT_PROBE_PREFIX, i);
        }
    }
    if (first > 0) {
        scale = m->layers[first - 1].out_scale;
        zp = m->layers[first - 1].output_offset;
    }
    float *a0 = tr->acts[0];
    for (int32_t k = 0; k < tr->plan.feature_size; k++) {
        a0[k] = scale * (float)((int32_t)feat[k] - zp);
    }
    FT_PROBE(tr, FT_PROBE_INPUT, -1);
    for (int32_t i = first; i < m->num_layers; i++) {
        const int32_t k = i - first;
        const ft_wview v = ft_wv(tr, k);
        ft_layer_forward_f32(&m->layers[i], &v, ft_b(tr, k), tr->acts[k], tr->acts[k + 1]);
        FT_PROBE(tr, FT_PROBE_FORWARD, k);
    }
    return FT_OK;
}

/* Softmax cross-entropy of the logits; writes dL/dlogits to grad (if not NULL). */
static float ft_softmax_xent(const float *z, int32_t n, int32_t label, float *grad, int32_t *argmax)
{
    int32_t best = 0;
    for (int32_t c = 1; c < n; c++) {
        if (z[c] > z[best]) {
            best = c;
        }
    }
    *argmax = best;
    const float zmax = z[best];
    float sum = 0.0f;
    for (int32_t c = 0; c < n; c++) {
        sum += ft_expf(z[c] - zmax);
    }
    if (grad != NULL) {
        for (int32_t c = 0; c < n; c++) {
            grad[c] = ft_expf(z[c] - zmax) / sum - (c == label ? 1.0f : 0.0f);
        }
    }
    return ft_logf(sum) - (z[label] - zmax);
}

static void ft_backward(ft_trainer *tr)
{
    const ft_model *m = tr->model;
    const int32_t first = m->first_trainable, n_train = m->num_layers - first;
    const int32_t k_min = tr->plan.first_backward;
    for (int32_t k = n_train - 1; k >= k_min; k--) {
        const ft_layer_state *s = &tr->ls[k];
        float *gout = tr->grad_acts[(n_train - 1 - k) % 2];
        float *gin = k > k_min ? tr->grad_acts[(n_train - k) % 2] : NULL;
        const ft_wview v = ft_wv(tr, k);
        ft_layer_backward_f32(&m->layers[first + k], &v, tr->acts[k], tr->acts[k + 1], gout, gin, s->gw, s->gb,
                              s->slot);
        FT_PROBE(tr, FT_PROBE_BACKWARD, k);
    }
}

/* Forward, loss and backward of sample i; gradients are added to tr->grads. */
static ft_status ft_sample_grads(ft_trainer *tr, const ft_dataset *data, uint32_t i, ft_stats *acc)
{
    const int32_t n_train = tr->model->num_layers - tr->model->first_trainable;
    ft_status st = ft_forward(tr, data, i);
    if (st != FT_OK) {
        return st;
    }
    int32_t pred;
    acc->loss += ft_softmax_xent(tr->acts[n_train], tr->model->num_classes, data->y[i], tr->grad_acts[0], &pred);
    acc->correct += pred == data->y[i];
    acc->count += 1;
    FT_PROBE(tr, FT_PROBE_LOSS, -1);
    ft_backward(tr);
    return FT_OK;
}

ft_status ft_trainer_accumulate(ft_trainer *tr, const ft_dataset *data, const uint32_t *idx, int32_t n,
                                ft_stats *stats)
{
    ft_status st = ft_check_data(tr, data);
    if (st != FT_OK) {
        return st;
    }
    if (n < 0 || n > data->count) {
        return FT_ERR_BAD_DATA;
    }
    memset(tr->grads, 0, tr->plan.grads_bytes);
    ft_stats s = {0.0f, 0, 0, 0};
    for (int32_t j = 0; j < n; j++) {
        const uint32_t i = idx != NULL ? idx[j] : (uint32_t)j;
        if (i >= (uint32_t)data->count) {
            return FT_ERR_BAD_DATA;
        }
        if ((st = ft_sample_grads(tr, data, i, &s)) != FT_OK) {
            return st;
        }
    }
    if (stats != NULL) {
        *stats = s;
    }
    return FT_OK;
}

/* The hyperparameters of one SGD step, read from the config once: a float store through a
 * weight pointer could alias the config and force a reload per weight. */
typedef struct {
    float lr, wd, mu, beta, inv_n;
} ft_sgd_k;

/* The SGD direction d = g/n + wd p + prox (p - anchor), through momentum when enabled;
 * the step is p - lr * d (float) or q - lr * d / s (int8, QAS). */
static inline float ft_sgd_dir(const ft_sgd_k *k, float p, float g, float *m, const float *a)
{
    float d = g * k->inv_n + k->wd * p;
    if (a != NULL) {
        d = d + k->mu * (p - *a);
    }
    if (m != NULL) {
        *m = k->beta * *m + d;
        d = *m;
    }
    return d;
}

/* The float step over n weights w[j * ws] with gradients g[j * gs] (momentum and anchor
 * alongside the gradient); has_m and has_a are constants, so the tests for momentum and anchor
 * are taken once per run, not per weight. */
static inline __attribute__((always_inline)) void ft_sgd_run(const ft_sgd_k *k, float *w, int32_t ws,
                                                             const float *g, float *m, const float *a, int32_t gs,
                                                             int32_t n, int has_m, int has_a)
{
    const ft_sgd_k kk = *k;
    for (int32_t j = 0; j < n; j++, w += ws, g += gs) {
        const float p = *w;
        const float d = ft_sgd_dir(&kk, p, *g, has_m ? m + (size_t)j * gs : NULL, has_a ? a + (size_t)j * gs : NULL);
        *w = p - kk.lr * d;
    }
}

static void ft_sgd_row(const ft_sgd_k *k, float *w, int32_t ws, const float *g, float *m, const float *a,
                       int32_t gs, int32_t n)
{
    if (m != NULL && a != NULL) {
        ft_sgd_run(k, w, ws, g, m, a, gs, n, 1, 1);
    } else if (m != NULL) {
        ft_sgd_run(k, w, ws, g, m, NULL, gs, n, 1, 0);
    } else if (a != NULL) {
        ft_sgd_run(k, w, ws, g, NULL, a, gs, n, 0, 1);
    } else {
        ft_sgd_run(k, w, ws, g, NULL, NULL, gs, n, 0, 0);
    }
}

/* QAS step of int8 weight q with scale sc (see FT_PRECISION_INT8). */
static int8_t ft_step_s8(ft_trainer *tr, int8_t q, float sc, float d)
{
    const float x = (float)q - tr->cfg.lr * d / sc;
    if (tr->cfg.rounding == FT_ROUND_NEAREST) {
        return ft_round_s8(x);
    }
    const float xc = ft_clampf(x, -128.0f, 128.0f);
    const int32_t fl = ft_floor_i32(xc);
    const float u = ft_uniform(tr->rng_key, tr->rng_ctr++);
    const int32_t r = fl + (u < xc - (float)fl ? 1 : 0);
    return (int8_t)(r < -127 ? -127 : (r > 127 ? 127 : r));
}

ft_status ft_trainer_apply(ft_trainer *tr, int32_t n)
{
    if (tr == NULL) {
        return FT_ERR_NULL_ARG;
    }
    if (!tr->initialized) {
        return FT_ERR_NOT_INITIALIZED;
    }
    if (n < 1) {
        return FT_ERR_BAD_CONFIG;
    }
    FT_PROBE(tr, FT_PROBE_BEGIN_APPLY, -1);
    const ft_train_config *c = &tr->cfg;
    const ft_sgd_k sk = {c->lr, c->weight_decay, c->prox_mu, c->momentum, 1.0f / (float)n};
    const ft_model *m = tr->model;
    for (int32_t k = 0; k < m->num_layers - m->first_trainable; k++) {
        const ft_layer *l = &m->layers[m->first_trainable + k];
        ft_layer_state *s = &tr->ls[k];
        if (s->gw != NULL) {
            for (int32_t oc = 0; oc < l->out_c; oc++) {
                const int32_t r = ft_grad_row(s, oc);
                if (r >= 0 && s->q == NULL) { /* float weights: the channel's row in one run */
                    const int32_t gi = ft_grad_index(l, s, oc, 0), dw = l->type == FT_LAYER_DWCONV2D;
                    const int32_t gs = dw && s->slot == NULL ? l->out_c : 1;
                    ft_sgd_row(&sk, s->w + ft_layer_widx_f32(l, oc, 0, s->row), dw ? l->out_c : 1, s->gw + gi,
                               s->mw != NULL ? s->mw + gi : NULL, s->aw != NULL ? s->aw + gi : NULL, gs, s->row);
                    continue;
                }
                for (int32_t j = 0; r >= 0 && j < s->row; j++) { /* int8 weights (QAS) */
                    const int32_t gi = ft_grad_index(l, s, oc, j);
                    float *mom = s->mw != NULL ? s->mw + gi : NULL;
                    const float *anchor = s->aw != NULL ? s->aw + gi : NULL;
                    const float w = (float)s->q[gi] * s->qs[r];
                    s->q[gi] = ft_step_s8(tr, s->q[gi], s->qs[r], ft_sgd_dir(&sk, w, s->gw[gi], mom, anchor));
                }
            }
        }
        if (s->gb != NULL) {
            ft_sgd_row(&sk, s->b, 1, s->gb, s->mb, s->ab, 1, l->out_c);
        }
    }
    FT_PROBE(tr, FT_PROBE_APPLY, -1);
    return FT_OK;
}

static ft_status ft_check_layer(const ft_trainer *tr, int32_t k)
{
    if (tr == NULL) {
        return FT_ERR_NULL_ARG;
    }
    if (!tr->initialized) {
        return FT_ERR_NOT_INITIALIZED;
    }
    return k < 0 || k >= tr->model->num_layers - tr->model->first_trainable ? FT_ERR_BAD_CONFIG : FT_OK;
}

ft_status ft_trainer_layer_params(const ft_trainer *tr, int32_t k, float *w, float *b)
{
    ft_status st = ft_check_layer(tr, k);
    if (st != FT_OK) {
        return st;
    }
    const ft_layer *l = &tr->model->layers[tr->model->first_trainable + k];
    const ft_layer_state *s = &tr->ls[k];
    if (w != NULL && l->weight_count > 0) {
        for (int32_t oc = 0; oc < l->out_c; oc++) {
            for (int32_t j = 0; j < s->row; j++) {
                w[ft_layer_widx_f32(l, oc, j, s->row)] = ft_weight(tr, k, oc, j);
            }
        }
    }
    if (b != NULL && l->bias_count > 0) {
        memcpy(b, ft_b(tr, k), (size_t)l->bias_count * sizeof(float));
    }
    return FT_OK;
}

ft_status ft_trainer_set_layer_params(ft_trainer *tr, int32_t k, const float *w, const float *b)
{
    ft_status st = ft_check_layer(tr, k);
    if (st != FT_OK) {
        return st;
    }
    const ft_layer *l = &tr->model->layers[tr->model->first_trainable + k];
    ft_layer_state *s = &tr->ls[k];
    const size_t wb = (size_t)l->weight_count * sizeof(float), bb = (size_t)l->bias_count * sizeof(float);
    if ((wb > 0 && w == NULL) || (bb > 0 && b == NULL)) {
        return FT_ERR_NULL_ARG;
    }
    /* tensors (and channels) read from the model cannot change */
    if (bb > 0 && s->b == NULL && memcmp(l->b_f32, b, bb) != 0) {
        return FT_ERR_BAD_CONFIG;
    }
    if (wb > 0 && s->w == NULL) {
        for (int32_t oc = 0; oc < l->out_c; oc++) {
            if (s->q != NULL && ft_grad_row(s, oc) >= 0) {
                continue;
            }
            for (int32_t j = 0; j < s->row; j++) {
                const int32_t wi = ft_layer_widx_f32(l, oc, j, s->row);
                if (memcmp(&l->w_f32[wi], &w[wi], sizeof(float)) != 0) {
                    return FT_ERR_BAD_CONFIG;
                }
            }
        }
    }
    if (s->w != NULL) {
        memcpy(s->w, w, wb);
    }
    if (s->q != NULL) {
        ft_quantize_rows(l, s, w);
    }
    if (s->b != NULL) {
        memcpy(s->b, b, bb);
    }
    return FT_OK;
}

ft_status ft_trainer_layer_grads(const ft_trainer *tr, int32_t k, float *gw, float *gb)
{
    ft_status st = ft_check_layer(tr, k);
    if (st != FT_OK) {
        return st;
    }
    const ft_layer *l = &tr->model->layers[tr->model->first_trainable + k];
    const ft_layer_state *s = &tr->ls[k];
    if (gw != NULL) {
        memset(gw, 0, (size_t)l->weight_count * sizeof(float));
        for (int32_t oc = 0; s->gw != NULL && oc < l->out_c; oc++) {
            for (int32_t j = 0; ft_grad_row(s, oc) >= 0 && j < s->row; j++) {
                gw[ft_layer_widx_f32(l, oc, j, s->row)] = s->gw[ft_grad_index(l, s, oc, j)];
            }
        }
    }
    if (gb != NULL) {
        memset(gb, 0, (size_t)l->bias_count * sizeof(float));
        if (s->gb != NULL) {
            memcpy(gb, s->gb, (size_t)l->bias_count * sizeof(float));
        }
    }
    return FT_OK;
}

ft_status ft_trainer_step(ft_trainer *tr, const ft_dataset *data, const uint32_t *idx, int32_t n, ft_stats *stats)
{
    ft_stats s = {0.0f, 0, 0, 0};
    ft_status st = ft_trainer_accumulate(tr, data, idx, n, &s);
    if (st == FT_OK) {
        st = ft_trainer_apply(tr, n);
    }
    s.steps = st == FT_OK ? 1 : 0;
    if (stats != NULL) {
        *stats = s;
    }
    return st;
}

ft_status ft_trainer_train_epochs(ft_trainer *tr, const ft_dataset *data, int32_t epochs, uint32_t seed,
                                  ft_stats *stats)
{
    ft_status st = ft_check_data(tr, data);
    if (st != FT_OK) {
        return st;
    }
    if (epochs < 0 || epochs > FT_MAX_EPOCHS || data->count < 1) {
        return FT_ERR_BAD_CONFIG;
    }
    const int32_t bs = tr->cfg.batch_size;
    tr->rng_key = ft_rounding_key(seed);
    tr->rng_ctr = 0;
    ft_stats total = {0.0f, 0, 0, 0};
    int32_t steps = 0;
    for (int32_t e = 0; e < epochs; e++) {
        const uint32_t key = ft_epoch_key(seed, (uint32_t)e);
        total = (ft_stats){0.0f, 0, 0, 0};
        for (int32_t start = 0; start < data->count; start += bs) {
            const int32_t n = data->count - start < bs ? data->count - start : bs;
            memset(tr->grads, 0, tr->plan.grads_bytes);
            for (int32_t j = 0; j < n; j++) {
                const uint32_t i = ft_permute((uint32_t)(start + j), (uint32_t)data->count, key);
                if ((st = ft_sample_grads(tr, data, i, &total)) != FT_OK) {
                    return st;
                }
            }
            if ((st = ft_trainer_apply(tr, n)) != FT_OK) {
                return st;
            }
            steps++;
            if (tr->abort != NULL && tr->abort(tr->abort_ctx)) {
                return FT_ERR_CANCELLED;
            }
        }
    }
    if (stats != NULL) {
        total.loss = total.count > 0 ? total.loss / (float)total.count : 0.0f;
        total.steps = steps;
        *stats = total;
    }
    return FT_OK;
}

ft_status ft_trainer_evaluate(ft_trainer *tr, const ft_dataset *data, float *logits, ft_stats *stats)
{
    ft_status st = ft_check_data(tr, data);
    if (st != FT_OK) {
        return st;
    }
    const int32_t n_train = tr->model->num_layers - tr->model->first_trainable;
    const int32_t classes = tr->model->num_classes;
    ft_stats s = {0.0f, 0, data->count, 0};
    for (int32_t i = 0; i < data->count; i++) {
        st = ft_forward(tr, data, (uint32_t)i);
        if (st != FT_OK) {
            return st;
        }
        int32_t pred;
        s.loss += ft_softmax_xent(tr->acts[n_train], classes, data->y[i], NULL, &pred);
        s.correct += pred == data->y[i];
        if (logits != NULL) {
            memcpy(logits + (size_t)i * classes, tr->acts[n_train], (size_t)classes * sizeof(float));
        }
    }
    s.loss = data->count > 0 ? s.loss / (float)data->count : 0.0f;
    if (stats != NULL) {
        *stats = s;
    }
    return FT_OK;
}

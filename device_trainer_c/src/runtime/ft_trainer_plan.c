/*
 * Arena layout shared by ft_trainer_plan (base == NULL: sizes only) and ft_trainer_init
 * (base != NULL: pointers). Because both run this one function, the plan is the layout.
 *
 * Regions, low to high: float RAM copies of updated tensors | int8 weight scales | int8 weights |
 * momentum | gradients | FedProx anchors | channel maps | int8 prefix ping-pong | kernel scratch |
 * float activations | gradient ping-pong.
 * Only updated tensors get a copy, gradients, momentum and anchors; activations are kept only
 * from the earliest layer backprop reaches, lower layers use two ping-pong buffers. The buffers
 * that every training step writes in full are at the top, so a painted arena shows the same
 * high-water mark (tests check this independently).
 */
#include "fedtiny/ft_trainer.h"

#include <stddef.h>

#include "ft_layers_f32.h"

typedef struct {
    uint8_t *base;
    uint32_t cursor; /* next free offset (aligned) */
    uint32_t end;    /* end of the highest allocation */
} ft_bump;

static void *ft_bump_take(ft_bump *b, uint32_t bytes)
{
    const uint32_t off = (b->cursor + (FT_ARENA_ALIGN - 1u)) & ~(FT_ARENA_ALIGN - 1u);
    b->cursor = off + bytes;
    if (bytes > 0) {
        b->end = off + bytes;
    }
    return b->base != NULL && bytes > 0 ? (void *)(b->base + off) : NULL;
}

static uint32_t ft_max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

/* Per-layer sizes of an update scheme (floats, except slots: int16 entries). */
typedef struct {
    int32_t w_kind, b_on, row, nsel;
    int32_t copy_w, copy_b, grad_w, slots;
    int32_t q_w, q_s; /* int8 weights and their scales (precision int8) */
} ft_layer_sizes;

static ft_status ft_update_sizes(const ft_layer *l, const ft_train_config *cfg, int32_t k, ft_layer_sizes *z)
{
    const int int8 = cfg->precision == FT_PRECISION_INT8;
    ft_layer_update u = {FT_UPDATE_ALL, 1, 0};
    if (cfg->n_updates != 0) {
        u = cfg->update[k];
    }
    const int has = l->weight_count > 0;
    *z = (ft_layer_sizes){0, 0, ft_layer_row_f32(l), 0, 0, 0, 0, 0, 0, 0};
    if (u.weights > FT_UPDATE_CHANNELS || u.bias > 1) {
        return FT_ERR_BAD_CONFIG;
    }
    if (!has) {
        /* pooling and flatten have nothing to update; "all" (the default) means nothing */
        return (cfg->n_updates != 0 && (u.weights != FT_UPDATE_NONE || u.bias)) ? FT_ERR_BAD_CONFIG : FT_OK;
    }
    z->w_kind = u.weights;
    z->b_on = u.bias;
    if (u.weights == FT_UPDATE_CHANNELS && (u.channels < 1 || u.channels > l->out_c)) {
        return FT_ERR_BAD_CONFIG;
    }
    z->nsel = u.weights == FT_UPDATE_ALL ? l->out_c : (u.weights == FT_UPDATE_CHANNELS ? u.channels : 0);
    z->grad_w = z->nsel * z->row;
    z->copy_w = u.weights != FT_UPDATE_NONE && !int8 ? l->weight_count : 0;
    z->copy_b = u.bias ? l->bias_count : 0;
    z->q_w = int8 ? z->grad_w : 0; /* int8 holds only the updated channels */
    z->q_s = int8 ? z->nsel : 0;
    z->slots = u.weights == FT_UPDATE_CHANNELS ? l->out_c : 0;
    return FT_OK;
}

ft_status ft_trainer_layout(const ft_model *m, const ft_train_config *cfg, uint8_t *base, ft_trainer *tr,
                            ft_plan *plan);

ft_status ft_trainer_layout(const ft_model *m, const ft_train_config *cfg, uint8_t *base, ft_trainer *tr,
                            ft_plan *plan)
{
    if (m == NULL || cfg == NULL || plan == NULL) {
        return FT_ERR_NULL_ARG;
    }
    const int32_t first = m->first_trainable, n_layers = m->num_layers, n_train = n_layers - first;
    if (n_train < 1) {
        return FT_ERR_BAD_TRAINABLE_LAYOUT;
    }
    if (!(cfg->lr > 0.0f && cfg->lr <= FT_MAX_LR) || !(cfg->momentum >= 0.0f && cfg->momentum < 1.0f) ||
        !(cfg->weight_decay >= 0.0f && cfg->weight_decay <= FT_MAX_WEIGHT_DECAY) || cfg->batch_size < 1 ||
        cfg->batch_size > FT_MAX_BATCH || (cfg->with_prefix != 0 && cfg->with_prefix != 1) ||
        !(cfg->prox_mu >= 0.0f && cfg->prox_mu <= FT_MAX_PROX_MU) ||
        (cfg->n_updates != 0 && cfg->n_updates != n_train) ||
        (cfg->precision != FT_PRECISION_F32 && cfg->precision != FT_PRECISION_INT8) ||
        (cfg->rounding != FT_ROUND_STOCHASTIC && cfg->rounding != FT_ROUND_NEAREST)) {
        return FT_ERR_BAD_CONFIG;
    }
    ft_plan p = {0};
    const int use_prefix = cfg->with_prefix && first > 0 && cfg->start_layer == 0;
    p.feature_size = first > 0 ? ft_layer_out_count(&m->layers[first - 1]) : m->in_h * m->in_w * m->in_c;
    p.sample_size = cfg->with_prefix ? m->in_h * m->in_w * m->in_c : p.feature_size;

    /* the update scheme: sizes per layer, and the earliest layer backprop reaches */
    ft_layer_sizes z[FT_MAX_LAYERS];
    int64_t copies = 0, grads = 0, slots = 0, qw = 0, qs = 0;
    int32_t k_min = -1;
    for (int32_t k = 0; k < n_train; k++) {
        ft_status st = ft_update_sizes(&m->layers[first + k], cfg, k, &z[k]);
        if (st != FT_OK) {
            return st;
        }
        copies += z[k].copy_w + z[k].copy_b;
        grads += z[k].grad_w + z[k].copy_b;
        slots += z[k].slots;
        qw += z[k].q_w;
        qs += z[k].q_s;
        if (k_min < 0 && z[k].grad_w + z[k].copy_b > 0) {
            k_min = k;
        }
    }
    if (k_min < 0) {
        return FT_ERR_BAD_CONFIG; /* nothing to update */
    }
    const int32_t k0 = cfg->start_layer;
    if (k0 < 0 || k0 > k_min || (k0 > 0 && cfg->with_prefix)) {
        return FT_ERR_BAD_CONFIG; /* samples must enter at or below the earliest updated layer */
    }
    if (copies > FT_MAX_ELEMENTS || grads > FT_MAX_ELEMENTS) {
        return FT_ERR_BAD_DIMS;
    }
    p.param_count = (int32_t)copies;
    p.update_count = (int32_t)grads;
    p.first_backward = k_min;

    /* int8 prefix ping-pong sizes: flatten aliases its input, others write the next slot */
    uint32_t prefix_size[2] = {0, 0};
    int32_t scratch = 0;
    if (use_prefix) {
        int slot = 0;
        for (int32_t i = 0; i < first; i++) {
            const ft_layer *l = &m->layers[i];
            if (l->type == FT_LAYER_FLATTEN) {
                continue;
            }
            prefix_size[slot] = ft_max_u32(prefix_size[slot], (uint32_t)ft_layer_out_count(l));
            slot ^= 1;
            const int32_t s = ft_layer_scratch_bytes_s8(l);
            scratch = s > scratch ? s : scratch;
        }
    }
    /* activations: acts[k] (k = 0..n_train) is kept if backward reads it, else ping-pong */
    uint32_t act_size[FT_MAX_LAYERS + 1];
    int kept[FT_MAX_LAYERS + 1];
    uint32_t pp_size[2] = {0, 0};
    for (int32_t k = 0; k <= n_train; k++) {
        act_size[k] = (uint32_t)(k == 0 ? p.feature_size : ft_layer_out_count(&m->layers[first + k - 1]));
        kept[k] = k > k_min || (k == k_min && z[k].grad_w > 0);
        if (k <= k0 && k0 > 0) {
            kept[k] = 0; /* below the entry point nothing runs; acts[k0] points at the sample */
            continue;
        }
        if (!kept[k]) {
            pp_size[k % 2] = ft_max_u32(pp_size[k % 2], act_size[k]);
        }
    }
    /* backward gradient ping-pong: dL/d(out of layer k) lives in slot (L-1-k) % 2 */
    uint32_t gsize[2] = {0, 0};
    for (int32_t k = k_min; k < n_train; k++) {
        const int slot = (n_train - 1 - k) % 2;
        gsize[slot] = ft_max_u32(gsize[slot], (uint32_t)ft_layer_out_count(&m->layers[first + k]));
    }

    ft_bump b = {base, 0, 0};
    const uint32_t gbytes = (uint32_t)grads * sizeof(float);
    float *copy_r = ft_bump_take(&b, (uint32_t)copies * sizeof(float));
    float *qs_r = ft_bump_take(&b, (uint32_t)qs * sizeof(float));
    int8_t *qw_r = ft_bump_take(&b, (uint32_t)qw);
    float *mom_r = ft_bump_take(&b, cfg->momentum > 0.0f ? gbytes : 0);
    float *grad_r = ft_bump_take(&b, gbytes);
    float *anchor_r = ft_bump_take(&b, cfg->prox_mu > 0.0f ? gbytes : 0);
    int16_t *slot_r = ft_bump_take(&b, (uint32_t)slots * sizeof(int16_t));
    int8_t *prefix0 = ft_bump_take(&b, prefix_size[0]);
    int8_t *prefix1 = ft_bump_take(&b, prefix_size[1]);
    void *scratch_buf = ft_bump_take(&b, (uint32_t)scratch);
    float *pp[2];
    pp[0] = ft_bump_take(&b, pp_size[0] * sizeof(float));
    pp[1] = ft_bump_take(&b, pp_size[1] * sizeof(float));
    float *acts[FT_MAX_LAYERS + 1];
    uint32_t acts_bytes = (pp_size[0] + pp_size[1]) * sizeof(float);
    for (int32_t k = 0; k <= n_train; k++) {
        if (kept[k]) {
            acts[k] = ft_bump_take(&b, act_size[k] * sizeof(float));
            acts_bytes += act_size[k] * sizeof(float);
        } else {
            acts[k] = (k0 > 0 && k <= k0) ? NULL : pp[k % 2];
        }
    }
    if (k0 > 0) {
        p.sample_size = (int32_t)act_size[k0];
    }
    float *g0 = ft_bump_take(&b, gsize[0] * sizeof(float));
    float *g1 = ft_bump_take(&b, gsize[1] * sizeof(float));

    p.params_bytes = (uint32_t)copies * sizeof(float);
    p.qparams_bytes = (uint32_t)qw;
    p.qscale_bytes = (uint32_t)qs * sizeof(float);
    p.momentum_bytes = cfg->momentum > 0.0f ? gbytes : 0;
    p.grads_bytes = gbytes;
    p.anchor_bytes = cfg->prox_mu > 0.0f ? gbytes : 0;
    p.index_bytes = (uint32_t)slots * sizeof(int16_t);
    p.prefix_bytes = prefix_size[0] + prefix_size[1];
    p.scratch_bytes = (uint32_t)scratch;
    p.acts_bytes = acts_bytes;
    p.grad_acts_bytes = (gsize[0] + gsize[1]) * sizeof(float);
    p.arena_bytes = b.end;
    *plan = p;
    if (tr == NULL || base == NULL) {
        return FT_OK;
    }
    int32_t oc_copy = 0, oc_grad = 0, oc_slot = 0, oc_qw = 0, oc_qs = 0;
    for (int32_t k = 0; k < n_train; k++) {
        ft_layer_state *s = &tr->ls[k];
        *s = (ft_layer_state){0};
        s->w_kind = z[k].w_kind;
        s->b_on = z[k].b_on;
        s->row = z[k].row;
        s->nsel = z[k].nsel;
        s->w = z[k].copy_w ? copy_r + oc_copy : NULL;
        s->b = z[k].copy_b ? copy_r + oc_copy + z[k].copy_w : NULL;
        oc_copy += z[k].copy_w + z[k].copy_b;
        s->q = z[k].q_w ? qw_r + oc_qw : NULL;
        s->qs = z[k].q_s ? qs_r + oc_qs : NULL;
        oc_qw += z[k].q_w;
        oc_qs += z[k].q_s;
        if (z[k].grad_w) {
            s->gw = grad_r + oc_grad;
            s->mw = mom_r != NULL ? mom_r + oc_grad : NULL;
            s->aw = anchor_r != NULL ? anchor_r + oc_grad : NULL;
        }
        if (z[k].copy_b) {
            s->gb = grad_r + oc_grad + z[k].grad_w;
            s->mb = mom_r != NULL ? mom_r + oc_grad + z[k].grad_w : NULL;
            s->ab = anchor_r != NULL ? anchor_r + oc_grad + z[k].grad_w : NULL;
        }
        oc_grad += z[k].grad_w + z[k].copy_b;
        s->slot = z[k].slots ? slot_r + oc_slot : NULL;
        oc_slot += z[k].slots;
    }
    tr->grads = grad_r;
    tr->prefix[0] = prefix0;
    tr->prefix[1] = prefix1;
    tr->scratch = scratch_buf;
    for (int32_t k = 0; k <= n_train; k++) {
        tr->acts[k] = acts[k];
    }
    tr->grad_acts[0] = g0;
    tr->grad_acts[1] = g1;
    tr->hwm = b.end;
    return FT_OK;
}

ft_status ft_trainer_plan(const ft_model *model, const ft_train_config *cfg, ft_plan *plan)
{
    return ft_trainer_layout(model, cfg, NULL, NULL, plan);
}

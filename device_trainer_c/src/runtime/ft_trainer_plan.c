/*
 * Arena layout shared by ft_trainer_plan (base == NULL: sizes only) and ft_trainer_init
 * (base != NULL: pointers). Because both run this one function, the plan is the layout.
 * The order puts buffers that every training step writes in full at the top, so a painted
 * arena shows the same high-water mark (tests check this independently).
 */
#include "fedtiny/ft_trainer.h"

#include <stddef.h>

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
    if (!(cfg->lr > 0.0f) || !(cfg->momentum >= 0.0f && cfg->momentum < 1.0f) || !(cfg->weight_decay >= 0.0f) ||
        cfg->batch_size < 1 || (cfg->with_prefix != 0 && cfg->with_prefix != 1) || !(cfg->prox_mu >= 0.0f)) {
        return FT_ERR_BAD_CONFIG;
    }
    ft_plan p = {0};
    const int use_prefix = cfg->with_prefix && first > 0;
    p.sample_size = cfg->with_prefix ? m->in_h * m->in_w * m->in_c
                                     : (first > 0 ? ft_layer_out_count(&m->layers[first - 1]) : m->in_h * m->in_w * m->in_c);
    p.feature_size = first > 0 ? ft_layer_out_count(&m->layers[first - 1]) : m->in_h * m->in_w * m->in_c;

    int64_t count = 0;
    for (int32_t i = first; i < n_layers; i++) {
        const ft_layer *l = &m->layers[i];
        if (tr != NULL) {
            tr->w_off[i - first] = (int32_t)count;
            tr->b_off[i - first] = (int32_t)(count + l->weight_count);
        }
        count += (int64_t)l->weight_count + l->bias_count;
    }
    if (count > FT_MAX_ELEMENTS) {
        return FT_ERR_BAD_DIMS;
    }
    p.param_count = (int32_t)count;

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
    /* backward gradient ping-pong: dL/d(out of layer k) lives in slot (L-1-k) % 2 */
    uint32_t gsize[2] = {0, 0};
    for (int32_t k = 0; k < n_train; k++) {
        const int slot = (n_train - 1 - k) % 2;
        gsize[slot] = ft_max_u32(gsize[slot], (uint32_t)ft_layer_out_count(&m->layers[first + k]));
    }

    ft_bump b = {base, 0, 0};
    const uint32_t pbytes = (uint32_t)p.param_count * sizeof(float);
    float *params = ft_bump_take(&b, pbytes);
    float *momentum = ft_bump_take(&b, cfg->momentum > 0.0f ? pbytes : 0);
    float *grads = ft_bump_take(&b, pbytes);
    float *anchor = ft_bump_take(&b, cfg->prox_mu > 0.0f ? pbytes : 0);
    int8_t *prefix0 = ft_bump_take(&b, prefix_size[0]);
    int8_t *prefix1 = ft_bump_take(&b, prefix_size[1]);
    void *scratch_buf = ft_bump_take(&b, (uint32_t)scratch);
    float *acts[FT_MAX_LAYERS + 1];
    uint32_t acts_bytes = (uint32_t)p.feature_size * sizeof(float);
    acts[0] = ft_bump_take(&b, acts_bytes);
    for (int32_t k = 0; k < n_train; k++) {
        const uint32_t bytes = (uint32_t)ft_layer_out_count(&m->layers[first + k]) * sizeof(float);
        acts[k + 1] = ft_bump_take(&b, bytes);
        acts_bytes += bytes;
    }
    float *g0 = ft_bump_take(&b, gsize[0] * sizeof(float));
    float *g1 = ft_bump_take(&b, gsize[1] * sizeof(float));

    p.params_bytes = pbytes;
    p.momentum_bytes = cfg->momentum > 0.0f ? pbytes : 0;
    p.grads_bytes = pbytes;
    p.anchor_bytes = cfg->prox_mu > 0.0f ? pbytes : 0;
    p.prefix_bytes = prefix_size[0] + prefix_size[1];
    p.scratch_bytes = (uint32_t)scratch;
    p.acts_bytes = acts_bytes;
    p.grad_acts_bytes = (gsize[0] + gsize[1]) * sizeof(float);
    p.arena_bytes = b.end;
    *plan = p;
    if (tr != NULL) {
        tr->params = params;
        tr->momentum = momentum;
        tr->grads = grads;
        tr->anchor = anchor;
        tr->prefix[0] = prefix0;
        tr->prefix[1] = prefix1;
        tr->scratch = scratch_buf;
        for (int32_t k = 0; k <= n_train; k++) {
            tr->acts[k] = acts[k];
        }
        tr->grad_acts[0] = g0;
        tr->grad_acts[1] = g1;
        tr->hwm = b.end;
    }
    return FT_OK;
}

ft_status ft_trainer_plan(const ft_model *model, const ft_train_config *cfg, ft_plan *plan)
{
    return ft_trainer_layout(model, cfg, NULL, NULL, plan);
}

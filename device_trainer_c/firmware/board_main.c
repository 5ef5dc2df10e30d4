/*
 * fedtiny board firmware: the command loop a real or emulated board runs behind the serial
 * protocol (ft_proto.h), over the HAL of its port (ft_hal.h).
 *
 * Commands (payloads little-endian; every reply is the request's type | 0x80 and seq):
 *   HELLO     -> "FTBD", u32 protocol 1, u32 SRAM KiB, char[8] trainer version, u32 model CRC-32
 *                (0: none), u32 local samples, u32 the trainable layer local samples enter (0: int8
 *                boundary features; k > 0: cached float32 features, see local_data), u32 TRAINs
 *                run since boot (repeats answered from the last reply not counted), u32 deployed
 *                model version (0: none), u32 its CRC-32 (see DEPLOY)
 *   LOAD      u32 offset, u32 total, bytes -> u32 status, u32 bytes received
 *             (the model file in chunks; loaded and checked when the last chunk arrives)
 *   PARAMS    u32 offset, f32 values -> u32 status (the global model's trainable values, all layers
 *             in order, weights then bias per layer, as floats from `offset`; LOAD resets them
 *             to the model file's values)
 *   TRAIN     u32 epochs, u32 seed, f32 lr, f32 momentum, f32 weight decay, f32 prox mu, u32 batch,
 *             u32 bits, u32 per-channel, u32 nearest, u32 key seed, u32 round, u32 device id,
 *             f32 clip (0: no DP), f32 local noise std, u32 precision, u32 rounding, u32 n_updates,
 *             then n_updates x (u8 weights kind, u8 bias, u16 channels)  (ft_train_config; 0: all)
 *             -> u32 status, f32 loss, u32 correct, u32 count, u32 update bytes, u32 arena bytes used
 *             (trains from the global values on the local data, then encodes w_trained - w_global
 *             of every tensor the scheme changed, channel subsets compact, in the order of the
 *             tensor names, as the simulated client; with clip > 0 through ft_codec_encode_update)
 *   UPDATE    u32 offset -> up to 1024 bytes of the update: u32 tensors, then per tensor u8 name
 *             length, name, u32 blob length, blob
 *   EVALUATE  -> u32 status, f32 loss, u32 correct, u32 count (the trained values after a TRAIN,
 *             else the model's own: the deployed model after boot or DEPLOY_COMMIT)
 *   RESET     -> u32 0 (forget model and update)
 *   STATS     -> u32 status, RAM budget, static RAM, stack peak (of the last TRAIN/PROFILE, from a
 *             stack painted when it started), arena bytes used, arena size, then the
 *             profile of the last TRAIN/PROFILE in counter ticks: total, samples, steps, input, loss,
 *             apply, other, u32 layers, per model layer (prefix, forward, backward)
 *   PROFILE   u32 seed -> u32 status (one forward pass through the whole model, int8 prefix
 *             included, on a pseudo-random input; read it with STATS)
 *   SPIN      u32 n (<= 2^28) -> u32 status, u32 counter ticks of ft_hal_spin(n) (4n instructions)
 *   CANCEL    -> u32 status: stops a TRAIN in progress (its reply becomes ERROR CANCELLED, sent
 *             first); idle, it just answers
 *   DEPLOY    u32 version, u32 total, u32 CRC-32 -> u32 status, u32 slot (a model update begins: the
 *             inactive one of two slots is erased and receives it; the active model keeps running)
 *   DEPLOY_DATA  u32 offset, bytes -> u32 status, u32 bytes received (in order; a chunk the slot
 *             already holds is acknowledged again, a gap is refused with BAD_DATA)
 *   DEPLOY_COMMIT -> u32 status, u32 version, u32 CRC-32, f32 loss, u32 correct, u32 count: the slot's
 *             CRC is checked, the model loaded and evaluated on the local data; only then is the slot
 *             made the active one (a generation above the other's). If any step fails the slot is
 *             marked bad, the previous model is loaded again (roll back), and the reply is ERROR with
 *             the failing step's status. HELLO reports the active slot's version and CRC; at boot
 *             the active slot is loaded (a slot whose CRC no longer matches falls back to the other).
 *   anything else -> ERROR with u32 FT_ERR_UNSUPPORTED
 * TRAIN's fields are bounded before anything runs (ERROR BAD_CONFIG otherwise): epochs in
 * [1, FT_MAX_EPOCHS], batch in [1, FT_MAX_BATCH], finite lr in (0, FT_MAX_LR], momentum in [0, 1),
 * weight decay in [0, FT_MAX_WEIGHT_DECAY], prox mu in [0, FT_MAX_PROX_MU], bits 32/16/8/4/2/1,
 * flags 0 or 1, clip finite >= 0, noise std finite >= 0 and only with a clip.
 * A request repeated with the same type, seq and payload is not executed again: the board resends
 * its last reply (the host lost it). TRAIN, PROFILE and SPIN first send an ACK frame (type 0x7E,
 * same seq, no payload) as soon as they arrive: the host waits its short timeout for that, then
 * the long one for the reply. While a TRAIN runs, the board reads its link after every SGD step:
 * a CANCEL stops it; a repeat of the TRAIN itself is ignored (the reply follows when it ends).
 * A partial frame followed by FT_PROTO_BYTE_TIMEOUT_MS of silence is expired (ft_proto.h), so
 * stray bytes never leave the board deaf.
 * Local data lives where a board's flash would hold it: a "FTDS" block at FT_DATA_ADDR (see
 * local_data): int8 features of the frozen prefix, or float32 features cached at the layer the
 * device's update scheme starts from; TRAIN runs with the start layer the block declares.
 * Deployed models live in two slots at FT_SLOT_ADDR, where a board's flash would hold them (on
 * the emulated board: PSRAM, which does not outlive QEMU; a port with flash replaces
 * slot_erase and slot_program with its flash driver).
 */
#include <stdint.h>
#include <string.h>

#include "fedtiny/ft_codec.h"
#include "fedtiny/ft_math.h"
#include "fedtiny/ft_model.h"
#include "fedtiny/ft_proto.h"
#include "fedtiny/ft_trainer.h"
#include "ft_hal.h"

#ifndef FT_DATA_ADDR
#define FT_DATA_ADDR 0x21000000u
#endif
#ifndef FT_SRAM_KB
#define FT_SRAM_KB 256u
#endif

static uint8_t model_buf[32768] __attribute__((aligned(8)));
static uint8_t arena[65536] __attribute__((aligned(8)));
static float params0[8192];
static uint8_t update_buf[24576];
static uint8_t tx[FT_PROTO_MAX_FRAME];
static ft_proto_rx rx;
static ft_model model;
static ft_trainer trainer;
static uint32_t model_len, model_ok, model_crc, update_len, n_params;

#ifndef FT_SLOT_ADDR
#define FT_SLOT_ADDR 0x21800000u
#endif
#define FT_SLOT_MAGIC 0x4C535446u /* "FTSL" */
#define FT_SLOT_BYTES ((uint32_t)sizeof model_buf)
enum { SLOT_EMPTY = 0, SLOT_WRITING = 1, SLOT_GOOD = 2, SLOT_BAD = 3 };
typedef struct {
    uint32_t magic, state, version, length, crc, generation, received, reserved;
} ft_slot;
static uint32_t deploying = 2u; /* the slot a DEPLOY is filling (2: none) */

static ft_slot *slot_header(uint32_t i) { return (ft_slot *)(FT_SLOT_ADDR + i * (FT_SLOT_BYTES + sizeof(ft_slot))); }
static uint8_t *slot_data(uint32_t i) { return (uint8_t *)slot_header(i) + sizeof(ft_slot); }
static void slot_erase(uint32_t i) { memset(slot_header(i), 0, sizeof(ft_slot) + FT_SLOT_BYTES); }
static void slot_program(void *dst, const void *src, uint32_t n) { memcpy(dst, src, n); }
static void slot_state(uint32_t i, uint32_t state, uint32_t generation)
{
    ft_slot h = *slot_header(i);
    h.state = state;
    h.generation = generation;
    slot_program(slot_header(i), &h, sizeof h);
}
static int slot_good(uint32_t i)
{
    const ft_slot *h = slot_header(i);
    return h->magic == FT_SLOT_MAGIC && h->state == SLOT_GOOD && h->length <= FT_SLOT_BYTES;
}
/* the active slot: the good one of the highest generation (-1: none) */
static int32_t active_slot(void)
{
    const int g0 = slot_good(0), g1 = slot_good(1);
    if (g0 && g1) {
        return slot_header(1)->generation > slot_header(0)->generation ? 1 : 0;
    }
    return g0 ? 0 : g1 ? 1 : -1;
}

static uint32_t get32(const uint8_t *b) { return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24); }
static void put32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}
static float getf(const uint8_t *b)
{
    const uint32_t u = get32(b);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The last reply stays in tx: a request repeated with the same type, seq and bytes (the host
 * lost the reply and asks again) gets it resent without being executed twice. */
static uint32_t last_len, last_key, have_last;
static uint32_t trains_run; /* TRAIN requests executed since boot (HELLO says it) */

static void reply(const ft_frame *req, uint8_t type, const uint8_t *payload, uint16_t n)
{
    last_len = ft_proto_write(tx, type, req->seq, payload, n);
    ft_hal_write(tx, last_len);
}

static void ack(const ft_frame *req)
{
    uint8_t a[FT_PROTO_HEADER_BYTES + 4];
    ft_hal_write(a, ft_proto_write(a, FT_MSG_ACK, req->seq, NULL, 0));
}

/* identity of a request: CRC-32 of type, seq and payload */
static uint32_t request_key(const ft_frame *f)
{
    uint8_t h[2] = {f->type, f->seq};
    return ft_crc32(h, 2) ^ (ft_crc32(f->payload, f->length) * 0x9E3779B1u) ^ f->length;
}

static void reply_status(const ft_frame *req, uint32_t status)
{
    uint8_t p[4];
    put32(p, status);
    reply(req, (uint8_t)(status == FT_OK ? (req->type | FT_PROTO_REPLY) : FT_MSG_ERROR), p, 4);
}

/* The board's local data: an "FTDS" block at FT_DATA_ADDR (where a board's flash would hold it).
 * Version 1: u32 count, sample size, x offset, y offset; int8 features at the model boundary.
 * Version 2: the same, then u32 start layer k > 0: float32 features entering trainable layer k,
 * cached once below the deepest layer the device's update scheme changes (as the simulated
 * device caches them, so the arena is the planner's figure). *start = the layer samples enter. */
static int local_data(ft_dataset *d, int32_t *start)
{
    const uint32_t *h = (const uint32_t *)FT_DATA_ADDR;
    if (h[0] != 0x53445446u || (h[1] != 1u && h[1] != 2u)) { /* "FTDS" */
        return 0;
    }
    const uint8_t *base = (const uint8_t *)FT_DATA_ADDR;
    *start = h[1] == 2u ? (int32_t)h[6] : 0;
    if (*start > 0) {
        *d = (ft_dataset){NULL, base + h[5], (int32_t)h[2], (int32_t)h[3], (const float *)(base + h[4])};
    } else {
        *d = (ft_dataset){(const int8_t *)(base + h[4]), base + h[5], (int32_t)h[2], (int32_t)h[3], NULL};
    }
    return 1;
}

/* Tensor names "layer<k>.weight|bias" in byte order, as Python's sorted() orders the keys. */
typedef struct {
    char name[24];
    int32_t k, is_weight;
} ft_tensor_name;

static void name_of(ft_tensor_name *t, int32_t k, int32_t is_weight)
{
    char digits[12];
    int32_t n = 0, v = k;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    char *p = t->name;
    memcpy(p, "layer", 5);
    p += 5;
    while (n > 0) {
        *p++ = digits[--n];
    }
    memcpy(p, is_weight ? ".weight" : ".bias", is_weight ? 8 : 6);
    t->k = k;
    t->is_weight = is_weight;
}

static uint32_t tensor_key(uint32_t seed, uint32_t round, uint32_t pid, uint32_t index)
{
    return ft_hash32(ft_hash32(seed) ^ ft_hash32(round * 0x9E3779B9u + pid) ^ (index * 0x85EBCA6Bu));
}

/* Profile of the last TRAIN (or PROFILE): counter ticks per piece of work, attributed by the
 * trainer's probe to the event that ends it. */
typedef struct {
    uint32_t last;
    uint32_t prefix[FT_MAX_LAYERS], forward[FT_MAX_LAYERS], backward[FT_MAX_LAYERS];
    uint32_t input, loss, apply, other, samples, steps, total;
} ft_profile;
static ft_profile prof;

static void probe(void *ctx, int32_t event, int32_t layer)
{
    ft_profile *p = (ft_profile *)ctx;
    const uint32_t now = ft_hal_counter(), d = now - p->last;
    p->last = now;
    switch (event) {
    case FT_PROBE_PREFIX:
        p->prefix[layer] += d;
        break;
    case FT_PROBE_INPUT:
        p->input += d;
        break;
    case FT_PROBE_FORWARD:
        p->forward[layer] += d;
        break;
    case FT_PROBE_LOSS:
        p->loss += d;
        break;
    case FT_PROBE_BACKWARD:
        p->backward[layer] += d;
        break;
    case FT_PROBE_APPLY:
        p->apply += d;
        p->steps++;
        break;
    case FT_PROBE_BEGIN:
        p->samples++;
        p->other += d;
        break;
    default: /* FT_PROBE_BEGIN_APPLY: the time since the last event is bookkeeping */
        p->other += d;
        break;
    }
}

static void profile_start(void)
{
    ft_stack_paint(); /* stack peak from here on: this command's */
    memset(&prof, 0, sizeof prof);
    trainer.probe = probe;
    trainer.probe_ctx = &prof;
    prof.last = ft_hal_counter();
    prof.total = prof.last;
}

static void profile_stop(void)
{
    trainer.probe = NULL;
    prof.total = ft_hal_counter() - prof.total;
}

/* Output channels (ascending) whose weights layer k's update changes; returns their count. */
static int32_t updated_channels(int32_t k, uint16_t *out)
{
    const ft_layer *l = &model.layers[model.first_trainable + k];
    const ft_layer_state *s = &trainer.ls[k];
    int32_t n = 0;
    for (int32_t oc = 0; s->w_kind != FT_UPDATE_NONE && oc < l->out_c; oc++) {
        if (s->slot == NULL || s->slot[oc] >= 0) {
            out[n++] = (uint16_t)oc;
        }
    }
    return n;
}

static float after[8192];
static float delta[8192];
static uint16_t chans[2048];

#define FT_TRAIN_FIXED 72u

/* While training: frames that arrive (the host polls with repeats of the TRAIN) are read after
 * every SGD step; a CANCEL stops the training. */
static uint32_t cancel_seq, cancel_pending;

static int train_abort(void *ctx)
{
    (void)ctx;
    uint8_t b;
    ft_frame f;
    while (ft_hal_poll(&b)) {
        if (ft_proto_feed(&rx, b, &f) && f.type == FT_MSG_CANCEL) {
            cancel_seq = f.seq;
            cancel_pending = 1u;
            return 1;
        }
    }
    return 0;
}

static int finite_in(float v, float lo, float hi) { return v >= lo && v <= hi; } /* NaN fails both */

/* The TRAIN fields the trainer does not check itself (ft_trainer_plan bounds lr, momentum, weight
 * decay, prox mu, batch, precision and rounding; ft_trainer_train_epochs bounds epochs above):
 * at least one epoch, and codec and DP settings, which would otherwise fail only after training. */
static int train_fields_ok(const uint8_t *p)
{
    const uint32_t bits = get32(p + 28);
    const float noise = getf(p + 56), clip = getf(p + 52);
    return get32(p) >= 1u && (bits == 32u || bits == 16u || bits == 8u || bits == 4u || bits == 2u || bits == 1u) &&
           get32(p + 32) <= 1u && get32(p + 36) <= 1u && finite_in(clip, 0.0f, 3.4028235e38f) &&
           finite_in(noise, 0.0f, 3.4028235e38f) && (noise == 0.0f || clip > 0.0f);
}

static uint8_t train_req[FT_PROTO_MAX_PAYLOAD];

static void cmd_train(const ft_frame *f)
{
    /* a copy: frames read while training (train_abort) reuse the receiver's buffer */
    memcpy(train_req, f->payload, f->length);
    const uint8_t *p = train_req;
    const uint32_t n_updates = f->length >= FT_TRAIN_FIXED ? get32(p + 68) : 0u;
    if (!model_ok) {
        reply_status(f, FT_ERR_NOT_INITIALIZED);
        return;
    }
    const int32_t n_train = model.num_layers - model.first_trainable;
    if (f->length < FT_TRAIN_FIXED || (n_updates != 0u && n_updates != (uint32_t)n_train) ||
        f->length != FT_TRAIN_FIXED + 4u * n_updates || !train_fields_ok(p)) {
        reply_status(f, FT_ERR_BAD_CONFIG);
        return;
    }
    ft_train_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.lr = getf(p + 8);
    cfg.momentum = getf(p + 12);
    cfg.weight_decay = getf(p + 16);
    cfg.prox_mu = getf(p + 20);
    cfg.batch_size = (int32_t)get32(p + 24);
    cfg.precision = (int32_t)get32(p + 60);
    cfg.rounding = (int32_t)get32(p + 64);
    cfg.n_updates = (int32_t)n_updates;
    for (uint32_t k = 0; k < n_updates; k++) {
        cfg.update[k] = (ft_layer_update){p[72 + 4 * k], p[73 + 4 * k], (uint16_t)(p[74 + 4 * k] | (p[75 + 4 * k] << 8))};
    }
    const int32_t bits = (int32_t)get32(p + 28), per_channel = (int32_t)get32(p + 32), nearest = (int32_t)get32(p + 36);
    const uint32_t kseed = get32(p + 40), kround = get32(p + 44), kdev = get32(p + 48);
    const float clip = getf(p + 52), noise_std = getf(p + 56);
    ft_dataset d;
    int32_t start = 0;
    update_len = 0;
    const int have_data = local_data(&d, &start);
    cfg.start_layer = start; /* samples enter where the data block's features were cached */
    ft_status st = have_data ? ft_trainer_init(&trainer, &model, &cfg, arena, sizeof arena) : FT_ERR_BAD_DATA;
    /* start from the global values (params0; tensors the scheme keeps are the model's own) */
    uint32_t off = 0;
    for (int32_t k = 0; st == FT_OK && k < n_train; k++) {
        const ft_layer *l = &model.layers[model.first_trainable + k];
        st = ft_trainer_set_layer_params(&trainer, k, params0 + off, params0 + off + l->weight_count);
        off += (uint32_t)(l->weight_count + l->bias_count);
    }
    if (st == FT_OK) {
        st = ft_trainer_set_anchor(&trainer);
    }
    ft_stats stats = {0};
    if (st == FT_OK) {
        profile_start();
        trainer.abort = train_abort;
        st = ft_trainer_train_epochs(&trainer, &d, (int32_t)get32(p), get32(p + 4), &stats);
        trainer.abort = NULL;
        profile_stop();
    }
    /* the tensors the update changed, in name order (as the simulated client sorts its keys) */
    ft_tensor_name names[2 * FT_MAX_LAYERS];
    int32_t count = 0;
    for (int32_t k = 0; st == FT_OK && k < n_train; k++) {
        if (trainer.ls[k].w_kind != FT_UPDATE_NONE) {
            name_of(&names[count++], k, 1);
        }
        if (trainer.ls[k].b_on) {
            name_of(&names[count++], k, 0);
        }
    }
    for (int32_t i = 1; i < count; i++) { /* insertion sort by name */
        ft_tensor_name t = names[i];
        int32_t j = i - 1;
        while (j >= 0 && strcmp(names[j].name, t.name) > 0) {
            names[j + 1] = names[j];
            j--;
        }
        names[j + 1] = t;
    }
    /* changes w_trained - w_global (channel subsets compact, as np.take along the channel axis),
     * laid out as the UPDATE reply carries them; then encoded in place */
    ft_codec_tensor tensors[2 * FT_MAX_LAYERS];
    uint32_t used = 0;
    update_len = 4;
    put32(update_buf, (uint32_t)count);
    for (int32_t i = 0; st == FT_OK && i < count; i++) {
        const ft_tensor_name *t = &names[i];
        const ft_layer *l = &model.layers[model.first_trainable + t->k];
        uint32_t base = 0;
        for (int32_t k = 0; k < t->k; k++) {
            const ft_layer *m = &model.layers[model.first_trainable + k];
            base += (uint32_t)(m->weight_count + m->bias_count);
        }
        ft_trainer_layer_params(&trainer, t->k, after, after + l->weight_count);
        float *dv = delta + used;
        int32_t n = 0, channels = l->out_c;
        if (t->is_weight) {
            const float *before = params0 + base;
            channels = updated_channels(t->k, chans);
            const int32_t row = l->weight_count / l->out_c;
            const int dw = l->type == FT_LAYER_DWCONV2D;
            if (used + (uint32_t)(channels * row) > sizeof delta / sizeof delta[0]) {
                st = FT_ERR_ARENA_TOO_SMALL;
                break;
            }
            for (int32_t a = 0; a < (dw ? row : channels); a++) {
                for (int32_t b = 0; b < (dw ? channels : row); b++) {
                    const int32_t w = dw ? a * l->out_c + chans[b] : chans[a] * row + b;
                    dv[n++] = after[w] - before[w];
                }
            }
        } else {
            const float *before = params0 + base + (uint32_t)l->weight_count;
            for (; n < l->bias_count; n++) {
                dv[n] = after[l->weight_count + n] - before[n];
            }
        }
        used += (uint32_t)n;
        const ft_codec_params cp = {bits, t->is_weight ? per_channel : 0, channels,
                                    t->is_weight && l->type == FT_LAYER_DWCONV2D, nearest};
        const uint32_t name_len = (uint32_t)strlen(t->name), need = ft_codec_blob_bytes(&cp, n);
        if (need == 0 || update_len + 1u + name_len + 4u + need > sizeof update_buf) {
            st = FT_ERR_ARENA_TOO_SMALL;
            break;
        }
        update_buf[update_len++] = (uint8_t)name_len;
        memcpy(update_buf + update_len, t->name, name_len);
        update_len += name_len;
        tensors[i] = (ft_codec_tensor){cp, dv, n, tensor_key(kseed, kround, kdev, (uint32_t)i),
                                       update_buf + update_len + 4u, need, 0};
        update_len += 4u + need;
    }
    if (st == FT_OK && clip > 0.0f) { /* differential privacy: clip the quantized update, local noise */
        float before_norm, sent_norm;
        st = ft_codec_encode_update(tensors, count, clip, noise_std, tensor_key(kseed, kround, kdev, 0xD9u), after,
                                    (int32_t)(sizeof after / sizeof after[0]), &before_norm, &sent_norm);
    }
    for (int32_t i = 0; st == FT_OK && i < count; i++) {
        if (clip <= 0.0f) {
            st = ft_codec_encode(&tensors[i].p, tensors[i].v, tensors[i].n, tensors[i].key, NULL, tensors[i].out,
                                 tensors[i].out_size, &tensors[i].written);
        }
        if (tensors[i].written != tensors[i].out_size) {
            st = FT_ERR_CODEC_LENGTH;
        }
        put32(tensors[i].out - 4, tensors[i].written);
    }
    if (st != FT_OK) {
        update_len = 0;
        reply_status(f, (uint32_t)st);
        return;
    }
    uint8_t r[24];
    put32(r, FT_OK);
    put32(r + 4, fbits(stats.loss));
    put32(r + 8, (uint32_t)stats.correct);
    put32(r + 12, (uint32_t)stats.count);
    put32(r + 16, update_len);
    put32(r + 20, ft_trainer_arena_hwm(&trainer));
    reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, sizeof r);
}

/* STATS: the profile of the last TRAIN or PROFILE and the RAM figures. */
static void cmd_stats(const ft_frame *f)
{
    static uint8_t r[64 + 12 * FT_MAX_LAYERS];
    uint32_t at = 0;
    const uint32_t head[] = {FT_OK, ft_hal_ram_budget(), ft_hal_static_ram(), ft_hal_stack_peak(),
                             trainer.initialized ? ft_trainer_arena_hwm(&trainer) : 0u, (uint32_t)sizeof arena,
                             prof.total, prof.samples, prof.steps, prof.input, prof.loss, prof.apply, prof.other,
                             (uint32_t)(model_ok ? model.num_layers : 0)};
    for (uint32_t i = 0; i < sizeof head / sizeof head[0]; i++, at += 4) {
        put32(r + at, head[i]);
    }
    for (int32_t i = 0; model_ok && i < model.num_layers; i++, at += 12) {
        const int32_t k = i - model.first_trainable;
        put32(r + at, prof.prefix[i]);
        put32(r + at + 4, k >= 0 ? prof.forward[k] : 0u);
        put32(r + at + 8, k >= 0 ? prof.backward[k] : 0u);
    }
    reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, (uint16_t)at);
}

/* PROFILE: u32 seed -> the int8 frozen prefix and the float suffix run forward on one
 * pseudo-random model input (ft_hash32 bytes), profiled; results via STATS. */
static void cmd_profile(const ft_frame *f)
{
    if (!model_ok || f->length != 4) {
        reply_status(f, model_ok ? FT_ERR_BAD_CONFIG : FT_ERR_NOT_INITIALIZED);
        return;
    }
    ft_train_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.lr = 0.01f;
    cfg.batch_size = 1;
    cfg.with_prefix = 1;
    ft_status st = ft_trainer_init(&trainer, &model, &cfg, arena, sizeof arena);
    const int32_t size = model.in_h * model.in_w * model.in_c;
    if (st == FT_OK && size > (int32_t)sizeof delta) {
        st = FT_ERR_ARENA_TOO_SMALL;
    }
    if (st != FT_OK) {
        reply_status(f, (uint32_t)st);
        return;
    }
    int8_t *x = (int8_t *)delta;
    for (int32_t i = 0; i < size; i++) {
        x[i] = (int8_t)ft_hash32(get32(f->payload) + (uint32_t)i);
    }
    const uint8_t y = 0;
    const ft_dataset d = {x, &y, 1, size, 0};
    ft_stats s = {0};
    profile_start();
    st = ft_trainer_evaluate(&trainer, &d, 0, &s);
    profile_stop();
    reply_status(f, (uint32_t)st);
}

/* SPIN: u32 n -> runs ft_hal_spin(n) between two counter reads; replies u32 status, u32 ticks
 * (the host calibrates instructions per tick from two lengths). */
static void cmd_spin(const ft_frame *f)
{
    uint8_t r[8];
    const uint32_t n = f->length == 4 ? get32(f->payload) : 0u;
    if (f->length != 4 || n > (1u << 28)) {
        reply_status(f, FT_ERR_BAD_CONFIG);
        return;
    }
    const uint32_t t0 = ft_hal_counter();
    ft_hal_spin(n);
    const uint32_t t1 = ft_hal_counter();
    put32(r, FT_OK);
    put32(r + 4, t1 - t0);
    reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, 8);
}

/* Make the model in model_buf (copied from `src` first, unless NULL) the board's model: load
 * it, and take its trainable values as the global ones (params0). */
static ft_status install(const uint8_t *src, uint32_t total)
{
    model_ok = 0;
    memset(&trainer, 0, sizeof trainer);
    if (total > sizeof model_buf) {
        return FT_ERR_TRUNCATED;
    }
    if (src != NULL) {
        memcpy(model_buf, src, total);
    }
    model_len = total;
    ft_status st = ft_model_load(&model, model_buf, total);
    n_params = 0;
    for (int32_t k = model.first_trainable; st == FT_OK && k < model.num_layers; k++) {
        const ft_layer *l = &model.layers[k];
        if (n_params + (uint32_t)(l->weight_count + l->bias_count) > sizeof params0 / sizeof params0[0]) {
            st = FT_ERR_ARENA_TOO_SMALL;
            break;
        }
        if (l->weight_count > 0) {
            memcpy(params0 + n_params, l->w_f32, (size_t)l->weight_count * sizeof(float));
            memcpy(params0 + n_params + l->weight_count, l->b_f32, (size_t)l->bias_count * sizeof(float));
        }
        n_params += (uint32_t)(l->weight_count + l->bias_count);
    }
    model_ok = st == FT_OK;
    model_crc = ft_crc32(model_buf, total);
    return st;
}

/* A trainer holding the model's own trainable values, for EVALUATE on the local data (no
 * local data: FT_ERR_BAD_DATA). */
static ft_status evaluate_model(ft_stats *s)
{
    ft_dataset d;
    int32_t start = 0;
    if (!model_ok) {
        return FT_ERR_NOT_INITIALIZED;
    }
    if (!local_data(&d, &start)) {
        return FT_ERR_BAD_DATA;
    }
    ft_train_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.lr = 0.01f;
    cfg.batch_size = 1;
    cfg.start_layer = start;
    ft_status st = ft_trainer_init(&trainer, &model, &cfg, arena, sizeof arena);
    uint32_t off = 0;
    for (int32_t k = 0; st == FT_OK && k < model.num_layers - model.first_trainable; k++) {
        const ft_layer *l = &model.layers[model.first_trainable + k];
        st = ft_trainer_set_layer_params(&trainer, k, params0 + off, params0 + off + l->weight_count);
        off += (uint32_t)(l->weight_count + l->bias_count);
    }
    return st == FT_OK ? ft_trainer_evaluate(&trainer, &d, 0, s) : st;
}

/* The active slot's model, loaded (at boot, and after a failed update); a slot whose bytes no
 * longer match its CRC is marked bad and the other one tried. Returns the slot, or -1. */
static int32_t boot_model(void)
{
    for (int tries = 0; tries < 2; tries++) {
        const int32_t a = active_slot();
        if (a < 0) {
            return -1;
        }
        const ft_slot *h = slot_header((uint32_t)a);
        if (ft_crc32(slot_data((uint32_t)a), h->length) == h->crc && install(slot_data((uint32_t)a), h->length) == FT_OK) {
            ft_stats s;
            (void)evaluate_model(&s); /* EVALUATE answers at once after boot */
            return a;
        }
        slot_state((uint32_t)a, SLOT_BAD, h->generation);
    }
    model_ok = 0;
    return -1;
}

static void cmd_deploy(const ft_frame *f)
{
    uint8_t r[24];
    if (f->length != 12u) {
        reply_status(f, FT_ERR_TRUNCATED);
        return;
    }
    const uint32_t version = get32(f->payload), total = get32(f->payload + 4), crc = get32(f->payload + 8);
    if (total == 0u || total > FT_SLOT_BYTES) {
        reply_status(f, FT_ERR_TRUNCATED);
        return;
    }
    const int32_t a = active_slot();
    deploying = a == 0 ? 1u : 0u; /* the inactive slot; the active model keeps running */
    slot_erase(deploying);
    const ft_slot h = {FT_SLOT_MAGIC, SLOT_WRITING, version, total, crc, 0u, 0u, 0u};
    slot_program(slot_header(deploying), &h, sizeof h);
    put32(r, FT_OK);
    put32(r + 4, deploying);
    reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, 8);
}

/* The slot a DEPLOY opened and is still being written, or NULL (replied: NOT_INITIALIZED). */
static ft_slot *writing_slot(const ft_frame *f)
{
    ft_slot *h = deploying < 2u ? slot_header(deploying) : NULL;
    if (h == NULL || h->state != SLOT_WRITING) {
        reply_status(f, FT_ERR_NOT_INITIALIZED);
        return NULL;
    }
    return h;
}

static void cmd_deploy_data(const ft_frame *f)
{
    uint8_t r[8];
    ft_slot *h = writing_slot(f);
    if (h == NULL) {
        return;
    }
    const uint32_t off = f->length >= 4u ? get32(f->payload) : 0xFFFFFFFFu, n = f->length >= 4u ? f->length - 4u : 0u;
    if (f->length < 4u || off > h->received || n > h->length - off) {
        reply_status(f, f->length < 4u ? FT_ERR_TRUNCATED : FT_ERR_BAD_DATA); /* a gap, or beyond the model */
        return;
    }
    if (off + n > h->received) { /* new bytes (a chunk it holds already is acknowledged again) */
        slot_program(slot_data(deploying) + off, f->payload + 4, n);
        ft_slot nh = *h;
        nh.received = off + n;
        slot_program(h, &nh, sizeof nh);
    }
    put32(r, FT_OK);
    put32(r + 4, h->received);
    reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, 8);
}

static void cmd_deploy_commit(const ft_frame *f)
{
    uint8_t r[24];
    ft_slot *h = writing_slot(f);
    if (h == NULL) {
        return;
    }
    const uint32_t s_new = deploying;
    const int32_t previous = active_slot();
    ft_status st = h->received == h->length ? FT_OK : FT_ERR_TRUNCATED;
    if (st == FT_OK && ft_crc32(slot_data(s_new), h->length) != h->crc) {
        st = FT_ERR_BAD_CRC;
    }
    if (st == FT_OK) {
        st = install(slot_data(s_new), h->length);
    }
    ft_stats s = {0};
    if (st == FT_OK) {
        st = evaluate_model(&s);
        if (st == FT_ERR_BAD_DATA && !local_data(&(ft_dataset){0}, &(int32_t){0})) {
            st = FT_OK; /* no local data to evaluate on: loading is the check */
        }
    }
    deploying = 2u;
    if (st != FT_OK) { /* roll back: the new slot is bad, the previous model runs again */
        slot_state(s_new, SLOT_BAD, 0u);
        if (previous >= 0) {
            boot_model();
        } else {
            model_ok = 0;
        }
        reply_status(f, (uint32_t)st);
        return;
    }
    const uint32_t gen = previous >= 0 ? slot_header((uint32_t)previous)->generation + 1u : 1u;
    slot_state(s_new, SLOT_GOOD, gen);
    put32(r, FT_OK);
    put32(r + 4, h->version);
    put32(r + 8, h->crc);
    put32(r + 12, fbits(s.loss));
    put32(r + 16, (uint32_t)s.correct);
    put32(r + 20, (uint32_t)s.count);
    reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, 24);
}

static void handle(const ft_frame *f)
{
    uint8_t r[44];
    switch (f->type) {
    case FT_MSG_HELLO: {
        ft_dataset d;
        int32_t start = 0;
        memcpy(r, "FTBD", 4);
        put32(r + 4, 1u);
        put32(r + 8, FT_SRAM_KB);
        memset(r + 12, 0, 8);
        memcpy(r + 12, FT_TRAINER_VERSION, strlen(FT_TRAINER_VERSION) < 8 ? strlen(FT_TRAINER_VERSION) : 8);
        put32(r + 20, model_ok ? model_crc : 0u);
        const int have = local_data(&d, &start);
        put32(r + 24, have ? (uint32_t)d.count : 0u);
        put32(r + 28, (uint32_t)start);
        put32(r + 32, trains_run);
        const int32_t a = active_slot();
        put32(r + 36, a >= 0 ? slot_header((uint32_t)a)->version : 0u);
        put32(r + 40, a >= 0 ? slot_header((uint32_t)a)->crc : 0u);
        reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, 44);
        break;
    }
    case FT_MSG_LOAD: {
        const uint32_t off = f->length >= 8 ? get32(f->payload) : 0xFFFFFFFFu;
        const uint32_t total = f->length >= 8 ? get32(f->payload + 4) : 0u;
        const uint32_t n = f->length >= 8 ? f->length - 8u : 0u;
        if (f->length < 8 || total > sizeof model_buf || off > total || n > total - off) {
            reply_status(f, FT_ERR_TRUNCATED);
            break;
        }
        model_ok = 0;
        memcpy(model_buf + off, f->payload + 8, n);
        model_len = off + n;
        ft_status st = FT_OK;
        if (model_len == total) {
            st = install(NULL, total);
        }
        if (st != FT_OK) {
            reply_status(f, (uint32_t)st);
            break;
        }
        put32(r, FT_OK);
        put32(r + 4, model_len);
        reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, 8);
        break;
    }
    case FT_MSG_PARAMS: {
        const uint32_t off = f->length >= 4 ? get32(f->payload) : 0xFFFFFFFFu;
        const uint32_t n = f->length >= 4 ? (f->length - 4u) / 4u : 0u;
        if (!model_ok || f->length < 4 || (f->length - 4u) % 4u != 0u || off > n_params || n > n_params - off) {
            reply_status(f, model_ok ? FT_ERR_BAD_DATA : FT_ERR_NOT_INITIALIZED);
            break;
        }
        for (uint32_t i = 0; i < n; i++) {
            params0[off + i] = getf(f->payload + 4u + 4u * i);
        }
        reply_status(f, FT_OK);
        break;
    }
    case FT_MSG_TRAIN:
        ack(f); /* the host waits longer once it knows the request arrived */
        trains_run++;
        cmd_train(f);
        break;
    case FT_MSG_STATS:
        cmd_stats(f);
        break;
    case FT_MSG_PROFILE:
        ack(f);
        cmd_profile(f);
        break;
    case FT_MSG_SPIN:
        ack(f);
        cmd_spin(f);
        break;
    case FT_MSG_CANCEL: /* nothing runs now: a TRAIN it was meant for has ended */
        reply_status(f, FT_OK);
        break;
    case FT_MSG_UPDATE: {
        const uint32_t off = f->length >= 4 ? get32(f->payload) : 0xFFFFFFFFu;
        if (off > update_len) {
            reply_status(f, FT_ERR_BAD_DATA);
            break;
        }
        const uint32_t n = update_len - off < FT_PROTO_MAX_PAYLOAD ? update_len - off : FT_PROTO_MAX_PAYLOAD;
        reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), update_buf + off, (uint16_t)n);
        break;
    }
    case FT_MSG_EVALUATE: {
        ft_dataset d;
        ft_stats s = {0};
        int32_t start = 0;
        /* after a TRAIN: the trained values; else the model's (global) values */
        ft_status st = model_ok && trainer.initialized && local_data(&d, &start) ? ft_trainer_evaluate(&trainer, &d, 0, &s)
                                                                         : evaluate_model(&s);
        if (st != FT_OK) {
            reply_status(f, (uint32_t)st);
            break;
        }
        put32(r, FT_OK);
        put32(r + 4, fbits(s.loss));
        put32(r + 8, (uint32_t)s.correct);
        put32(r + 12, (uint32_t)s.count);
        reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, 16);
        break;
    }
    case FT_MSG_DEPLOY:
        cmd_deploy(f);
        break;
    case FT_MSG_DEPLOY_DATA:
        cmd_deploy_data(f);
        break;
    case FT_MSG_DEPLOY_COMMIT:
        cmd_deploy_commit(f);
        break;
    case FT_MSG_RESET:
        model_ok = 0;
        update_len = 0;
        memset(&trainer, 0, sizeof trainer);
        reply_status(f, FT_OK);
        break;
    default:
        reply_status(f, FT_ERR_UNSUPPORTED);
        break;
    }
}

static void serve(const ft_frame *f)
{
    const uint32_t key = request_key(f);
    if (have_last && key == last_key) {
        ft_hal_write(tx, last_len); /* a repeat: the reply got lost */
        return;
    }
    cancel_pending = 0u;
    handle(f);
    last_key = key;
    have_last = 1;
    if (cancel_pending) { /* the CANCEL that stopped the TRAIN gets its own answer, after it */
        uint8_t p[4], out[FT_PROTO_HEADER_BYTES + 8];
        put32(p, FT_OK);
        ft_hal_write(out, ft_proto_write(out, FT_MSG_CANCEL | FT_PROTO_REPLY, (uint8_t)cancel_seq, p, 4));
        cancel_pending = 0u;
    }
}

int main(void)
{
    ft_hal_init();
    ft_proto_rx_init(&rx);
    (void)boot_model(); /* the deployed model, if a slot holds one */
    ft_frame f;
    for (;;) {
        uint8_t b;
        int have;
        if (ft_proto_pending(&rx) == 0u) {
            have = ft_proto_feed(&rx, ft_hal_getc(), &f);
        } else if (ft_hal_getc_timeout(&b, FT_PROTO_BYTE_TIMEOUT_MS)) {
            have = ft_proto_feed(&rx, b, &f);
        } else {
            have = ft_proto_expire(&rx, &f); /* silence mid-frame: the partial frame is stale */
        }
        if (have) {
            serve(&f);
        }
    }
}

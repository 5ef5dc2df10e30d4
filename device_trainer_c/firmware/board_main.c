/*
 * fedtiny board firmware: the command loop a real or emulated board runs behind the serial
 * protocol (ft_proto.h), over the HAL of its port (ft_hal.h).
 *
 * Commands (payloads little-endian; every reply is the request's type | 0x80 and seq):
 *   HELLO     -> "FTBD", u32 protocol 1, u32 SRAM KiB, char[8] trainer version, u32 model CRC-32
 *                (0: none), u32 local samples
 *   LOAD      u32 offset, u32 total, bytes -> u32 status, u32 bytes received
 *             (the model file in chunks; loaded and checked when the last chunk arrives)
 *   PARAMS    u32 offset, f32 values -> u32 status (the global model's trainable values, all layers
 *             in order, weights then bias per layer, as floats from `offset`; LOAD resets them
 *             to the model file's values)
 *   TRAIN     u32 epochs, u32 seed, f32 lr, f32 momentum, u32 batch, u32 bits, u32 per-channel,
 *             u32 nearest, u32 key seed, u32 round, u32 device id
 *             -> u32 status, f32 loss, u32 correct, u32 count, u32 update bytes
 *             (trains every trainable tensor from the global values on the local data, then encodes
 *             w_trained - w_global per tensor with ft_codec in the order of the tensor names, as
 *             the simulated client)
 *   UPDATE    u32 offset -> up to 1024 bytes of the update: u32 tensors, then per tensor u8 name
 *             length, name, u32 blob length, blob
 *   EVALUATE  -> u32 status, f32 loss, u32 correct, u32 count
 *   RESET     -> u32 0 (forget model and update)
 *   anything else -> ERROR with u32 FT_ERR_UNSUPPORTED
 * Local data lives where a board's flash would hold it: a "FTDS" block (u32 version 1, count,
 * sample size, x offset, y offset; int8 features of the frozen prefix) at FT_DATA_ADDR.
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
static float scratch[4096];
static uint8_t update_buf[24576];
static uint8_t tx[FT_PROTO_MAX_FRAME];
static ft_proto_rx rx;
static ft_model model;
static ft_trainer trainer;
static uint32_t model_len, model_ok, model_crc, update_len, n_params;

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

static void reply(const ft_frame *req, uint8_t type, const uint8_t *payload, uint16_t n)
{
    const uint32_t size = ft_proto_write(tx, type, req->seq, payload, n);
    ft_hal_write(tx, size);
}

static void reply_status(const ft_frame *req, uint32_t status)
{
    uint8_t p[4];
    put32(p, status);
    reply(req, (uint8_t)(status == FT_OK ? (req->type | FT_PROTO_REPLY) : FT_MSG_ERROR), p, 4);
}

static int local_data(ft_dataset *d)
{
    const uint32_t *h = (const uint32_t *)FT_DATA_ADDR;
    if (h[0] != 0x53445446u || h[1] != 1u) { /* "FTDS" */
        return 0;
    }
    const uint8_t *base = (const uint8_t *)FT_DATA_ADDR;
    *d = (ft_dataset){(const int8_t *)(base + h[4]), base + h[5], (int32_t)h[2], (int32_t)h[3], 0};
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

static void cmd_train(const ft_frame *f)
{
    if (!model_ok || f->length < 44) {
        reply_status(f, FT_ERR_NOT_INITIALIZED);
        return;
    }
    const uint8_t *p = f->payload;
    ft_train_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.lr = getf(p + 8);
    cfg.momentum = getf(p + 12);
    cfg.batch_size = (int32_t)get32(p + 16);
    const int32_t bits = (int32_t)get32(p + 20), per_channel = (int32_t)get32(p + 24), nearest = (int32_t)get32(p + 28);
    ft_dataset d;
    ft_status st = local_data(&d) ? ft_trainer_init(&trainer, &model, &cfg, arena, sizeof arena) : FT_ERR_BAD_DATA;
    const int32_t n_train = model.num_layers - model.first_trainable;
    /* start from the global values (params0) */
    uint32_t off = 0;
    for (int32_t k = 0; st == FT_OK && k < n_train; k++) {
        const ft_layer *l = &model.layers[model.first_trainable + k];
        st = ft_trainer_set_layer_params(&trainer, k, params0 + off, params0 + off + l->weight_count);
        off += (uint32_t)(l->weight_count + l->bias_count);
    }
    ft_stats stats = {0};
    if (st == FT_OK) {
        st = ft_trainer_train_epochs(&trainer, &d, (int32_t)get32(p), get32(p + 4), &stats);
    }
    /* encode every tensor's change, in name order */
    ft_tensor_name names[2 * FT_MAX_LAYERS];
    int32_t count = 0;
    for (int32_t k = 0; k < n_train; k++) {
        if (model.layers[model.first_trainable + k].weight_count > 0) {
            name_of(&names[count++], k, 1);
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
        const int32_t n = t->is_weight ? l->weight_count : l->bias_count;
        const float *before = params0 + base + (t->is_weight ? 0u : (uint32_t)l->weight_count);
        if (n > (int32_t)(sizeof scratch / sizeof scratch[0])) {
            st = FT_ERR_ARENA_TOO_SMALL;
            break;
        }
        static float after[8192];
        ft_trainer_layer_params(&trainer, t->k, after, after + l->weight_count);
        const float *now = t->is_weight ? after : after + l->weight_count;
        for (int32_t j = 0; j < n; j++) {
            scratch[j] = now[j] - before[j];
        }
        const ft_codec_params cp = {bits, t->is_weight ? per_channel : 0, l->out_c,
                                    t->is_weight && l->type == FT_LAYER_DWCONV2D, nearest};
        const uint32_t name_len = (uint32_t)strlen(t->name);
        const uint32_t need = ft_codec_blob_bytes(&cp, n);
        if (need == 0 || update_len + 1u + name_len + 4u + need > sizeof update_buf) {
            st = FT_ERR_ARENA_TOO_SMALL;
            break;
        }
        update_buf[update_len++] = (uint8_t)name_len;
        memcpy(update_buf + update_len, t->name, name_len);
        update_len += name_len;
        uint32_t written = 0;
        st = ft_codec_encode(&cp, scratch, n, tensor_key(get32(p + 32), get32(p + 36), get32(p + 40), (uint32_t)i),
                             NULL, update_buf + update_len + 4u, sizeof update_buf - update_len - 4u, &written);
        put32(update_buf + update_len, written);
        update_len += 4u + written;
    }
    if (st != FT_OK) {
        update_len = 0;
        reply_status(f, (uint32_t)st);
        return;
    }
    uint8_t r[20];
    put32(r, FT_OK);
    put32(r + 4, fbits(stats.loss));
    put32(r + 8, (uint32_t)stats.correct);
    put32(r + 12, (uint32_t)stats.count);
    put32(r + 16, update_len);
    reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, sizeof r);
}

static void handle(const ft_frame *f)
{
    uint8_t r[32];
    switch (f->type) {
    case FT_MSG_HELLO: {
        ft_dataset d;
        memcpy(r, "FTBD", 4);
        put32(r + 4, 1u);
        put32(r + 8, FT_SRAM_KB);
        memset(r + 12, 0, 8);
        memcpy(r + 12, FT_TRAINER_VERSION, strlen(FT_TRAINER_VERSION) < 8 ? strlen(FT_TRAINER_VERSION) : 8);
        put32(r + 20, model_ok ? model_crc : 0u);
        put32(r + 24, local_data(&d) ? (uint32_t)d.count : 0u);
        reply(f, (uint8_t)(f->type | FT_PROTO_REPLY), r, 28);
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
            st = ft_model_load(&model, model_buf, total);
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
        cmd_train(f);
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
        ft_status st = model_ok && trainer.initialized && local_data(&d) ? ft_trainer_evaluate(&trainer, &d, 0, &s)
                                                                         : FT_ERR_NOT_INITIALIZED;
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

int main(void)
{
    ft_hal_init();
    ft_proto_rx_init(&rx);
    ft_frame f;
    for (;;) {
        if (ft_proto_feed(&rx, ft_hal_getc(), &f)) {
            handle(&f);
        }
    }
}

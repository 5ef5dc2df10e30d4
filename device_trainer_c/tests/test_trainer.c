/*
 * C unit tests for the device trainer (run under ASan + UBSan in CI). Kernels and gradients
 * are checked against numpy / torch oracles on the Python side; here: CRC, math accuracy
 * against libm, the permutation, the loader under truncation and random corruption, plan vs
 * high-water mark, and training on a tiny model built in this file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedtiny/ft_math.h"
#include "fedtiny/ft_model.h"
#include "fedtiny/ft_codec.h"
#include "fedtiny/ft_proto.h"
#include "fedtiny/ft_trainer.h"

static int failures = 0, checks = 0;
#define CHECK(cond)                                                          \
    do {                                                                     \
        checks++;                                                            \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                    \
    } while (0)

/* ---- a tiny model: conv(1x3, relu) -> global avgpool -> flatten -> trainable FC(4 -> 3) ---- */
static uint8_t model_buf[2048] __attribute__((aligned(8)));
static uint32_t model_len;

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, v & 0xFFFF); put16(p + 2, v >> 16); }
static void putf(uint8_t *p, float f) { uint32_t u; memcpy(&u, &f, 4); put32(p, u); }

static void layer(uint8_t *r, int type, int act, int trainable, const int dims[6], const int win[8], int32_t in_off,
                  int32_t out_off, int t_w, int t_b, int t_m, int t_s, float scale)
{
    memset(r, 0, FT_LAYER_RECORD_BYTES);
    r[0] = (uint8_t)type; r[1] = (uint8_t)act; r[2] = (uint8_t)trainable;
    for (int i = 0; i < 6; i++) put16(r + 4 + 2 * i, (uint32_t)dims[i]);
    for (int i = 0; i < 8; i++) put16(r + 16 + 2 * i, (uint32_t)win[i]);
    put16(r + 32, 1);
    put32(r + 36, (uint32_t)in_off); put32(r + 40, (uint32_t)out_off);
    put16(r + 44, (uint32_t)(int16_t)(act ? out_off : -128)); put16(r + 46, 127);
    put16(r + 48, (uint32_t)t_w); put16(r + 50, (uint32_t)t_b); put16(r + 52, (uint32_t)t_m); put16(r + 54, (uint32_t)t_s);
    putf(r + 56, scale);
}

static void build_model(void)
{
    const int n_layers = 4, n_tensors = 6;
    uint8_t *b = model_buf;
    memset(b, 0, sizeof model_buf);
    const uint32_t lt = FT_MODEL_HEADER_BYTES, tt = lt + n_layers * FT_LAYER_RECORD_BYTES;
    uint32_t data = tt + n_tensors * FT_TENSOR_RECORD_BYTES;
    memcpy(b, "FTNY", 4);
    put16(b + 4, 1); put16(b + 6, FT_MODEL_HEADER_BYTES);
    put16(b + 16, n_layers); put16(b + 18, n_tensors); put16(b + 20, 3); put16(b + 22, 3);
    put16(b + 24, 1); put16(b + 26, 8); put16(b + 28, 2);
    putf(b + 32, 0.05f); put32(b + 36, (uint32_t)-3);
    put32(b + 40, lt); put32(b + 44, tt);
    const int conv_dims[6] = {1, 8, 2, 1, 8, 4}, conv_win[8] = {1, 3, 1, 1, 0, 1, 1, 1};
    const int pool_dims[6] = {1, 8, 4, 1, 1, 4}, pool_win[8] = {1, 8, 1, 1, 0, 0, 1, 1};
    const int flat_dims[6] = {1, 1, 4, 1, 1, 4}, none[8] = {1, 1, 1, 1, 0, 0, 1, 1};
    const int fc_dims[6] = {1, 1, 4, 1, 1, 3};
    layer(b + lt, FT_LAYER_CONV2D, FT_ACT_RELU, 0, conv_dims, conv_win, 3, -5, 0, 1, 2, 3, 0.04f);
    layer(b + lt + 64, FT_LAYER_AVGPOOL, FT_ACT_NONE, 0, pool_dims, pool_win, 0, -5, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0.04f);
    layer(b + lt + 128, FT_LAYER_FLATTEN, FT_ACT_NONE, 0, flat_dims, none, 0, -5, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0.04f);
    layer(b + lt + 192, FT_LAYER_FC, FT_ACT_NONE, 1, fc_dims, none, 0, 0, 4, 5, 0xFFFF, 0xFFFF, 0.0f);
    /* fix the pooling/flatten clamps to the full int8 range */
    put16(b + lt + 64 + 44, (uint32_t)(int16_t)-128); put16(b + lt + 128 + 44, (uint32_t)(int16_t)-128);
    const uint8_t dtypes[6] = {FT_DTYPE_INT8, FT_DTYPE_INT32, FT_DTYPE_INT32, FT_DTYPE_INT32, FT_DTYPE_FLOAT32, FT_DTYPE_FLOAT32};
    const uint32_t counts[6] = {24, 4, 4, 4, 12, 3};
    for (int t = 0; t < n_tensors; t++) {
        uint8_t *r = b + tt + t * FT_TENSOR_RECORD_BYTES;
        r[0] = dtypes[t];
        put32(r + 4, data); put32(r + 8, counts[t]);
        const uint32_t elem = dtypes[t] == FT_DTYPE_INT8 ? 1 : 4;
        for (uint32_t k = 0; k < counts[t]; k++) {
            uint8_t *p = b + data + k * elem;
            switch (t) {
            case 0: *p = (uint8_t)(int8_t)((int)(k * 37 % 41) - 20); break;
            case 1: put32(p, (uint32_t)(int32_t)(k * 50 - 60)); break;
            case 2: put32(p, 1518500250u + k * 1000u); break;
            case 3: put32(p, (uint32_t)-4); break;
            case 4: putf(p, 0.1f * (float)((int)(k % 5) - 2)); break;
            default: putf(p, 0.0f); break;
            }
        }
        data = (data + counts[t] * elem + 3u) & ~3u;
    }
    model_len = data;
    put32(b + 8, model_len);
    put32(b + 12, ft_crc32(b + 16, model_len - 16));
}

/* ---- tests ---- */
static void test_crc(void)
{
    CHECK(ft_crc32((const uint8_t *)"123456789", 9) == 0xCBF43926u);
}

static void test_math(void)
{
    double worst_exp = 0.0, worst_log = 0.0;
    for (float x = -80.0f; x < 80.0f; x += 0.013f) {
        const double rel = fabs((double)ft_expf(x) - exp((double)x)) / exp((double)x);
        worst_exp = rel > worst_exp ? rel : worst_exp;
    }
    for (float x = 1e-30f; x < 1e30f; x *= 1.37f) {
        const double ref = log((double)x);
        const double err = fabs((double)ft_logf(x) - ref) / (fabs(ref) > 1.0 ? fabs(ref) : 1.0);
        worst_log = err > worst_log ? err : worst_log;
    }
    printf("ft_expf max rel error %.2e, ft_logf max error %.2e\n", worst_exp, worst_log);
    CHECK(worst_exp < 1e-6);
    CHECK(worst_log < 1e-6);
}

static void test_permute(void)
{
    static uint8_t seen[5000];
    const uint32_t sizes[] = {1, 2, 3, 7, 64, 100, 1000, 4097};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const uint32_t n = sizes[s];
        memset(seen, 0, sizeof seen);
        int ok = 1;
        for (uint32_t i = 0; i < n; i++) {
            const uint32_t j = ft_permute(i, n, 0xC0FFEEu + (uint32_t)s);
            ok &= j < n && !seen[j];
            if (j < n) seen[j] = 1;
        }
        CHECK(ok);
    }
}

static void test_loader(void)
{
    ft_model m;
    CHECK(ft_model_load(&m, model_buf, model_len) == FT_OK);
    CHECK(m.num_layers == 4 && m.first_trainable == 3 && m.num_classes == 3);
    static uint8_t copy[2048] __attribute__((aligned(8)));
    for (uint32_t len = 0; len < model_len; len++) {
        memcpy(copy, model_buf, len);
        CHECK(ft_model_load(&m, copy, len) != FT_OK);
    }
    memcpy(copy, model_buf, model_len);
    copy[model_len - 1] ^= 0x40;
    CHECK(ft_model_load(&m, copy, model_len) == FT_ERR_BAD_CRC);
    /* Random corruption with a valid CRC: any status is fine, a crash or out-of-bounds read
     * (caught by ASan) is not. */
    srand(1234);
    int rejected = 0;
    const int rounds = 20000;
    for (int r = 0; r < rounds; r++) {
        memcpy(copy, model_buf, model_len);
        const int flips = 1 + rand() % 4;
        for (int f = 0; f < flips; f++) {
            const uint32_t at = 16 + (uint32_t)rand() % (model_len - 16);
            copy[at] = (uint8_t)rand();
        }
        put32(copy + 12, ft_crc32(copy + 16, model_len - 16));
        rejected += ft_model_load(&m, copy, model_len) != FT_OK;
    }
    printf("loader: %d of %d CRC-valid random corruptions rejected, none crashed\n", rejected, rounds);
    CHECK(rejected > rounds / 2);
}

static void make_data(int8_t *x, uint8_t *y, int n)
{
    uint32_t s = 99;
    for (int i = 0; i < n; i++) {
        const int label = i % 3;
        for (int k = 0; k < 16; k++) {
            s = s * 1664525u + 1013904223u;
            const int noise = (int)(s >> 28) - 8;
            const int channel = k % 2;
            x[i * 16 + k] = (int8_t)(label == 0 ? noise : (label == 1 ? (channel ? 60 : -40) + noise : (channel ? -50 : 70) + noise));
        }
        y[i] = (uint8_t)label;
    }
}

static void test_training(void)
{
    ft_model m;
    CHECK(ft_model_load(&m, model_buf, model_len) == FT_OK);
    ft_train_config cfg;
    memset(&cfg, 0, sizeof cfg); /* n_updates = 0: update every trainable tensor */
    cfg.lr = 0.5f;
    cfg.momentum = 0.9f;
    cfg.weight_decay = 1e-4f;
    cfg.batch_size = 8;
    cfg.with_prefix = 1;
    ft_plan plan;
    CHECK(ft_trainer_plan(&m, &cfg, &plan) == FT_OK);
    static uint8_t arena[4096] __attribute__((aligned(8)));
    ft_trainer tr;
    CHECK(ft_trainer_init(&tr, &m, &cfg, arena, plan.arena_bytes - 1) == FT_ERR_ARENA_TOO_SMALL);
    CHECK(ft_trainer_init(&tr, &m, &cfg, arena, plan.arena_bytes) == FT_OK);
    CHECK(ft_trainer_arena_hwm(&tr) == plan.arena_bytes);
    printf("plan: %u arena bytes (params %u, momentum %u, grads %u, prefix %u, acts %u, grad acts %u)\n",
           plan.arena_bytes, plan.params_bytes, plan.momentum_bytes, plan.grads_bytes, plan.prefix_bytes,
           plan.acts_bytes, plan.grad_acts_bytes);
    enum { N = 60 };
    static int8_t x[N * 16];
    static uint8_t y[N];
    make_data(x, y, N);
    ft_dataset d = {x, y, N, 16, NULL};
    ft_stats before, after, st;
    CHECK(ft_trainer_evaluate(&tr, &d, NULL, &before) == FT_OK);
    CHECK(ft_trainer_train_epochs(&tr, &d, 20, 7, &st) == FT_OK);
    CHECK(ft_trainer_evaluate(&tr, &d, NULL, &after) == FT_OK);
    printf("training: loss %.4f -> %.4f, accuracy %d/%d -> %d/%d\n", before.loss, after.loss, before.correct, N,
           after.correct, N);
    CHECK(after.loss < before.loss);
    CHECK(after.correct > before.correct);
    static float params[64];
    memcpy(params, tr.ls[0].w, plan.params_bytes); /* one layer: weights then bias, contiguous */
    CHECK(ft_trainer_init(&tr, &m, &cfg, arena, sizeof arena) == FT_OK);
    CHECK(ft_trainer_train_epochs(&tr, &d, 20, 7, &st) == FT_OK);
    CHECK(memcmp(params, tr.ls[0].w, plan.params_bytes) == 0);
    /* bad labels and sizes are refused */
    y[3] = 9;
    CHECK(ft_trainer_train_epochs(&tr, &d, 1, 7, &st) == FT_ERR_BAD_LABEL);
    y[3] = 0;
    d.sample_size = 15;
    CHECK(ft_trainer_evaluate(&tr, &d, NULL, &st) == FT_ERR_BAD_DATA);
    d.sample_size = 16;

    /* int8 weights (QAS): two of three channels in RAM as int8, learns, fits the plan */
    cfg.precision = FT_PRECISION_INT8;
    cfg.n_updates = 1;
    cfg.update[0] = (ft_layer_update){FT_UPDATE_CHANNELS, 1, 2};
    cfg.lr = 0.2f;
    ft_plan qplan;
    CHECK(ft_trainer_plan(&m, &cfg, &qplan) == FT_OK);
    CHECK(qplan.qparams_bytes == 2u * 4u && qplan.qscale_bytes == 2u * 4u && qplan.params_bytes == 3u * 4u);
    CHECK(ft_trainer_init(&tr, &m, &cfg, arena, qplan.arena_bytes) == FT_OK);
    CHECK(ft_trainer_evaluate(&tr, &d, NULL, &before) == FT_OK);
    CHECK(ft_trainer_train_epochs(&tr, &d, 20, 7, &st) == FT_OK);
    CHECK(ft_trainer_evaluate(&tr, &d, NULL, &after) == FT_OK);
    printf("training int8 (QAS, stochastic): loss %.4f -> %.4f, arena %u B (float32: %u B)\n", before.loss,
           after.loss, qplan.arena_bytes, plan.arena_bytes);
    CHECK(after.loss < before.loss);
    cfg.rounding = 2;
    CHECK(ft_trainer_plan(&m, &cfg, &qplan) == FT_ERR_BAD_CONFIG);
}

/* Codec: round trip within one grid step, then random corruptions of valid blobs (ASan/UBSan). */
static void test_codec(void)
{
    static float v[96], r[96], out[96];
    static uint8_t blob[512], bad[512];
    uint32_t rng = 12345u;
    for (int32_t i = 0; i < 96; i++) {
        rng = ft_hash32(rng + 1u);
        v[i] = ((float)(rng >> 8) / 16777216.0f - 0.5f) * 4.0f;
    }
    static const int32_t widths[6] = {32, 16, 8, 4, 2, 1};
    int ok = 1, rejected = 0, accepted = 0;
    for (int32_t w = 0; w < 6; w++) {
        ft_codec_params p = {widths[w], w % 2, 8, w % 3 == 0, w >= 3};
        uint32_t written = 0;
        memset(r, 0, sizeof r);
        CHECK(ft_codec_encode(&p, v, 96, 7u, r, blob, sizeof blob, &written) == FT_OK);
        CHECK(written == ft_codec_blob_bytes(&p, 96));
        ft_codec_params q;
        int32_t n = 0;
        CHECK(ft_codec_decode(blob, written, out, 96, &q, &n) == FT_OK && n == 96 && q.bits == p.bits);
        for (int32_t i = 0; i < 96; i++) {
            ok &= out[i] + r[i] == v[i] || (out[i] + r[i] - v[i]) * (out[i] + r[i] - v[i]) < 1e-10f;
        }
        CHECK(ft_codec_decode(blob, written - 1, out, 96, &q, &n) == FT_ERR_CODEC_LENGTH);
        CHECK(ft_codec_decode(blob, written, out, 95, &q, &n) == FT_ERR_CODEC_LENGTH);
        for (int32_t round = 0; round < 4000; round++) {
            memcpy(bad, blob, written);
            uint32_t size = written;
            for (int32_t k = 0; k < 3; k++) {
                rng = ft_hash32(rng + 7u);
                bad[rng % size] = (uint8_t)(rng >> 24);
            }
            rng = ft_hash32(rng);
            if ((rng & 3u) == 0u) {
                size = rng % (size + 1u);
            }
            if (ft_codec_decode(bad, size, out, 96, &q, &n) == FT_OK) {
                accepted++;
            } else {
                rejected++;
            }
        }
    }
    CHECK(ok);
    CHECK(rejected > 6000);
    printf("codec: 6 widths round trip (value = decoded + residual); 24000 corruptions: %d rejected, %d accepted\n",
           rejected, accepted);
}

/* Protocol: frames separated by garbage, truncated and corrupted frames; every intact frame is
 * received, in order, and nothing else. */
static void test_proto(void)
{
    static uint8_t stream[1u << 18];
    static uint8_t payload[FT_PROTO_MAX_PAYLOAD];
    static uint16_t want_len[2048];
    static uint8_t want_seq[2048];
    uint32_t rng = 99u, n = 0, intact = 0;
    for (uint32_t f = 0; f < 600 && n + 2 * FT_PROTO_MAX_FRAME < sizeof stream; f++) {
        rng = ft_hash32(rng + 1u);
        const uint32_t garbage = rng % 7u == 0u ? rng % 40u : 0u;
        for (uint32_t g = 0; g < garbage; g++) {
            rng = ft_hash32(rng + 3u);
            stream[n++] = (g % 5u == 0u) ? FT_PROTO_SYNC0 : (uint8_t)rng; /* garbage with sync bytes */
        }
        rng = ft_hash32(rng + 5u);
        const uint16_t len = (uint16_t)(rng % 300u);
        for (uint32_t i = 0; i < len; i++) {
            payload[i] = (uint8_t)(ft_hash32(rng + i) >> 7);
        }
        uint32_t size = ft_proto_write(stream + n, (uint8_t)(1u + f % 6u), (uint8_t)f, payload, len);
        const uint32_t fate = ft_hash32(rng + 11u) % 10u;
        if (fate == 0u) { /* corrupt one byte */
            stream[n + 2u + ft_hash32(rng + 13u) % (size - 2u)] ^= 0x10u;
        } else if (fate == 1u) { /* truncate */
            size = 1u + ft_hash32(rng + 17u) % (size - 1u);
        } else {
            want_len[intact] = len;
            want_seq[intact] = (uint8_t)f;
            intact++;
        }
        n += size;
    }
    ft_proto_rx rx;
    ft_proto_rx_init(&rx);
    ft_frame fr;
    uint32_t got = 0;
    int order_ok = 1;
    for (uint32_t i = 0; i < n; i++) {
        if (ft_proto_feed(&rx, stream[i], &fr)) {
            order_ok &= got < intact && fr.seq == want_seq[got] && fr.length == want_len[got];
            got++;
        }
    }
    CHECK(order_ok);
    CHECK(got == intact);
    printf("protocol: %u of %u frames intact, all %u received in order after garbage/truncation/corruption "
           "(%u dropped, %u bytes skipped)\n", intact, 600u, got, rx.dropped, rx.skipped);
    CHECK(ft_proto_write(stream, 1, 0, payload, FT_PROTO_MAX_PAYLOAD + 1u) == 0u);
}

int main(void)
{
    build_model();
    test_crc();
    test_math();
    test_permute();
    test_loader();
    test_training();
    test_codec();
    test_proto();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}

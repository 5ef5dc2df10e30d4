/*
 * Digests of fedtiny's int8 kernel path, to compare builds byte for byte: the bundled kernels
 * against CMSIS-NN v7.0.0 and later (FEDTINY_CMSIS_NN_DIR), on the host and on the emulated M4.
 *
 * For each frozen layer type (convolution, depthwise, fully connected, average pooling) it runs
 * `cases` random layers through ft_layer_forward_s8 (the call the trainer makes: random shapes,
 * strides, padding, dilation, depth multipliers, offsets, per-channel multipliers and shifts,
 * clamps) and prints the CRC-32 of every output and status; then `cases` per-tensor fully
 * connected layers with a weight offset through arm_fully_connected_s8 (the trainer's layers are
 * per-channel with symmetric weights, so this API is called directly). Given a fedtiny model file it also
 * runs its int8 prefix on random inputs and trains its head for two epochs on those features with
 * random labels, and prints the CRC-32 of the features and of the trained values' bits. Equal
 * lines from two builds mean equal bytes.
 *
 *   host: ft_nn_check CASES [MODEL.ftny]
 *   M4 (mps2-an386, semihosting): a job at FT_JOB_ADDR: "FTNC", u32 cases, u32 model bytes, model
 */
#include <stdint.h>
#include <string.h>

#include "fedtiny/ft_model.h"
#include "fedtiny/ft_nn.h"
#include "fedtiny/ft_trainer.h"
#include "nn_test_util.h"

#ifdef FT_NN_CHECK_SEMIHOST
#include "semihost.h"
#define FT_JOB_ADDR 0x21000000u
static void out_line(const char *s) { ft_semihost_write(s); }
#else
#include <stdio.h>
#include <stdlib.h>
static void out_line(const char *s) { fputs(s, stdout); }
#endif

/* sized for the 256 KiB SRAM of the emulated board; cases that do not fit are skipped (and counted) */
static uint8_t scratch[32768] __attribute__((aligned(8)));
static int8_t in_buf[8192], out_buf[8192], w_buf[8192];
static int32_t b_buf[256], m_buf[256], s_buf[256];
static uint8_t arena[48u * 1024u] __attribute__((aligned(8)));
static int8_t feats[32 * 1024];
static uint8_t labels[32];
static float params[4096];

static uint32_t rng = 0x2545F491u;
static uint32_t next(void) { return ft_xorshift32(&rng); }
static int32_t between(int32_t lo, int32_t hi) { return lo + (int32_t)(next() % (uint32_t)(hi - lo + 1)); }

static void say(const char *tag, uint32_t crc, int32_t count)
{
    char line[64];
    size_t n = strlen(tag);
    memcpy(line, tag, n);
    line[n++] = ' ';
    for (int i = 7; i >= 0; i--) {
        line[n++] = "0123456789abcdef"[(crc >> (4 * i)) & 0xFu];
    }
    line[n++] = ' ';
    ft_put_u32(line, &n, (uint32_t)count);
    line[n++] = '\n';
    line[n] = '\0';
    out_line(line);
}

/* A random window geometry: output size from input, kernel, stride, padding and dilation. */
static int window(ft_layer *l, int32_t k_max, int32_t dil_max)
{
    l->k_h = between(1, k_max);
    l->k_w = between(1, k_max);
    l->stride_h = between(1, 3);
    l->stride_w = between(1, 3);
    l->dil_h = between(1, dil_max);
    l->dil_w = between(1, dil_max);
    const int32_t eh = l->dil_h * (l->k_h - 1) + 1, ew = l->dil_w * (l->k_w - 1) + 1;
    l->pad_h = between(0, eh - 1) / 2;
    l->pad_w = between(0, ew - 1) / 2;
    if (l->in_h + 2 * l->pad_h < eh || l->in_w + 2 * l->pad_w < ew) {
        return 0;
    }
    l->out_h = (l->in_h + 2 * l->pad_h - eh) / l->stride_h + 1;
    l->out_w = (l->in_w + 2 * l->pad_w - ew) / l->stride_w + 1;
    return 1;
}

static void quant(ft_layer *l, int32_t channels)
{
    for (int32_t c = 0; c < channels; c++) {
        m_buf[c] = (int32_t)(0x40000000u + (next() & 0x3FFFFFFFu));
        s_buf[c] = between(-12, 1);
        b_buf[c] = between(-20000, 20000);
    }
    l->mult = m_buf;
    l->shift = s_buf;
    l->b_s32 = b_buf;
    l->input_offset = between(-127, 128);
    l->output_offset = between(-128, 127);
    l->act_min = between(-128, 0);
    l->act_max = between(l->act_min, 127);
}

static uint32_t kernel_digest(int32_t type, int32_t cases, int32_t *ran)
{
    uint32_t crc = 0;
    *ran = 0;
    for (int32_t t = 0; t < cases; t++) {
        ft_layer l;
        memset(&l, 0, sizeof l);
        l.type = type;
        l.in_h = between(1, 12);
        l.in_w = between(1, 12);
        l.in_c = between(1, 16);
        int ok = 1;
        switch (type) {
        case FT_LAYER_CONV2D:
            ok = window(&l, 5, 2);
            l.out_c = between(1, 16);
            l.weight_count = l.out_c * l.k_h * l.k_w * l.in_c;
            break;
        case FT_LAYER_DWCONV2D:
            if (t % 2 == 0) { /* the 3x3 shape CMSIS-NN's depthwise paths favour */
                l.k_h = l.k_w = 3;
                l.dil_h = l.dil_w = 1;
                l.pad_h = l.pad_w = (int32_t)(next() & 1u);
                l.stride_h = l.stride_w = between(1, 2);
                ok = l.in_h + 2 * l.pad_h >= 3 && l.in_w + 2 * l.pad_w >= 3;
                l.out_h = (l.in_h + 2 * l.pad_h - 3) / l.stride_h + 1;
                l.out_w = (l.in_w + 2 * l.pad_w - 3) / l.stride_w + 1;
                l.ch_mult = 1;
            } else {
                ok = window(&l, 5, 2);
                l.ch_mult = between(1, 5);
                l.ch_mult = l.ch_mult == 5 ? 8 : l.ch_mult; /* 1, 2, 3, 4 or 8 */
            }
            l.out_c = l.in_c * l.ch_mult;
            l.weight_count = l.k_h * l.k_w * l.out_c;
            break;
        case FT_LAYER_FC:
            l.out_h = l.out_w = 1;
            l.out_c = between(1, 64);
            l.in_c = between(1, 64);
            l.weight_count = l.out_c * ft_layer_in_count(&l);
            break;
        default: /* FT_LAYER_AVGPOOL */
            ok = window(&l, 4, 1);
            l.out_c = l.in_c;
            break;
        }
        if (!ok || ft_layer_in_count(&l) > (int32_t)sizeof in_buf || ft_layer_out_count(&l) > (int32_t)sizeof out_buf ||
            l.weight_count > (int32_t)sizeof w_buf || l.out_c > 256) {
            continue;
        }
        if (type == FT_LAYER_AVGPOOL) {
            /* every window must see an input element: padding below the kernel, as the loader requires */
            l.act_min = between(-128, 0);
            l.act_max = between(l.act_min, 127);
        } else {
            quant(&l, l.out_c);
        }
        for (int32_t i = 0; i < l.weight_count; i++) {
            w_buf[i] = (int8_t)between(-127, 127);
        }
        l.w_s8 = w_buf;
        for (int32_t i = 0; i < ft_layer_in_count(&l); i++) {
            in_buf[i] = (int8_t)(next() & 0xFFu);
        }
        const int32_t need = ft_layer_scratch_bytes_s8(&l);
        if (need < 0 || need > (int32_t)sizeof scratch) {
            continue;
        }
        memset(out_buf, 0x5A, (size_t)ft_layer_out_count(&l));
        const ft_status st = ft_layer_forward_s8(&l, in_buf, out_buf, scratch, (int32_t)sizeof scratch);
        const uint32_t words[2] = {(uint32_t)st, (uint32_t)t};
        crc ^= ft_crc32((const uint8_t *)words, sizeof words);
        if (st == FT_OK) {
            crc = ft_crc32((const uint8_t *)out_buf, (uint32_t)ft_layer_out_count(&l)) ^ (crc * 0x9E3779B1u);
        }
        (*ran)++;
    }
    return crc;
}

/* Per-tensor fully connected layers with a weight offset, through arm_fully_connected_s8. */
static uint32_t fc_tensor_digest(int32_t cases, int32_t *ran)
{
    uint32_t crc = 0;
    *ran = 0;
    for (int32_t t = 0; t < cases; t++) {
        const int32_t batches = between(1, 3), depth = between(1, 128), out_c = between(1, 64);
        const cmsis_nn_fc_params p = {between(-127, 128), between(-127, 128), between(-128, 127),
                                      {between(-128, 0), 127}};
        const cmsis_nn_per_tensor_quant_params q = {(int32_t)(0x40000000u + (next() & 0x3FFFFFFFu)), between(-12, 1)};
        const cmsis_nn_dims in_d = {batches, 1, 1, depth}, w_d = {depth, 1, 1, out_c}, b_d = {1, 1, 1, out_c};
        const cmsis_nn_dims out_d = {batches, 1, 1, out_c};
        for (int32_t i = 0; i < depth * out_c; i++) {
            w_buf[i] = (int8_t)between(-128, 127);
        }
        for (int32_t i = 0; i < batches * depth; i++) {
            in_buf[i] = (int8_t)(next() & 0xFFu);
        }
        for (int32_t c = 0; c < out_c; c++) {
            b_buf[c] = between(-20000, 20000);
        }
        const int32_t need = arm_fully_connected_s8_get_buffer_size(&w_d);
        if (need < 0 || need > (int32_t)sizeof scratch) {
            continue;
        }
        const cmsis_nn_context ctx = {scratch, need};
        memset(out_buf, 0x5A, (size_t)(batches * out_c));
        const arm_cmsis_nn_status st = arm_fully_connected_s8(&ctx, &p, &q, &in_d, in_buf, &w_d, w_buf, &b_d,
                                                              (t % 3) ? b_buf : NULL, &out_d, out_buf);
        const uint32_t words[2] = {(uint32_t)st, (uint32_t)t};
        crc = ft_crc32((const uint8_t *)out_buf, (uint32_t)(batches * out_c)) ^ (crc * 0x9E3779B1u) ^
              ft_crc32((const uint8_t *)words, sizeof words);
        (*ran)++;
    }
    return crc;
}

static void model_digest(const uint8_t *bytes, uint32_t size)
{
    static ft_model model;
    static ft_trainer tr;
    if (ft_model_load(&model, bytes, size) != FT_OK) {
        out_line("ERROR model\n");
        return;
    }
    const int32_t first = model.first_trainable;
    const ft_layer *last = first > 0 ? &model.layers[first - 1] : NULL;
    const int32_t in_n = model.in_h * model.in_w * model.in_c;
    const int32_t f_n = last != NULL ? ft_layer_out_count(last) : in_n;
    if (in_n > (int32_t)sizeof in_buf || f_n > 1024) {
        out_line("ERROR model too large\n");
        return;
    }
    uint32_t crc = 0;
    for (int32_t s = 0; s < 32; s++) {
        int8_t *cur = in_buf;
        for (int32_t i = 0; i < in_n; i++) {
            in_buf[i] = (int8_t)(next() & 0xFFu);
        }
        for (int32_t k = 0; k < first; k++) {
            int8_t *dst = cur == in_buf ? out_buf : in_buf;
            if (ft_layer_forward_s8(&model.layers[k], cur, dst, scratch, (int32_t)sizeof scratch) != FT_OK) {
                out_line("ERROR forward\n");
                return;
            }
            cur = dst;
        }
        memcpy(feats + s * f_n, cur, (size_t)f_n);
        labels[s] = (uint8_t)(next() % (uint32_t)model.num_classes);
    }
    crc = ft_crc32((const uint8_t *)feats, (uint32_t)(32 * f_n));
    say("forward", crc, 32);
    ft_train_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.lr = 0.05f;
    cfg.momentum = 0.9f;
    cfg.batch_size = 8;
    const ft_dataset d = {feats, labels, 32, f_n, NULL};
    ft_stats stats;
    ft_status st = ft_trainer_init(&tr, &model, &cfg, arena, sizeof arena);
    if (st == FT_OK) {
        st = ft_trainer_set_anchor(&tr);
    }
    if (st == FT_OK) {
        st = ft_trainer_train_epochs(&tr, &d, 2, 7u, &stats);
    }
    if (st != FT_OK) {
        out_line("ERROR train\n");
        return;
    }
    uint32_t pcrc = 0;
    for (int32_t k = 0; k < model.num_layers - first; k++) {
        const ft_layer *l = &model.layers[first + k];
        if (l->weight_count == 0) {
            continue;
        }
        if (l->weight_count + l->bias_count > (int32_t)(sizeof params / sizeof params[0])) {
            out_line("ERROR layer too large\n");
            return;
        }
        ft_trainer_layer_params(&tr, k, params, params + l->weight_count);
        pcrc ^= ft_crc32((const uint8_t *)params, (uint32_t)(l->weight_count + l->bias_count) * 4u) + (uint32_t)k;
    }
    say("train", pcrc, 2);
}

static void run(int32_t cases, const uint8_t *model, uint32_t model_size)
{
    static const struct {
        const char *name;
        int32_t type;
    } kinds[] = {{"conv", FT_LAYER_CONV2D}, {"depthwise", FT_LAYER_DWCONV2D}, {"fc", FT_LAYER_FC},
                 {"avgpool", FT_LAYER_AVGPOOL}};
    for (unsigned i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        int32_t ran = 0;
        const uint32_t crc = kernel_digest(kinds[i].type, cases, &ran);
        say(kinds[i].name, crc, ran);
    }
    int32_t ran = 0;
    const uint32_t crc = fc_tensor_digest(cases, &ran);
    say("fc_tensor", crc, ran);
    if (model != NULL) {
        model_digest(model, model_size);
    }
    out_line("END\n");
}

#ifdef FT_NN_CHECK_SEMIHOST
int main(void)
{
    const uint32_t *h = (const uint32_t *)FT_JOB_ADDR;
    if (h[0] != 0x434E5446u) { /* "FTNC" */
        out_line("ERROR bad job\n");
        ft_semihost_exit(1);
    }
    run((int32_t)h[1], h[2] ? (const uint8_t *)(h + 3) : NULL, h[2]);
    ft_semihost_exit(0);
}
#else
static uint8_t model_bytes[1 << 20] __attribute__((aligned(8)));
int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("usage: ft_nn_check CASES [MODEL.ftny]\n", stderr);
        return 2;
    }
    uint32_t size = 0;
    if (argc > 2) {
        FILE *f = fopen(argv[2], "rb");
        if (f == NULL) {
            fputs("cannot open the model\n", stderr);
            return 2;
        }
        size = (uint32_t)fread(model_bytes, 1, sizeof model_bytes, f);
        fclose(f);
    }
    run(atoi(argv[1]), argc > 2 ? model_bytes : NULL, size);
    return 0;
}
#endif

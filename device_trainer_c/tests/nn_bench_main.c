/*
 * Instructions per MAC of fedtiny's int8 kernel path on the emulated Cortex-M4 (mps2-an386 under
 * QEMU -icount shift=0), for benchmarks/kernels_m4.py: each layer below runs through
 * ft_layer_forward_s8 (the call the trainer makes) `reps` times between two reads of the FPGAIO
 * counter; a spin loop of known length calibrates instructions per counter tick. Prints, over
 * semihosting, "calib <ticks for 4,000,000 instructions>" then "<layer> <ticks> <MACs> <reps>".
 * Then the float32 training kernels of trainable layers (ft_layer_forward_f32 and
 * ft_layer_backward_f32, float weights and the int8 view of QAS training): "f32_<layer>_fwd" and
 * "f32_<layer>_bwd", whose MACs are the forward's and twice the forward's (the weight gradient
 * and the input gradient).
 */
#include <stdint.h>
#include <string.h>

#include "fedtiny/ft_model.h"
#include "ft_hal.h"
#include "ft_layers_f32.h"
#include "nn_test_util.h"
#include "semihost.h"

static uint8_t scratch[32768] __attribute__((aligned(8)));
static int8_t in_buf[16384], out_buf[16384], w_buf[16384];
static int32_t b_buf[256], m_buf[256], s_buf[256];

static uint32_t rng = 0x12345678u;
static uint32_t next(void) { return ft_xorshift32(&rng); }

static void report(const char *name, uint32_t ticks, uint32_t macs, uint32_t reps)
{
    char line[96];
    size_t n = strlen(name);
    memcpy(line, name, n);
    const uint32_t v[3] = {ticks, macs, reps};
    for (int i = 0; i < 3; i++) {
        line[n++] = ' ';
        ft_put_u32(line, &n, v[i]);
    }
    line[n++] = '\n';
    line[n] = '\0';
    ft_semihost_write(line);
}

static void bench(const char *name, ft_layer *l, uint32_t macs, uint32_t reps)
{
    for (int32_t c = 0; c < l->out_c; c++) {
        m_buf[c] = (int32_t)(0x40000000u + (next() & 0x3FFFFFFFu));
        s_buf[c] = -7 - (int32_t)(next() % 3u);
        b_buf[c] = (int32_t)(next() % 2001u) - 1000;
    }
    for (uint32_t i = 0; i < sizeof w_buf; i++) {
        w_buf[i] = (int8_t)((next() % 255u) - 127);
        in_buf[i] = (int8_t)(next() & 0xFFu);
    }
    l->w_s8 = w_buf;
    l->b_s32 = b_buf;
    l->mult = m_buf;
    l->shift = s_buf;
    l->input_offset = 128;
    l->output_offset = -128;
    l->act_min = -128;
    l->act_max = 127;
    l->out_scale = 1.0f;
    if (ft_layer_scratch_bytes_s8(l) > (int32_t)sizeof scratch) {
        ft_semihost_write("ERROR scratch\n");
        return;
    }
    (void)ft_layer_forward_s8(l, in_buf, out_buf, scratch, (int32_t)sizeof scratch); /* warm */
    const uint32_t t0 = ft_hal_counter();
    for (uint32_t r = 0; r < reps; r++) {
        if (ft_layer_forward_s8(l, in_buf, out_buf, scratch, (int32_t)sizeof scratch) != FT_OK) {
            ft_semihost_write("ERROR forward\n");
            return;
        }
    }
    report(name, ft_hal_counter() - t0, macs, reps);
}

static float f_in[2048], f_out[2048], f_w[4096], f_b[64], f_go[2048], f_gi[2048], f_gw[4096], f_gb[64], f_sc[64];
static int8_t f_q[4096];

static float frand(void) { return (float)((int32_t)(next() % 2001u) - 1000) / 1000.0f; }

static void bench_f32(const char *name, const ft_layer *l, int int8_view, uint32_t macs, uint32_t reps)
{
    for (uint32_t i = 0; i < 2048u; i++) {
        f_in[i] = frand();
        f_go[i] = frand();
    }
    for (uint32_t i = 0; i < 4096u; i++) {
        f_w[i] = frand();
        f_q[i] = (int8_t)((next() % 255u) - 127);
    }
    for (uint32_t i = 0; i < 64u; i++) {
        f_b[i] = frand();
        f_sc[i] = 0.01f + 0.001f * (float)i;
    }
    const ft_wview v = {f_w, int8_view ? f_q : NULL, int8_view ? f_sc : NULL, NULL, ft_layer_row_f32(l)};
    char tag[48];
    const size_t n = strlen(name);
    memcpy(tag, name, n);
    uint32_t t0 = ft_hal_counter();
    for (uint32_t r = 0; r < reps; r++) {
        ft_layer_forward_f32(l, &v, f_b, f_in, f_out);
    }
    memcpy(tag + n, "_fwd", 5);
    report(tag, ft_hal_counter() - t0, macs, reps);
    for (int32_t i = 0; i < ft_layer_out_count(l); i++) {
        f_out[i] = 0.5f; /* every output alive through the activation */
    }
    t0 = ft_hal_counter();
    for (uint32_t r = 0; r < reps; r++) {
        ft_layer_backward_f32(l, &v, f_in, f_out, f_go, f_gi, f_gw, f_gb, NULL);
    }
    memcpy(tag + n, "_bwd", 5);
    report(tag, ft_hal_counter() - t0, 2u * macs, reps);
}

static ft_layer layer(int32_t type, int32_t h, int32_t w, int32_t c, int32_t k, int32_t pad, int32_t stride,
                      int32_t out_c, int32_t ch_mult)
{
    ft_layer l;
    memset(&l, 0, sizeof l);
    l.type = type;
    l.in_h = h;
    l.in_w = w;
    l.in_c = c;
    l.k_h = l.k_w = k;
    l.pad_h = l.pad_w = pad;
    l.stride_h = l.stride_w = stride;
    l.dil_h = l.dil_w = 1;
    l.ch_mult = ch_mult;
    l.out_h = (h + 2 * pad - k) / stride + 1;
    l.out_w = (w + 2 * pad - k) / stride + 1;
    l.out_c = out_c;
    return l;
}

int main(void)
{
    const uint32_t t0 = ft_hal_counter();
    ft_hal_spin(1000000u); /* 4,000,000 instructions */
    report("calib", ft_hal_counter() - t0, 4000000u, 1u);

    ft_layer fc = layer(FT_LAYER_FC, 1, 1, 512, 1, 0, 1, 64, 1);
    fc.out_h = fc.out_w = 1;
    bench("fc_512x64", &fc, 512u * 64u, 8u);
    ft_layer pw = layer(FT_LAYER_CONV2D, 16, 16, 32, 1, 0, 1, 32, 1);
    bench("conv_1x1_16x16x32to32", &pw, 16u * 16u * 32u * 32u, 2u);
    ft_layer c1d = layer(FT_LAYER_CONV2D, 1, 64, 16, 1, 0, 1, 32, 1);
    c1d.k_w = 5;
    c1d.pad_w = 2;
    c1d.out_w = 64;
    bench("conv_1d_k5_64x16to32", &c1d, 64u * 32u * 5u * 16u, 2u);
    ft_layer c3 = layer(FT_LAYER_CONV2D, 12, 12, 16, 3, 1, 1, 16, 1);
    bench("conv_3x3_12x12x16to16", &c3, 12u * 12u * 16u * 9u * 16u, 2u);
    ft_layer dw3 = layer(FT_LAYER_DWCONV2D, 16, 16, 32, 3, 1, 1, 32, 1);
    bench("depthwise_3x3_16x16x32", &dw3, 16u * 16u * 32u * 9u, 4u);
    ft_layer dw1d = layer(FT_LAYER_DWCONV2D, 1, 25, 32, 1, 0, 1, 32, 1); /* the default IMU model's */
    dw1d.k_w = 3;
    dw1d.pad_w = 1;
    dw1d.out_w = 25;
    bench("depthwise_1d_k3_25x32", &dw1d, 25u * 32u * 3u, 16u);
    ft_layer dw5 = layer(FT_LAYER_DWCONV2D, 12, 12, 8, 5, 2, 1, 16, 2);
    bench("depthwise_5x5_mult2_12x12x8", &dw5, 12u * 12u * 16u * 25u, 4u);
    ft_layer dw4 = layer(FT_LAYER_DWCONV2D, 12, 12, 8, 3, 1, 1, 32, 4);
    bench("depthwise_3x3_mult4_12x12x8", &dw4, 12u * 12u * 32u * 9u, 4u);
    ft_layer dw3m = layer(FT_LAYER_DWCONV2D, 12, 12, 8, 3, 1, 1, 24, 3);
    bench("depthwise_3x3_mult3_12x12x8", &dw3m, 12u * 12u * 24u * 9u, 4u);
    ft_layer pool = layer(FT_LAYER_AVGPOOL, 8, 8, 64, 8, 0, 1, 64, 1);
    bench("avgpool_global_8x8x64", &pool, 8u * 8u * 64u, 8u); /* "MACs": input elements */

    ft_layer ffc = layer(FT_LAYER_FC, 1, 1, 128, 1, 0, 1, 32, 1);
    ffc.out_h = ffc.out_w = 1;
    ffc.act = FT_ACT_RELU;
    bench_f32("f32_fc_128x32", &ffc, 0, 128u * 32u, 4u);
    bench_f32("f32_fc_128x32_int8view", &ffc, 1, 128u * 32u, 4u);
    ft_layer fc3 = layer(FT_LAYER_CONV2D, 8, 8, 8, 3, 1, 1, 16, 1);
    fc3.act = FT_ACT_RELU;
    bench_f32("f32_conv_3x3_8x8x8to16", &fc3, 0, 8u * 8u * 16u * 9u * 8u, 1u);
    bench_f32("f32_conv_3x3_8x8x8to16_int8view", &fc3, 1, 8u * 8u * 16u * 9u * 8u, 1u);
    ft_layer fdw = layer(FT_LAYER_DWCONV2D, 8, 8, 32, 3, 1, 1, 32, 1);
    fdw.act = FT_ACT_RELU;
    bench_f32("f32_depthwise_3x3_8x8x32", &fdw, 0, 8u * 8u * 32u * 9u, 2u);
    ft_semihost_write("END\n");
    ft_semihost_exit(0);
}

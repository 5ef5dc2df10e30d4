/*
 * fedtiny model file, version 1: a frozen int8 prefix and a float32 trainable suffix.
 * All integers little-endian. Canonical layout:
 *
 *   header (48 bytes) | layer table (64 B per layer) | tensor table (16 B per tensor) | data
 *
 * Header
 *   0  char[4] magic "FTNY"          4  u16 version (1)        6  u16 header bytes (48)
 *   8  u32 file bytes                12 u32 CRC-32 (IEEE) of bytes [16, file bytes)
 *   16 u16 num_layers                18 u16 num_tensors
 *   20 u16 first_trainable (layers [first_trainable, num_layers) are float32 and trainable)
 *   22 u16 num_classes               24 u16 in_h  26 u16 in_w  28 u16 in_c  30 u16 reserved
 *   32 f32 input_scale               36 i32 input_zero_point
 *   40 u32 layer table offset (48)   44 u32 tensor table offset (48 + 64 * num_layers)
 *
 * Layer record
 *   0 u8 type (ft_layer_type)  1 u8 activation (ft_activation)  2 u8 trainable  3 u8 reserved
 *   4 u16 in_h, in_w, in_c, out_h, out_w, out_c
 *   16 u16 k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
 *   32 u16 ch_mult  34 u16 reserved
 *   36 i32 input_offset (= -input zero point)   40 i32 output_offset (= output zero point)
 *   44 i16 act_min  46 i16 act_max (int8 clamp; ignored by float layers)
 *   48 u16 tensor index: weights, bias, multiplier, shift (0xFFFF = none)
 *   56 f32 output scale (int8 layers)   60 u32 reserved
 *
 * Tensor record
 *   0 u8 dtype (ft_dtype)  1..3 reserved  4 u32 data offset (4-aligned)  8 u32 element count
 *   12 u32 reserved
 *
 * Tensors are used in place (zero copy), so the buffer handed to ft_model_load must be
 * 4-byte aligned and outlive the model.
 */
#ifndef FT_MODEL_H
#define FT_MODEL_H

#include <stdint.h>

#include "fedtiny/ft_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FT_MODEL_MAGIC_0 'F'
#define FT_MODEL_MAGIC_1 'T'
#define FT_MODEL_MAGIC_2 'N'
#define FT_MODEL_MAGIC_3 'Y'
#define FT_MODEL_VERSION 1u
#define FT_MODEL_HEADER_BYTES 48u
#define FT_LAYER_RECORD_BYTES 64u
#define FT_TENSOR_RECORD_BYTES 16u
#define FT_MAX_LAYERS 32
#define FT_MAX_TENSORS 256
#define FT_MAX_DIM 4096
#define FT_MAX_ELEMENTS (1L << 22) /* per activation or weight tensor */
#define FT_MAX_CLASSES 256
#define FT_NO_TENSOR 0xFFFFu

typedef enum {
    FT_LAYER_CONV2D = 1,
    FT_LAYER_DWCONV2D = 2,
    FT_LAYER_FC = 3,
    FT_LAYER_AVGPOOL = 4,
    FT_LAYER_FLATTEN = 5
} ft_layer_type;

typedef enum { FT_ACT_NONE = 0, FT_ACT_RELU = 1, FT_ACT_RELU6 = 2 } ft_activation;

typedef enum { FT_DTYPE_INT8 = 1, FT_DTYPE_INT32 = 2, FT_DTYPE_FLOAT32 = 3 } ft_dtype;

typedef struct {
    int32_t type, act, trainable;
    int32_t in_h, in_w, in_c, out_h, out_w, out_c;
    int32_t k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, ch_mult;
    int32_t input_offset, output_offset, act_min, act_max;
    float out_scale;
    int32_t weight_count, bias_count; /* elements; 0 for layers without parameters */
    /* frozen int8 layers */
    const int8_t *w_s8;
    const int32_t *b_s32;
    const int32_t *mult;
    const int32_t *shift;
    /* trainable float32 layers: initial values */
    const float *w_f32;
    const float *b_f32;
} ft_layer;

typedef struct {
    const uint8_t *bytes;
    uint32_t size;
    int32_t num_layers, num_tensors, first_trainable, num_classes;
    int32_t in_h, in_w, in_c;
    float input_scale;
    int32_t input_zero_point;
    ft_layer layers[FT_MAX_LAYERS];
} ft_model;

/* Validate and parse a model; on error *model is unusable and the status names the problem. */
ft_status ft_model_load(ft_model *model, const uint8_t *bytes, uint32_t size);

/* CRC-32 (IEEE 802.3, reflected, init and final xor 0xFFFFFFFF). */
uint32_t ft_crc32(const uint8_t *data, uint32_t size);

static inline int32_t ft_layer_in_count(const ft_layer *l) { return l->in_h * l->in_w * l->in_c; }
static inline int32_t ft_layer_out_count(const ft_layer *l) { return l->out_h * l->out_w * l->out_c; }

/* Scratch bytes the int8 kernel of a frozen layer needs (its *_get_buffer_size()). */
int32_t ft_layer_scratch_bytes_s8(const ft_layer *layer);

/* Run one frozen int8 layer on one sample (flatten copies). */
ft_status ft_layer_forward_s8(const ft_layer *layer, const int8_t *input, int8_t *output, void *scratch,
                              int32_t scratch_bytes);

#ifdef __cplusplus
}
#endif

#endif /* FT_MODEL_H */

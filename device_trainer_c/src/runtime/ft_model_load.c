/*
 * Model loader: every offset, count and size is checked before it is used; the loader
 * never reads outside [bytes, bytes + size). See include/fedtiny/ft_model.h for the format.
 */
#include "fedtiny/ft_model.h"

#include <stddef.h>
#include <string.h>

static uint16_t rd_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static int16_t rd_i16(const uint8_t *p) { return (int16_t)rd_u16(p); }
static uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static int32_t rd_i32(const uint8_t *p) { return (int32_t)rd_u32(p); }
static float rd_f32(const uint8_t *p)
{
    uint32_t u = rd_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int ft_is_finite(float f) { return f == f && f - f == 0.0f; }

static int ft_host_is_little_endian(void)
{
    const uint16_t probe = 1;
    uint8_t first;
    memcpy(&first, &probe, 1);
    return first == 1;
}

typedef struct {
    const uint8_t *bytes;
    uint32_t data_start; /* first byte after the tables */
    uint32_t tensor_table;
    int32_t num_tensors;
} ft_loader;

/* Resolve tensor `index` of `dtype` with exactly `count` elements (count < 0: any count). */
static ft_status ft_tensor(const ft_loader *ld, uint32_t index, ft_dtype dtype, int64_t count, const void **out,
                           uint32_t size)
{
    if (index == FT_NO_TENSOR || (int32_t)index >= ld->num_tensors) {
        return FT_ERR_BAD_TENSOR_INDEX;
    }
    const uint8_t *rec = ld->bytes + ld->tensor_table + index * FT_TENSOR_RECORD_BYTES;
    const uint8_t dt = rec[0];
    const uint32_t offset = rd_u32(rec + 4);
    const uint32_t n = rd_u32(rec + 8);
    if (dt != FT_DTYPE_INT8 && dt != FT_DTYPE_INT32 && dt != FT_DTYPE_FLOAT32) {
        return FT_ERR_BAD_DTYPE;
    }
    if (dt != (uint8_t)dtype) {
        return FT_ERR_BAD_DTYPE;
    }
    const uint64_t elem = dt == FT_DTYPE_INT8 ? 1u : 4u;
    if (offset < ld->data_start || (uint64_t)offset + (uint64_t)n * elem > size) {
        return FT_ERR_TENSOR_OUT_OF_RANGE;
    }
    if (((uintptr_t)(ld->bytes + offset) & 3u) != 0) {
        return FT_ERR_TENSOR_MISALIGNED;
    }
    if (count >= 0 && (int64_t)n != count) {
        return FT_ERR_TENSOR_SIZE;
    }
    *out = ld->bytes + offset;
    return FT_OK;
}

static int ft_dim_ok(int32_t v) { return v >= 1 && v <= FT_MAX_DIM; }

/* Window geometry shared by conv, depthwise conv and pooling. */
static ft_status ft_check_window(const ft_layer *l)
{
    if (!ft_dim_ok(l->k_h) || !ft_dim_ok(l->k_w) || !ft_dim_ok(l->stride_h) || !ft_dim_ok(l->stride_w) ||
        !ft_dim_ok(l->dil_h) || !ft_dim_ok(l->dil_w)) {
        return FT_ERR_BAD_DIMS;
    }
    const int64_t eff_h = (int64_t)l->dil_h * (l->k_h - 1) + 1;
    const int64_t eff_w = (int64_t)l->dil_w * (l->k_w - 1) + 1;
    if (l->pad_h < 0 || l->pad_w < 0 || l->pad_h >= eff_h || l->pad_w >= eff_w) {
        return FT_ERR_BAD_DIMS;
    }
    /* The last window must end inside the input plus its padding (bottom/right padding may exceed
     * top/left padding by one, as TensorFlow's SAME padding does). */
    const int64_t end_h = (int64_t)(l->out_h - 1) * l->stride_h - l->pad_h + eff_h - 1;
    const int64_t end_w = (int64_t)(l->out_w - 1) * l->stride_w - l->pad_w + eff_w - 1;
    if (end_h > (int64_t)l->in_h + l->pad_h || end_w > (int64_t)l->in_w + l->pad_w) {
        return FT_ERR_BAD_DIMS;
    }
    /* Every window must see at least one input element (pooling divides by that count). */
    if (end_h - eff_h + 1 > (int64_t)l->in_h - 1 || end_w - eff_w + 1 > (int64_t)l->in_w - 1) {
        return FT_ERR_BAD_DIMS;
    }
    return FT_OK;
}

static ft_status ft_check_geometry(ft_layer *l)
{
    const int32_t dims[6] = {l->in_h, l->in_w, l->in_c, l->out_h, l->out_w, l->out_c};
    for (int i = 0; i < 6; i++) {
        if (!ft_dim_ok(dims[i])) {
            return FT_ERR_BAD_DIMS;
        }
    }
    if ((int64_t)l->in_h * l->in_w * l->in_c > FT_MAX_ELEMENTS ||
        (int64_t)l->out_h * l->out_w * l->out_c > FT_MAX_ELEMENTS) {
        return FT_ERR_BAD_DIMS;
    }
    int64_t weights = 0, biases = 0;
    ft_status st = FT_OK;
    switch (l->type) {
    case FT_LAYER_CONV2D:
        st = ft_check_window(l);
        weights = (int64_t)l->out_c * l->k_h * l->k_w * l->in_c;
        biases = l->out_c;
        break;
    case FT_LAYER_DWCONV2D:
        st = ft_check_window(l);
        if (st == FT_OK && (l->ch_mult < 1 || (int64_t)l->in_c * l->ch_mult != l->out_c)) {
            st = FT_ERR_SHAPE_MISMATCH;
        }
        weights = (int64_t)l->k_h * l->k_w * l->out_c;
        biases = l->out_c;
        break;
    case FT_LAYER_FC:
        if (l->out_h != 1 || l->out_w != 1) {
            st = FT_ERR_SHAPE_MISMATCH;
        }
        weights = (int64_t)l->out_c * ft_layer_in_count(l);
        biases = l->out_c;
        break;
    case FT_LAYER_AVGPOOL:
        st = ft_check_window(l);
        if (st == FT_OK && (l->dil_h != 1 || l->dil_w != 1)) {
            st = FT_ERR_BAD_DIMS;
        }
        if (st == FT_OK && l->out_c != l->in_c) {
            st = FT_ERR_SHAPE_MISMATCH;
        }
        break;
    case FT_LAYER_FLATTEN:
        if (l->out_h != 1 || l->out_w != 1 || l->out_c != ft_layer_in_count(l)) {
            st = FT_ERR_SHAPE_MISMATCH;
        }
        break;
    default:
        return FT_ERR_BAD_LAYER_TYPE;
    }
    if (st != FT_OK) {
        return st;
    }
    if (weights > FT_MAX_ELEMENTS) {
        return FT_ERR_BAD_DIMS;
    }
    l->weight_count = (int32_t)weights;
    l->bias_count = (int32_t)biases;
    return FT_OK;
}

static ft_status ft_parse_layer(const ft_loader *ld, const uint8_t *rec, ft_layer *l, int32_t expect_trainable,
                                uint32_t size)
{
    memset(l, 0, sizeof *l);
    l->type = rec[0];
    l->act = rec[1];
    l->trainable = rec[2];
    int32_t *dims[14] = {&l->in_h,     &l->in_w,     &l->in_c,  &l->out_h, &l->out_w, &l->out_c, &l->k_h,
                         &l->k_w,      &l->stride_h, &l->stride_w, &l->pad_h, &l->pad_w, &l->dil_h, &l->dil_w};
    for (int i = 0; i < 14; i++) {
        *dims[i] = rd_u16(rec + 4 + 2 * i);
    }
    l->ch_mult = rd_u16(rec + 32);
    l->input_offset = rd_i32(rec + 36);
    l->output_offset = rd_i32(rec + 40);
    l->act_min = rd_i16(rec + 44);
    l->act_max = rd_i16(rec + 46);
    const uint32_t t_w = rd_u16(rec + 48), t_b = rd_u16(rec + 50), t_m = rd_u16(rec + 52), t_s = rd_u16(rec + 54);
    l->out_scale = rd_f32(rec + 56);

    if (l->act != FT_ACT_NONE && l->act != FT_ACT_RELU && l->act != FT_ACT_RELU6) {
        return FT_ERR_BAD_ACTIVATION;
    }
    if (l->trainable != expect_trainable) {
        return FT_ERR_BAD_TRAINABLE_LAYOUT;
    }
    ft_status st = ft_check_geometry(l);
    if (st != FT_OK) {
        return st;
    }
    const int has_params = l->weight_count > 0;
    if (!l->trainable) {
        if (l->act_min < -128 || l->act_max > 127 || l->act_min > l->act_max) {
            return FT_ERR_BAD_ACTIVATION;
        }
        if (!ft_is_finite(l->out_scale) || l->out_scale <= 0.0f) {
            return FT_ERR_BAD_QUANT;
        }
        if (has_params) {
            if (l->input_offset < -127 || l->input_offset > 128 || l->output_offset < -128 ||
                l->output_offset > 127) {
                return FT_ERR_BAD_QUANT;
            }
            const void *p;
            if ((st = ft_tensor(ld, t_w, FT_DTYPE_INT8, l->weight_count, &p, size)) != FT_OK) return st;
            l->w_s8 = (const int8_t *)p;
            if ((st = ft_tensor(ld, t_b, FT_DTYPE_INT32, l->bias_count, &p, size)) != FT_OK) return st;
            l->b_s32 = (const int32_t *)p;
            if ((st = ft_tensor(ld, t_m, FT_DTYPE_INT32, l->out_c, &p, size)) != FT_OK) return st;
            l->mult = (const int32_t *)p;
            if ((st = ft_tensor(ld, t_s, FT_DTYPE_INT32, l->out_c, &p, size)) != FT_OK) return st;
            l->shift = (const int32_t *)p;
            for (int32_t c = 0; c < l->out_c; c++) {
                if (l->mult[c] < 0 || l->shift[c] < -31 || l->shift[c] > 30) {
                    return FT_ERR_BAD_QUANT;
                }
            }
        }
    } else if (has_params) {
        const void *p;
        if ((st = ft_tensor(ld, t_w, FT_DTYPE_FLOAT32, l->weight_count, &p, size)) != FT_OK) return st;
        l->w_f32 = (const float *)p;
        if ((st = ft_tensor(ld, t_b, FT_DTYPE_FLOAT32, l->bias_count, &p, size)) != FT_OK) return st;
        l->b_f32 = (const float *)p;
    }
    return FT_OK;
}

ft_status ft_model_load(ft_model *model, const uint8_t *bytes, uint32_t size)
{
    if (model == NULL || bytes == NULL) {
        return FT_ERR_NULL_ARG;
    }
    memset(model, 0, sizeof *model);
    if (!ft_host_is_little_endian()) {
        return FT_ERR_UNSUPPORTED;
    }
    if (size < FT_MODEL_HEADER_BYTES) {
        return FT_ERR_TRUNCATED;
    }
    if (bytes[0] != FT_MODEL_MAGIC_0 || bytes[1] != FT_MODEL_MAGIC_1 || bytes[2] != FT_MODEL_MAGIC_2 ||
        bytes[3] != FT_MODEL_MAGIC_3) {
        return FT_ERR_BAD_MAGIC;
    }
    if (rd_u16(bytes + 4) != FT_MODEL_VERSION) {
        return FT_ERR_BAD_VERSION;
    }
    if (rd_u16(bytes + 6) != FT_MODEL_HEADER_BYTES) {
        return FT_ERR_BAD_HEADER_SIZE;
    }
    const uint32_t file_bytes = rd_u32(bytes + 8);
    if (file_bytes > size) {
        return FT_ERR_TRUNCATED;
    }
    if (file_bytes != size) {
        return FT_ERR_SIZE_MISMATCH;
    }
    if (ft_crc32(bytes + 16, size - 16) != rd_u32(bytes + 12)) {
        return FT_ERR_BAD_CRC;
    }
    model->bytes = bytes;
    model->size = size;
    model->num_layers = rd_u16(bytes + 16);
    model->num_tensors = rd_u16(bytes + 18);
    model->first_trainable = rd_u16(bytes + 20);
    model->num_classes = rd_u16(bytes + 22);
    model->in_h = rd_u16(bytes + 24);
    model->in_w = rd_u16(bytes + 26);
    model->in_c = rd_u16(bytes + 28);
    model->input_scale = rd_f32(bytes + 32);
    model->input_zero_point = rd_i32(bytes + 36);
    const uint32_t layer_table = rd_u32(bytes + 40), tensor_table = rd_u32(bytes + 44);

    if (model->num_layers < 1 || model->num_layers > FT_MAX_LAYERS) {
        return FT_ERR_TOO_MANY_LAYERS;
    }
    if (model->num_tensors > FT_MAX_TENSORS) {
        return FT_ERR_TABLE_OUT_OF_RANGE;
    }
    const uint64_t layer_end = (uint64_t)layer_table + (uint64_t)model->num_layers * FT_LAYER_RECORD_BYTES;
    const uint64_t tensor_end = (uint64_t)tensor_table + (uint64_t)model->num_tensors * FT_TENSOR_RECORD_BYTES;
    if (layer_table != FT_MODEL_HEADER_BYTES || tensor_table != layer_end || tensor_end > size) {
        return FT_ERR_TABLE_OUT_OF_RANGE;
    }
    if (!ft_dim_ok(model->in_h) || !ft_dim_ok(model->in_w) || !ft_dim_ok(model->in_c) ||
        (int64_t)model->in_h * model->in_w * model->in_c > FT_MAX_ELEMENTS) {
        return FT_ERR_BAD_DIMS;
    }
    if (model->num_classes < 2 || model->num_classes > FT_MAX_CLASSES) {
        return FT_ERR_BAD_DIMS;
    }
    if (!ft_is_finite(model->input_scale) || model->input_scale <= 0.0f || model->input_zero_point < -128 ||
        model->input_zero_point > 127) {
        return FT_ERR_BAD_QUANT;
    }
    if (model->first_trainable > model->num_layers) {
        return FT_ERR_BAD_TRAINABLE_LAYOUT;
    }

    ft_loader ld = {bytes, (uint32_t)tensor_end, tensor_table, model->num_tensors};
    int32_t prev_h = model->in_h, prev_w = model->in_w, prev_c = model->in_c;
    for (int32_t i = 0; i < model->num_layers; i++) {
        ft_layer *l = &model->layers[i];
        ft_status st = ft_parse_layer(&ld, bytes + layer_table + (uint32_t)i * FT_LAYER_RECORD_BYTES, l,
                                      i >= model->first_trainable, size);
        if (st != FT_OK) {
            return st;
        }
        if (l->type == FT_LAYER_FC || l->type == FT_LAYER_FLATTEN) {
            if ((int64_t)l->in_h * l->in_w * l->in_c != (int64_t)prev_h * prev_w * prev_c) {
                return FT_ERR_SHAPE_MISMATCH;
            }
        } else if (l->in_h != prev_h || l->in_w != prev_w || l->in_c != prev_c) {
            return FT_ERR_SHAPE_MISMATCH;
        }
        if (!l->trainable && (l->type == FT_LAYER_AVGPOOL || l->type == FT_LAYER_FLATTEN)) {
            /* int8 pooling and flatten keep the input quantization */
            const float in_scale = i == 0 ? model->input_scale : model->layers[i - 1].out_scale;
            const int32_t in_zp = i == 0 ? model->input_zero_point : model->layers[i - 1].output_offset;
            if (l->out_scale != in_scale || l->output_offset != in_zp) {
                return FT_ERR_BAD_QUANT;
            }
        }
        prev_h = l->out_h;
        prev_w = l->out_w;
        prev_c = l->out_c;
    }
    if ((int64_t)prev_h * prev_w * prev_c != model->num_classes) {
        return FT_ERR_SHAPE_MISMATCH;
    }
    return FT_OK;
}

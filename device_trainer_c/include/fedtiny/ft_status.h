/*
 * fedtiny device trainer: one status enum returned by every runtime function.
 * ft_status_name() gives the stable upper-case name used by the Python side.
 */
#ifndef FT_STATUS_H
#define FT_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    FT_OK = 0,
    FT_ERR_NULL_ARG,              /* a required pointer was NULL */
    FT_ERR_TRUNCATED,             /* buffer shorter than the structure it must hold */
    FT_ERR_BAD_MAGIC,             /* model file does not start with "FTNY" */
    FT_ERR_BAD_VERSION,           /* unsupported format version */
    FT_ERR_BAD_HEADER_SIZE,       /* header size field is not the one of this version */
    FT_ERR_SIZE_MISMATCH,         /* header file size differs from the buffer size */
    FT_ERR_BAD_CRC,               /* CRC-32 of the body does not match */
    FT_ERR_TABLE_OUT_OF_RANGE,    /* layer or tensor table outside the file */
    FT_ERR_TENSOR_OUT_OF_RANGE,   /* tensor data outside the file or inside the tables */
    FT_ERR_TENSOR_MISALIGNED,     /* tensor data not 4-byte aligned */
    FT_ERR_BAD_DTYPE,             /* tensor dtype unknown or wrong for its use */
    FT_ERR_BAD_TENSOR_INDEX,      /* layer names a tensor that does not exist */
    FT_ERR_TENSOR_SIZE,           /* tensor element count wrong for the layer */
    FT_ERR_BAD_LAYER_TYPE,        /* unknown layer type */
    FT_ERR_BAD_DIMS,              /* zero, negative or absurd dimension / stride / padding */
    FT_ERR_SHAPE_MISMATCH,        /* layer input does not match previous output */
    FT_ERR_BAD_QUANT,             /* offsets, multipliers or shifts out of range */
    FT_ERR_BAD_ACTIVATION,        /* unknown activation or bad clamp range */
    FT_ERR_BAD_TRAINABLE_LAYOUT,  /* trainable layers are not a float suffix */
    FT_ERR_TOO_MANY_LAYERS,       /* more layers than FT_MAX_LAYERS */
    FT_ERR_ARENA_TOO_SMALL,       /* caller arena smaller than the plan */
    FT_ERR_BAD_CONFIG,            /* trainer configuration out of range */
    FT_ERR_BAD_DATA,              /* sample buffer size does not fit the model */
    FT_ERR_BAD_LABEL,             /* label outside [0, num_classes) */
    FT_ERR_KERNEL,                /* an int8 kernel returned an error */
    FT_ERR_NOT_INITIALIZED,       /* trainer used before ft_trainer_init succeeded */
    FT_ERR_UNSUPPORTED,           /* valid but not supported on this build */
    FT_ERR_CODEC_HEADER,          /* update blob: bad magic, version, scheme or flags */
    FT_ERR_CODEC_BITS,            /* update blob: bits not 32/16/8/4/2/1 or not the scheme's */
    FT_ERR_CODEC_LENGTH,          /* update blob: size, payload or value count inconsistent */
    FT_ERR_CODEC_SCALE,           /* update blob: a scale is negative, NaN, infinite or overflows */
    FT_ERR_CODEC_CODE,            /* update blob: a code outside the quantization grid */
    FT_ERR_CANCELLED,             /* a long request (training) was cancelled by the host */
    FT_STATUS_COUNT
} ft_status;

const char *ft_status_name(ft_status status);

#ifdef __cplusplus
}
#endif

#endif /* FT_STATUS_H */

/* Stable names for ft_status; the Python side maps them to exceptions. */
#include "fedtiny/ft_status.h"

static const char *const ft_status_names[FT_STATUS_COUNT] = {
    "OK", "NULL_ARG", "TRUNCATED", "BAD_MAGIC", "BAD_VERSION", "BAD_HEADER_SIZE", "SIZE_MISMATCH",
    "BAD_CRC", "TABLE_OUT_OF_RANGE", "TENSOR_OUT_OF_RANGE", "TENSOR_MISALIGNED", "BAD_DTYPE",
    "BAD_TENSOR_INDEX", "TENSOR_SIZE", "BAD_LAYER_TYPE", "BAD_DIMS", "SHAPE_MISMATCH", "BAD_QUANT",
    "BAD_ACTIVATION", "BAD_TRAINABLE_LAYOUT", "TOO_MANY_LAYERS", "ARENA_TOO_SMALL", "BAD_CONFIG",
    "BAD_DATA", "BAD_LABEL", "KERNEL", "NOT_INITIALIZED", "UNSUPPORTED",
    "CODEC_HEADER", "CODEC_BITS", "CODEC_LENGTH", "CODEC_SCALE", "CODEC_CODE", "CANCELLED",
};

const char *ft_status_name(ft_status status)
{
    const unsigned int index = (unsigned int)status;
    if (index >= (unsigned int)FT_STATUS_COUNT) {
        return "UNKNOWN";
    }
    return ft_status_names[index];
}

/* Bitwise CRC-32 (IEEE, reflected polynomial 0xEDB88320); no table, so no RAM or flash cost. */
#include "fedtiny/ft_model.h"

uint32_t ft_crc32(const uint8_t *data, uint32_t size)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (uint32_t i = 0; i < size; i++) {
        crc ^= data[i];
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return crc ^ 0xFFFFFFFFu;
}

/* Shared by the kernel check and bench programs (nn_check_main.c, nn_bench_main.c): a xorshift32
 * generator and decimal output without printf (the firmware links no stdio formatting). */
#ifndef FT_NN_TEST_UTIL_H
#define FT_NN_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

static inline uint32_t ft_xorshift32(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

/* Append v in decimal to line at *n. */
static inline void ft_put_u32(char *line, size_t *n, uint32_t v)
{
    char digits[12];
    int k = 0;
    do {
        digits[k++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v > 0u);
    while (k > 0) {
        line[(*n)++] = digits[--k];
    }
}

#endif /* FT_NN_TEST_UTIL_H */

/*
 * Integer requantization with TFLite-style double rounding, as CMSIS-NN defines it:
 *   1. left-shift by max(shift, 0) (wrapping 32-bit, like the reference on Cortex-M),
 *   2. saturating-free rounding doubling high multiply: (a*b + 2^30) >> 31,
 *   3. rounding divide by 2^max(-shift, 0), rounding half away from zero.
 * Private to the reference kernels and the trainer (which also uses ft_nn_taps).
 */
#ifndef FT_NN_SUPPORT_H
#define FT_NN_SUPPORT_H

#include <stdint.h>

static inline int32_t ft_nn_doubling_high_mult_no_sat(int32_t a, int32_t b)
{
    int64_t prod = (int64_t)a * (int64_t)b + ((int64_t)1 << 30);
    return (int32_t)(prod >> 31); /* arithmetic shift: floor, as CMSIS-NN */
}

static inline int32_t ft_nn_divide_by_power_of_two(int32_t dividend, int32_t exponent)
{
    const int32_t mask = (int32_t)(((uint32_t)1 << exponent) - 1u);
    const int32_t remainder = dividend & mask;
    int32_t result = dividend >> exponent;
    int32_t threshold = mask >> 1;
    if (result < 0) {
        threshold++;
    }
    if (remainder > threshold) {
        result++;
    }
    return result;
}

static inline int32_t ft_nn_requantize(int32_t val, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    const int32_t shifted = (int32_t)((uint32_t)val << left);
    return ft_nn_divide_by_power_of_two(ft_nn_doubling_high_mult_no_sat(shifted, multiplier), right);
}

/* acc + v with two's-complement wrap-around, as the 32-bit accumulators of Cortex-M (and the
 * reference kernels on it) behave; plain int32 addition would be undefined on overflow, which
 * a hostile model file (an extreme bias) can cause. */
static inline int32_t ft_nn_add(int32_t acc, int32_t v)
{
    return (int32_t)((uint32_t)acc + (uint32_t)v);
}

static inline int32_t ft_nn_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* The taps k in [*lo, *hi) of a window of k taps whose input position base + k * dilation lies in
 * [0, size): the part of a convolution window inside the input (empty when *hi <= *lo). */
static inline void ft_nn_taps(int32_t base, int32_t dilation, int32_t size, int32_t k, int32_t *lo, int32_t *hi)
{
    *lo = base < 0 ? (-base + dilation - 1) / dilation : 0;
    *hi = size - base <= 0 ? 0 : (size - base + dilation - 1) / dilation;
    if (*hi > k) {
        *hi = k;
    }
}

#endif /* FT_NN_SUPPORT_H */

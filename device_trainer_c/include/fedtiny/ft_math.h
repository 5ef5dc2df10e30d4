/*
 * Deterministic float32 math for the training path. Only +, -, *, / and bit operations, so
 * results are bit-identical on any IEEE-754 single-precision FPU compiled with
 * -ffp-contract=off (host SSE and Cortex-M4F alike). No libm.
 */
#ifndef FT_MATH_H
#define FT_MATH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* e^x; max relative error about 2e-7 on [-87, 88]; saturates outside. */
float ft_expf(float x);
/* natural log for x > 0; max relative error about 2e-7; returns -1e30f for x <= 0. */
float ft_logf(float x);

/* 32-bit integer hash (bijective mixer) used for keys and seeds. */
uint32_t ft_hash32(uint32_t x);

/* Counter-based uniform in [0, 1): (ft_hash32(key ^ ft_hash32(ctr)) >> 8) * 2^-24. */
float ft_uniform(uint32_t key, uint32_t ctr);

/* Square root (x >= 0; -1 for negative x), a few ulp accurate. */
float ft_sqrtf(float x);
/* Standard normal draw `ctr` of stream `key` (polar method on ft_uniform draws). */
float ft_gaussian(uint32_t key, uint32_t ctr);

/* i-th element of a pseudo-random permutation of [0, n) keyed by `key`: a 4-round Feistel
 * network on the next even power of two, cycle-walked into range. O(1) memory. */
uint32_t ft_permute(uint32_t i, uint32_t n, uint32_t key);

#ifdef __cplusplus
}
#endif

#endif /* FT_MATH_H */

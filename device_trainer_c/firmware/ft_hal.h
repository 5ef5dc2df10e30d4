/* The board hardware the firmware needs, implemented per port (ports/<board>/): a byte link, a
 * free-running counter for profiling, and what the port knows about its RAM. */
#ifndef FT_HAL_H
#define FT_HAL_H

#include <stdint.h>

void ft_hal_init(void);
/* Next received byte; waits (WFI) until one arrives. */
uint8_t ft_hal_getc(void);
/* The next received byte into *byte within `ms` milliseconds: 1, or 0 when none came (the
 * protocol's inter-byte timeout). */
int ft_hal_getc_timeout(uint8_t *byte, uint32_t ms);
/* A byte already received, without waiting: 1 with *byte, else 0 (polled while training). */
int ft_hal_poll(uint8_t *byte);
void ft_hal_write(const uint8_t *data, uint32_t n);

/* Free-running 32-bit counter (wraps). On mps2-an386 the FPGAIO COUNTER; under QEMU's
 * -icount its ticks are a fixed number of executed instructions (the host calibrates it with
 * ft_hal_spin, a loop of known length). */
uint32_t ft_hal_counter(void);
/* Execute exactly 4 * n + a few instructions (a counted loop in assembly). */
void ft_hal_spin(uint32_t n);

/* RAM usage the port can see: the SRAM budget the linker gives (bytes), the static RAM in use
 * (.data + .bss), and the deepest stack use since boot (the stack is painted at reset). */
uint32_t ft_hal_ram_budget(void);
uint32_t ft_hal_static_ram(void);
uint32_t ft_hal_stack_peak(void);
/* Paint the stack again below the current depth: the next ft_hal_stack_peak is the deepest use
 * from now on (the firmware does this at the start of TRAIN and PROFILE). */
void ft_stack_paint(void);

#endif /* FT_HAL_H */

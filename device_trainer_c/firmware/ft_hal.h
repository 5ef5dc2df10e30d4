/* The board hardware the firmware needs: a byte link. Implemented per port (ports/<board>/). */
#ifndef FT_HAL_H
#define FT_HAL_H

#include <stdint.h>

void ft_hal_init(void);
/* Next received byte; waits (WFI) until one arrives. */
uint8_t ft_hal_getc(void);
void ft_hal_write(const uint8_t *data, uint32_t n);

#endif /* FT_HAL_H */

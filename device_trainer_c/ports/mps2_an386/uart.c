/* CMSDK APB UART0 of the MPS2 AN386 image (as QEMU models it): polled TX, polled RX with WFI. */
#include <stdint.h>

#include "ft_hal.h"

#define FT_UART0 0x40004000u
#define FT_UART_DATA (*(volatile uint32_t *)(FT_UART0 + 0x000u))
#define FT_UART_STATE (*(volatile uint32_t *)(FT_UART0 + 0x004u)) /* bit 0 TX full, bit 1 RX full */
#define FT_UART_CTRL (*(volatile uint32_t *)(FT_UART0 + 0x008u))  /* bit 0 TX enable, bit 1 RX enable */
#define FT_UART_BAUDDIV (*(volatile uint32_t *)(FT_UART0 + 0x010u))

void ft_hal_init(void)
{
    FT_UART_BAUDDIV = 16u; /* the smallest divider the UART accepts */
    FT_UART_CTRL = 0x3u;
}

uint8_t ft_hal_getc(void)
{
    while ((FT_UART_STATE & 0x2u) == 0u) {
    }
    return (uint8_t)FT_UART_DATA;
}

void ft_hal_write(const uint8_t *data, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        while ((FT_UART_STATE & 0x1u) != 0u) {
        }
        FT_UART_DATA = data[i];
    }
}

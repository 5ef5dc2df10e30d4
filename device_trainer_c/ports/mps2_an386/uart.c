/* CMSDK APB UART0 of the MPS2 AN386 image (as QEMU models it): polled TX; RX by interrupt
 * (external IRQ 0) into a ring buffer, the core sleeping in WFI while it waits for a byte. */
#include <stdint.h>

#include "ft_hal.h"

#define FT_UART0 0x40004000u
#define FT_UART_DATA (*(volatile uint32_t *)(FT_UART0 + 0x000u))
#define FT_UART_STATE (*(volatile uint32_t *)(FT_UART0 + 0x004u))     /* bit 0 TX full, bit 1 RX full */
#define FT_UART_CTRL (*(volatile uint32_t *)(FT_UART0 + 0x008u))      /* TX en, RX en, TX int, RX int */
#define FT_UART_INTSTATUS (*(volatile uint32_t *)(FT_UART0 + 0x00Cu)) /* write 1 to clear; bit 1: RX */
#define FT_UART_BAUDDIV (*(volatile uint32_t *)(FT_UART0 + 0x010u))
#define FT_NVIC_ISER0 (*(volatile uint32_t *)0xE000E100u)

static volatile uint8_t ring[512];
static volatile uint32_t head, tail; /* head: written by the interrupt; tail: by ft_hal_getc */

void ft_uart0_rx_handler(void);
void ft_uart0_rx_handler(void)
{
    /* clear first, then drain: a byte that lands after the last check raises the interrupt again
     * (clearing after the drain could swallow it, and a full RX register stops further bytes) */
    FT_UART_INTSTATUS = 0x2u;
    while ((FT_UART_STATE & 0x2u) != 0u) {
        const uint8_t b = (uint8_t)FT_UART_DATA;
        if (head - tail < sizeof ring) { /* a full ring drops the byte; the protocol resynchronises */
            ring[head % sizeof ring] = b;
            head = head + 1u;
        }
    }
}

void ft_hal_init(void)
{
    FT_UART_BAUDDIV = 16u; /* the smallest divider the UART accepts */
    FT_UART_CTRL = 0x1u | 0x2u | 0x8u;
    FT_NVIC_ISER0 = 1u << 0;
}

uint8_t ft_hal_getc(void)
{
    for (;;) {
        __asm volatile("cpsid i" ::: "memory");
        if (head != tail) {
            const uint8_t b = ring[tail % sizeof ring];
            tail = tail + 1u;
            __asm volatile("cpsie i" ::: "memory");
            return b;
        }
        /* sleep with interrupts masked: a pending RX interrupt still wakes the core (no lost wake-up),
         * and is taken as soon as they are unmasked */
        __asm volatile("wfi\n cpsie i\n isb" ::: "memory");
    }
}

void ft_hal_write(const uint8_t *data, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        while ((FT_UART_STATE & 0x1u) != 0u) {
        }
        FT_UART_DATA = data[i];
    }
}

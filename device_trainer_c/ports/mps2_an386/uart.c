/* CMSDK APB UART0 of the MPS2 AN386 image (as QEMU models it): polled TX; RX by interrupt
 * (external IRQ 0) into a ring buffer, the core sleeping in WFI while it waits for a byte.
 * A wait with a timeout runs SysTick (1 ms ticks of the 25 MHz system clock) only while it
 * waits, so no interrupt disturbs training or the instruction counts measured around it. */
#include <stdint.h>

#include "ft_hal.h"

#define FT_UART0 0x40004000u
#define FT_UART_DATA (*(volatile uint32_t *)(FT_UART0 + 0x000u))
#define FT_UART_STATE (*(volatile uint32_t *)(FT_UART0 + 0x004u))     /* bit 0 TX full, bit 1 RX full */
#define FT_UART_CTRL (*(volatile uint32_t *)(FT_UART0 + 0x008u))      /* TX en, RX en, TX int, RX int */
#define FT_UART_INTSTATUS (*(volatile uint32_t *)(FT_UART0 + 0x00Cu)) /* write 1 to clear; bit 1: RX */
#define FT_UART_BAUDDIV (*(volatile uint32_t *)(FT_UART0 + 0x010u))
#define FT_NVIC_ISER0 (*(volatile uint32_t *)0xE000E100u)
#define FT_SYST_CSR (*(volatile uint32_t *)0xE000E010u) /* enable, tick interrupt, processor clock */
#define FT_SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define FT_SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define FT_SYSCLK_HZ 25000000u /* MPS2 FPGA system clock (QEMU hw/arm/mps2.c) */

static volatile uint32_t ms_ticks;

void ft_systick_handler(void);
void ft_systick_handler(void) { ms_ticks = ms_ticks + 1u; }

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

/* Take a received byte from the ring (interrupts masked by the caller): 1 with *byte, else 0. */
static int ring_take(uint8_t *byte)
{
    if (head == tail) {
        return 0;
    }
    *byte = ring[tail % sizeof ring];
    tail = tail + 1u;
    return 1;
}

uint8_t ft_hal_getc(void)
{
    uint8_t b;
    for (;;) {
        __asm volatile("cpsid i" ::: "memory");
        if (ring_take(&b)) {
            __asm volatile("cpsie i" ::: "memory");
            return b;
        }
        /* sleep with interrupts masked: a pending RX interrupt still wakes the core (no lost wake-up),
         * and is taken as soon as they are unmasked */
        __asm volatile("wfi\n cpsie i\n isb" ::: "memory");
    }
}

int ft_hal_getc_timeout(uint8_t *byte, uint32_t ms)
{
    int timing = 0;
    for (;;) {
        __asm volatile("cpsid i" ::: "memory");
        if (ring_take(byte)) {
            __asm volatile("cpsie i" ::: "memory");
            FT_SYST_CSR = 0u;
            return 1;
        }
        if (!timing) {
            ms_ticks = 0u;
            FT_SYST_RVR = FT_SYSCLK_HZ / 1000u - 1u;
            FT_SYST_CVR = 0u;
            FT_SYST_CSR = 0x7u;
            timing = 1;
        } else if (ms_ticks >= ms) {
            __asm volatile("cpsie i" ::: "memory");
            FT_SYST_CSR = 0u;
            return 0;
        }
        __asm volatile("wfi\n cpsie i\n isb" ::: "memory"); /* a byte or a tick wakes the core */
    }
}

int ft_hal_poll(uint8_t *byte)
{
    __asm volatile("cpsid i" ::: "memory");
    const int got = ring_take(byte);
    __asm volatile("cpsie i" ::: "memory");
    return got;
}

void ft_hal_write(const uint8_t *data, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        while ((FT_UART_STATE & 0x1u) != 0u) {
        }
        FT_UART_DATA = data[i];
    }
}

/* Minimal Cortex-M4F start-up for QEMU mps2-an386: vector table, FPU enable, .data/.bss. */
#include <stdint.h>

#include "semihost.h"

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
int main(void);
void ft_reset_handler(void);
/* Paint the free RAM below the stack so a port can report the stack's peak (board.c); the twin
 * firmware does not link board.c and gets this no-op. */
void ft_stack_paint(void) __attribute__((weak));
void ft_stack_paint(void) {}
void ft_fault_handler(void);

void ft_fault_handler(void)
{
    ft_semihost_write("FAULT\n");
    ft_semihost_exit(99);
}

void ft_reset_handler(void)
{
    /* full access to CP10/CP11 (the FPU) before any float instruction runs */
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
    __asm volatile("dsb\n isb" ::: "memory");
    for (uint32_t *src = &_sidata, *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0;
    }
    ft_stack_paint();
    ft_semihost_exit(main());
}

/* External interrupt 0 is UART0 RX on the MPS2 AN385/AN386 images (QEMU hw/arm/mps2.c); a port
 * that uses it defines ft_uart0_rx_handler, others keep this default (a fault). */
void ft_uart0_rx_handler(void) __attribute__((weak, alias("ft_fault_handler")));
/* SysTick: the board port runs it while waiting for a byte with a timeout (uart.c). */
void ft_systick_handler(void) __attribute__((weak, alias("ft_fault_handler")));

__attribute__((section(".isr_vector"), used)) static void (*const ft_vectors[17])(void) = {
    (void (*)(void))(&_estack), ft_reset_handler, ft_fault_handler, ft_fault_handler, ft_fault_handler,
    ft_fault_handler, ft_fault_handler, 0, 0, 0, 0, ft_fault_handler, ft_fault_handler, 0, ft_fault_handler,
    ft_systick_handler, ft_uart0_rx_handler,
};

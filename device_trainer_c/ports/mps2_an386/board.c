/* mps2-an386 board services for the firmware: the FPGAIO counter, a counted spin loop, and RAM
 * figures (static RAM from the linker symbols, stack peak from the paint laid at reset). */
#include <stdint.h>

#include "ft_hal.h"

#define FT_FPGAIO_COUNTER (*(volatile uint32_t *)0x40028018u) /* FPGAIO base 0x40028000, COUNTER at 0x18 */
#define FT_STACK_PAINT 0xA5C3A5C3u

extern uint32_t _sdata, _ebss, _estack;

uint32_t ft_hal_counter(void) { return FT_FPGAIO_COUNTER; }

void ft_hal_spin(uint32_t n)
{
    if (n == 0u) {
        return;
    }
    /* 4 instructions per iteration: nop, nop, subs, bne */
    __asm volatile("1:\n nop\n nop\n subs %0, %0, #1\n bne 1b" : "+r"(n) : : "cc");
}

uint32_t ft_hal_ram_budget(void) { return (uint32_t)((uintptr_t)&_estack - (uintptr_t)&_sdata); }

uint32_t ft_hal_static_ram(void) { return (uint32_t)((uintptr_t)&_ebss - (uintptr_t)&_sdata); }

/* Called from the reset handler (and before each TRAIN/PROFILE): paint everything between .bss and
 * the live stack. */
void ft_stack_paint(void)
{
    uint32_t sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    for (volatile uint32_t *p = &_ebss; (uintptr_t)p + 64u < sp; p++) {
        *p = FT_STACK_PAINT;
    }
}

uint32_t ft_hal_stack_peak(void)
{
    const volatile uint32_t *p = &_ebss;
    while (p < &_estack && *p == FT_STACK_PAINT) {
        p++;
    }
    return (uint32_t)((uintptr_t)&_estack - (uintptr_t)p);
}

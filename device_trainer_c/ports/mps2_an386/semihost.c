#include "semihost.h"

#include <stdint.h>

static uint32_t ft_semihost_call(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm("r0") = op;
    register const void *r1 __asm("r1") = arg;
    __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void ft_semihost_write(const char *text) { (void)ft_semihost_call(0x04u, text); } /* SYS_WRITE0 */

void ft_semihost_exit(int code)
{
    /* SYS_EXIT_EXTENDED with ADP_Stopped_ApplicationExit and the exit code */
    const uint32_t block[2] = {0x20026u, (uint32_t)code};
    (void)ft_semihost_call(0x20u, block);
    for (;;) {
    }
}

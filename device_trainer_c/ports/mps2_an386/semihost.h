/* ARM semihosting (bkpt 0xAB): console output and exit, for tests under QEMU. */
#ifndef FT_SEMIHOST_H
#define FT_SEMIHOST_H

void ft_semihost_write(const char *text);
void ft_semihost_exit(int code) __attribute__((noreturn));

#endif

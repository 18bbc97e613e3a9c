/* An executable for the symbolizer tests, built PIE and non-PIE. It prints
 * "name address" for its functions and (through the library) for library
 * and libc functions, then "ready", and waits until stdin closes. */
#include <stdio.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

int lib_add(int a, int b);
void lib_report(FILE *out);

/* Hand-written code without a .size: a zero-size symbol. */
__asm__(".text\n"
        ".globl nosize_fn\n"
        ".type nosize_fn, @function\n"
        "nosize_fn:\n"
        "\tnop\n\tnop\n\tnop\n\tnop\n\tnop\n\tnop\n\tnop\n\tret\n");
void nosize_fn(void);

static NOINLINE int main_static(int x)
{
    volatile int v = x;
    return v * 3 + 1;
}

NOINLINE int main_work(int n)
{
    int s = 0;
    for (int i = 0; i < n; i++)
        s += main_static(i) ^ lib_add(i, s);
    return s;
}

static int picked_impl(void)
{
    return 42;
}

static void *picked_resolver(void)
{
    return (void *)picked_impl;
}

int picked(void) __attribute__((ifunc("picked_resolver")));

int main(void)
{
    char buf[64];
    printf("main %p\n", (void *)&main);
    printf("main_static %p\n", (void *)&main_static);
    printf("main_work %p\n", (void *)&main_work);
    printf("nosize_fn %p\n", (void *)&nosize_fn);
    lib_report(stdout);
    printf("ready\n");
    fflush(stdout);
    while (read(0, buf, sizeof buf) > 0)
        nosize_fn();
    return main_work(3) & picked() & 1;
}

/* A shared library for the symbolizer tests: a static (.symtab-only)
 * function, exported ones (.dynsym too), and a report of their addresses
 * as this library sees them (no canonical PLT entry can get in the way). */
#include <stdio.h>
#include <stdlib.h>

#define NOINLINE __attribute__((noinline))

static NOINLINE int lib_static_helper(int x)
{
    volatile int acc = x;
    for (int i = 0; i < 8; i++)
        acc = acc * 7 + i;
    return acc;
}

NOINLINE int lib_add(int a, int b)
{
    return lib_static_helper(a) + b;
}

NOINLINE int lib_mul(int a, int b)
{
    volatile int r = a * b;
    return r + lib_static_helper(b);
}

void lib_report(FILE *out)
{
    fprintf(out, "lib_static_helper %p\n", (void *)&lib_static_helper);
    fprintf(out, "lib_add %p\n", (void *)&lib_add);
    fprintf(out, "lib_mul %p\n", (void *)&lib_mul);
    fprintf(out, "qsort %p\n", (void *)&qsort);
}

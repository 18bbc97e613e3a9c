/* Inlining ground truth for the DWARF tests: at -O2 mix_twice and mix are
 * inlined into checksum (three levels), scale into run; at -O0 nothing is. */
#include <stdio.h>
#include <stdlib.h>
#include "symtest_inline.h"

static inline __attribute__((always_inline)) unsigned scale(unsigned v, unsigned k)
{
    if (v % 7 == 3)
        return v * k + 1;
    return v / (k | 1);
}

__attribute__((noinline)) unsigned checksum(const unsigned *data, int n)
{
    unsigned acc = 17;
    for (int i = 0; i < n; i++)
        acc = mix_twice(acc, data[i]) + scale(data[i], 3);
    return acc;
}

__attribute__((noinline)) void fail(const char *why)
{
    fprintf(stderr, "error: %s\n", why);
    exit(2);
}

struct pair {
    unsigned a, b;
};

static int cmp_pair(const void *x, const void *y)
{
    const struct pair *p = x, *q = y;
    return (p->a > q->a) - (p->a < q->a);
}

__attribute__((noinline)) unsigned run(int n)
{
    struct pair *items = malloc(sizeof(*items) * (size_t)n);
    unsigned *vals = malloc(sizeof(*vals) * (size_t)n);
    if (!items || !vals)
        fail("out of memory");
    for (int i = 0; i < n; i++) {
        items[i].a = mix((unsigned)i);
        items[i].b = scale((unsigned)i, 5);
    }
    qsort(items, (size_t)n, sizeof(*items), cmp_pair);
    for (int i = 0; i < n; i++)
        vals[i] = items[i].a ^ items[i].b;
    unsigned r = checksum(vals, n);
    free(items);
    free(vals);
    return r;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    printf("%u\n", run(n));
    return 0;
}

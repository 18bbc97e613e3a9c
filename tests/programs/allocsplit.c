/* Ground truth for allocation profiles. churn() allocates and frees
 * 3*UNITS blocks of BLOCK bytes; hoard() allocates UNITS blocks of BLOCK
 * bytes and keeps them until the end, interleaved in rounds so every
 * stretch of the run has the same 3:1 split of bytes:
 *   alloc_space(churn) / alloc_space(hoard) = 3, and what is still allocated
 *   at the end was allocated under hoard().
 *
 * usage: allocsplit UNITS [BLOCK]
 * Prints "ready <pid>", then waits for a line (or EOF) on stdin to start;
 * prints "done <churn bytes> <hoard bytes>" and waits for another line (or
 * EOF) before freeing the hoard and exiting, so a profile can be taken with
 * the hoard still live. Built with frame pointers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void **kept;
static volatile unsigned long sink;

__attribute__((noinline)) void churn(size_t block)
{
    for (int i = 0; i < 3; i++) {
        char *p = malloc(block);
        p[0] = 1; /* touch it, so the allocation is not optimized away */
        sink += (unsigned long)p[0];
        free(p);
    }
}

__attribute__((noinline)) void hoard(long i, size_t block)
{
    char *p = malloc(block);
    p[0] = 1;
    kept[i] = p;
}

__attribute__((noinline)) void run(long units, size_t block)
{
    for (long i = 0; i < units; i++) {
        churn(block);
        hoard(i, block);
    }
}

int main(int argc, char **argv)
{
    long units = argc > 1 ? atol(argv[1]) : 10000;
    size_t block = argc > 2 ? (size_t)atol(argv[2]) : 4096;
    char line[8];
    kept = calloc((size_t)units, sizeof(void *));
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        line[0] = 0;
    run(units, block);
    printf("done %lu %lu\n", 3UL * units * block, (unsigned long)units * block);
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        line[0] = 0;
    for (long i = 0; i < units; i++)
        free(kept[i]);
    free(kept);
    return 0;
}

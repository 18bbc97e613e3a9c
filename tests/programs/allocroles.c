/* Ground truth for each allocator entry point: one function per call,
 * each making UNITS allocations of BLOCK bytes and keeping them, so
 *   alloc_space(by_X) = inuse_space(by_X) = UNITS * BLOCK
 * except by_realloc, which first takes 16 bytes with malloc and grows
 * them: alloc_space = UNITS * (16 + BLOCK), inuse_space = UNITS * BLOCK.
 * Alignments are 64, above what malloc gives anyway, so glibc's memalign
 * does not relay to malloc (which would be a second probed call).
 *
 * usage: allocroles UNITS [BLOCK]
 * Prints "ready <pid>", waits for a line (or EOF), allocates, prints
 * "done", waits for another line before freeing everything and exiting. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void **kept;

__attribute__((noinline)) void by_malloc(long i, size_t block) { kept[i] = malloc(block); }

__attribute__((noinline)) void by_calloc(long i, size_t block) { kept[i] = calloc(1, block); }

__attribute__((noinline)) void by_realloc(long i, size_t block)
{
    kept[i] = realloc(malloc(16), block);
}

__attribute__((noinline)) void by_memalign(long i, size_t block) { kept[i] = memalign(64, block); }

__attribute__((noinline)) void by_posix_memalign(long i, size_t block)
{
    if (posix_memalign(&kept[i], 64, block) != 0)
        kept[i] = NULL;
}

int main(int argc, char **argv)
{
    long units = argc > 1 ? atol(argv[1]) : 4096;
    size_t block = argc > 2 ? (size_t)atol(argv[2]) : 4096;
    void (*by[])(long, size_t) = {by_malloc, by_calloc, by_realloc, by_memalign, by_posix_memalign};
    long n = (long)(sizeof(by) / sizeof(by[0]));
    char line[8];
    kept = calloc((size_t)(units * n), sizeof(void *));
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        line[0] = 0;
    for (long i = 0; i < units; i++) /* interleaved: each stretch has every call */
        for (long f = 0; f < n; f++)
            by[f](i * n + f, block);
    printf("done\n");
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        line[0] = 0;
    for (long i = 0; i < units * n; i++)
        free(kept[i]);
    free(kept);
    return 0;
}

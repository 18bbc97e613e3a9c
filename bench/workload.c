/* Fixed-work CPU workload for the benchmark: the same number of iterations
 * every run, so its CPU time measures only what the profiler costs it.
 * Prints "wall_ns cpu_ns" measured by the process itself. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#include <sys/resource.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) static uint64_t mix(uint64_t x, long n)
{
    for (long i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 1000000000L;
    uint64_t start = now_ns();
    volatile uint64_t sink = mix(88172645463325252ull, iterations);
    uint64_t end = now_ns();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    uint64_t cpu = (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000u
                 + (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000u;
    printf("%llu %llu %llu\n", (unsigned long long)(end - start),
           (unsigned long long)cpu, (unsigned long long)(sink & 1));
    return 0;
}

/* Ground truth for off-CPU profiles: main -> sleepy -> nap sleeps ROUNDS
 * times MS milliseconds, a known total, between short bursts of work.
 *
 * usage: sleeper ROUNDS MS [list|yield]   (MS may be fractional: 0.05 is 50 us)
 * Prints "ready <pid>", then waits for a line (or EOF) on stdin to start;
 * prints "slept_ns <total>" at the end, the total measured by the program
 * around each nanosleep; with "list", then "naps <ns> <ns> ...", each nap's
 * own length in order. With "yield", the program keeps to one CPU beside a
 * thread that yields it in a loop, and yields the CPU before each nap: a
 * few microseconds on the run queue (a preemption, not a block) before
 * every sleep. Built with frame
 * pointers: nap's frame leads the unwinder from libc back into sleepy(). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int yielding;

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

__attribute__((noinline)) unsigned long long nap(double ms)
{
    long ns = (long)(ms * 1e6);
    struct timespec req = {ns / 1000000000L, ns % 1000000000L};
    unsigned long long t0 = now_ns();
    nanosleep(&req, NULL);
    return now_ns() - t0;
}

__attribute__((noinline)) unsigned long long sleepy(long rounds, double ms, unsigned long long *naps)
{
    unsigned long long slept = 0;
    for (long r = 0; r < rounds; r++) {
        if (yielding)
            sched_yield();
        unsigned long long one = nap(ms);
        if (naps)
            naps[r] = one;
        slept += one;
    }
    return slept;
}

static void *yield_loop(void *arg)
{
    (void)arg;
    for (;;)
        sched_yield();
    return NULL;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 20;
    double ms = argc > 2 ? atof(argv[2]) : 50;
    unsigned long long *naps = argc > 3 && !strcmp(argv[3], "list") ? calloc(rounds, sizeof(*naps)) : NULL;
    yielding = argc > 3 && !strcmp(argv[3], "yield");
    if (yielding) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(sched_getcpu(), &one);
        pthread_t t;
        if (sched_setaffinity(0, sizeof(one), &one) || pthread_create(&t, NULL, yield_loop, NULL)) {
            perror("sleeper: yield");
            return 1;
        }
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char go[8];
    if (!fgets(go, sizeof(go), stdin)) /* a line (or EOF) on stdin starts the run */
        go[0] = 0;
    unsigned long long slept = sleepy(rounds, ms, naps);
    printf("slept_ns %llu\n", slept);
    if (naps) {
        printf("naps");
        for (long r = 0; r < rounds; r++)
            printf(" %llu", naps[r]);
        printf("\n");
    }
    return 0;
}

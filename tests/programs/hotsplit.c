/* Ground truth for CPU profiles: main -> run -> work_a -> hot_a burns three
 * times the iterations of main -> run -> work_b -> hot_b, interleaved in
 * rounds so any stretch of the run has the same 75/25 split.
 *
 * usage: hotsplit ROUNDS   (0: run until killed)
 * Prints "ready <pid>" once started. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define UNIT round_unit /* about 1e6 iterations: drawn for each round in run() */
static unsigned long round_unit = 1000000UL;
static volatile unsigned long sink;

__attribute__((noinline)) void hot_a(unsigned long n)
{
    volatile unsigned long x = sink; /* on the stack: the leaf gets a frame */
    for (unsigned long i = 0; i < n; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    sink = x;
}

__attribute__((noinline)) void hot_b(unsigned long n)
{
    volatile unsigned long x = sink; /* on the stack: the leaf gets a frame */
    for (unsigned long i = 0; i < n; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    sink = x;
}

__attribute__((noinline)) void work_a(void) { hot_a(3 * UNIT); sink++; }
__attribute__((noinline)) void work_b(void) { hot_b(UNIT); sink++; }

/* Each round's length is drawn from [0.5, 1.5) x 1e6 iterations (same mean,
 * the 3:1 split within every round): rounds of one fixed length last a
 * fixed time, and a sampling period close to a multiple of it keeps hitting
 * the same phase of the round (measured: hot_a's share from 0.53 to 0.80 in
 * runs of ~350 samples at 99 Hz, where binomial noise gives +-0.05). */
__attribute__((noinline)) void run(long rounds)
{
    unsigned long state = 0x9e3779b97f4a7c15UL;
    for (long r = 0; rounds == 0 || r < rounds; r++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        round_unit = 500000UL + state % 1000000UL;
        work_a();
        work_b();
    }
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 100;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    run(rounds);
    return 0;
}

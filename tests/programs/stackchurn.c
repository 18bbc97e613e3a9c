/* Ground truth for the wait programs' stack generations: many distinct
 * off-CPU stacks over time, and one wait that outlasts them all.
 *
 * usage: stackchurn DEPTHS ROUNDS LONG_MS
 * Prints "ready <pid>", then waits for a line (or EOF) on stdin. Then a
 * second thread sleeps once for LONG_MS in long_nap(), while the main
 * thread naps 4 ms at each recursion depth 1..DEPTHS in turn (descend()
 * calls itself), in nap_a() in even rounds and nap_b() in odd ones: 2 *
 * DEPTHS distinct user stacks. Then it joins the second thread, prints
 * "long_ns <ns> naps <n>" (long_nap's sleep as it measured it, and how many
 * short naps it took) and exits. Built without optimisation, so each
 * descend() keeps its frame. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static long long_ms;
static unsigned long long long_ns;

__attribute__((noinline)) void long_nap(void)
{
    struct timespec req = {long_ms / 1000, (long_ms % 1000) * 1000000L};
    unsigned long long t0 = now_ns();
    nanosleep(&req, NULL);
    long_ns = now_ns() - t0;
}

static void *sleeper(void *arg)
{
    (void)arg;
    long_nap();
    return NULL;
}

static void short_nap(void)
{
    struct timespec req = {0, 4000000L};
    nanosleep(&req, NULL);
}

__attribute__((noinline)) void nap_a(void)
{
    short_nap();
}

__attribute__((noinline)) void nap_b(void)
{
    short_nap();
}

__attribute__((noinline)) int descend(int depth, int odd)
{
    if (depth <= 1) {
        if (odd)
            nap_b();
        else
            nap_a();
        return 1;
    }
    return descend(depth - 1, odd) + 1; /* not a tail call: the frame stays */
}

int main(int argc, char **argv)
{
    int depths = argc > 1 ? atoi(argv[1]) : 100;
    int rounds = argc > 2 ? atoi(argv[2]) : 10;
    long_ms = argc > 3 ? atol(argv[3]) : 2000;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char go[8];
    if (!fgets(go, sizeof(go), stdin)) /* a line (or EOF) on stdin starts the run */
        go[0] = 0;
    pthread_t thread;
    if (pthread_create(&thread, NULL, sleeper, NULL) != 0)
        return 1;
    int naps = 0;
    for (int r = 0; r < rounds; r++)
        for (int d = 1; d <= depths; d++)
            naps += descend(d, r & 1) > 0;
    pthread_join(thread, NULL);
    printf("long_ns %llu naps %d\n", long_ns, naps);
    return 0;
}

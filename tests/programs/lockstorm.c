/* Ground truth for lock profiles: THREADS threads contend on one mutex inside
 * contend(), each holding it for a short busy spell. take_lock() measures its
 * own wait around pthread_mutex_lock, so the program knows the total.
 *
 * usage: lockstorm ROUNDS [THREADS] [HOLD_NS]
 * Prints "ready <pid>", then waits for a line (or EOF) on stdin to start;
 * prints "waited_ns <total> locks <n>" at the end. Built with frame pointers: take_lock's frame leads the unwinder from
 * libc's futex call back into contend(). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long rounds = 2000;
static long hold_ns = 20000;
static volatile unsigned long shared;
static unsigned long long waited[64];

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

__attribute__((noinline)) void take_lock(long me)
{
    unsigned long long t0 = now_ns();
    pthread_mutex_lock(&lock);
    waited[me] += now_ns() - t0;
}

__attribute__((noinline)) void contend(long me)
{
    for (long r = 0; r < rounds; r++) {
        take_lock(me);
        unsigned long long until = now_ns() + (unsigned long long)hold_ns;
        while (now_ns() < until)
            shared++;
        pthread_mutex_unlock(&lock);
    }
}

__attribute__((noinline)) void *worker(void *arg)
{
    contend((long)arg);
    return NULL;
}

int main(int argc, char **argv)
{
    rounds = argc > 1 ? atol(argv[1]) : rounds;
    long threads = argc > 2 ? atol(argv[2]) : 4;
    hold_ns = argc > 3 ? atol(argv[3]) : hold_ns;
    if (threads < 1 || threads > 64)
        return 2;
    pthread_t tids[64];
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char go[8];
    if (!fgets(go, sizeof(go), stdin)) /* a line (or EOF) on stdin starts the run */
        go[0] = 0;
    for (long i = 0; i < threads; i++)
        pthread_create(&tids[i], NULL, worker, (void *)i);
    unsigned long long total = 0;
    for (long i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        total += waited[i];
    }
    printf("waited_ns %llu locks %ld\n", total, rounds * threads);
    return 0;
}

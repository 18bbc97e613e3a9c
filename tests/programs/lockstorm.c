/* Ground truth for lock profiles: THREADS threads contend on one mutex inside
 * contend(), each holding it for a short busy spell. take_lock() measures its
 * own wait around pthread_mutex_lock, so the program knows the total.
 * Meanwhile one more thread waits on a condition variable in idle_wait()
 * for the whole run (waiting for work, not contention), and measures that.
 *
 * usage: lockstorm ROUNDS [THREADS] [HOLD_NS]
 * Prints "ready <pid>", then waits for a line (or EOF) on stdin to start;
 * prints "waited_ns <total> locks <n> idle_ns <condition wait>" at the end.
 * The tests build it with and without frame pointers: only a CFI walk
 * reaches contend() and idle_wait() through libc without them. */
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
static pthread_mutex_t idle_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cond = PTHREAD_COND_INITIALIZER;
static int finished;
static unsigned long long idle_ns;

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

/* Waits until main says the run is over: a condition-variable wait. */
__attribute__((noinline)) void *idle_wait(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&idle_lock);
    unsigned long long t0 = now_ns();
    while (!finished)
        pthread_cond_wait(&idle_cond, &idle_lock);
    idle_ns = now_ns() - t0;
    pthread_mutex_unlock(&idle_lock);
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
    pthread_t idler;
    pthread_create(&idler, NULL, idle_wait, NULL);
    for (long i = 0; i < threads; i++)
        pthread_create(&tids[i], NULL, worker, (void *)i);
    unsigned long long total = 0;
    for (long i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        total += waited[i];
    }
    pthread_mutex_lock(&idle_lock);
    finished = 1;
    pthread_cond_broadcast(&idle_cond);
    pthread_mutex_unlock(&idle_lock);
    pthread_join(idler, NULL);
    printf("waited_ns %llu locks %ld idle_ns %llu\n", total, rounds * threads, idle_ns);
    return 0;
}

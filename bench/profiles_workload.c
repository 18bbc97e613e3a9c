/* Workloads for the profile benchmarks (bench/profiles.py). Each prints
 * "ready <pid>", waits for a line on stdin (so a profiler can attach first),
 * runs, and prints "ns_per_op <ns> ops <n>" measured around its own loop.
 *
 *   malloc N        N malloc(64)+free pairs (one op = one pair)
 *   lock N T        T threads each take and release one mutex N times,
 *                   holding it for a few hundred cycles (T=1: uncontended)
 *   pingpong N      two threads hand a token back and forth N times through
 *                   futex-backed semaphores (one op = one hand-over: a
 *                   context switch when pinned to one CPU)
 *   syscall N       N getppid() calls
 *   fork N          forks a child that calls malloc(1 MiB)+free for N ms
 *                   from its first instruction and prints "counts c0 c1
 *                   ...": its calls in each millisecond (one op = one ms)
 */
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long n_ops;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static volatile unsigned long shared;
static sem_t ping, pong;
static void *volatile sink;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* The child of `fork N`: how many allocations it made in each ms. */
static void run_forked(void)
{
    long *counts = calloc(n_ops, sizeof(long));
    double t0 = now_ns();
    for (long ms = 0; ms < n_ops; ms++) {
        do {
            char *p = malloc(1 << 20);
            p[0] = 1;
            sink = p;
            free(p);
            counts[ms]++;
        } while (now_ns() - t0 < (ms + 1) * 1e6);
    }
    printf("counts");
    for (long ms = 0; ms < n_ops; ms++)
        printf(" %ld", counts[ms]);
    printf("\n");
    fflush(stdout);
}

static void run_malloc(void)
{
    for (long i = 0; i < n_ops; i++) {
        void *p = malloc(64);
        sink = p;
        free(p);
    }
}

static void *locker(void *arg)
{
    (void)arg;
    for (long i = 0; i < n_ops; i++) {
        pthread_mutex_lock(&lock);
        for (int k = 0; k < 100; k++)
            shared++;
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

static void *ponger(void *arg)
{
    (void)arg;
    for (long i = 0; i < n_ops; i++) {
        sem_wait(&ping);
        sem_post(&pong);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    n_ops = atol(argv[2]);
    long threads = argc > 3 ? atol(argv[3]) : 1;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char line[8];
    if (!fgets(line, sizeof(line), stdin))
        line[0] = 0;
    double t0 = now_ns();
    long ops = n_ops;
    if (!strcmp(argv[1], "malloc")) {
        run_malloc();
    } else if (!strcmp(argv[1], "lock")) {
        pthread_t t[16];
        for (long i = 0; i < threads && i < 16; i++)
            pthread_create(&t[i], NULL, locker, NULL);
        for (long i = 0; i < threads && i < 16; i++)
            pthread_join(t[i], NULL);
        ops = n_ops * threads;
    } else if (!strcmp(argv[1], "pingpong")) {
        pthread_t t;
        sem_init(&ping, 0, 0);
        sem_init(&pong, 0, 0);
        pthread_create(&t, NULL, ponger, NULL);
        for (long i = 0; i < n_ops; i++) {
            sem_post(&ping);
            sem_wait(&pong);
        }
        pthread_join(t, NULL);
        ops = 2 * n_ops;
    } else if (!strcmp(argv[1], "fork")) {
        pid_t child = fork();
        if (child == 0) {
            run_forked();
            _exit(0);
        }
        waitpid(child, NULL, 0);
    } else if (!strcmp(argv[1], "syscall")) {
        for (long i = 0; i < n_ops; i++)
            syscall(SYS_getppid);
    } else {
        return 2;
    }
    printf("ns_per_op %.1f ops %ld\n", (now_ns() - t0) / ops, ops);
    fflush(stdout);
    return 0;
}

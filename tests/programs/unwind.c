/* Ground truth for the CFI unwinder: every mode burns CPU in a known leaf
 * reached through a known chain of callers. Built without frame pointers
 * (-O2 -fomit-frame-pointer), so only the CFI walk can reach main.
 *
 * usage: unwind MODE SECONDS [WARMUP]
 *   chain   main -> run -> work -> hot
 *   qsort   main -> run -> sort_all -> qsort (libc) -> ... -> compare
 *   signal  main -> run -> raise (libc) -> [signal frame] -> on_signal -> hot
 *   thread  start_thread (libc) -> thread_main -> work -> hot
 *   deep    main -> run -> recurse x 200 -> hot (deeper than 127 frames)
 *   mixed   main -> run -> fp_middle (frame pointers, no CFI) -> work -> hot
 *   dlopen  main -> run -> lib_run (in $UNWIND_LIB, loaded now) -> work -> hot
 *   nap     main -> run -> nap -> usleep (libc): off CPU, 1 ms at a time
 *
 * Prints "ready <pid>" once its libraries are mapped, then waits for a line
 * on stdin before the measured work, so a test can load the tables first
 * (stdin at EOF: start at once). With WARMUP, it instead spins that many
 * seconds in warmup() and sleeps one: a profiler that loads tables when a
 * process is first sampled has them by the time the measured work starts. */
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;
static double deadline;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void warmup(double seconds)
{
    double end = now() + seconds;
    while (now() < end)
        sink++;
    usleep(1000000);
}

__attribute__((noinline)) void hot(void)
{
    unsigned long x = sink;
    for (int i = 0; i < 2000000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    sink = x;
}

/* keeps these calls from being tail calls, which would drop the caller's frame */
#define NOT_TAIL() __asm__ volatile("" ::: "memory"); sink++

__attribute__((noinline)) void work(void)
{
    while (now() < deadline) {
        hot();
        NOT_TAIL();
    }
}

__attribute__((noinline)) int compare(const void *a, const void *b)
{
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    for (int i = 0; i < 200; i++) /* make the comparator the hot spot */
        x = x * 6364136223846793005UL + 1, y = y * 6364136223846793005UL + 1;
    sink += x ^ y;
    return (*(const unsigned long *)a > *(const unsigned long *)b) -
           (*(const unsigned long *)a < *(const unsigned long *)b);
}

__attribute__((noinline)) void sort_all(void)
{
    enum { N = 4096 };
    static unsigned long data[N];
    while (now() < deadline) {
        for (int i = 0; i < N; i++)
            data[i] = (unsigned long)rand();
        qsort(data, N, sizeof(data[0]), compare);
        NOT_TAIL();
    }
}

__attribute__((noinline)) void on_signal(int sig)
{
    (void)sig;
    work();
    NOT_TAIL();
}

__attribute__((noinline)) void *thread_main(void *arg)
{
    (void)arg;
    work();
    NOT_TAIL();
    return NULL;
}

__attribute__((noinline)) void recurse(int depth)
{
    if (depth > 0)
        recurse(depth - 1);
    else
        work();
    NOT_TAIL();
}

void fp_middle(void (*next)(void)); /* unwind_fp.c: frame pointers, no CFI */

__attribute__((noinline)) void nap(void)
{
    while (now() < deadline) {
        usleep(1000);
        NOT_TAIL();
    }
}

__attribute__((noinline)) void run(const char *mode)
{
    if (strcmp(mode, "chain") == 0) {
        work();
    } else if (strcmp(mode, "qsort") == 0) {
        sort_all();
    } else if (strcmp(mode, "signal") == 0) {
        signal(SIGUSR1, on_signal);
        raise(SIGUSR1);
    } else if (strcmp(mode, "thread") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, thread_main, NULL);
        pthread_join(t, NULL);
    } else if (strcmp(mode, "deep") == 0) {
        recurse(200);
    } else if (strcmp(mode, "nap") == 0) {
        nap();
    } else if (strcmp(mode, "mixed") == 0) {
        fp_middle(work);
    } else if (strcmp(mode, "dlopen") == 0) {
        const char *path = getenv("UNWIND_LIB");
        void *lib = path ? dlopen(path, RTLD_NOW) : NULL;
        void (*lib_run)(void (*)(void)) = lib ? (void (*)(void (*)(void)))dlsym(lib, "lib_run") : NULL;
        if (!lib_run) {
            fprintf(stderr, "cannot load lib_run from $UNWIND_LIB\n");
            exit(2);
        }
        lib_run(work);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        exit(2);
    }
    NOT_TAIL();
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: unwind MODE SECONDS\n");
        return 2;
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char line[16];
    if (argc > 3)
        warmup(atof(argv[3]));
    else if (!fgets(line, sizeof(line), stdin))
        line[0] = 0;
    deadline = now() + atof(argv[2]);
    run(argv[1]);
    NOT_TAIL();
    return 0;
}

/* Test-only, loaded by programs/pychain.py's "native" mode: a thread that
 * burns CPU in C and never holds a Python thread state, as a native
 * library's worker does. start_spinner returns its pthread_t, which is the
 * thread's FS base on x86-64 glibc. */
#include <pthread.h>
#include <time.h>

static double until;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *spin(void *arg)
{
    volatile unsigned long n = 0;
    (void)arg;
    while (now() < until)
        n++;
    return NULL;
}

unsigned long start_spinner(double seconds)
{
    pthread_t t;
    until = now() + seconds;
    if (pthread_create(&t, NULL, spin, NULL) != 0)
        return 0;
    return (unsigned long)t;
}

/* Test-only, loaded by programs/pychain.py's "native" mode: threads that
 * burn CPU in C, as a native library's workers do. One never has a Python
 * thread state; the other takes one (PyGILState_Ensure, as a C callback
 * into Python would) and releases the GIL, so it has a state but no Python
 * frame. start_spinner returns the thread's pthread_t, its FS base on
 * x86-64 glibc. The CPython functions come from the interpreter that loads
 * this library. */
#include <pthread.h>
#include <time.h>

extern int PyGILState_Ensure(void);
extern void *PyEval_SaveThread(void);

static double until;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *spin(void *with_state)
{
    volatile unsigned long n = 0;
    if (with_state) {
        PyGILState_Ensure();
        PyEval_SaveThread();
    }
    while (now() < until)
        n++;
    return NULL;
}

unsigned long start_spinner(double seconds, int with_state)
{
    pthread_t t;
    until = now() + seconds;
    if (pthread_create(&t, NULL, spin, with_state ? &until : NULL) != 0)
        return 0;
    return (unsigned long)t;
}

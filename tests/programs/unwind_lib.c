/* A library the unwind program loads with dlopen after it was first
 * sampled, built without frame pointers: its frames need its CFI, which the
 * profiler only has once it notices the new mapping. */
static volatile int lib_sink;

__attribute__((noinline)) void lib_run(void (*next)(void))
{
    next();
    lib_sink++;
}

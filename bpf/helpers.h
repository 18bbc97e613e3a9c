/* The helpers every bpfprof program shares, written once: self-metrics,
 * records to user space, stack-id errors and new-process notices.
 *
 * Include after declaring the maps they use: `counters` (a per-CPU array of
 * CTR_MAX u64s) and `events` (a ring buffer). bpf.expanded() pastes it into
 * the program, because BCC rewrites map calls (`counters.lookup(...)`) only
 * in the main file.
 *
 * A program whose ring buffer carries another record than struct
 * process_event defines, before including this:
 *   EVENT_RECORD        the struct type send_event() fills (it must have
 *                       `pid` and `kind` fields; the rest is zeroed)
 *   EVENT_LOST_COUNTER  the counter bumped when the ring buffer is full
 * A program that tells user space of new processes declares the `seen` LRU
 * hash and defines NEW_PROCESS_EVENTS: it gets notify_new() and forgets a
 * process that execs.
 */
#ifndef BPFPROF_HELPERS_H
#define BPFPROF_HELPERS_H

#ifndef EVENT_RECORD
#define EVENT_RECORD struct process_event
#endif
#ifndef EVENT_LOST_COUNTER
#define EVENT_LOST_COUNTER CTR_EVENT_LOST
#endif

/* Add one to a self-metric (CTR_*): per CPU, so no atomic is needed. */
static __always_inline void bump(int idx)
{
    u64 *v = counters.lookup(&idx);
    if (v)
        (*v)++;
}

/* Tell user space about process `pid`: a record of `kind`. A full ring
 * buffer drops it, which is counted rather than waited for. */
static __always_inline void send_event(u32 pid, u32 kind)
{
    EVENT_RECORD ev = {.pid = pid, .kind = kind};
    if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0)
        bump(EVENT_LOST_COUNTER);
}

/* Count a failed bpf_get_stackid (id < 0 is -errno). -EFAULT: no stack of
 * this kind (a kernel thread has no user stack; a sample taken in user mode
 * has no kernel stack), which is normal. -EEXIST: another stack already
 * owns this hash bucket. */
static __always_inline void stack_error(int id, int collision_counter)
{
    if (id == -BPFPROF_EEXIST)
        bump(collision_counter);
    else if (id < 0 && id != -BPFPROF_EFAULT)
        bump(CTR_STACK_ERROR);
}

#ifdef NEW_PROCESS_EVENTS
/* The first time `pid` is seen (since it last exec'd): user space reads its
 * /proc/PID/maps. */
static __always_inline void notify_new(u32 pid)
{
    u8 one = 1;
    if (seen.lookup(&pid))
        return;
    seen.update(&pid, &one);
    send_event(pid, EVENT_NEW_PROCESS);
}

/* A process that execs gets new mappings: forget it, so its next sample
 * makes user space read /proc/PID/maps again (and, with the walker, so its
 * old tables cannot misguide the walk meanwhile). */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    seen.delete(&pid);
#ifdef UNWIND_DWARF
    unwind_procs.delete(&pid);
#endif
#ifdef PYTHON_FRAMES
    python_procs.delete(&pid);  /* user space marks the new image if it is CPython */
#endif
    return 0;
}
#endif

#endif

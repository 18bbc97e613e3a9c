/* Off-CPU time: sched:sched_switch runs in the context of the task leaving
 * the CPU (`prev`), so the helpers describe it: its stacks and a timestamp
 * are stored by thread id. When that thread is switched in again (it is the
 * tracepoint's `next`), the time it was away is added to the stored key.
 *
 * Counts are double-buffered like cpu.bpf.c's; stacks are not. A thread may
 * block across any number of drains, so the stack ids taken when it left the
 * CPU must stay valid until it returns: there is one stack map (and one
 * `ustacks` range for walked user stacks), never cleared while the program
 * lives (user space caches each id it has read).
 * A long-running user recreates the source when the map gets crowded.
 *
 * Compile-time options (-D, see agent/sources/offcpu.py):
 *   MAX_ENTRIES, STACK_ENTRIES, TARGET_ENTRIES, SEEN_ENTRIES, EVENT_PAGES
 *   PENDING_ENTRIES  threads that can be off the CPU at once
 *   MIN_BLOCK_NS     ignore blocks shorter than this
 *   SELF_PID         the agent's own process: never profiled
 *   FILTER_PIDS, FOLLOW_FORKS, UNWIND_DWARF  as in cpu.bpf.c (user stacks
 *                    walked with CFI then live in `ustacks`, see waits.h)
 */
#include "common.h"

struct offcpu_start {
    struct sample_key key;
    u64 ts;
};

BPF_HASH(counts0, struct sample_key, struct wait_value, MAX_ENTRIES);
BPF_HASH(counts1, struct sample_key, struct wait_value, MAX_ENTRIES);
BPF_STACK_TRACE(stacks, STACK_ENTRIES);
BPF_ARRAY(window, u32, 1);
BPF_PERCPU_ARRAY(counters, u64, CTR_MAX);
BPF_HASH(targets, u32, u8, TARGET_ENTRIES);
BPF_TABLE("lru_hash", u32, u8, seen, SEEN_ENTRIES);
BPF_HASH(start, u32, struct offcpu_start, PENDING_ENTRIES);
BPF_RINGBUF_OUTPUT(events, EVENT_PAGES);

#define WAIT_KEY struct sample_key
#include "waits.h"

/* prev leaves the CPU: remember when, and where it was. */
static __always_inline void switch_out(void *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    u32 tid = id;
    if (tid == 0 || pid == SELF_PID)
        return;
#ifdef FILTER_PIDS
    if (!targets.lookup(&pid))
        return;
#endif
    struct offcpu_start s = {};
    s.key.pid = pid;
    s.key.tid = tid;
    bpf_get_current_comm(&s.key.comm, sizeof(s.key.comm));
    take_stacks(ctx, &s.key, 1);
    s.ts = bpf_ktime_get_ns();
    if (start.update(&tid, &s) != 0)
        bump(CTR_PENDING_FULL);
}

/* next comes back: add the time it was away to the key stored for it. */
static __always_inline void switch_in(u32 tid)
{
    struct offcpu_start *s = start.lookup(&tid);
    if (!s)
        return;
    u64 delta = bpf_ktime_get_ns() - s->ts;
    struct sample_key key = s->key;
    start.delete(&tid);
    if (delta < MIN_BLOCK_NS)
        return;
    count_wait(&key, key.pid, delta);
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    switch_out(args);
    u32 next = args->next_pid;
    if (next != 0)
        switch_in(next);
    return 0;
}

#include "follow.h"

/* A thread that exits never comes back: free its slot. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u32 tid = bpf_get_current_pid_tgid();
    start.delete(&tid);
    return 0;
}

/* Off-CPU time: the raw sched_switch tracepoint runs in the context of the
 * task leaving the CPU (`prev`), so the helpers describe it; its arguments
 * are (preempt, prev, next, prev_state). Each thread has one `start` entry,
 * keyed by its task pointer (so `next` is found without reading a kernel
 * struct), holding when it left, where it was, and how long its previous
 * block lasted. When the thread is switched in again the time it was away
 * is added to its stacks.
 *
 * A thread's last switch (prev_state TASK_DEAD, kernel 5.18+ passes it)
 * starts no block.
 *
 * Stacks cost about 3 us a switch here, more than a hand-over of the CPU,
 * so not every block takes them (waits.h, wait_weight). Stacks must be
 * taken when the thread leaves, before the block's length is known, so the
 * probability is judged from the thread's previous block: a thread whose
 * blocks last SAMPLE_NS or more takes them every time, one whose blocks are
 * short about 1 in MAX_WEIGHT times, each sample weighted by 1/p, so totals
 * stay unbiased. Blocks not sampled cost a lookup and a timestamp. A
 * thread's first block is always sampled. A preemption (the thread left
 * the CPU runnable: preempted, or it yielded) is counted like a block but
 * is no block the thread chose, so it does not judge the next one: a
 * thread that sleeps 25 ms at a time, preempted for 5 us before a sleep,
 * would otherwise have that sleep sampled 1 in 16 times and counted 16
 * times.
 *
 * Counts are double-buffered like cpu.bpf.c's; stacks are not. A thread may
 * block across any number of drains, so the stack ids taken when it left the
 * CPU must stay valid until it returns: stacks go by generation, not by
 * window (waits.h), and user space keeps a generation's stacks that waits
 * in flight (this program's `start` entries) still name after it empties
 * that generation's maps.
 *
 * Compile-time options (-D, see agent/sources/offcpu.py):
 *   MAX_ENTRIES, STACK_ENTRIES, TARGET_ENTRIES, SEEN_ENTRIES, EVENT_PAGES
 *   PENDING_ENTRIES  threads the program can follow at once
 *   MIN_BLOCK_NS     ignore blocks shorter than this
 *   SAMPLE_NS, MAX_WEIGHT  sampling of short blocks (waits.h)
 *   SELF_PID         the agent's own process: never profiled
 *   FILTER_PIDS, FOLLOW_FORKS, UNWIND_DWARF  as in cpu.bpf.c (user stacks
 *                    walked with CFI then live in `ustacks`, see waits.h)
 */
#include "common.h"

struct offcpu_start {
    struct sample_key key; /* stacks of the block in progress, if sampled */
    u64 ts;                /* when the thread left the CPU; 0: it is on a CPU */
    u64 last_ns;           /* how long its previous block lasted */
    u64 weight;            /* 1/probability of this block's sample; 0: not sampled */
    u64 runnable;          /* 1: the thread left runnable (a preemption, not a block) */
};

BPF_HASH(counts0, struct sample_key, struct wait_value, MAX_ENTRIES);
BPF_HASH(counts1, struct sample_key, struct wait_value, MAX_ENTRIES);
BPF_STACK_TRACE(stacks0, STACK_ENTRIES);
BPF_STACK_TRACE(stacks1, STACK_ENTRIES);
BPF_ARRAY(window, u32, 2); /* [0]: counts half, [1]: stack generation (waits.h) */
BPF_PERCPU_ARRAY(counters, u64, CTR_MAX);
BPF_HASH(targets, u32, u8, TARGET_ENTRIES);
BPF_TABLE("lru_hash", u32, u8, seen, SEEN_ENTRIES);
BPF_HASH(start, u64, struct offcpu_start, PENDING_ENTRIES);
BPF_RINGBUF_OUTPUT(events, EVENT_PAGES);

#define WAIT_KEY struct sample_key
#include "waits.h"

/* prev leaves the CPU: remember when, and (if sampled) where it was. */
static __always_inline void switch_out(void *ctx, u64 runnable)
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
    u64 task = bpf_get_current_task();
    struct offcpu_start *s = start.lookup(&task);
    if (!s) {
        struct offcpu_start fresh = {.last_ns = SAMPLE_NS}; /* first block: sampled */
        start.insert(&task, &fresh);
        s = start.lookup(&task);
        if (!s) {
            bump(CTR_PENDING_FULL);
            return;
        }
    }
    s->weight = wait_weight(s->last_ns);
    if (s->weight) {
        s->key.pid = pid;
        s->key.tid = tid;
        bpf_get_current_comm(&s->key.comm, sizeof(s->key.comm));
        take_stacks(ctx, &s->key, 1);
    }
    s->runnable = runnable;
    s->ts = bpf_ktime_get_ns();
}

/* next comes back: add the time it was away, weighted, to its stacks. */
static __always_inline void switch_in(u64 task)
{
    struct offcpu_start *s = start.lookup(&task);
    if (!s || s->ts == 0)
        return;
    u64 delta = bpf_ktime_get_ns() - s->ts;
    s->ts = 0;
    if (!s->runnable)
        s->last_ns = delta;
    if (s->weight == 0)
        return;
    if (delta < MIN_BLOCK_NS) {
        drop_stacks(&s->key);
        return;
    }
    struct sample_key key = s->key;
    count_wait(&key, key.pid, s->weight, delta);
}

/* prev_state of a thread's last switch, in do_task_dead (linux/sched.h) */
#define OFFCPU_TASK_DEAD 0x80  /* TASK_DEAD */

RAW_TRACEPOINT_PROBE(sched_switch)
{
    if (ctx->args[3] & OFFCPU_TASK_DEAD) {
        /* A thread leaving the CPU for good is no block: sched_process_exit
         * has freed its slot already, and one made now would wait for a new
         * task that reuses its task_struct, which would then add the time
         * in between to the dead thread's exit stack (measured: ~50 ms per
         * exited child of a shell loop, as much as the children's real
         * sleeps). */
        u64 dead = bpf_get_current_task();
        start.delete(&dead);
    } else {
        /* preempted (args[0]), or left with prev_state TASK_RUNNING (0):
         * still runnable, as after sched_yield */
        switch_out(ctx, ctx->args[0] || ctx->args[3] == 0);
    }
    switch_in(ctx->args[2]);
    return 0;
}

#include "follow.h"

/* A thread that exits never comes back: free its slot. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 task = bpf_get_current_task();
    start.delete(&task);
    return 0;
}

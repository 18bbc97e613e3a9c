/* CPU sampling: a perf-event program runs on every CPU at the requested
 * frequency (software cpu-clock) and counts (pid, tid, comm, user stack,
 * kernel stack) in a hash map. User space drains the maps once per window.
 *
 * Double buffering: the counts and stack maps exist twice; user space flips
 * `window` before draining, so it reads a pair no program writes to any more
 * and clears it without losing samples taken meanwhile.
 *
 * Compile-time options (-D, see agent/sources/cpu.py):
 *   MAX_ENTRIES      size of each counts map
 *   STACK_ENTRIES    size of each stack map (buckets)
 *   FILTER_PIDS      count only processes in `targets`
 *   FOLLOW_FORKS     add the children of targeted processes to `targets`
 *   TARGET_ENTRIES, SEEN_ENTRIES, EVENT_PAGES  sizes of the other maps
 *   INCLUDE_IDLE     count the idle task (pid 0)
 *   UNWIND_DWARF     walk user stacks with the CFI tables of bpf/unwind.h
 *                    (frame pointers where a binary has none) instead of
 *                    bpf_get_stackid; user stack ids then index `ustacks`
 *                    (ustacks.h), in one half of it per window
 *   PYTHON_FRAMES    with UNWIND_DWARF: append CPython processes' Python
 *                    frames to their user stacks (python.h; its -D flags too)
 */
#include "common.h"
#ifdef UNWIND_DWARF
#include "unwind.h"
#ifdef PYTHON_FRAMES
#include "python.h"
#endif
#define USTACK_HALVES 2
#include "ustacks.h"
#endif

BPF_HASH(counts0, struct sample_key, u64, MAX_ENTRIES);
BPF_HASH(counts1, struct sample_key, u64, MAX_ENTRIES);
BPF_STACK_TRACE(stacks0, STACK_ENTRIES);
BPF_STACK_TRACE(stacks1, STACK_ENTRIES);
BPF_ARRAY(window, u32, 1);
BPF_PERCPU_ARRAY(counters, u64, CTR_MAX);
BPF_HASH(targets, u32, u8, TARGET_ENTRIES);
BPF_TABLE("lru_hash", u32, u8, seen, SEEN_ENTRIES);
BPF_RINGBUF_OUTPUT(events, EVENT_PAGES);

#define NEW_PROCESS_EVENTS
#include "helpers.h"

static __always_inline void add_one(u64 *v, int inserted)
{
    if (v)
        __sync_fetch_and_add(v, 1);
    else if (!inserted)
        bump(CTR_MAP_FULL);
}

/* The two halves of the double buffer. Map methods cannot be used in a
 * macro or through a pointer under BCC, so each half is spelled out. */
static __always_inline int sample_into_0(void *ctx, struct sample_key *key, void *ustack)
{
    u64 one = 1;
#ifdef UNWIND_DWARF
    key->user_stack_id = unwind_stackid(ustack, 0);
#else
    key->user_stack_id = stacks0.get_stackid(ctx, BPF_F_USER_STACK);
#endif
    key->kernel_stack_id = stacks0.get_stackid(ctx, 0);
    u64 *v = counts0.lookup(key);
    /* insert fails with -EEXIST if another CPU inserted the key meanwhile */
    int inserted = !v && counts0.insert(key, &one) == 0;
    if (!v && !inserted)
        v = counts0.lookup(key);
    add_one(v, inserted);
    return inserted;
}

static __always_inline int sample_into_1(void *ctx, struct sample_key *key, void *ustack)
{
    u64 one = 1;
#ifdef UNWIND_DWARF
    key->user_stack_id = unwind_stackid(ustack, 1);
#else
    key->user_stack_id = stacks1.get_stackid(ctx, BPF_F_USER_STACK);
#endif
    key->kernel_stack_id = stacks1.get_stackid(ctx, 0);
    u64 *v = counts1.lookup(key);
    int inserted = !v && counts1.insert(key, &one) == 0;
    if (!v && !inserted)
        v = counts1.lookup(key);
    add_one(v, inserted);
    return inserted;
}

int on_cpu_sample(void *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    u32 tid = id;
#ifndef INCLUDE_IDLE
    if (tid == 0)
        return 0;
#endif
#ifdef FILTER_PIDS
    if (!targets.lookup(&pid))
        return 0;
#endif
    struct sample_key key = {.pid = pid, .tid = tid};
    bpf_get_current_comm(&key.comm, sizeof(key.comm));

    void *ustack = NULL;
#ifdef UNWIND_DWARF
    ustack = unwind_user_stack(pid);  /* once: the walk is the costly part to verify */
#ifdef PYTHON_FRAMES
    python_append(pid, tid, ustack);  /* before the stack is hashed into ustacks */
#endif
    if (unwind_maps_stale(pid, ustack))
        send_event(pid, EVENT_MAPS_CHANGED);
#endif
    int zero = 0, inserted;
    u32 *w = window.lookup(&zero);
    if (w && (*w & 1))
        inserted = sample_into_1(ctx, &key, ustack);
    else
        inserted = sample_into_0(ctx, &key, ustack);
    stack_error(key.user_stack_id, CTR_USER_COLLISION);
    stack_error(key.kernel_stack_id, CTR_KERNEL_COLLISION);
    bump(CTR_SAMPLES);
    /* A process's first sample always makes a new key (each window starts
     * empty), so only then is the `seen` lookup needed: most samples skip it. */
    if (inserted && pid != 0)
        notify_new(pid);
    return 0;
}

#include "follow.h"

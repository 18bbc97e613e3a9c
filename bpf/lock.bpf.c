/* Lock contention, user and kernel.
 *
 * User space: a contended pthread mutex ends in a futex wait, an uncontended
 * one never enters the kernel. So the wait is measured from
 * syscalls:sys_enter_futex to sys_exit_futex (and the futex2 calls
 * futex_wait and futex_waitv), for the wait operations only, with the
 * thread's stacks taken at entry: locks that never wait cost nothing.
 * The operation tells what kind of wait it is (LOCK_KIND_*); user space
 * refines it from the symbolized stack (docs/profiles.md).
 *
 * Kernel: lock:contention_begin/contention_end, keyed by (thread, lock) so a
 * nested contention (a spinlock inside a mutex's slow path) pairs correctly.
 *
 * Counts are double-buffered (cpu.bpf.c); the stack map is single, as in
 * offcpu.bpf.c, because a wait may span drains. The code both share is in
 * waits.h; a futex wait's kernel stack is always the syscall entry path, so
 * it is taken only for kernel locks (that halves a traced wait's cost).
 *
 * Compile-time options (-D, see agent/sources/lock.py):
 *   MAX_ENTRIES, STACK_ENTRIES, TARGET_ENTRIES, SEEN_ENTRIES, EVENT_PAGES,
 *   PENDING_ENTRIES, SELF_PID, FILTER_PIDS, FOLLOW_FORKS, UNWIND_DWARF
 *                    as in offcpu.bpf.c
 *   MIN_WAIT_NS      ignore waits shorter than this
 *   USER_LOCKS, KERNEL_LOCKS  which halves to trace
 *   FUTEX_WAITV, FUTEX2_WAIT  the kernel has these syscalls' tracepoints
 */
#include "common.h"

/* futex(2) operations (linux/futex.h; no kernel header is included) */
#define FUTEX_WAIT 0
#define FUTEX_LOCK_PI 6
#define FUTEX_WAIT_BITSET 9
#define FUTEX_WAIT_REQUEUE_PI 11
#define FUTEX_LOCK_PI2 13
#define FUTEX_CMD_MASK 0x7f /* drops FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME */

struct lock_start {
    struct lock_key key;
    u64 ts;
};

/* In-flight waits: user ones keyed by (tid, 0), kernel ones by (tid, lock). */
struct wait_id {
    u64 lock;
    u32 tid;
    u32 pad;
};

BPF_HASH(counts0, struct lock_key, struct wait_value, MAX_ENTRIES);
BPF_HASH(counts1, struct lock_key, struct wait_value, MAX_ENTRIES);
BPF_STACK_TRACE(stacks, STACK_ENTRIES);
BPF_ARRAY(window, u32, 1);
BPF_PERCPU_ARRAY(counters, u64, CTR_MAX);
BPF_HASH(targets, u32, u8, TARGET_ENTRIES);
BPF_TABLE("lru_hash", u32, u8, seen, SEEN_ENTRIES);
BPF_HASH(start, struct wait_id, struct lock_start, PENDING_ENTRIES);
BPF_RINGBUF_OUTPUT(events, EVENT_PAGES);

#define WAIT_KEY struct lock_key
#include "waits.h"

/* Is the current process one to trace? Returns its pid, or 0. */
static __always_inline u32 traced_pid(void)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid == 0 || pid == SELF_PID)
        return 0;
#ifdef FILTER_PIDS
    if (!targets.lookup(&pid))
        return 0;
#endif
    return pid;
}

static __always_inline void begin_wait(void *ctx, u64 lock, u32 kind)
{
    u32 pid = traced_pid();
    if (!pid)
        return;
    u32 tid = bpf_get_current_pid_tgid();
    struct wait_id id = {.lock = lock, .tid = tid};
    struct lock_start s = {};
    s.key.base.pid = pid;
    s.key.base.tid = tid;
    s.key.kind = kind;
    bpf_get_current_comm(&s.key.base.comm, sizeof(s.key.base.comm));
    take_stacks(ctx, &s.key.base, kind == LOCK_KIND_KERNEL);
    s.ts = bpf_ktime_get_ns();
    if (start.update(&id, &s) != 0)
        bump(CTR_PENDING_FULL);
}

static __always_inline void end_wait(u64 lock)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct wait_id id = {.lock = lock, .tid = tid};
    struct lock_start *s = start.lookup(&id);
    if (!s)
        return;
    u64 delta = bpf_ktime_get_ns() - s->ts;
    struct lock_key key = s->key;
    start.delete(&id);
    if (delta < MIN_WAIT_NS)
        return;
    count_wait(&key, key.base.pid, delta);
}

/* The futex operations that wait, and what kind of wait each is (0: none). */
static __always_inline u32 futex_wait_kind(int op)
{
    switch (op & FUTEX_CMD_MASK) {
    case FUTEX_WAIT:
    case FUTEX_LOCK_PI:
    case FUTEX_LOCK_PI2:
        return LOCK_KIND_MUTEX;
    case FUTEX_WAIT_BITSET:
        return LOCK_KIND_WAIT;
    case FUTEX_WAIT_REQUEUE_PI:
        return LOCK_KIND_CONDVAR;
    }
    return 0;
}

#ifdef USER_LOCKS
TRACEPOINT_PROBE(syscalls, sys_enter_futex)
{
    u32 kind = futex_wait_kind(args->op);
    if (kind)
        begin_wait(args, 0, kind);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex)
{
    end_wait(0);
    return 0;
}

#ifdef FUTEX_WAITV
TRACEPOINT_PROBE(syscalls, sys_enter_futex_waitv)
{
    begin_wait(args, 0, LOCK_KIND_WAIT);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex_waitv)
{
    end_wait(0);
    return 0;
}
#endif

#ifdef FUTEX2_WAIT
TRACEPOINT_PROBE(syscalls, sys_enter_futex_wait)
{
    begin_wait(args, 0, LOCK_KIND_WAIT);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex_wait)
{
    end_wait(0);
    return 0;
}
#endif
#endif

#ifdef KERNEL_LOCKS
TRACEPOINT_PROBE(lock, contention_begin)
{
    begin_wait(args, (u64)args->lock_addr, LOCK_KIND_KERNEL);
    return 0;
}

TRACEPOINT_PROBE(lock, contention_end)
{
    end_wait((u64)args->lock_addr);
    return 0;
}
#endif

#include "follow.h"

/* A thread killed while it waits never exits the syscall: free its slot. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    struct wait_id id = {.tid = (u32)bpf_get_current_pid_tgid()};
    start.delete(&id);
    return 0;
}

/* Lock contention, user and kernel.
 *
 * User space: a contended pthread mutex ends in a futex wait, an uncontended
 * one never enters the kernel. So the wait is measured from
 * syscalls:sys_enter_futex to sys_exit_futex (and the futex2 calls
 * futex_wait and futex_waitv), for the wait operations only: locks that
 * never wait cost nothing. These tracepoints fire for futex calls only; the
 * raw sys_enter/sys_exit ones would run a program for every syscall of
 * every process (49 ns more per getppid() here, against 10 ns).
 * The operation tells what kind of wait it is (LOCK_KIND_*); user space
 * refines it from the symbolized stack (docs/profiles.md).
 *
 * Kernel: lock:contention_begin/contention_end, keyed by (thread, lock) so a
 * nested contention (a spinlock inside a mutex's slow path) pairs correctly.
 *
 * Stacks are taken when a wait ends, in the waiting thread's context: a
 * thread in a syscall keeps the user registers it entered with, so the user
 * stack is the one it waited in, and a kernel lock's end is reached from
 * the same call chain as its begin. So the wait's length is known first:
 * waits under MIN_WAIT_NS take no stacks, and short ones are sampled
 * (waits.h, wait_weight; a sample counts 1/p waits of its length), which
 * keeps the cost of a contended wait near the two tracepoints'. A futex
 * wait's kernel stack is always the syscall path, so it is taken only for
 * kernel locks.
 *
 * Counts are double-buffered (cpu.bpf.c), with stacks by generation as in
 * offcpu.bpf.c. The code both share is in waits.h.
 *
 * Compile-time options (-D, see agent/sources/lock.py):
 *   MAX_ENTRIES, STACK_ENTRIES, TARGET_ENTRIES, SEEN_ENTRIES, EVENT_PAGES,
 *   PENDING_ENTRIES, SELF_PID, FILTER_PIDS, FOLLOW_FORKS, UNWIND_DWARF
 *                    as in offcpu.bpf.c
 *   MIN_WAIT_NS      ignore waits shorter than this
 *   SAMPLE_NS, MAX_WEIGHT  sampling of short waits (waits.h)
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
    u64 ts;
    u32 kind;
    u32 pad;
};

/* In-flight kernel lock waits, keyed by (tid, lock). */
struct wait_id {
    u64 lock;
    u32 tid;
    u32 pad;
};

BPF_HASH(counts0, struct lock_key, struct wait_value, MAX_ENTRIES);
BPF_HASH(counts1, struct lock_key, struct wait_value, MAX_ENTRIES);
BPF_STACK_TRACE(stacks0, STACK_ENTRIES);
BPF_STACK_TRACE(stacks1, STACK_ENTRIES);
BPF_ARRAY(window, u32, 2); /* [0]: counts half, [1]: stack generation (waits.h) */
BPF_PERCPU_ARRAY(counters, u64, CTR_MAX);
BPF_HASH(targets, u32, u8, TARGET_ENTRIES);
BPF_TABLE("lru_hash", u32, u8, seen, SEEN_ENTRIES);
BPF_HASH(start, struct wait_id, struct lock_start, PENDING_ENTRIES);
/* A futex wait in flight, per thread (a thread is in one syscall at once):
 * task storage, cheaper than a hash update and delete per wait. */
BPF_TASK_STORAGE(ustart, struct lock_start);
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

/* A kernel lock's contention begins. */
static __always_inline void begin_kernel_wait(u64 lock)
{
    if (!traced_pid())
        return;
    struct wait_id id = {.lock = lock, .tid = (u32)bpf_get_current_pid_tgid()};
    struct lock_start s = {.ts = bpf_ktime_get_ns(), .kind = LOCK_KIND_KERNEL};
    if (start.update(&id, &s) != 0)
        bump(CTR_PENDING_FULL);
}

/* A wait of `delta` ns ended: count it (sampled) with the current stacks. */
static __always_inline void end_wait(void *ctx, u32 kind, u64 delta)
{
    if (delta < MIN_WAIT_NS)
        return;
    u64 weight = wait_weight(delta);
    if (!weight)
        return;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct lock_key key = {.kind = kind};
    key.base.pid = pid_tgid >> 32;
    key.base.tid = (u32)pid_tgid;
    bpf_get_current_comm(&key.base.comm, sizeof(key.base.comm));
    take_stacks(ctx, &key.base, kind == LOCK_KIND_KERNEL);
    count_wait(&key, key.base.pid, weight, delta);
}

/* A kernel lock's contention ended. */
static __always_inline void end_kernel_wait(void *ctx, u64 lock)
{
    struct wait_id id = {.lock = lock, .tid = (u32)bpf_get_current_pid_tgid()};
    struct lock_start *s = start.lookup(&id);
    if (!s)
        return;
    u64 delta = bpf_ktime_get_ns() - s->ts;
    start.delete(&id);
    end_wait(ctx, LOCK_KIND_KERNEL, delta);
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
/* A futex wait begins: when, and what kind, in the thread's task storage
 * (a thread is in one syscall at once; cheaper than a hash update and
 * delete per wait). */
static __always_inline void begin_user_wait(u32 kind)
{
    if (!kind || !traced_pid())
        return;
    struct lock_start zero = {};
    struct lock_start *s = ustart.task_storage_get(bpf_get_current_task_btf(), &zero,
                                                   BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!s) {
        bump(CTR_PENDING_FULL);
        return;
    }
    s->kind = kind;
    s->ts = bpf_ktime_get_ns();
}

/* A futex call returns: count the wait it began, if any. */
static __always_inline void end_user_wait(void *ctx)
{
    struct lock_start *s = ustart.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    if (!s || s->ts == 0)
        return;
    u64 delta = bpf_ktime_get_ns() - s->ts;
    s->ts = 0;
    end_wait(ctx, s->kind, delta);
}

TRACEPOINT_PROBE(syscalls, sys_enter_futex)
{
    begin_user_wait(futex_wait_kind(args->op));
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex)
{
    end_user_wait(args);
    return 0;
}

/* The futex2 calls: every wait they make is of the generic kind. */
#define FUTEX2_TRACEPOINTS(call)                                                          \
    TRACEPOINT_PROBE(syscalls, sys_enter_##call)                                          \
    {                                                                                     \
        begin_user_wait(LOCK_KIND_WAIT);                                                  \
        return 0;                                                                         \
    }                                                                                     \
    TRACEPOINT_PROBE(syscalls, sys_exit_##call)                                           \
    {                                                                                     \
        end_user_wait(args);                                                              \
        return 0;                                                                         \
    }
#ifdef FUTEX_WAITV
FUTEX2_TRACEPOINTS(futex_waitv)
#endif
#ifdef FUTEX2_WAIT
FUTEX2_TRACEPOINTS(futex_wait)
#endif
#endif

#ifdef KERNEL_LOCKS
TRACEPOINT_PROBE(lock, contention_begin)
{
    begin_kernel_wait((u64)args->lock_addr);
    return 0;
}

TRACEPOINT_PROBE(lock, contention_end)
{
    end_kernel_wait(args, (u64)args->lock_addr);
    return 0;
}
#endif

#include "follow.h"

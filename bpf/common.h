/* Shared definitions for bpfprof's BPF programs.
 *
 * Every struct that user space reads is described here once and mirrored once
 * in agent/kernel/layout.py; tests/bpf/test_cpu_source.py and
 * tests/bpf/test_profile_programs.py compare the two against what BCC
 * compiled.
 *
 * Only BPF helpers and tracepoint arguments are used: the kernel headers BCC
 * compiles against may describe another kernel than the running one, so no
 * kernel struct is ever read through them.
 */
#ifndef BPFPROF_COMMON_H
#define BPFPROF_COMMON_H

#define TASK_COMM_LEN 16

/* errno values returned by helpers (no kernel errno header is included). */
#define BPFPROF_EFAULT 14
#define BPFPROF_EEXIST 17

/* x86-64 struct pt_regs: the user registers saved at kernel entry. The
 * layout is ABI (it mirrors ptrace's user_regs_struct), so it is spelled
 * out here rather than taken from headers that may be another kernel's. */
struct unwind_regs {
    u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
    u64 ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

/* Indices of the self-metrics array (mirrored by agent.kernel.layout.Counter). */
enum counter {
    CTR_SAMPLES = 0,         /* samples taken (after filtering) */
    CTR_MAP_FULL = 1,        /* sample dropped: the counts map was full */
    CTR_USER_COLLISION = 2,  /* user stack id lost to a stack-map hash collision */
    CTR_KERNEL_COLLISION = 3,/* kernel stack id lost to a collision */
    CTR_STACK_ERROR = 4,     /* any other bpf_get_stackid failure */
    CTR_EVENT_LOST = 5,      /* new-process notification dropped: ring buffer full */
    CTR_TARGETS_FULL = 6,    /* a followed child could not be added to the target set */
    CTR_PENDING_FULL = 7,    /* a wait or allocation in flight not tracked: its map was full */
    CTR_LIVE_FULL = 8,       /* a sampled allocation not remembered: the live table was full */
    CTR_SAMPLE_LOST = 9,     /* an allocation or free record dropped: ring buffer full */
    CTR_MAX = 16,
};

/* Key of the in-kernel counts hash: one entry per distinct stack per thread. */
struct sample_key {
    u32 pid;             /* tgid: the process */
    u32 tid;             /* the thread */
    s32 user_stack_id;   /* >= 0: id in the stack map; < 0: -errno */
    s32 kernel_stack_id; /* likewise */
    char comm[TASK_COMM_LEN];
};

/* Ring-buffer record: a process was seen for the first time (again after an exec). */
struct process_event {
    u32 pid;
    u32 kind; /* EVENT_* */
};

#define EVENT_NEW_PROCESS 1
#define EVENT_MAPS_CHANGED 2 /* a sampled PC is in no mapping user space told the unwinder of */

/* Value of the wait counts (off-CPU, lock): how many waits, how long in all. */
struct wait_value {
    u64 count;
    u64 total_ns;
};

/* Key of the lock counts: whose stack, and what kind of wait (LOCK_KIND_*). */
struct lock_key {
    struct sample_key base;
    u32 kind;
    u32 pad;
};

#define LOCK_KIND_MUTEX 1   /* FUTEX_WAIT, LOCK_PI, LOCK_PI2: glibc's mutex slow path */
#define LOCK_KIND_WAIT 2    /* FUTEX_WAIT_BITSET, futex_waitv, futex_wait: cond, rwlock, join, ... */
#define LOCK_KIND_CONDVAR 3 /* FUTEX_WAIT_REQUEUE_PI: a condition variable over a PI mutex */
#define LOCK_KIND_KERNEL 4  /* lock:contention_begin/end: a kernel lock */

/* Ring-buffer records of the allocation profiler, told apart by `kind`. */
#define ALLOC_EVENT_ALLOC 1 /* a sampled allocation: size, address and stack */
#define ALLOC_EVENT_FREE 2  /* a sampled allocation was freed (or moved by realloc) */
#define ALLOC_EVENT_EXIT 3  /* a targeted process exited: drop its live entries */
#define ALLOC_EVENT_UNTRACKED 4 /* a sampled allocation the live table had no room for */
#define ALLOC_EVENT_EXEC 5  /* a targeted process exec'd: its unwind tables are gone */
#define ALLOC_EVENT_MAPS_CHANGED 6 /* the walker met a mapping it was not told of (dlopen) */
#define ALLOC_EVENT_FORK 7  /* a targeted process forked (FOLLOW_FORKS): probe the child */

#define ALLOC_MAX_FRAMES 127 /* bpf_get_stack's limit (perf_event_max_stack) */

struct alloc_free_event {
    u32 kind;
    u32 pid;
    u64 addr;
};

struct alloc_event {
    u32 kind;
    u32 pid;
    u64 addr;
    u32 tid;
    s32 stack_bytes; /* bytes of ips filled, or -errno (as bpf_get_stack returns) */
    u64 size;
    u32 stack_flags; /* STACK_* of unwind.h: truncated, ... (0 with frame pointers) */
    u32 pad;
    char comm[TASK_COMM_LEN];
    u64 ips[ALLOC_MAX_FRAMES];
};

#endif

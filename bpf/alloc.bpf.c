/* Allocation sampling by bytes, as Go and tcmalloc do it.
 *
 * Each thread counts down the bytes it allocates; when the countdown passes
 * zero the allocation is sampled and a new countdown is drawn from an
 * exponential distribution with mean ALLOC_RATE. Memorylessness makes an
 * allocation of s bytes sampled with probability 1 - exp(-s/ALLOC_RATE)
 * whatever came before it, which is what user space divides by.
 *
 * Only a sampled allocation takes a stack, in the return probe (where its
 * address is known): the record goes to user space through the ring buffer
 * with its stack, and its address into `live`, so the free probe can tell
 * in one lookup whether a freed block was sampled.
 *
 * With UPROBE_SESSION (Linux 6.13+) one session program (s_alloc) is on
 * every allocator, told which by its link's cookie (ROLE_*): it runs at the
 * entry and, only when the entry returns 0, at the return. An unsampled call
 * takes one trap instead of two, which is most of what a probed malloc
 * costs; and the stack walk, most of the program, is compiled and verified
 * once instead of once per allocator. The program tells its two runs apart by the
 * stack pointer: at the entry it points at the return address, after the
 * return 8 bytes higher; a sampled entry stores its call under (thread,
 * sp), which the return finds under (thread, sp - 8). Without sessions, a
 * uretprobe (on_return) runs after every call and finds it under
 * (thread, 0).
 *
 * Compile-time options (-D, see agent/sources/alloc.py):
 *   ALLOC_RATE       mean bytes between samples
 *   LIVE_ENTRIES     sampled blocks remembered until freed
 *   PENDING_ENTRIES, COUNTDOWN_ENTRIES, TARGET_ENTRIES, EVENT_PAGES  map sizes
 *   FILTER_PIDS      report exits of `targets` only (probes are per process)
 *   FOLLOW_FORKS     a COMMAND's tree: probes are on files, for every process,
 *                    and only `targets` count (a forked child is one before
 *                    it runs: follow.h); a target that execs or whose ld.so
 *                    maps libraries (_dl_debug_state) is stopped until user
 *                    space has probed the allocators it brings (see stop_for)
 *   NO_INUSE         allocations only: no return probes, no live table, free
 *                    not probed; samples are sent from the entry
 *   UPROBE_SESSION   build s_alloc instead of the per-allocator entry and
 *                    return programs (not with NO_INUSE)
 *   UNWIND_DWARF     walk user stacks with CFI (unwind.h, as cpu.bpf.c) instead
 *                    of frame pointers (bpf_get_stack)
 *   PYTHON_FRAMES    with UNWIND_DWARF: Python frames after the native ones
 *                    (python.h, as cpu.bpf.c)
 */
#include <uapi/linux/ptrace.h>
#include "common.h"
#ifdef UNWIND_DWARF
#include "unwind.h"
#ifdef PYTHON_FRAMES
#include "python.h"
#endif
#endif

struct pending_alloc {
    u64 size;
    u64 memptr; /* posix_memalign: where the address will be written */
};

/* A sampled call waiting for its return: the thread, and (sessions) the
 * stack pointer at the entry, so nested calls pair up too. */
struct pending_key {
    u32 tid;
    u32 pad;
    u64 sp;
};

struct live_key {
    u32 pid;
    u32 pad;
    u64 addr;
};

BPF_TABLE("lru_hash", u32, s64, countdown, COUNTDOWN_ENTRIES);
BPF_HASH(pending, struct pending_key, struct pending_alloc, PENDING_ENTRIES);
BPF_HASH(live, struct live_key, u64, LIVE_ENTRIES);
BPF_HASH(targets, u32, u8, TARGET_ENTRIES);
BPF_PERCPU_ARRAY(counters, u64, CTR_MAX);
BPF_RINGBUF_OUTPUT(events, EVENT_PAGES);

/* ld.so mapped or unmapped libraries (its debugger hook, _dl_debug_state):
 * a dlopen'd library may bring an allocator (agent/sources/alloc.py). */
#define ALLOC_EVENT_LIBS 8

/* Whether process `pid` counts. With FOLLOW_FORKS probes are on files for
 * every process: it does if it is in the COMMAND's tree. Otherwise probes
 * are attached with the targets' pids only (or for everyone, wanted). */
#ifdef FOLLOW_FORKS
#define TARGET_NEW_CHILD 2 /* a forked child that has not allocated yet */
static __always_inline void stop_for(u32 pid, u32 kind);
#endif
static __always_inline int targeted(u32 pid)
{
#ifdef FOLLOW_FORKS
    u8 *t = targets.lookup(&pid);
    if (!t)
        return 0;
    if (*t == TARGET_NEW_CHILD) {
        /* its first allocation: user space reads its maps while it is
         * stopped (a child that allocates and exits at once would be gone) */
        *t = 1;
        stop_for(pid, ALLOC_EVENT_FORK);
    }
    return 1;
#else
    return 1;
#endif
}

/* Its ring buffer carries allocation records: exits, execs and forks go
 * as struct alloc_free_event (with no address), and a full buffer is a
 * lost sample. */
#define EVENT_RECORD struct alloc_free_event
#define EVENT_LOST_COUNTER CTR_SAMPLE_LOST
#include "helpers.h"

/* -ln(u) * ALLOC_RATE for a uniform u in (0, 1), in integers.
 *
 * u = x / 2^32 for a random 32-bit x, so -ln(u) = ln2 * (32 - log2(x)).
 * log2(x) = n + log2(1 + f), n the index of x's top bit and f the bits
 * below it as a fraction; log2(1 + f) ~ f + C*f*(1-f) with C = 0.3466 (a
 * parabola through both ends, max error 0.008 in log2, so each interval is
 * off by at most 0.6% of the rate and the mean by less than 0.4%). Q16 fixed point;
 * agent/sources/sampling.py mirrors this and tests the mean and the error. */
static __always_inline u64 next_interval(void)
{
    u64 x = bpf_get_prandom_u32() | 1;
    u64 n = 0, v = x;
    if (v >= (1ULL << 16)) { n += 16; v >>= 16; }
    if (v >= (1ULL << 8)) { n += 8; v >>= 8; }
    if (v >= (1ULL << 4)) { n += 4; v >>= 4; }
    if (v >= (1ULL << 2)) { n += 2; v >>= 2; }
    if (v >= (1ULL << 1)) { n += 1; }
    u64 f = n >= 16 ? (x >> (n - 16)) & 0xffff : (x << (16 - n)) & 0xffff;
    u64 bend = (((f * (65536 - f)) >> 16) * 22715) >> 16;
    u64 neg_log2_u = (32ULL << 16) - ((n << 16) + f + bend);
    return ((((u64)ALLOC_RATE * neg_log2_u) >> 16) * 45426) >> 16; /* 45426 = ln2 in Q16 */
}

/* Count `size` bytes down for this thread; 1 if this allocation is sampled. */
static __always_inline int sampled(u32 tid, u64 size)
{
    s64 *left = countdown.lookup(&tid);
    if (!left) {
        s64 first = next_interval();
        countdown.update(&tid, &first);
        left = countdown.lookup(&tid);
        if (!left)
            return 0;
    }
    *left -= size;
    if (*left > 0)
        return 0;
    *left = next_interval();
    return 1;
}

/* The one place this program takes stacks: the user stack into the record,
 * leaf first. In a return probe the registers are the caller's, just after
 * the call returned: the stack starts in the allocator's caller. In an
 * entry probe (`at_entry`) the first frame is the allocator itself; it is
 * left out, so both modes give the same stacks. */
static __always_inline void take_user_stack(struct pt_regs *ctx, struct alloc_event *ev,
                                            int at_entry)
{
    ev->stack_flags = 0;
#ifdef UNWIND_DWARF
    /* The walker finds the allocator's caller from its CFI, even at the
     * entry, where the caller's frame is not set up yet. */
    struct unwound_stack *st = unwind_user_stack(ev->pid);
#ifdef PYTHON_FRAMES
    python_append(ev->pid, ev->tid, st);
#endif
    u32 skip = at_entry ? 1 : 0;
    if (!st || st->len <= skip) {
        ev->stack_bytes = -BPFPROF_EFAULT;
        return;
    }
    if (bpf_probe_read_kernel(ev->ips, sizeof(ev->ips) - skip * sizeof(u64), &st->ips[skip]) != 0) {
        ev->stack_bytes = -BPFPROF_EFAULT;
        return;
    }
    ev->stack_bytes = (st->len - skip) * sizeof(u64);
    ev->stack_flags = st->flags;
    if (unwind_maps_stale(ev->pid, st))
        send_event(ev->pid, ALLOC_EVENT_MAPS_CHANGED);
#else
    ev->stack_bytes = bpf_get_stack(ctx, ev->ips, sizeof(ev->ips), BPF_F_USER_STACK);
    /* At the entry the frame-pointer walk goes from the allocator to its
     * caller's saved frame, which skips the caller itself: its pc is the
     * return address on top of the stack, and takes the allocator's slot. */
    if (at_entry && ev->stack_bytes >= 8 &&
        bpf_probe_read_user(&ev->ips[0], sizeof(u64), (void *)PT_REGS_SP(ctx)) != 0)
        ev->ips[0] = 0;
#endif
}

#ifdef NO_INUSE
/* Without inuse_* the address is not needed, so there is no return probe
 * (it doubles a call's cost): the sample is sent from the entry. */
static __always_inline int alloc_entry(struct pt_regs *ctx, u64 size, u64 memptr)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (size == 0 || !targeted(pid) || !sampled((u32)id, size))
        return 0;
    struct alloc_event *ev = events.ringbuf_reserve(sizeof(struct alloc_event));
    if (!ev) {
        bump(CTR_SAMPLE_LOST);
        return 0;
    }
    ev->kind = ALLOC_EVENT_UNTRACKED;
    ev->pid = id >> 32;
    ev->tid = (u32)id;
    ev->addr = 0;
    ev->size = size;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    take_user_stack(ctx, ev, 1);
    events.ringbuf_submit(ev, 0);
    bump(CTR_SAMPLES);
    return 0;
}
#else
/* 1 if this call was sampled and its return is wanted. */
static __always_inline int alloc_entry(struct pt_regs *ctx, u64 size, u64 memptr)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id, pid = id >> 32;
    if (size == 0 || !targeted(pid) || !sampled(tid, size))
        return 0;
    struct pending_alloc p = {.size = size, .memptr = memptr};
    struct pending_key key = {.tid = tid};
#ifdef UPROBE_SESSION
    key.sp = PT_REGS_SP(ctx);
#endif
    if (pending.update(&key, &p) != 0) {
        bump(CTR_PENDING_FULL);
        return 0;
    }
    return 1;
}
#endif

/* The return of a call stored under `key` (found: `p`). */
static __always_inline int alloc_return(struct pt_regs *ctx, struct pending_key *key,
                                        struct pending_alloc *p, int via_memptr)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    u64 size = p->size, addr = PT_REGS_RC(ctx);
    if (via_memptr) { /* posix_memalign returns 0 and writes the address */
        u64 out = 0;
        if (addr != 0 || bpf_probe_read_user(&out, sizeof(out), (void *)p->memptr) != 0)
            out = 0;
        addr = out;
    }
    pending.delete(key);
    if (addr == 0)
        return 0;
    struct alloc_event *ev = events.ringbuf_reserve(sizeof(struct alloc_event));
    if (!ev) {
        bump(CTR_SAMPLE_LOST);
        return 0;
    }
    ev->kind = ALLOC_EVENT_ALLOC;
    ev->pid = id >> 32;
    ev->tid = tid;
    ev->addr = addr;
    ev->size = size;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    take_user_stack(ctx, ev, 0);
    /* Into `live` before the record is submitted: a free racing with us is
     * reserved after this record, so user space sees them in order. */
    struct live_key k = {.pid = ev->pid, .addr = addr};
    if (live.update(&k, &size) != 0) {
        ev->kind = ALLOC_EVENT_UNTRACKED;
        bump(CTR_LIVE_FULL);
    }
    events.ringbuf_submit(ev, 0);
    bump(CTR_SAMPLES);
    return 0;
}

static __always_inline void freed(u64 addr)
{
    if (addr == 0)
        return;
    struct live_key k = {.pid = bpf_get_current_pid_tgid() >> 32, .addr = addr};
    if (!live.lookup(&k))
        return;
    live.delete(&k);
    struct alloc_free_event ev = {.kind = ALLOC_EVENT_FREE, .pid = k.pid, .addr = addr};
    if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0)
        bump(CTR_SAMPLE_LOST);
}

/* The cookie of each session link: the allocator it is on
 * (agent/sources/alloc.py SESSION_ROLES). */
#define ROLE_MALLOC 0
#define ROLE_CALLOC 1
#define ROLE_REALLOC 2
#define ROLE_MEMALIGN 3
#define ROLE_POSIX_MEMALIGN 4

/* The entry of a call to the allocator `role`: its size, and where
 * posix_memalign writes the address; alloc_entry's answer. */
static __always_inline int role_entry(struct pt_regs *ctx, u64 role)
{
    u64 first = PT_REGS_PARM1(ctx), second = PT_REGS_PARM2(ctx);
    switch (role) {
    case ROLE_CALLOC:
        return alloc_entry(ctx, first * second, 0);
    case ROLE_REALLOC: /* realloc(p, n) frees p (when it succeeds) and allocates n */
        freed(first);
        return alloc_entry(ctx, second, 0);
    case ROLE_MEMALIGN:
        return alloc_entry(ctx, second, 0);
    case ROLE_POSIX_MEMALIGN:
        return alloc_entry(ctx, PT_REGS_PARM3(ctx), first);
    default:
        return alloc_entry(ctx, first, 0);
    }
}

#ifndef UPROBE_SESSION
int on_malloc(struct pt_regs *ctx) { role_entry(ctx, ROLE_MALLOC); return 0; }
int on_calloc(struct pt_regs *ctx) { role_entry(ctx, ROLE_CALLOC); return 0; }
int on_realloc(struct pt_regs *ctx) { role_entry(ctx, ROLE_REALLOC); return 0; }
int on_memalign(struct pt_regs *ctx) { role_entry(ctx, ROLE_MEMALIGN); return 0; }
int on_posix_memalign(struct pt_regs *ctx) { role_entry(ctx, ROLE_POSIX_MEMALIGN); return 0; }

static __always_inline int uretprobe_return(struct pt_regs *ctx, int via_memptr)
{
    struct pending_key key = {.tid = (u32)bpf_get_current_pid_tgid()};
    struct pending_alloc *p = pending.lookup(&key);
    return p ? alloc_return(ctx, &key, p, via_memptr) : 0;
}

int on_return(struct pt_regs *ctx) { return uretprobe_return(ctx, 0); }
int on_posix_memalign_return(struct pt_regs *ctx) { return uretprobe_return(ctx, 1); }
#endif

int on_free(struct pt_regs *ctx)
{
    freed(PT_REGS_PARM1(ctx));
    return 0;
}

#if defined(UPROBE_SESSION) && !defined(NO_INUSE)
/* The return run of a session whose sampled entry stored its call: that
 * call's pending entry, or NULL at an entry. */
static __always_inline struct pending_alloc *session_return(struct pt_regs *ctx,
                                                            struct pending_key *key)
{
    key->tid = bpf_get_current_pid_tgid();
    key->pad = 0;
    key->sp = PT_REGS_SP(ctx) - 8;
    return pending.lookup(key);
}

/* Returns 0 at a sampled entry (run my return) and 1 at any other. */
int s_alloc(struct pt_regs *ctx)
{
    u64 role = bpf_get_attach_cookie(ctx);
    struct pending_key key;
    struct pending_alloc *p = session_return(ctx, &key);
    if (p)
        return alloc_return(ctx, &key, p, role == ROLE_POSIX_MEMALIGN);
    return !role_entry(ctx, role);
}
#endif

#ifdef FOLLOW_FORKS
/* Tell user space that `pid` has new code to probe, and stop the process
 * (SIGSTOP, the whole thread group) until user space has attached to the
 * allocators it brings and sent SIGCONT: its first allocation through them
 * is then seen, however soon it comes. The record is reserved first, so a
 * stop always has its record; a SIGCONT that overtakes the stop cancels it
 * (the kernel drops a pending stop at SIGCONT), so nothing stays stopped. */
static __always_inline void stop_for(u32 pid, u32 kind)
{
    struct alloc_free_event *ev = events.ringbuf_reserve(sizeof(struct alloc_free_event));
    if (!ev) {
        bump(CTR_SAMPLE_LOST);
        return;
    }
    ev->kind = kind;
    ev->pid = pid;
    ev->addr = 0;
    bpf_send_signal(19); /* SIGSTOP */
    events.ringbuf_submit(ev, 0);
}
#endif

/* ld.so calls _dl_debug_state when it starts to map or unmap libraries and
 * when it is done (r_debug's RT_ADD, RT_CONSISTENT), before it runs their
 * constructors: at program start and at each dlopen/dlclose. */
int on_libs(struct pt_regs *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (!targeted(pid))
        return 0;
#ifdef FOLLOW_FORKS
    stop_for(pid, ALLOC_EVENT_LIBS);
#else
    send_event(pid, ALLOC_EVENT_LIBS);
#endif
    return 0;
}

/* A process that exits frees everything: user space drops its entries. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (pid != (u32)id)
        return 0; /* a thread, not the process */
#ifdef FILTER_PIDS
    if (!targets.lookup(&pid))
        return 0;
#endif
    send_event(pid, ALLOC_EVENT_EXIT);
    return 0;
}

#if defined(UNWIND_DWARF) || defined(FOLLOW_FORKS)
/* A targeted process that execs has new mappings: drop its tables at once
 * (they would misguide the walk) and have user space load the new ones,
 * and probe the new program's allocator if it is another. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
#ifdef FILTER_PIDS
    if (!targets.lookup(&pid))
        return 0;
#endif
#ifdef UNWIND_DWARF
    unwind_procs.delete(&pid);
#endif
#ifdef PYTHON_FRAMES
    python_procs.delete(&pid);  /* user space marks the new image if it is CPython */
#endif
#ifdef FOLLOW_FORKS
    /* the new program and its ld.so are mapped, and may be new files */
    stop_for(pid, ALLOC_EVENT_EXEC);
#else
    send_event(pid, ALLOC_EVENT_EXEC);
#endif
    return 0;
}
#endif

/* A forked child joins `targets` before it runs (the probes on its files are
 * on already), marked new until its first allocation. Thread creation fires
 * the tracepoint too: a thread's id is never a process id, so never met. */
#ifdef FOLLOW_FORKS
#define FOLLOWED(child) mark_new_child(child)
static __always_inline void mark_new_child(u32 child)
{
    u8 fresh = TARGET_NEW_CHILD;
    targets.update(&child, &fresh);
}
#endif
#include "follow.h"

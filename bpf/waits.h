/* What the wait programs (offcpu.bpf.c, lock.bpf.c) share beyond
 * helpers.h (self-metrics, new-process events, forgetting a process that
 * execs): stacks, sampling, and adding one wait to the double-buffered
 * counts.
 *
 * Include it after declaring the maps it uses: counts0 and counts1 (keyed
 * by WAIT_KEY, valued by struct wait_value), stacks0 and stacks1, window
 * (two slots), counters, seen and events. bpf.expanded() pastes it into the
 * program, because BCC rewrites map calls (`counts0.lookup(...)`) only in
 * the main file.
 *
 * With UNWIND_DWARF, user stacks are walked with CFI (unwind.h) and their
 * ids index `ustacks` (ustacks.h, two halves); the stack maps then hold
 * kernel stacks only. With PYTHON_FRAMES too, a CPython process's Python
 * frames follow its native ones (python.h).
 *
 * Stack generations. A wait's stacks may be taken long before it is
 * counted (off-CPU takes them when the thread leaves the CPU), so they
 * cannot live in a half that each drain empties, as cpu.bpf.c's do; and a
 * map never emptied fills up on a long-running host (each new process
 * brings new addresses, so new stacks) until every new stack collides.
 * So stacks go to the half of generation window[1]: stacks0 or stacks1,
 * and ustacks' half of the same parity. User space moves to the next
 * generation when the current one's maps fill, and one drain later reads
 * what is left in the other half (the generation before) into its own
 * cache and empties it. A stack id carries its generation in bits
 * STACK_GEN_SHIFT and up (modulo STACK_GEN_MASK + 1), so user space knows
 * which map, or which of its cached generations, an id is from however
 * long the wait lasts (agent/sources/waits.py, StackGenerations).
 */
#ifndef BPFPROF_WAITS_H
#define BPFPROF_WAITS_H

#ifdef UNWIND_DWARF
#include "unwind.h"
#ifdef PYTHON_FRAMES
#include "python.h"
#endif
#define USTACK_HALVES 2
#include "ustacks.h"
#endif

#define NEW_PROCESS_EVENTS
#include "helpers.h"

/* The one place the wait programs take stacks: ids, or -errno. `key->pid`
 * must be set. The walker reads the registers the thread entered the
 * kernel with (the futex syscall, or whatever made it leave the CPU), so
 * it starts in the user code that called into the kernel. Without `kernel`
 * the kernel stack is recorded as -EFAULT: none, as for a user-mode CPU
 * sample. */
#define STACK_GEN_SHIFT 23 /* ids are below 2 * STACK_ENTRIES <= 2^23 */
#define STACK_GEN_MASK 0xff

/* A stack id (or -errno, kept as it is) tagged with its generation. */
static __always_inline int stack_tag(int id, u32 gen)
{
    return id < 0 ? id : id | (int)((gen & STACK_GEN_MASK) << STACK_GEN_SHIFT);
}

/* A wait that took stacks and is not counted after all (off-CPU: shorter
 * than MIN_BLOCK_NS): a deferred user stack is that wait's alone (its id
 * comes from its raw record's hash), so free its bucket now; nothing else
 * would (user space frees the deferred stacks it reads). */
static __always_inline void drop_stacks(struct sample_key *key)
{
#ifdef UNWIND_DWARF
    if (key->user_stack_id < 0)
        return;
    u32 id = (u32)key->user_stack_id & ((1U << STACK_GEN_SHIFT) - 1);
    struct unwound_stack *st = ustacks.lookup(&id);
    if (st && (st->flags & STACK_DEFERRED))
        ustacks.delete(&id);
#endif
}

static __always_inline int stack_in(void *ctx, u32 half, u64 flags)
{
    if (half)
        return stacks1.get_stackid(ctx, flags);
    return stacks0.get_stackid(ctx, flags);
}

static __always_inline void take_stacks(void *ctx, struct sample_key *key, int kernel)
{
    int one = 1;
    u32 *g = window.lookup(&one);
    u32 gen = g ? *g : 0;
    u32 half = gen & 1;
#ifdef UNWIND_DWARF
    struct unwound_stack *st = unwind_user_stack(key->pid);
#ifdef PYTHON_FRAMES
    python_append(key->pid, key->tid, st);  /* before the stack is hashed into ustacks */
#endif
    int user = unwind_stackid(st, half);
    if (unwind_maps_stale(key->pid, st))
        send_event(key->pid, EVENT_MAPS_CHANGED);
#else
    int user = stack_in(ctx, half, BPF_F_USER_STACK);
#endif
    int kstack = kernel ? stack_in(ctx, half, 0) : -BPFPROF_EFAULT;
    stack_error(user, CTR_USER_COLLISION);
    if (kstack == -BPFPROF_EEXIST)
        bump(CTR_KERNEL_COLLISION);
    key->user_stack_id = stack_tag(user, gen);
    key->kernel_stack_id = stack_tag(kstack, gen);
}

/* Sampling of waits. Stacks cost more than a short wait's tracing, so a
 * wait judged to last `ns` takes them with probability
 * p = min(1, max(ns / SAMPLE_NS, 1 / MAX_WEIGHT)), decided when the wait is
 * known (lock) or predicted from the thread's last one (off-CPU). The
 * weight 1/p is returned for a sampled wait, 0 for one left out; counting
 * a sampled wait `weight` times keeps totals unbiased (Horvitz-Thompson).
 * Waits of SAMPLE_NS or more are always sampled; MAX_WEIGHT=1 samples all. */
#ifndef SAMPLE_NS
#define SAMPLE_NS 1000000ULL
#endif
#ifndef MAX_WEIGHT
#define MAX_WEIGHT 16
#endif

static __always_inline u64 wait_weight(u64 ns)
{
    if (MAX_WEIGHT <= 1 || ns >= SAMPLE_NS)
        return 1;
    u64 weight = MAX_WEIGHT;
    if (ns * MAX_WEIGHT > SAMPLE_NS)
        weight = SAMPLE_NS / ns; /* 1 to MAX_WEIGHT */
    return bpf_get_prandom_u32() % weight == 0 ? weight : 0;
}

static __always_inline void add_wait(struct wait_value *v, u64 count, u64 delta)
{
    __sync_fetch_and_add(&v->count, count);
    __sync_fetch_and_add(&v->total_ns, delta);
}

/* The two halves of the double buffer, spelled out (BCC map methods cannot
 * be reached through a pointer). */
static __always_inline void count_into_0(WAIT_KEY *key, u64 count, u64 delta)
{
    struct wait_value zero = {};
    struct wait_value *v = counts0.lookup(key);
    if (!v) {
        counts0.insert(key, &zero); /* -EEXIST: another CPU inserted it */
        v = counts0.lookup(key);
    }
    if (v)
        add_wait(v, count, delta);
    else
        bump(CTR_MAP_FULL);
}

static __always_inline void count_into_1(WAIT_KEY *key, u64 count, u64 delta)
{
    struct wait_value zero = {};
    struct wait_value *v = counts1.lookup(key);
    if (!v) {
        counts1.insert(key, &zero);
        v = counts1.lookup(key);
    }
    if (v)
        add_wait(v, count, delta);
    else
        bump(CTR_MAP_FULL);
}

/* A sampled wait of `delta` ns that stands for `weight` waits like it (see
 * wait_weight), into the half user space is not reading. */
static __always_inline void count_wait(WAIT_KEY *key, u32 pid, u64 weight, u64 delta)
{
    int zero = 0;
    u32 *w = window.lookup(&zero);
    if (w && (*w & 1))
        count_into_1(key, weight, delta * weight);
    else
        count_into_0(key, weight, delta * weight);
    bump(CTR_SAMPLES);
    notify_new(pid);
}

#endif

/* Ids for user stacks the walker (unwind.h) produced, so counts maps can be
 * keyed by them as they are by bpf_get_stackid's ids.
 *
 * An unwound stack is stored in `ustacks` under a bucket found from its
 * hash by linear probing (USTACK_PROBES buckets): the same stack gets the
 * same id, and -EEXIST comes back when every probed bucket holds another
 * stack, as from a stack map with a collision. Buckets are allocated on
 * use, so a large STACK_ENTRIES costs nothing until stacks fill it.
 *
 * USTACK_HALVES (default 1) splits the ids into that many ranges of
 * STACK_ENTRIES buckets: cpu.bpf.c double-buffers its stacks with two
 * halves, and user space frees a retired half's ids after reading them;
 * the wait programs use one half per stack generation (waits.h).
 *
 * Include after unwind.h. bpf.expanded() pastes it into the program, since
 * BCC rewrites map calls only in the main file.
 */
#ifndef BPFPROF_USTACKS_H
#define BPFPROF_USTACKS_H

#ifndef USTACK_HALVES
#define USTACK_HALVES 1
#endif
#define USTACK_PROBES 4

BPF_F_TABLE("hash", u32, struct unwound_stack, ustacks, STACK_ENTRIES * USTACK_HALVES,
            BPF_F_NO_PREALLOC);

/* The id of an unwound stack in half `half`: >= 0, or -EFAULT for no stack
 * (a kernel thread), -EEXIST when its buckets are taken by other stacks. */
static __always_inline int unwind_stackid(struct unwound_stack *st, u32 half)
{
    if (!st || st->len == 0)
        return -BPFPROF_EFAULT;
    /* The bucket comes from the high bits of a mixed hash: the frame hash's
     * low bits depend only on the frames' low bits, which ASLR leaves alike
     * (it moves code by whole pages), so the same stack in many processes
     * (children of one shell) would share its 4 buckets and collide. */
    u32 bucket = (u32)(((st->hash ^ (st->hash >> 29)) * 0x9e3779b97f4a7c15ULL) >> 32);
#pragma unroll
    for (int i = 0; i < USTACK_PROBES; i++) {
        u32 id = half * STACK_ENTRIES + (bucket + i) % STACK_ENTRIES;
        struct unwound_stack *old = ustacks.lookup(&id);
        if (!old && ustacks.insert(&id, st) == 0) {
            unwind_count(USTAT_NEW_STACKS, 1);
            return id;
        }
        if (!old)
            old = ustacks.lookup(&id); /* another CPU took the bucket meanwhile */
        if (old && old->hash == st->hash)
            return id;
    }
    return -BPFPROF_EEXIST;
}

#endif

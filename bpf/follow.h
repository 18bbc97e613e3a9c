/* Follow the children of targeted processes, so `record -- COMMAND` covers
 * everything the command starts: each fork by a process in `targets` adds
 * the child. Runs in the parent's context, so the helper gives the parent.
 *
 * Included by each program after its `targets` map and helpers.h; pasted into
 * the program text by bpf.expanded(), since BCC rewrites map calls only in
 * the main file. A program that must act on a new child (the allocation
 * profiler attaches probes to it) defines FOLLOWED(child) first; thread
 * creation fires this tracepoint too, so the callee tells threads apart. */
#ifndef BPFPROF_FOLLOW_H
#define BPFPROF_FOLLOW_H
#ifdef FOLLOW_FORKS
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (targets.lookup(&parent)) {
        u32 child = args->child_pid;
        u8 one = 1;
        if (targets.update(&child, &one) != 0)
            bump(CTR_TARGETS_FULL);
#ifdef FOLLOWED
        FOLLOWED(child);
#endif
    }
    return 0;
}
#endif
#endif

/* Shared definitions for bpfprof's BPF programs.
 *
 * Every struct that user space reads is described here once and mirrored once
 * in agent/layout.py; tests/bpf/test_layout.py compares the two against what
 * BCC compiled.
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

/* Indices of the self-metrics array (mirrored by agent.layout.Counter). */
enum counter {
    CTR_SAMPLES = 0,         /* samples taken (after filtering) */
    CTR_MAP_FULL = 1,        /* sample dropped: the counts map was full */
    CTR_USER_COLLISION = 2,  /* user stack id lost to a stack-map hash collision */
    CTR_KERNEL_COLLISION = 3,/* kernel stack id lost to a collision */
    CTR_STACK_ERROR = 4,     /* any other bpf_get_stackid failure */
    CTR_EVENT_LOST = 5,      /* new-process notification dropped: ring buffer full */
    CTR_TARGETS_FULL = 6,    /* a followed child could not be added to the target set */
    CTR_MAX = 8,
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

#endif

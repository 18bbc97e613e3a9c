/* Test-only: each CPU-clock sample of a process in python_procs sends its
 * whole stack (native frames from unwind.h, then python.h's Python frames)
 * and the thread's FS base (the truth python.h matches thread_id against)
 * to user space. tests/bpf/test_python_walk.py pastes the headers in.
 *
 *   NO_PYTHON    skip python_append: the baseline the walk's cost is measured against
 */
#include "common.h"
#include "unwind.h"
#include "python.h"

struct walk_record {
    u32 pid;
    u32 tid;
    u64 fsbase;
    u32 native_len;  /* ips[0, native_len) are native, the rest Python */
    u32 len;
    u32 flags;
    u32 pad;
    u64 ips[UNWIND_MAX_FRAMES];
};

BPF_RINGBUF_OUTPUT(records, 256);

int on_sample(void *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = id;
    if (!python_procs.lookup(&pid))
        return 0;
    struct unwound_stack *st = unwind_user_stack(pid);
    if (!st)
        return 0;
    u32 native = st->len;
#ifndef NO_PYTHON
    python_append(pid, tid, st);
#endif
    struct walk_record *r = records.ringbuf_reserve(sizeof(struct walk_record));
    if (!r)
        return 0;
    r->pid = pid;
    r->tid = tid;
    r->fsbase = 0;
    void *task = (void *)bpf_get_current_task();
    bpf_probe_read_kernel(&r->fsbase, sizeof(r->fsbase), task + TASK_FSBASE_OFFSET);
    r->native_len = native;
    r->len = st->len;
    r->flags = st->flags;
    r->pad = 0;
    __builtin_memcpy(r->ips, st->ips, sizeof(r->ips));
    records.ringbuf_submit(r, 0);
    return 0;
}

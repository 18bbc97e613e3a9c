/* Python frames of CPython 3.8-3.14, walked in BPF and appended to a user
 * stack that unwind.h walked.
 *
 * Natively a Python program profiles as _PyEval_EvalFrameDefault and hex
 * addresses: the functions are in the interpreter's frame chain, not in the
 * machine stack. For a process user space marked as CPython (python_procs:
 * where its _PyRuntime is, which layout its version has), python_append()
 * finds the current thread's PyThreadState, follows its frames from the
 * innermost out, and appends one tagged u64 per Python frame after the
 * native frames in struct unwound_stack.ips:
 *
 *   bit 63      PY_FRAME: a Python frame (a user address never has it)
 *   bit 62      PY_ENTRY: the outermost Python frame of one C-level
 *               _PyEval_EvalFrameDefault activation (<=3.10: every frame;
 *               3.11: is_entry; 3.12+: the frame below a C-stack shim, and
 *               the last one), so user space can splice each group in place
 *               of the matching native _PyEval_EvalFrameDefault frame
 *   bits 48-61  the instruction offset in code units, saturated at 0x3fff
 *   bits 0-47   the code object's address (3.14's tag bits cleared)
 *
 * The thread state is the one whose thread_id is the thread's pthread_self(),
 * on x86-64 its FS base: read from the task at TASK_FSBASE_OFFSET, a -D
 * define user space computes from the running kernel's BTF
 * (agent/unwind/taskbtf.py); the headers BCC compiles with may be another
 * kernel's. A thread's state is found once by walking the interpreter's
 * thread list (at most PY_MAX_THREADS) and cached per thread; the cached
 * one is used only while its thread_id still matches.
 *
 * Offsets come from symbolizer/cpython's WalkLayout, one struct py_layout
 * per version in python_layouts (agent/unwind/pyframes.py packs it). Wrong
 * offsets cannot make the walk unbounded or unsafe, only fruitless: every
 * read is a bpf_probe_read_user that may fail, and with py_proc.code_type
 * set, a frame whose code object is not a PyCode_Type object discards the
 * Python frames of the walk (PSTAT_BAD_CODE).
 *
 * Include after unwind.h (struct unwound_stack). Options (-D):
 * TASK_FSBASE_OFFSET (required), PY_MAX_FRAMES (frames followed per walk,
 * shims included), PY_MAX_THREADS, PY_PROCS, PY_LAYOUTS, PY_THREADS (cached
 * thread states). The Python frames share ips with the native ones: they
 * get the room the native walk left, and a chain that does not fit is
 * flagged STACK_PY_TRUNCATED like one longer than PY_MAX_FRAMES.
 *
 * A process that execs loses its python_procs entry in the exec tracepoint
 * (helpers.h, alloc.bpf.c) until user space has looked at the new image;
 * a process still marked meanwhile finds no thread state or no code objects
 * and counts it.
 *
 * New code objects: the first time a (process, code object) pair is
 * appended, it goes into `python_codes_seen` (an LRU hash) and onto the
 * `python_new_codes` queue, so user space reads the code object's name
 * while the process lives (Walker.python_codes). The pair is keyed by the
 * code object's mark as well as its address (one more read per frame looked
 * up): a code object freed during start-up can leave its address to a
 * function that runs for the rest of the process's life, which must be
 * sent and read too, not taken for the first one. It is also keyed by the
 * process entry's `generation`, which user space changes when it marks
 * a new image of the same pid, so an exec'd interpreter's code objects are
 * sent again. A full queue counts PSTAT_CODES_DROPPED and forgets the pair,
 * so a later sample sends it. A stack equal to the last one this CPU sent
 * for the process skips the lookups (PSTAT_CODES_SKIPPED): a spinning
 * thread costs one comparison per sample.
 *
 * Cost, measured by tests/bpf/test_python_walk.py on 3.8-3.14: 4.6-9.2 us
 * of BPF time per sample for a 21-frame chain (two reads per frame: the
 * frame's fields in one window, the code object's type). Sending new code
 * objects adds nothing measurable once a stack repeats (5.0-6.6 us on
 * 3.11/3.13 against 5.3-5.6 before, on a busy host); with the skips off,
 * its lookups added 2-4.7 us. In the real programs the verifier walks
 * ~250k more instructions with PYTHON_FRAMES (cpu.bpf.c 390k -> 642k;
 * offcpu, lock, alloc 660-667k; the limit is 1M), ~90k of them for
 * py_note_codes' loop.
 */
#ifndef BPFPROF_PYTHON_H
#define BPFPROF_PYTHON_H

#ifndef TASK_FSBASE_OFFSET
#error "TASK_FSBASE_OFFSET: offsetof(task_struct, thread.fsbase), from the kernel's BTF"
#endif
#ifndef PY_MAX_FRAMES
#define PY_MAX_FRAMES 128
#endif
#ifndef PY_MAX_THREADS
#define PY_MAX_THREADS 64
#endif
#ifndef PY_PROCS
#define PY_PROCS 4096
#endif
#ifndef PY_LAYOUTS
#define PY_LAYOUTS 16
#endif
#ifndef PY_THREADS
#define PY_THREADS 16384
#endif
#ifndef PY_CODES_SEEN
#define PY_CODES_SEEN 65536
#endif
#ifndef PY_CODES_QUEUE
#define PY_CODES_QUEUE 8192
#endif
#define PY_WINDOW 128  /* bytes of a frame read at once: every field the walk needs */
#define PY_NO_TSTATE_NS 1000000000ULL  /* a thread without a state is looked for again after this */

#define PY_FRAME (1ULL << 63)
#define PY_ENTRY (1ULL << 62)
#define PY_OFFSET_SHIFT 48
#define PY_OFFSET_MAX 0x3fffULL
#define PY_ADDR_MASK ((1ULL << 48) - 1)

/* struct unwound_stack.flags, beside unwind.h's STACK_* */
#define STACK_PYTHON 256        /* Python frames follow the native ones */
#define STACK_PY_TRUNCATED 512  /* the frame chain went on past PY_MAX_FRAMES or the room in ips */

/* instr_kind */
#define PY_INSTR_LASTI_BYTES 0  /* f_lasti counts bytes (3.8, 3.9) */
#define PY_INSTR_LASTI_UNITS 1  /* f_lasti counts code units (3.10) */
#define PY_INSTR_POINTER 2      /* a pointer into co_code_adaptive (3.11+) */

/* self-metrics, `python_stats` (agent.unwind.pyframes.PyStat) */
enum py_stat {
    PSTAT_STACKS = 0,     /* walks of a CPython thread */
    PSTAT_FRAMES = 1,     /* Python frames appended */
    PSTAT_TRUNCATED = 2,  /* chains longer than the limit or the room */
    PSTAT_NO_TSTATE = 3,  /* no thread state has this thread's FS base */
    PSTAT_READ_ERROR = 4, /* a read of the interpreter's memory failed */
    PSTAT_NO_LAYOUT = 5,  /* the process names a layout that is not loaded */
    PSTAT_BAD_CODE = 6,   /* a frame's code object is not one: its frames were dropped */
    PSTAT_CACHED = 7,     /* walks that used the cached thread state */
    PSTAT_SEARCHES = 8,   /* walks of the thread list (cache misses, retries of threads without one) */
    PSTAT_CODES_NEW = 9,  /* (process, code object) pairs queued for user space */
    PSTAT_CODES_DROPPED = 10, /* pairs not queued: the queue was full (sent again later) */
    PSTAT_CODES_SKIPPED = 11, /* stacks equal to this CPU's last one sent: no lookups */
    PSTAT_MAX = 12,
};

/* The C mirror of the walk fields of symbolizer/cpython's WalkLayout, in
 * its order (the host's code-object fields are not needed here). */
struct py_layout {
    s32 runtime_interpreters_head;
    s32 interp_tstate_head;
    s32 tstate_next;
    s32 tstate_thread_id;
    s32 tstate_frame;
    s32 cframe_current_frame;
    s32 frame_previous;
    s32 frame_code;
    s32 code_tag_mask;
    s32 frame_instr;
    s32 instr_kind;
    s32 code_adaptive;
    s32 frame_owner;
    s32 owner_cstack;
    s32 frame_is_entry;
    s32 owner_skip_from;  /* owners >= this are no Python function's frame (3.12+), -1 otherwise */
    s32 code_filename;    /* PyCodeObject.co_filename: the code object's mark starts here */
};

struct py_proc {
    u64 runtime;    /* address of _PyRuntime in the process */
    u64 code_type;  /* address of PyCode_Type: checks each code object (0: unchecked) */
    u32 layout;     /* index in python_layouts */
    u32 flags;
    u32 generation; /* changed by user space for each new image of the pid */
    u32 pad;
};

/* A (process, code object) pair: key of python_codes_seen, value of the
 * python_new_codes queue. `mark` tells two code objects at one address
 * apart (py_code_mark), so a freed one's successor is sent too. */
struct py_code_ref {
    u32 pid;
    u32 generation;
    u64 code;
    u64 mark;
};

struct py_thread {
    u64 tstate;     /* 0: none found at `checked` */
    u64 checked;
};

/* The walk's state, in a per-CPU map value rather than on the stack: the
 * verifier then sees its fields as unknown numbers, so the states of one
 * frame-loop iteration match the next's and are pruned, instead of each
 * distinct length or hash making the 128 iterations explode. */
struct py_walk {
    u64 hash;
    u64 pending;    /* the last Python frame, written once its entry bit is known */
    u64 code_type;
    u32 len;        /* of out->ips */
    u32 frames;     /* Python frames written */
    u32 bad;        /* PSTAT_* that made the walk useless, or 0 */
    u32 size;       /* bytes of each frame read (py_window_size) */
    u64 sent_hash;  /* the last stack whose code objects were all sent, */
    u32 sent_pid;   /* of this process */
    u32 sent_gen;   /* and generation */
    u64 prev_code;  /* py_note_codes: the frame before's, skipped (recursion) */
    u32 dropped;    /* py_note_codes: pairs the full queue refused */
    u32 queued;     /* py_note_codes: pairs queued (python_wake) */
    u32 next;       /* py_note_codes: the index in ips looked at next */
    u8 b[PY_WINDOW * 2];  /* the frame read; room for any masked size or offset + 8 */
};

BPF_HASH(python_procs, u32, struct py_proc, PY_PROCS);
BPF_ARRAY(python_layouts, struct py_layout, PY_LAYOUTS);
BPF_TABLE("lru_hash", u32, struct py_thread, python_threads, PY_THREADS);
BPF_PERCPU_ARRAY(python_walks, struct py_walk, 1);
BPF_PERCPU_ARRAY(python_stats, u64, PSTAT_MAX);
BPF_TABLE("lru_hash", struct py_code_ref, u8, python_codes_seen, PY_CODES_SEEN);
BPF_QUEUE(python_new_codes, struct py_code_ref, PY_CODES_QUEUE);
/* One record (the count queued) per stack that queued code objects: a queue
 * wakes no one, and a short-lived process is gone by the time a poll that
 * timed out comes round to reading its code objects. The poll that takes
 * this ring returns at once, and its code objects are read then. */
BPF_RINGBUF_OUTPUT(python_wake, 1);

static __always_inline void py_count(int idx, u64 n)
{
    u64 *v = python_stats.lookup(&idx);
    if (v)
        *v += n;
}

/* *(u64 *)(base + off), 0 when unreadable (no PyObject lives at 0). */
static __always_inline u64 py_read_ptr(u64 base, s32 off)
{
    u64 v = 0;
    if (bpf_probe_read_user(&v, sizeof(v), (void *)(base + off)) != 0)
        return 0;
    return v;
}

/* A field of the frame window; `off` was checked against the window. */
static __always_inline u64 py_field(struct py_walk *w, s32 off)
{
    return *(u64 *)(w->b + ((u32)off & (PY_WINDOW - 1)));
}

/* The thread state whose thread_id is `fsbase`, among the first
 * PY_MAX_THREADS of the interpreter's list; 0 if none. */
static __always_inline u64 py_find_tstate(struct py_proc *proc, struct py_layout *l, u64 fsbase)
{
    u64 interp = py_read_ptr(proc->runtime, l->runtime_interpreters_head);
    u64 ts = interp ? py_read_ptr(interp, l->interp_tstate_head) : 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < PY_MAX_THREADS; i++) {
        if (ts == 0)
            break;
        if (py_read_ptr(ts, l->tstate_thread_id) == fsbase)
            return ts;
        ts = py_read_ptr(ts, l->tstate_next);
    }
    return 0;
}

/* The current thread's state: the cached one if it is still this thread's,
 * else searched for (a thread without one is searched for again only after
 * PY_NO_TSTATE_NS, so native threads of a Python process cost little). */
static __always_inline u64 py_tstate(u32 tid, struct py_proc *proc, struct py_layout *l)
{
    u64 fsbase = 0;
    void *task = (void *)bpf_get_current_task();
    if (bpf_probe_read_kernel(&fsbase, sizeof(fsbase), task + TASK_FSBASE_OFFSET) != 0 || !fsbase)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct py_thread *cached = python_threads.lookup(&tid);
    if (cached && cached->tstate && py_read_ptr(cached->tstate, l->tstate_thread_id) == fsbase) {
        py_count(PSTAT_CACHED, 1);
        return cached->tstate;
    }
    if (cached && !cached->tstate && now - cached->checked < PY_NO_TSTATE_NS)
        return 0;
    py_count(PSTAT_SEARCHES, 1);
    struct py_thread found = {.tstate = py_find_tstate(proc, l, fsbase), .checked = now};
    python_threads.update(&tid, &found);
    return found.tstate;
}

/* The innermost frame of a thread state; 3.11/3.12 go through _PyCFrame. */
static __always_inline u64 py_first_frame(u64 tstate, struct py_layout *l)
{
    u64 frame = py_read_ptr(tstate, l->tstate_frame);
    if (frame && l->cframe_current_frame >= 0)
        frame = py_read_ptr(frame, l->cframe_current_frame);
    return frame;
}

/* Bytes of a frame that hold every field read; 0 for a layout that is
 * none (past PY_WINDOW, fields missing or overlapping). */
static __always_inline u32 py_window_size(struct py_layout *l)
{
    s32 end = l->frame_previous + 8;
    if (l->frame_code + 8 > end)
        end = l->frame_code + 8;
    if (l->frame_instr + 8 > end)
        end = l->frame_instr + 8;
    if (l->frame_owner + 1 > end)
        end = l->frame_owner + 1;
    if (l->frame_is_entry + 1 > end)
        end = l->frame_is_entry + 1;
    if (l->frame_previous < 0 || l->frame_code < 0 || l->frame_instr < 0 || end > PY_WINDOW)
        return 0;
    if (l->frame_previous == l->frame_code || l->tstate_next == l->tstate_thread_id)
        return 0;  /* two pointers in one place: no layout (a slot never loaded is all zeros) */
    return end;
}

/* The instruction offset in code units, saturated to the 14 bits it gets;
 * 0 before the first instruction (f_lasti -1, prev_instr one unit before
 * the code). Unsigned arithmetic: BPF has no signed division. */
static __always_inline u64 py_offset(struct py_walk *w, struct py_layout *l, u64 code)
{
    u64 units;
    if (l->instr_kind == PY_INSTR_POINTER) {
        u64 start = code + l->code_adaptive, instr = py_field(w, l->frame_instr);
        if (instr < start)
            return 0;
        units = (instr - start) >> 1;
    } else {
        s32 lasti = (s32)py_field(w, l->frame_instr);
        if (lasti < 0)
            return 0;
        units = l->instr_kind == PY_INSTR_LASTI_BYTES ? (u32)lasti >> 1 : (u32)lasti;
    }
    return units > PY_OFFSET_MAX ? PY_OFFSET_MAX : units;
}

/* A frame of no Python function: the C stack's entry shim (3.12+), or
 * another owner past the function frames' (3.14's interpreter-owned). */
static __always_inline int py_is_shim(struct py_layout *l, u8 owner)
{
    if (l->owner_cstack >= 0 && owner == (u8)l->owner_cstack)
        return 1;
    return l->owner_skip_from >= 0 && owner >= (u8)l->owner_skip_from;
}

static __always_inline void py_flush(struct py_walk *st, struct unwound_stack *out)
{
    u32 len = st->len;
    if (!(st->pending & PY_FRAME) || len >= UNWIND_MAX_FRAMES)
        return;
    out->ips[len] = st->pending;
    st->len = len + 1;
    st->frames++;
    st->hash = (st->hash ^ st->pending) * 0x100000001b3ULL;
    st->pending = 0;
}

/* One frame: a shim marks the frame before it as an entry; a Python frame
 * becomes the pending one. Returns the previous frame (0: the end). */
static __always_inline u64 py_frame(struct py_walk *st, struct unwound_stack *out,
                                    struct py_layout *l, u64 frame)
{
    if (bpf_probe_read_user(st->b, st->size & (PY_WINDOW * 2 - 1), (void *)frame) != 0) {
        st->bad = PSTAT_READ_ERROR;
        return 0;
    }
    u64 previous = py_field(st, l->frame_previous);
    if (l->frame_owner >= 0 && py_is_shim(l, (u8)py_field(st, l->frame_owner))) {
        if (st->pending)
            st->pending |= PY_ENTRY;  /* the frame below a shim: one C activation ends */
        return previous;
    }
    u64 code = py_field(st, l->frame_code) & ~(u64)(u32)l->code_tag_mask;
    if (st->code_type && (!code || py_read_ptr(code, 8) != st->code_type)) {
        st->bad = PSTAT_BAD_CODE;
        return 0;
    }
    py_flush(st, out);
    u64 entry = PY_FRAME | (py_offset(st, l, code) << PY_OFFSET_SHIFT) | (code & PY_ADDR_MASK);
    if (l->frame_is_entry >= 0 ? (u8)py_field(st, l->frame_is_entry) : l->frame_owner < 0)
        entry |= PY_ENTRY;
    st->pending = entry;
    return previous;
}

/* Follow the chain from `frame`, at most PY_MAX_FRAMES frames. */
static __always_inline void py_walk_frames(struct py_walk *st, struct unwound_stack *out,
                                           struct py_layout *l, u64 frame)
{
#pragma clang loop unroll(disable)
    for (int i = 0; i < PY_MAX_FRAMES; i++) {
        if (!frame)
            break;
        frame = py_frame(st, out, l, frame);
        if (st->bad)
            return;
        if (st->len >= UNWIND_MAX_FRAMES)
            break;  /* no room left: the rest is truncated */
    }
    if (frame || (st->pending && st->len >= UNWIND_MAX_FRAMES)) {
        out->flags |= STACK_PY_TRUNCATED;  /* the last frame's entry bit is unknown */
        py_count(PSTAT_TRUNCATED, 1);
    } else if (st->pending) {
        st->pending |= PY_ENTRY;  /* the outermost frame ends the outermost activation */
    }
    py_flush(st, out);
}

/* A code object's mark: its three pointers from co_filename on (the file,
 * name and qualname strings from 3.11, file, name and line table before),
 * mixed into one u64; 0 when unreadable. A code object is immutable, so
 * its mark never changes; another code object that reuses its address
 * holds other string objects unless it has the same file and names. */
static __always_inline u64 py_code_mark(struct py_layout *l, u64 code)
{
    u64 m[3] = {};
    if (l->code_filename < 0 || bpf_probe_read_user(m, sizeof(m), (void *)(code + l->code_filename)) != 0)
        return 0;
    return m[0] ^ (m[1] * 0x9e3779b97f4a7c15ULL) ^ (m[2] * 0xc2b2ae3d27d4eb4fULL);
}

/* Queue the code objects of out->ips[first, len) that this process has not
 * sent yet (see the top of this file). */
static __always_inline void py_note_codes(struct py_walk *st, struct unwound_stack *out,
                                          struct py_layout *l, u32 pid, u32 gen, u32 first)
{
    if (st->sent_hash == out->hash && st->sent_pid == pid && st->sent_gen == gen) {
        py_count(PSTAT_CODES_SKIPPED, 1);
        return;
    }
    st->prev_code = 0;
    st->dropped = 0;
    st->queued = 0;
    st->next = first;
    u32 len = out->len;
    /* The index lives in the map value, read again each time: a local one
     * becomes a pointer increment the verifier cannot bound. */
#pragma clang loop unroll(disable)
    for (int j = 0; j < UNWIND_MAX_FRAMES; j++) {
        u32 i = st->next;
        if (i >= len || i >= UNWIND_MAX_FRAMES)
            break;
        st->next = i + 1;
        struct py_code_ref ref = {.pid = pid, .generation = gen, .code = out->ips[i] & PY_ADDR_MASK};
        if (ref.code == st->prev_code)
            continue;
        st->prev_code = ref.code;
        ref.mark = py_code_mark(l, ref.code);
        if (python_codes_seen.lookup(&ref))
            continue;
        u8 one = 1;
        if (python_codes_seen.insert(&ref, &one) != 0)
            continue;  /* another CPU inserted it meanwhile, and sends it */
        if (python_new_codes.push(&ref, 0) == 0) {
            py_count(PSTAT_CODES_NEW, 1);
            st->queued++;
        } else {
            python_codes_seen.delete(&ref);  /* not sent: a later sample tries again */
            py_count(PSTAT_CODES_DROPPED, 1);
            st->dropped = 1;
        }
    }
    if (st->queued) {
        u64 queued = st->queued;
        python_wake.ringbuf_output(&queued, sizeof(queued), 0);  /* full: one is pending */
    }
    if (!st->dropped) {
        st->sent_hash = out->hash;
        st->sent_pid = pid;
        st->sent_gen = gen;
    }
}

/* Append the current thread's Python frames to `out` (a stack of process
 * `pid`, thread `tid`, that unwind_user_stack produced). Nothing happens for
 * a process user space has not marked as CPython. */
static __always_inline void python_append(u32 pid, u32 tid, struct unwound_stack *out)
{
    struct py_proc *proc = python_procs.lookup(&pid);
    if (!proc || !out)
        return;
    py_count(PSTAT_STACKS, 1);
    u32 index = proc->layout;
    struct py_layout *l = python_layouts.lookup(&index);
    u32 size = l ? py_window_size(l) : 0;
    if (!l || !size || l->tstate_frame < 0) {
        py_count(PSTAT_NO_LAYOUT, 1);
        return;
    }
    u64 tstate = py_tstate(tid, proc, l);
    if (!tstate) {
        py_count(PSTAT_NO_TSTATE, 1);
        return;
    }
    int zero = 0;
    struct py_walk *st = python_walks.lookup(&zero);
    if (!st)
        return;
    st->hash = out->hash;
    st->pending = 0;
    st->code_type = proc->code_type;
    st->len = out->len;
    st->frames = 0;
    st->size = size;
    st->bad = 0;
    py_walk_frames(st, out, l, py_first_frame(tstate, l));
    if (st->bad) {
        py_count(st->bad, 1);  /* the frames appended so far are not kept */
        out->flags &= ~STACK_PY_TRUNCATED;
        return;
    }
    if (st->frames) {
        u32 first = out->len;
        out->len = st->len;
        if (!(out->flags & STACK_DEFERRED))  /* a deferred stack keeps its raw record's name */
            out->hash = st->hash ^ st->len;
        out->flags |= STACK_PYTHON;
        py_count(PSTAT_FRAMES, st->frames);
        py_note_codes(st, out, l, pid, proc->generation, first);
    }
}

#endif

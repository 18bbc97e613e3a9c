/* Whole user stacks without frame pointers: a DWARF CFI walker in BPF.
 *
 * User space (agent/unwind) turns each binary's .eh_frame/.debug_frame into
 * sorted 12-byte rows (struct unwind_row), loads them once per build ID into
 * `unwind_rows`, and gives each process a sorted list of its executable
 * mappings (struct unwind_proc in `unwind_procs`): address range -> the
 * binary's rows and where its table's first address is loaded.
 *
 * unwind_user_stack() then walks from the task's user registers: find the
 * mapping of the PC, binary-search its rows, compute the CFA, read the return
 * address (always at CFA-8 on x86-64) and the saved RBP, repeat. A PC with
 * no rows (a gap between FDEs, a binary without CFI, JIT code, a process not
 * loaded yet) is unwound with frame pointers instead, so a stack mixes both.
 *
 * The frame loop and the two binary searches are bounded loops (BCC 0.26
 * cannot relocate a bpf_loop() callback).
 *
 * BCC rewrites map calls in the main file only: agent/kernel/bcc_loader.py
 * pastes this header into the program text before compiling it.
 *
 * A process whose tables user space has not loaded yet (its first
 * milliseconds, or a short-lived child), or whose walk meets a PC in a
 * mapping it was not told of (loaded at exec, before ld.so mapped libc; a
 * dlopen), is walked with frame pointers only there, which in code without
 * them stops. With UNWIND_RAW, such a sample also sends its registers and the top pages of its stack to user
 * space (`unwind_raw` ring buffer), and its stack is marked STACK_DEFERRED
 * with a hash of its own: once the tables are there, user space walks the
 * copy with the same rows (agent/unwind/rawwalk.py) and replaces the
 * frame-pointer stack by the whole one.
 *
 * Options (-D): UNWIND_MAX_FRAMES (<= 127), UNWIND_ROWS (size of the rows
 * array), UNWIND_PROCS (processes with tables), UNWIND_MAPPINGS (per process,
 * a power of two); UNWIND_RAW, UNWIND_RAW_PAGES (stack pages copied, from
 * the one holding RSP), UNWIND_RAW_RING (pages of the ring buffer, a power
 * of two), UNWIND_RAW_BUDGET (raw stacks per process until it is (re)loaded).
 */
#ifndef BPFPROF_UNWIND_H
#define BPFPROF_UNWIND_H

#ifndef UNWIND_MAX_FRAMES
#define UNWIND_MAX_FRAMES 127
#endif
#ifndef UNWIND_ROWS
#define UNWIND_ROWS 1048576
#endif
#ifndef UNWIND_PROCS
#define UNWIND_PROCS 4096
#endif
#ifndef UNWIND_MAPS
#define UNWIND_MAPS 65536
#endif
/* iterations of the binary searches: enough for 2^24 rows in one binary
 * and 2^12 executable mappings in one process */
#define UNWIND_ROW_STEPS 24
#define UNWIND_MAP_STEPS 12

/* cfa_type (agent/unwind/rows.py) */
#define CFA_NONE 0
#define CFA_RSP 1
#define CFA_RBP 2
#define CFA_PLT 3
#define CFA_SIGNAL 4
#define CFA_END 5
#define CFA_UNSUPPORTED 6
/* rbp_type */
#define RBP_SAME 0
#define RBP_AT_CFA 1
#define RBP_AT_RSP 2

/* struct unwound_stack.flags (agent/unwind/layout.py) */
#define STACK_TRUNCATED 1   /* the root is missing: deeper than UNWIND_MAX_FRAMES, or the
                             * walk met an impossible return address (unwind_impossible) */
#define STACK_COMPLETE 2    /* reached a frame whose CFI says it is the outermost */
#define STACK_FP_USED 4     /* at least one frame was unwound with frame pointers */
#define STACK_READ_ERROR 8  /* a saved register could not be read */
#define STACK_UNSUPPORTED 16 /* CFI of a form the walker does not follow */
#define STACK_NEW_MAPPING 32 /* a PC in none of the process's known mappings (dlopen) */
#define STACK_DEFERRED 64   /* walked with frame pointers only, its raw stack sent to user
                             * space (UNWIND_RAW): `hash` names the unwind_raw record */

/* self-metrics of the walker, `unwind_stats` (agent.unwind.layout.UnwindStat) */
enum unwind_stat {
    USTAT_STACKS = 0,      /* user stacks walked */
    USTAT_FRAMES = 1,      /* frames produced */
    USTAT_TRUNCATED = 2,   /* stacks deeper than the limit or cut at an impossible address */
    USTAT_NO_PROC = 3,     /* stacks of processes with no tables loaded (yet) */
    USTAT_FP_FRAMES = 4,   /* frames unwound with frame pointers */
    USTAT_READ_ERROR = 5,
    USTAT_UNSUPPORTED = 6,
    USTAT_NO_REGS = 7,     /* no user registers: a kernel thread */
    USTAT_RAW = 8,         /* raw stacks sent to user space (UNWIND_RAW) */
    USTAT_RAW_LOST = 9,    /* raw stacks not sent: ring buffer full */
    USTAT_RAW_CAPPED = 10, /* raw stacks not sent: the process used its budget */
    USTAT_NEW_STACKS = 11, /* ustacks buckets taken (ustacks.h): how full the maps are */
    USTAT_MAX = 12,
};

struct unwind_row {
    u32 pc;          /* address - the table's base address */
    s32 cfa_offset;
    s16 rbp_offset;
    u8 cfa_type;
    u8 rbp_type;
};

struct unwind_mapping {
    u64 start;       /* [start, end): runtime addresses */
    u64 end;
    u64 base;        /* runtime address of the table's base address */
    u32 first_row;   /* index in unwind_rows */
    u32 row_count;   /* 0: no CFI, frame pointers only */
};

/* A process's mappings are unwind_maps[first_map, first_map + map_count),
 * sorted by start. */
struct unwind_proc {
    u32 first_map;
    u32 map_count;
};

struct unwound_stack {
    u64 hash;        /* of the frames: what sharing and dedup go by */
    u32 len;
    u32 flags;       /* STACK_* */
    u64 ips[UNWIND_MAX_FRAMES];
};

BPF_ARRAY(unwind_rows, struct unwind_row, UNWIND_ROWS);
BPF_ARRAY(unwind_maps, struct unwind_mapping, UNWIND_MAPS);
BPF_HASH(unwind_procs, u32, struct unwind_proc, UNWIND_PROCS);
BPF_PERCPU_ARRAY(unwind_scratch, struct unwound_stack, 1);
BPF_PERCPU_ARRAY(unwind_stats, u64, USTAT_MAX);
/* When each process last asked user space to read its maps again. */
BPF_TABLE("lru_hash", u32, u64, unwind_refreshed, UNWIND_PROCS);
#define UNWIND_REFRESH_NS 2000000000ULL

struct unwind_state {
    u64 pc, sp, bp;
    u64 hash;
    u32 len;
    u32 flags;
    u32 first_map;  /* the process's mappings (map_count 0: none loaded) */
    u32 map_count;
    u32 exact;   /* pc is not a return address (leaf, or after a signal frame) */
    u32 pad;
    struct unwound_stack *out;
};

static __always_inline void unwind_count(int idx, u64 n)
{
    u64 *v = unwind_stats.lookup(&idx);
    if (v)
        *v += n;
}

/* The mapping holding `pc` among the process's sorted mappings. Indices are
 * map keys, not pointer offsets, so the verifier need not track their
 * values: each search step is verified once per frame, not once per value. */
static __always_inline struct unwind_mapping *unwind_find_mapping(u32 first, u32 count, u64 pc)
{
    u32 lo = first, hi = first + count;
    struct unwind_mapping *m = unwind_maps.lookup(&lo);
    if (!m || pc < m->start || count == 0)
        return NULL;
#pragma clang loop unroll(disable)
    for (int i = 0; i < UNWIND_MAP_STEPS; i++) {
        if (hi - lo <= 1)
            break;
        u32 mid = lo + (hi - lo) / 2;
        m = unwind_maps.lookup(&mid);
        if (!m)
            return NULL;
        if (m->start <= pc)
            lo = mid;
        else
            hi = mid;
    }
    m = unwind_maps.lookup(&lo);
    return m && pc < m->end ? m : NULL;
}

/* The last row at or below `rel` among rows [first, first + count). */
static __always_inline struct unwind_row *unwind_find_row(u32 first, u32 count, u64 rel)
{
    u32 lo = first, hi = first + count;
    struct unwind_row *row = unwind_rows.lookup(&lo);
    if (!row || rel < row->pc || count == 0)
        return NULL;
#pragma clang loop unroll(disable)
    for (int i = 0; i < UNWIND_ROW_STEPS; i++) {
        if (hi - lo <= 1)
            break;
        u32 mid = lo + (hi - lo) / 2;
        row = unwind_rows.lookup(&mid);
        if (!row)
            return NULL;
        if (row->pc <= rel)
            lo = mid;
        else
            hi = mid;
    }
    return unwind_rows.lookup(&lo);
}

/* One frame with frame pointers: [bp] is the caller's bp, [bp+8] the return
 * address. A frame pointer below the stack pointer is not one. */
static __always_inline int unwind_fp(struct unwind_state *st)
{
    u64 saved[2];
    if (st->bp == 0 || st->bp < st->sp)
        return 0;
    if (bpf_probe_read_user(saved, sizeof(saved), (void *)st->bp) != 0) {
        st->flags |= STACK_READ_ERROR;
        return 0;
    }
    st->flags |= STACK_FP_USED;
    unwind_count(USTAT_FP_FRAMES, 1);
    st->sp = st->bp + 16;
    st->bp = saved[0];
    st->pc = saved[1];
    st->exact = 0;
    return 1;
}

/* The caller's registers from a signal frame: the kernel pushed a ucontext
 * whose saved RSP is at RSP+off and RIP right after it. */
static __always_inline int unwind_signal(struct unwind_state *st, struct unwind_row *row)
{
    u64 sp_ip[2];
    if (bpf_probe_read_user(sp_ip, sizeof(sp_ip), (void *)(st->sp + row->cfa_offset)) != 0)
        goto fail;
    if (row->rbp_type == RBP_AT_RSP &&
        bpf_probe_read_user(&st->bp, sizeof(st->bp), (void *)(st->sp + row->rbp_offset)) != 0)
        goto fail;
    st->sp = sp_ip[0];
    st->pc = sp_ip[1];
    st->exact = 1;  /* the interrupted instruction itself, not a return address */
    return 1;
fail:
    st->flags |= STACK_READ_ERROR;
    return 0;
}

/* The row in force at the current PC; NULL where there is none. */
static __always_inline struct unwind_row *unwind_lookup(struct unwind_state *st)
{
    /* A return address may point past the end of its caller (a call to a
     * noreturn function ends it): look up the call instruction instead. */
    u64 pc = st->pc - 1 + st->exact;
    struct unwind_mapping *m = unwind_find_mapping(st->first_map, st->map_count, pc);
    if (!m && st->map_count)
        st->flags |= STACK_NEW_MAPPING;
    if (!m || m->row_count == 0 || pc < m->base || pc - m->base > 0xffffffffULL)
        return NULL;
    return unwind_find_row(m->first_row, m->row_count, pc - m->base);
}

/* Replace (pc, sp, bp) by the caller's. 0: the walk ends here. */
static __always_inline int unwind_frame(struct unwind_state *st)
{
    struct unwind_row *row = unwind_lookup(st);
    u8 type = row ? row->cfa_type : CFA_NONE;
    if (type == CFA_NONE)
        return unwind_fp(st);
    u64 cfa;
    switch (type) {
    case CFA_RSP:
        cfa = st->sp + row->cfa_offset;
        break;
    case CFA_RBP:
        cfa = st->bp + row->cfa_offset;
        break;
    case CFA_PLT:
        cfa = st->sp + 8 + (((st->pc & 15) >= row->cfa_offset) ? 8 : 0);
        break;
    case CFA_SIGNAL:
        return unwind_signal(st, row);
    case CFA_END:
        st->flags |= STACK_COMPLETE;
        return 0;
    default:
        st->flags |= STACK_UNSUPPORTED;
        return 0;
    }
    u64 ra;
    if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8)) != 0)
        goto fail;
    if (row->rbp_type == RBP_AT_CFA &&
        bpf_probe_read_user(&st->bp, sizeof(st->bp), (void *)(cfa + row->rbp_offset)) != 0)
        goto fail;
    st->sp = cfa;
    st->pc = ra;
    st->exact = 0;
    return 1;
fail:
    st->flags |= STACK_READ_ERROR;
    return 0;
}

/* Lowest and highest address a user return address can have on x86-64: no
 * code is ever mapped in the first page (mmap_min_addr), and user space ends
 * at 0x00007fffffffffff with 4-level paging (5-level paging gives a process
 * more only if it asks mmap for it with a hint, which no loader does). */
#define UNWIND_MIN_PC 4096ULL
#define UNWIND_MAX_PC 0x00007fffffffffffULL

/* A "return address" no code can be at: what a corrupted or foreign frame
 * gives (0x1, 0x7fffffffffffffff, a kernel or non-canonical address; 0.4 %
 * of samples on real programs). The walk stops before it and the stack is
 * marked truncated: its outer frames are unknown, not an address. 0 is not
 * here: it is how frame-pointer chains and some CFI end a stack. */
static __always_inline int unwind_impossible(u64 pc)
{
    return pc != 0 && (pc < UNWIND_MIN_PC || pc > UNWIND_MAX_PC);
}

static __always_inline int unwind_step(struct unwind_state *st)
{
    struct unwound_stack *out = st->out;
    u32 len = st->len;
    if (!out || len >= UNWIND_MAX_FRAMES)
        return 1;
    out->ips[len] = st->pc;
    st->len = len + 1;
    st->hash = (st->hash ^ st->pc) * 0x100000001b3ULL;
    if (!unwind_frame(st) || st->pc == 0)
        return 1;
    if (unwind_impossible(st->pc)) {
        st->flags |= STACK_TRUNCATED;
        return 1;
    }
    if (st->len >= UNWIND_MAX_FRAMES) {
        st->flags |= STACK_TRUNCATED;  /* a caller exists that has no room */
        return 1;
    }
    return 0;
}

#ifdef UNWIND_RAW
#ifndef UNWIND_RAW_PAGES
#define UNWIND_RAW_PAGES 4
#endif
#ifndef UNWIND_RAW_RING
#define UNWIND_RAW_RING 512
#endif
#ifndef UNWIND_RAW_BUDGET
#define UNWIND_RAW_BUDGET 256
#endif
#define UNWIND_PAGE 4096

/* A sample's user registers and the stack above them (agent.unwind.layout
 * RAW_HEADER): data[] holds `pages` pages from `base`, the page of sp. */
struct unwind_raw_stack {
    u64 hash;     /* the STACK_DEFERRED stack's hash: what user space finds it by */
    u64 ip, sp, bp;
    u64 base;
    u32 pid;
    u32 pages;
    u8 data[UNWIND_RAW_PAGES * UNWIND_PAGE];
};

BPF_RINGBUF_OUTPUT(unwind_raw, UNWIND_RAW_RING);
/* Raw stacks each process sent since user space last loaded it: a process
 * that cannot be loaded (gone, no room) stops costing copies at the budget. */
BPF_TABLE("lru_hash", u32, u32, unwind_raw_sent, UNWIND_PROCS);

/* Send the raw stack of a sample walked without tables; mark `out` deferred
 * under a hash no walked stack has (each such sample is its own stack). */
static __always_inline void unwind_keep_raw(u32 pid, struct unwind_regs *regs,
                                            struct unwound_stack *out)
{
    u32 *sent = unwind_raw_sent.lookup(&pid);
    if (sent && *sent >= UNWIND_RAW_BUDGET) {
        unwind_count(USTAT_RAW_CAPPED, 1);
        return;
    }
    struct unwind_raw_stack *rec = unwind_raw.ringbuf_reserve(sizeof(struct unwind_raw_stack));
    if (!rec) {
        unwind_count(USTAT_RAW_LOST, 1);
        return;
    }
    u64 base = regs->sp & ~(u64)(UNWIND_PAGE - 1);
    u32 pages = 0;
    /* Page by page: the stack's top is near, and a read crossing it fails whole. */
#pragma unroll
    for (int i = 0; i < UNWIND_RAW_PAGES; i++) {
        if (bpf_probe_read_user(rec->data + i * UNWIND_PAGE, UNWIND_PAGE,
                                (void *)(base + i * UNWIND_PAGE)) != 0)
            break;
        pages = i + 1;
    }
    if (pages == 0) {
        unwind_raw.ringbuf_discard(rec, 0);
        return;
    }
    u64 token = ((bpf_ktime_get_ns() << 8) ^ bpf_get_smp_processor_id()) * 0x9e3779b97f4a7c15ULL;
    rec->hash = token;
    rec->ip = regs->ip;
    rec->sp = regs->sp;
    rec->bp = regs->bp;
    rec->base = base;
    rec->pid = pid;
    rec->pages = pages;
    unwind_raw.ringbuf_submit(rec, 0);
    out->hash = token;
    out->flags |= STACK_DEFERRED;
    u32 one = 1;
    if (sent)
        __sync_fetch_and_add(sent, 1);
    else
        unwind_raw_sent.update(&pid, &one);
    unwind_count(USTAT_RAW, 1);
}
#endif

/* The user stack of the current task into the per-CPU scratch buffer, leaf
 * first; returns it (len 0: no user stack, as for a kernel thread). Works in
 * any program type that may call bpf_task_pt_regs (perf events, tracepoints,
 * uprobes): the registers are the ones saved when the task entered the
 * kernel, so a sample taken in kernel mode still gets its user stack. */
static __always_inline struct unwound_stack *unwind_user_stack(u32 pid)
{
    int zero = 0;
    struct unwound_stack *out = unwind_scratch.lookup(&zero);
    if (!out)
        return NULL;
    out->len = 0;
    out->flags = 0;
    out->hash = 0;
    struct unwind_regs regs;
    struct task_struct *task = bpf_get_current_task_btf();
    void *pt = (void *)bpf_task_pt_regs(task);
    if (!pt || bpf_probe_read_kernel(&regs, sizeof(regs), pt) != 0 || (regs.cs & 3) != 3) {
        unwind_count(USTAT_NO_REGS, 1);
        return out;
    }
    struct unwind_state st = {
        .pc = regs.ip, .sp = regs.sp, .bp = regs.bp,
        .hash = 0xcbf29ce484222325ULL, .exact = 1, .out = out,
    };
    struct unwind_proc *proc = unwind_procs.lookup(&pid);
    if (proc) {
        st.first_map = proc->first_map;
        st.map_count = proc->map_count;
    } else {
        unwind_count(USTAT_NO_PROC, 1);  /* all frame pointers, until user space loads it */
    }
#pragma clang loop unroll(disable)
    for (int i = 0; i < UNWIND_MAX_FRAMES; i++) {
        if (unwind_step(&st))
            break;
    }
    out->len = st.len;
    out->flags = st.flags;
    out->hash = st.hash ^ st.len;
    unwind_count(USTAT_STACKS, 1);
    unwind_count(USTAT_FRAMES, st.len);
    if (st.flags & STACK_TRUNCATED)
        unwind_count(USTAT_TRUNCATED, 1);
    if (st.flags & STACK_READ_ERROR)
        unwind_count(USTAT_READ_ERROR, 1);
    if (st.flags & STACK_UNSUPPORTED)
        unwind_count(USTAT_UNSUPPORTED, 1);
#ifdef UNWIND_RAW
    /* Not loaded yet, or loaded before a mapping the walk met (the exec-time
     * load precedes ld.so mapping libc): the rows come, the copy waits. */
    if (!proc || (st.flags & STACK_NEW_MAPPING))
        unwind_keep_raw(pid, &regs, out);
#endif
    return out;
}

/* Whether to ask user space to read the process's maps again: the walk met
 * a PC in no mapping it was told of (a library loaded by dlopen after the
 * process was first seen, new JIT code). At most every UNWIND_REFRESH_NS
 * per process; each program sends the request in its own ring-buffer
 * record. */
static __always_inline int unwind_maps_stale(u32 pid, struct unwound_stack *st)
{
    if (!st || !(st->flags & STACK_NEW_MAPPING))
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 *last = unwind_refreshed.lookup(&pid);
    if (last && now - *last < UNWIND_REFRESH_NS)
        return 0;
    unwind_refreshed.update(&pid, &now);
    return 1;
}

#endif

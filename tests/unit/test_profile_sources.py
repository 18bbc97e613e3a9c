"""The pure parts of the off-CPU, lock and allocation sources: probe
placement, lock classification, flags, specs, and the allocation source's
bookkeeping fed with records built here (no BPF)."""

from __future__ import annotations

import ctypes
import io
import subprocess
from pathlib import Path

import pytest

from agent.config import BpfLimits, SourceOptions
from agent.kernel.layout import (
    ALLOC_EVENT_ALLOC,
    ALLOC_EVENT_EXEC,
    ALLOC_EVENT_EXIT,
    ALLOC_EVENT_FREE,
    ALLOC_EVENT_UNTRACKED,
    AllocEvent,
    AllocFreeEvent,
)
from agent.model import Frame, Location, RawKey, RawSample, RawStack
from agent.pipeline.builder import build_profile
from agent.record.recorder import summary
from agent.registry import create_source, spec_for
from agent.sources.alloc import AllocSource, alloc_cflags, executable_files
from agent.sources.allocators import find_entry_points
from agent.sources.lock import classify, is_contention, lock_cflags, lock_labels
from agent.sources.offcpu import offcpu_cflags
from agent.sources.probepoint import probe_offset
from agent.sources.sampling import scaled
from agent.sources.waits import common_cflags

PROGRAMS = Path(__file__).parent.parent / "programs"

# x86-64 prologues, as bytes (what objdump shows next to each line).
FREE = bytes.fromhex("4885ff0f84bf00000055488d77f053")  # test rdi,rdi; je; push rbp
MALLOC = bytes.fromhex("415455534889fb")  # push r12; push rbp; push rbx; mov rbx,rdi
CMP_THEN_PUSH = bytes.fromhex("803d01021400004154")  # cmp byte [rip+x],0; push r12
CLOBBER = bytes.fromhex("4889f755")  # mov rdi,rsi; push rbp
BRANCH = bytes.fromhex("4885f6740555")  # test rsi,rsi; je; push rbp
ENDBR = bytes.fromhex("f30f1efa55")  # endbr64; push rbp


@pytest.mark.parametrize(
    ("code", "registers", "null_check", "offset"),
    [
        (FREE, ("rdi",), True, 9),  # past the NULL check to the first push
        (FREE, ("rdi",), False, 0),  # a branch may skip the probe: stay at entry
        (MALLOC, ("rdi",), False, 0),  # push is emulated already
        (CMP_THEN_PUSH, ("rdi",), False, 7),
        (CLOBBER, ("rdi",), False, 0),  # rdi rewritten before the push
        (BRANCH, ("rdi",), True, 0),  # not a test of the first argument
        (ENDBR, ("rdi",), False, 4),
        (b"", ("rdi",), False, 0),
    ],
)
def test_probe_goes_to_the_first_emulated_instruction_that_is_safe(
    code: bytes, registers: tuple[str, ...], null_check: bool, offset: int
) -> None:
    assert probe_offset(code, registers, allow_null_check=null_check) == offset


@pytest.mark.parametrize(
    ("tag", "functions", "kind"),
    [
        ("mutex", ["__lll_lock_wait", "pthread_mutex_lock", "work"], "mutex"),
        ("wait", ["__futex_abstimed_wait_common", "pthread_cond_wait", "consumer"], "condvar"),
        ("wait", ["__futex_abstimed_wait_common", "__pthread_rwlock_wrlock_full"], "rwlock"),
        ("wait", ["syscall", "std::sys::sync::mutex::futex::Mutex::lock_contended"], "wait"),
        ("wait", ["__futex_abstimed_wait_common"], "wait"),
        ("mutex", [], "mutex"),
        ("kernel", ["pthread_cond_wait"], "kernel"),
        ("", [], "wait"),
        # names as the symbolizer gives them for Debian's libc, whole stacks
        (
            "wait",
            ["__futex_abstimed_wait_common", "pthread_cond_wait@@GLIBC_2.3.2", "idle_wait"],
            "condvar",
        ),
        (
            "mutex",
            ["__GI___lll_lock_wait", "__pthread_mutex_cond_lock", "pthread_cond_wait@@GLIBC_2.3.2"],
            "mutex",  # woken, then waiting to take the mutex back
        ),
    ],
)
def test_lock_kinds_come_from_the_stack_where_it_is_explicit(
    tag: str, functions: list[str], kind: str
) -> None:
    assert classify(tag, functions) == kind


def test_only_lock_waits_are_contention() -> None:
    assert [k for k in ("mutex", "rwlock", "kernel", "condvar", "wait") if is_contention(k)] == [
        "mutex",
        "rwlock",
        "kernel",
    ]


def key(tag: str = "", pid: int = 7, user: tuple[int, ...] = (0x10,)) -> RawKey:
    return RawKey(pid, pid, "t", RawStack(user=user), tag)


def test_lock_labels_drop_condition_variable_waits() -> None:
    cond = (Location(1, None, (Frame("pthread_cond_wait"),)),)
    assert lock_labels(key("wait"), cond) is None
    assert lock_labels(key("mutex"), ()) == {"lock_kind": "mutex"}


def test_flags_are_pure_functions_of_the_options() -> None:
    base = common_cflags(BpfLimits(), filter_pids=True, follow_forks=False, self_pid=42)
    assert "-DSELF_PID=42" in base and "-DFILTER_PIDS=1" in base
    assert "-DFOLLOW_FORKS=1" not in base
    assert offcpu_cflags(base, 250, 8)[-2:] == ["-DMIN_BLOCK_NS=250000", "-DMAX_WEIGHT=8"]
    assert offcpu_cflags(base, 0)[-1] == "-DMAX_WEIGHT=1"  # unsampled unless asked
    flags = lock_cflags(base, 3, 4, user=True, kernel=False)
    assert "-DMIN_WAIT_NS=3000" in flags and "-DUSER_LOCKS=1" in flags
    assert "-DMAX_WEIGHT=4" in flags and "-DKERNEL_LOCKS=1" not in flags
    assert "-DFUTEX_WAITV=1" not in flags and "-DFUTEX2_WAIT=1" not in flags
    futex2 = lock_cflags(base, 0, user=True, kernel=True, waitv=True, futex2=True)
    assert {"-DKERNEL_LOCKS=1", "-DFUTEX_WAITV=1", "-DFUTEX2_WAIT=1"} <= set(futex2)
    alloc = alloc_cflags(SourceOptions(alloc_rate=4096, alloc_inuse=False))
    assert "-DALLOC_RATE=4096" in alloc and "-DNO_INUSE=1" in alloc
    assert "-DFILTER_PIDS=1" in alloc
    assert "-DFILTER_PIDS=1" not in alloc_cflags(SourceOptions(all_processes=True))


def test_files_to_probe_come_from_maps() -> None:
    maps = (
        "5600-5700 r--p 00000000 08:01 11 /usr/bin/prog\n"
        "5700-5800 r-xp 00001000 08:01 11 /usr/bin/prog\n"
        "7f00-7f10 r-xp 00028000 08:01 12 /lib/libc.so.6\n"
        "7f20-7f30 r-xp 00000000 08:01 13 /lib/old.so (deleted)\n"
        "7ffd-7ffe r-xp 00000000 00:00 0 [vdso]\n"
    )
    assert executable_files(maps) == ["/usr/bin/prog", "/lib/libc.so.6", "/lib/old.so"]


def test_a_statically_linked_allocator_is_found_in_the_executable(tmp_path: Path) -> None:
    src = tmp_path / "myalloc.c"
    src.write_text(
        "#include <stddef.h>\n"
        "static char heap[1 << 20]; static size_t used;\n"
        "void *malloc(size_t n) { void *p = heap + used; used += (n + 15) & ~15UL; return p; }\n"
        "void free(void *p) { (void)p; }\n"
        'void *mi_malloc(size_t n) __attribute__((alias("malloc")));\n'
        "int main(void) { return malloc(8) == 0; }\n"
    )
    exe = tmp_path / "myalloc"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    with open(exe, "rb") as f:
        points = find_entry_points(str(exe), f)
    assert sorted((p.symbol, p.role) for p in points) == [("free", "free"), ("malloc", "malloc")]


def test_a_file_without_allocators_yields_nothing() -> None:
    from symbolizer.elf import ElfError

    with pytest.raises(ElfError):
        find_entry_points("x", io.BytesIO(b"not an elf file at all"))


def feed(source: AllocSource, record: ctypes.Structure) -> None:
    source._on_event(0, ctypes.addressof(record), ctypes.sizeof(record))


def alloc_record(pid: int, addr: int, size: int, kind: int = ALLOC_EVENT_ALLOC) -> AllocEvent:
    ev = AllocEvent(kind=kind, pid=pid, addr=addr, tid=pid, size=size, comm=b"prog")
    ev.ips[0], ev.ips[1] = 0x401000, 0x401100
    ev.stack_bytes = 16
    return ev


def test_alloc_source_scales_samples_and_keeps_the_live_heap() -> None:
    seen: list[int] = []
    source = AllocSource(SourceOptions(alloc_rate=1024))
    source._on_new = seen.append
    feed(source, alloc_record(7, 0xA0, 100))
    feed(source, alloc_record(7, 0xB0, 100))
    feed(source, alloc_record(7, 0xC0, 100, ALLOC_EVENT_UNTRACKED))
    feed(source, AllocFreeEvent(kind=ALLOC_EVENT_FREE, pid=7, addr=0xA0))
    feed(source, AllocFreeEvent(kind=ALLOC_EVENT_FREE, pid=7, addr=0xDEAD))  # not sampled
    objects, space = scaled(100, 1024)
    assert seen == [7]
    allocs = source._allocs
    (only,) = allocs.values()
    assert only.objects == pytest.approx(3 * objects) and only.space == pytest.approx(3 * space)
    live = dict(source._live)
    assert set(live) == {(7, 0xB0)}  # freed and untracked blocks are not live
    k, objs, bytes_ = live[(7, 0xB0)]
    assert k.stack.user == (0x401000, 0x401100) and k.comm == "prog"
    assert (objs, bytes_) == pytest.approx((objects, space))
    feed(source, AllocFreeEvent(kind=ALLOC_EVENT_EXIT, pid=7))
    assert source._live == {}


def test_a_failed_stack_is_kept_as_its_error() -> None:
    source = AllocSource(SourceOptions())
    ev = alloc_record(3, 0x10, 64)
    ev.stack_bytes = -14
    feed(source, ev)
    (k,) = source._allocs
    assert k.stack == RawStack(user_error=-14)


def test_specs_follow_the_contract() -> None:
    opts = SourceOptions(frequency=100, alloc_rate=4096)
    names = {t: [v.type for v in spec_for(t, opts).sample_types] for t in ("cpu", "offcpu")}
    assert names == {"cpu": ["samples", "cpu"], "offcpu": ["offcpu"]}
    alloc = spec_for("alloc", opts)
    assert [f"{v.type}/{v.unit}" for v in alloc.sample_types] == [
        "alloc_objects/count",
        "alloc_space/bytes",
        "inuse_objects/count",
        "inuse_space/bytes",
    ]
    assert alloc.period_type is not None and alloc.period_type.type == "space"
    assert alloc.period == 4096
    lock = spec_for("lock", opts)
    assert [f"{v.type}/{v.unit}" for v in lock.sample_types] == [
        "contentions/count",
        "delay/nanoseconds",
    ]
    assert lock.period == 1
    with pytest.raises(ValueError):
        spec_for("wall", opts)
    with pytest.raises(ValueError):
        create_source("wall", opts)


class Resolver:
    def locations(self, key: RawKey) -> tuple[Location, ...]:
        name = "pthread_cond_wait" if key.tag == "wait" else "work"
        return (Location(0x10, None, (Frame(name),)),)


def test_lock_profiles_leave_condition_waits_out_and_label_the_rest() -> None:
    samples = [RawSample(key("mutex"), (3, 3000)), RawSample(key("wait", pid=8), (1, 9999))]
    profile = build_profile(
        samples,
        spec_for("lock", SourceOptions()),
        Resolver(),  # type: ignore[arg-type]
        lambda k: "prog",
        time_nanos=0,
        duration_nanos=1,
    )
    assert [(s.values, s.labels["lock_kind"]) for s in profile.samples] == [((3, 3000), "mutex")]
    assert summary(profile) == "1 stacks (delay 3000 nanoseconds)"


@pytest.mark.parametrize("profile_type", ["cpu", "offcpu", "lock", "alloc"])
def test_every_type_has_a_source(profile_type: str) -> None:
    source = create_source(profile_type, SourceOptions())
    assert hasattr(source, "drain") and hasattr(source, "poll")


def test_what_a_process_held_at_its_exit_is_reported_once() -> None:
    """A leak is what a process still holds when it exits: the next
    live_heap() (record's end, the agent's interval) reports it, the one
    after that no longer does; a live process's heap stays."""
    source = AllocSource(SourceOptions(alloc_rate=1024))
    source._on_new = lambda pid: None
    feed(source, alloc_record(7, 0xA0, 100))
    feed(source, alloc_record(7, 0xB0, 100))
    feed(source, AllocFreeEvent(kind=ALLOC_EVENT_FREE, pid=7, addr=0xA0))
    feed(source, alloc_record(8, 0xA0, 300))
    feed(source, AllocFreeEvent(kind=ALLOC_EVENT_EXIT, pid=7))
    objects, space = scaled(100, 1024)
    objects8, space8 = scaled(300, 1024)
    heap = {s.key.pid: s.values for s in source._heap()}
    assert heap[7] == (0, 0, round(objects), round(space))  # 0xB0 leaked
    assert heap[8] == (0, 0, round(objects8), round(space8))  # still live
    assert {s.key.pid: s.values for s in source._heap()} == {8: heap[8]}


def test_an_exec_ends_the_old_programs_heap() -> None:
    source = AllocSource(SourceOptions(alloc_rate=1024))
    source._on_new = lambda pid: None
    feed(source, alloc_record(7, 0xA0, 100))
    feed(source, AllocFreeEvent(kind=ALLOC_EVENT_EXEC, pid=7))
    feed(source, AllocFreeEvent(kind=ALLOC_EVENT_FREE, pid=7, addr=0xA0))  # the new program's
    (only,) = source._heap()
    assert only.values[3] == round(scaled(100, 1024)[1])
    assert source._heap() == []

"""bpf/python.h, loaded for real on CPython children with known frame chains.

A test BPF program (programs/pywalk.bpf.c) samples the CPU clock and sends
each stack of a marked process, native frames then Python frames, to a
ring buffer. The child (programs/pychain.py) prints the addresses of its
functions' code objects and its threads' idents, then spins in its
innermost frames: the ground truth the Python frames are checked against.
The layout comes from symbolizer/cpython, the FS base offset from the
running kernel's BTF (agent/unwind/taskbtf.py), `_PyRuntime` from the ELF.

The module also holds the unit tests of the pure parts (the BTF reader,
the entry decoder, the layout packer): they need no root.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import bpf
from agent.unwind import pyframes, taskbtf
from agent.unwind.pyframes import PyFrame, PyStat
from symbolizer.budget import Budget
from symbolizer.cpython.code import read_code
from symbolizer.cpython.layout import WalkLayout, inspect_file
from symbolizer.cpython.memory import ProcessMemory
from symbolizer.elffile import ElfFile
from symbolizer.procmaps import parse_maps, read_maps
from tests.pyroots import install_script, python_in

PROGRAMS = Path(__file__).parent.parent / "programs"
PYTHON = Path("/usr/bin/python3.11")
PYENV = Path("/root/.pyenv/versions")
HZ = 499
SECONDS = 2.0
_INCLUDE = re.compile(r'^#include "([\w.]+)"$', re.MULTILINE)
NATIVE = ["-DUNWIND_ROWS=1024", "-DUNWIND_MAPS=64", "-DUNWIND_PROCS=64"]


# ---- unit tests: no root -------------------------------------------------


def btf_blob(types: list[bytes], strings: bytes) -> bytes:
    """A BTF blob from raw type records and a string section."""
    body = b"".join(types)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + body + strings


def struct_type(name_off: int, size: int, members: list[tuple[int, int, int]]) -> bytes:
    info = (taskbtf.KIND_STRUCT << 24) | len(members)
    return struct.pack("<III", name_off, info, size) + b"".join(
        struct.pack("<III", *m) for m in members
    )


def test_fsbase_offset_of_a_small_blob_follows_typedef_and_anonymous_union() -> None:
    # GIVEN types: 1 int, 2 thread_struct {int pad; union {long fsbase}} via
    # 3 anonymous union, 4 typedef thread_t -> 2, 5 task_struct {int a; thread_t thread @ 64 bytes}
    strings = b"\0int\0thread_struct\0fsbase\0thread_t\0task_struct\0thread\0pad\0a\0"
    at = {s: strings.index(s.encode() + b"\0") for s in strings.decode().split("\0")[1:-1]}
    types = [
        struct.pack("<IIII", at["int"], taskbtf.KIND_INT << 24, 8, 64),
        struct_type(at["thread_struct"], 24, [(at["pad"], 1, 0), (0, 3, 64)]),
        struct.pack("<III", 0, (taskbtf.KIND_UNION << 24) | 1, 8)
        + struct.pack("<III", at["fsbase"], 1, 0),
        struct.pack("<III", at["thread_t"], taskbtf.KIND_TYPEDEF << 24, 2),
        struct_type(at["task_struct"], 96, [(at["a"], 1, 0), (at["thread"], 4, 512)]),
    ]
    # THEN thread at 64 bytes + the union at 8 + fsbase at 0
    assert taskbtf.fsbase_offset(btf_blob(types, strings)) == 72


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "shorter than a BTF header"),
        (b"\x00" * 24, "not BTF"),
        (btf_blob([b"\x01\x00\x00"], b"\0"), "truncated"),
        (btf_blob([struct_type(0, 8, [(1, 0, 0)] * 5)[:20]], b"\0x\0"), "truncated"),
        (btf_blob([], b"\0"), "no struct task_struct"),
        (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 100, 0, 0), "past the end"),
    ],
)
def test_bad_btf_raises_btf_error(blob: bytes, message: str) -> None:
    with pytest.raises(taskbtf.BtfError, match=message):
        taskbtf.fsbase_offset(blob)


def test_running_kernel_btf_gives_an_offset_inside_task_struct() -> None:
    data = taskbtf.VMLINUX_BTF.read_bytes()
    types = taskbtf.parse_types(data)
    task = next(t for t in types if t and t.name == "task_struct" and t.members)
    offset = taskbtf.fsbase_offset(data)
    assert offset % 8 == 0 and 0 < offset < task.size_or_type
    assert taskbtf.read_fsbase_offset() == offset
    # a blob cut short of its string section is refused, not misread
    with pytest.raises(taskbtf.BtfError):
        taskbtf.fsbase_offset(data[: len(data) // 2])


def entry(code: int, offset: int, entry: bool) -> int:
    flag = pyframes.PY_ENTRY if entry else 0
    return pyframes.PY_FRAME | flag | (offset << pyframes.OFFSET_SHIFT) | code


def test_split_and_group_per_activation() -> None:
    ips = [
        0x401000,
        0x7F0000001234,
        entry(0xA0, 3, False),
        entry(0xB0, 0, True),
        entry(0xC0, 7, True),
    ]
    got = pyframes.split(ips)
    assert got.native == (0x401000, 0x7F0000001234)
    assert got.python == (PyFrame(0xA0, 3, False), PyFrame(0xB0, 0, True), PyFrame(0xC0, 7, True))
    groups = pyframes.activations(got.python)
    assert groups == [(PyFrame(0xA0, 3, False), PyFrame(0xB0, 0, True)), (PyFrame(0xC0, 7, True),)]
    # a truncated chain: the frames after the last entry form an open group
    assert pyframes.activations([PyFrame(1, 0, False)]) == [(PyFrame(1, 0, False),)]
    assert pyframes.split([1, 2]).python == ()
    assert got.python[2].byte_offset == 14


def test_a_native_frame_after_python_frames_is_refused() -> None:
    with pytest.raises(pyframes.PyStackError, match="not a Python frame"):
        pyframes.split([entry(0xA0, 0, True), 0x401000])


def test_pack_layout_takes_walk_fields_by_name() -> None:
    layout = inspect_file(PYTHON)
    assert layout is not None
    packed = pyframes.pack_layout(layout[1])
    assert packed.tstate_thread_id == layout[1].tstate_thread_id
    assert packed.frame_is_entry == layout[1].frame_is_entry
    with pytest.raises(ValueError, match="frame_code"):
        pyframes.pack_layout(replace(layout[1], frame_code=1 << 40))
    assert pyframes.python_cflags(3128, 64) == ["-DTASK_FSBASE_OFFSET=3128", "-DPY_MAX_FRAMES=64"]
    with pytest.raises(ValueError):
        pyframes.python_cflags(0)


# ---- BPF tests: root -------------------------------------------------------


RECORD_HEADER = struct.Struct("<IIQIIII")  # struct walk_record up to ips


@dataclass(frozen=True)
class WalkRecord:
    """struct walk_record of programs/pywalk.bpf.c, with its `len` ips."""

    pid: int
    tid: int
    fsbase: int
    native_len: int  # ips[:native_len] are native, the rest Python
    flags: int
    ips: tuple[int, ...]

    @classmethod
    def read(cls, address: int) -> WalkRecord:
        pid, tid, fsbase, native, n, flags, _ = RECORD_HEADER.unpack(
            ctypes.string_at(address, RECORD_HEADER.size)
        )
        ips = struct.unpack(f"<{n}Q", ctypes.string_at(address + RECORD_HEADER.size, 8 * n))
        return cls(pid, tid, fsbase, native, flags, ips)


def program_text() -> str:
    """pywalk.bpf.c with the shipped headers pasted in (BCC rewrites map
    calls only in the main file), as bpf.expanded() does for bpf/*.c."""
    seen: set[str] = set()

    def paste(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _INCLUDE.sub(paste, bpf.source(name))

    return _INCLUDE.sub(paste, (PROGRAMS / "pywalk.bpf.c").read_text())


@dataclass
class Child:
    proc: subprocess.Popen[str]
    truth: dict[str, dict[str, int]]
    binary: Path  # the interpreter, as this process sees it

    def code(self, name: str) -> int:
        return self.truth["codes"][name]

    def layout(self) -> WalkLayout:
        found = inspect_file(self.binary)
        assert found is not None
        return found[1]


def start_child(argv: list[str], binary: Path, *args: str) -> Child:
    proc = subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return Child(proc, json.loads(proc.stdout.readline()), binary)


def runtime_addresses(pid: int, binary: Path) -> tuple[int, int]:
    """_PyRuntime and PyCode_Type in the child: load bias + st_value."""
    found = inspect_file(binary)
    assert found is not None
    interp = found[0]
    with binary.open("rb") as f:
        low = min(s.vaddr for s in ElfFile(f, Budget()).segments()) & ~0xFFF
    inode = binary.stat().st_ino  # a chroot'ed child's maps name the file from its root
    first = min(
        (m for m in parse_maps(read_maps(pid)) if m.inode == inode and m.offset == 0),
        key=lambda m: m.start,
    )
    bias = first.start - low
    return bias + interp.runtime, bias + interp.code_type


@dataclass
class Walker:
    bpf: object
    records: list[WalkRecord]

    def stats(self) -> dict[PyStat, int]:
        table = self.bpf["python_stats"]  # type: ignore[index]
        return {s: sum(table[ctypes.c_int(s)]) for s in PyStat}

    def mark(self, child: Child, layout: object = None, index: int = 0) -> None:
        """Load `layout` (by default the child's) into slot 0 and point the
        child's entry at slot `index`."""
        pid = child.proc.pid
        runtime, code = runtime_addresses(pid, child.binary)
        layout = layout or child.layout()
        layouts = self.bpf["python_layouts"]  # type: ignore[index]
        packed = bytes(pyframes.pack_layout(layout))
        layouts[ctypes.c_int(0)] = layouts.Leaf.from_buffer_copy(packed)
        procs = self.bpf["python_procs"]  # type: ignore[index]
        entry = bytes(pyframes.pack_proc(runtime, code, index))
        procs[ctypes.c_uint32(pid)] = procs.Leaf.from_buffer_copy(entry)

    def collect(self, seconds: float, stop: Child | None = None) -> list[WalkRecord]:
        """The records of `seconds` of sampling. With `stop`, that child is
        stopped (SIGSTOP, every thread) before the last records are read, so
        a stats() read after this counts exactly the stacks returned: a
        child still running would be sampled between the two."""
        self.records.clear()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.bpf.ring_buffer_poll(100)  # type: ignore[attr-defined]
        if stop is not None:
            freeze(stop.proc.pid)
        self.bpf.ring_buffer_consume()  # type: ignore[attr-defined]
        return list(self.records)


def freeze(pid: int) -> None:
    """SIGSTOP `pid` and wait until each of its threads is stopped (state
    T in /proc/PID/task/TID/stat): no BPF program runs for it after that."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = [
            (Path(f"/proc/{pid}/task") / tid / "stat").read_text().rsplit(")", 1)[1].split()[0]
            for tid in os.listdir(f"/proc/{pid}/task")
        ]
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop: {states}")


def make_walker(
    *cflags: str, pid: int = -1, max_frames: int = pyframes.MAX_FRAMES, room: int = 127
) -> Generator[Walker, None, None]:
    """The test program, sampling every task (or only thread `pid`), with
    `room` frames in struct unwound_stack (UNWIND_MAX_FRAMES)."""
    from bcc import BPF, PerfSWConfig, PerfType  # test-only: the product loads through agent/

    offset = taskbtf.read_fsbase_offset()
    room_flag = f"-DUNWIND_MAX_FRAMES={room}"
    flags = [*pyframes.python_cflags(offset, max_frames), *NATIVE, room_flag, *cflags]
    b = BPF(text=program_text(), cflags=flags)
    walker = Walker(b, [])

    def on_record(_ctx: object, data: int, _size: int) -> None:
        walker.records.append(WalkRecord.read(data))

    b["records"].open_ring_buffer(on_record)
    b.attach_perf_event(
        ev_type=PerfType.SOFTWARE,
        ev_config=PerfSWConfig.CPU_CLOCK,
        fn_name="on_sample",
        sample_freq=HZ,
        pid=pid,
    )
    try:
        yield walker
    finally:
        b.cleanup()


@pytest.fixture(scope="module")
def walker() -> Iterator[Walker]:
    yield from make_walker()


def pyenv_home(version: str) -> Path:
    """A pyenv build of `version` (3.8-3.10, 3.12: the host has no Debian
    package of them); CPython is in its libpython, not in the executable."""
    for home in sorted(PYENV.glob(f"{version}.*")):
        if (home / f"lib/libpython{version}.so.1.0").is_file():
            return home
    pytest.skip(f"no pyenv build of CPython {version} with a shared libpython in {PYENV}")


@pytest.fixture
def child(request: pytest.FixtureRequest) -> Iterator[Callable[..., Child]]:
    """Start programs/pychain.py under a CPython version: the host's 3.11,
    or 3.13/3.14 chroot'ed in tests/pyroots.py's roots."""
    started: list[Child] = []

    def start(*args: str, version: str = "3.11") -> Child:
        script = str(PROGRAMS / "pychain.py")
        if version == "3.11":
            argv, binary = [str(PYTHON), script], PYTHON
        elif version in ("3.13", "3.14"):
            root = request.getfixturevalue("python_root")(version)
            script = install_script(root, (PROGRAMS / "pychain.py").read_text())
            argv, binary = [*python_in(root, version), script], root / f"usr/bin/python{version}"
        else:
            home = pyenv_home(version)
            argv = [str(home / f"bin/python{version}"), script]
            binary = home / f"lib/libpython{version}.so.1.0"
        c = start_child(argv, binary, *args)
        started.append(c)
        return c

    yield start
    for c in started:
        c.proc.kill()
        c.proc.wait()


def python_part(r: WalkRecord) -> tuple[PyFrame, ...]:
    return pyframes.split(r.ips).python


def chains(records: list[WalkRecord], child: Child) -> Counter[tuple[int, tuple[str, ...]]]:
    """How often each thread (by FS base) had each chain of function names."""
    names = {code: name for name, code in child.truth["codes"].items()}
    return Counter(
        (r.fsbase, tuple(names.get(f.code, hex(f.code)) for f in python_part(r)))
        for r in records
        if r.pid == child.proc.pid
    )


@pytest.mark.bpf
def test_python_mirror_matches_what_bcc_compiled(walker: Walker) -> None:
    b = walker.bpf
    for table, mirror in (("python_layouts", pyframes.PyLayout), ("python_procs", pyframes.PyProc)):
        leaf = b[table].Leaf  # type: ignore[index]
        assert ctypes.sizeof(leaf) == ctypes.sizeof(mirror), table
        for name, *_ in mirror._fields_:
            assert getattr(leaf, name).offset == getattr(mirror, name).offset, (table, name)
    assert len(b["python_stats"]) == len(PyStat)  # type: ignore[index]
    stack = b["unwind_scratch"].Leaf._type_  # type: ignore[index]  # per-CPU: an array of them
    assert stack.ips.offset == 16 and stack.ips.size == 8 * 127  # unwind.h's struct, unchanged


MAIN: tuple[str, ...] = ("inner", "middle", "outer", "<module>")
SECOND: tuple[str, ...] = ("beta", "alpha", "run", "_bootstrap_inner", "_bootstrap")
# Which frames start a C-level activation. Up to 3.10 every Python call is
# a C call of the eval loop. From 3.11 a Python-to-Python call stays in its
# caller's activation; <module> and Thread._bootstrap are called from C.
# Thread.run calls its target with CALL_FUNCTION_EX: through C in 3.11
# (alpha starts an activation), inlined in 3.12 and 3.13; in 3.14 the
# interpreter's shim sits between alpha and run again, so run ends one.
_EVERY = ((True,) * 4, (True,) * 5)
_INLINED = ((False, False, False, True), (False, False, False, False, True))
ENTRIES = {
    "3.8": _EVERY,
    "3.9": _EVERY,
    "3.10": _EVERY,
    "3.11": ((False, False, False, True), (False, True, False, False, True)),
    "3.12": _INLINED,
    "3.13": _INLINED,
    "3.14": ((False, False, False, True), (False, False, True, False, True)),
}


def source_line(text: str) -> int:
    """The line number of the line of programs/pychain.py that reads `text`."""
    lines = (PROGRAMS / "pychain.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip().startswith(text))


def assert_lines_of_main_chain(c: Child, records: list[WalkRecord], version: str) -> None:
    """The offsets BPF emitted give, through symbolizer/cpython's line
    tables, the lines each frame of the main chain is at: the spin loop in
    inner, and each caller's call line."""
    found = inspect_file(c.binary)
    assert found is not None
    interp, layout = found
    _, code_type = runtime_addresses(c.proc.pid, c.binary)
    mem = ProcessMemory(c.proc.pid)
    spin = {source_line("while time.monotonic() < END:  # a builtin"), source_line("n += 1")}
    calls = [source_line(t) for t in ("return inner()", "return middle()", "outer()")]
    names = {code: name for name, code in c.truth["codes"].items()}
    checked = 0
    for r in records:
        frames = python_part(r)
        if tuple(names.get(f.code) for f in frames) != MAIN:
            continue
        infos = [read_code(mem, layout, code_type, f.code) for f in frames]
        lines = [i.line(interp.version, f.byte_offset) for i, f in zip(infos, frames, strict=True)]
        assert lines[0] in spin and lines[1:] == calls, (version, lines)
        checked += 1
    assert checked >= 0.9 * len(records)


@pytest.mark.bpf
@pytest.mark.parametrize("version", list(ENTRIES))
def test_each_thread_gets_its_own_chain_with_entry_frames(
    walker: Walker, child: Callable[..., Child], version: str
) -> None:
    c = child("chain", str(SECONDS + 3), version=version)
    before = walker.stats()
    walker.mark(c)
    records = [r for r in walker.collect(SECONDS, stop=c) if r.pid == c.proc.pid]
    after = walker.stats()
    got = chains(records, c)
    threads = c.truth["threads"]
    for ident, chain in ((threads["main"], MAIN), (threads["second"], SECOND)):
        total = sum(n for (fs, _), n in got.items() if fs == ident)
        assert total >= 50, got  # enough samples for a 90% share to mean something
        assert got[(ident, chain)] / total >= 0.9, got
    assert {fs for fs, _ in got} == {threads["main"], threads["second"]}, "FS base != thread ident"
    entries = dict(zip((MAIN, SECOND), ENTRIES[version], strict=True))
    units = c.truth["units"]
    names = {code: name for name, code in c.truth["codes"].items()}
    for r in records:
        frames = python_part(r)
        seen = tuple(names.get(f.code, "?") for f in frames)
        if seen in entries:
            assert tuple(f.entry for f in frames) == entries[seen]
            assert all(0 < f.offset < units[n] for f, n in zip(frames, seen, strict=True)), frames
            assert r.flags & pyframes.STACK_PYTHON and not r.flags & pyframes.STACK_PY_TRUNCATED
            native = pyframes.split(r.ips).native
            assert r.native_len >= 1 and len(native) == r.native_len
    main_records = [r for r in records if r.fsbase == threads["main"]]
    assert_lines_of_main_chain(c, main_records[:50], version)
    delta = {s: after[s] - before[s] for s in PyStat}
    assert delta[PyStat.STACKS] == len(records)
    assert delta[PyStat.FRAMES] == sum(len(python_part(r)) for r in records)
    assert delta[PyStat.CACHED] >= len(records) - 4  # a search per thread, then the cache
    assert delta[PyStat.BAD_CODE] == delta[PyStat.READ_ERROR] == delta[PyStat.NO_TSTATE] == 0


@pytest.mark.bpf
@pytest.mark.parametrize(
    ("change", "counter"),
    [
        ({"index": 5}, PyStat.NO_LAYOUT),  # a slot never loaded
        ({"tstate_thread_id": 160}, PyStat.NO_TSTATE),  # no thread state matches
        ({"frame_code": 40}, PyStat.BAD_CODE),  # frame_obj: not a code object
        ({"frame_previous": 32}, PyStat.NO_LAYOUT),  # overlaps frame_code: no layout
        ({"frame_instr": 200}, PyStat.NO_LAYOUT),  # past the frame window
    ],
)
def test_a_wrong_layout_gives_no_frames_and_a_counted_error(
    walker: Walker, child: Callable[..., Child], change: dict[str, int], counter: PyStat
) -> None:
    c = child("chain", str(SECONDS + 3))
    fields = {k: v for k, v in change.items() if k != "index"}
    walker.mark(c, replace(c.layout(), **fields), change.get("index", 0))
    before = walker.stats()
    records = [r for r in walker.collect(SECONDS, stop=c) if r.pid == c.proc.pid]
    after = walker.stats()
    assert len(records) >= 50
    assert all(python_part(r) == () and not r.flags & pyframes.STACK_PYTHON for r in records)
    assert after[counter] - before[counter] >= len(records) * 0.9, (before, after)
    assert after[PyStat.FRAMES] == before[PyStat.FRAMES]


BPF_ENABLE_STATS, SYS_BPF = 32, 321  # x86_64


@contextmanager
def run_time_stats() -> Iterator[None]:
    """BPF run-time statistics on while inside (off again when the fd closes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    kind = ctypes.c_uint32(0)  # BPF_STATS_RUN_TIME
    fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(kind), ctypes.sizeof(kind))
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        os.close(fd)


def run_time(walker: Walker) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the sampling program, from its fdinfo."""
    fd = walker.bpf.funcs[b"on_sample"].fd  # type: ignore[attr-defined]
    info = Path(f"/proc/self/fdinfo/{fd}").read_text()
    fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
    return int(fields["run_time_ns"]), int(fields["run_cnt"])


def ns_per_sample(c: Child, *cflags: str) -> tuple[float, list[WalkRecord]]:
    """Mean BPF run time per sample of the child's main thread, and the records."""
    walkers = make_walker(*cflags, pid=c.proc.pid)
    walker = next(walkers)
    try:
        walker.mark(c)
        with run_time_stats():
            ns0, n0 = run_time(walker)
            records = walker.collect(SECONDS)
            ns1, n1 = run_time(walker)
        assert n1 - n0 >= 100, "too few samples to time"
        return (ns1 - ns0) / (n1 - n0), records
    finally:
        walkers.close()


@pytest.mark.bpf
@pytest.mark.parametrize("version", list(ENTRIES))
def test_a_20_deep_stack_is_walked_within_the_time_budget(
    child: Callable[..., Child], version: str
) -> None:
    depth = 20
    c = child("deep", str(2 * SECONDS + 10), str(depth), version=version)
    with_python, records = ns_per_sample(c)
    native_only, _ = ns_per_sample(c, "-DNO_PYTHON")
    got = chains(records, c)
    want = (*["deep"] * depth, "<module>")
    assert got[(c.truth["threads"]["main"], want)] / sum(got.values()) >= 0.9, got
    walk_ns = with_python - native_only
    print(
        f"{version}: BPF run time per sample: {with_python:.0f} ns with the Python walk of "
        f"{depth + 1} frames, {native_only:.0f} ns without: {walk_ns:.0f} ns for the walk"
    )
    assert walk_ns <= 15_000


@pytest.mark.bpf
@pytest.mark.parametrize(
    ("limits", "kept"),
    [
        ({"max_frames": 8}, 8),  # PY_MAX_FRAMES: frames followed
        ({"room": 12}, None),  # UNWIND_MAX_FRAMES: what the native walk left in ips
    ],
)
def test_a_chain_longer_than_the_limit_is_flagged_truncated(
    child: Callable[..., Child], limits: dict[str, int], kept: int | None
) -> None:
    c = child("deep", str(SECONDS + 8), "20")
    walkers = make_walker(pid=c.proc.pid, **limits)
    walker = next(walkers)
    try:
        walker.mark(c)
        records = walker.collect(SECONDS)
        stats = walker.stats()
    finally:
        walkers.close()
    deep = c.code("deep")
    assert len(records) >= 50
    cut = [r for r in records if {f.code for f in python_part(r)} == {deep}]
    assert len(cut) >= 0.9 * len(records)
    for r in cut:
        assert len(python_part(r)) == (kept or 12 - r.native_len) and len(r.ips) <= 12
        assert r.flags & pyframes.STACK_PY_TRUNCATED
        assert not any(f.entry for f in python_part(r))  # the chain's end was not seen
    assert stats[PyStat.TRUNCATED] >= len(cut)


@pytest.mark.bpf
def test_c_threads_get_no_python_frames_and_cost_one_search_per_second(
    walker: Walker, child: Callable[..., Child], tmp_path: Path
) -> None:
    """C threads in a Python process, as a native library runs them: one
    has no thread state (its samples count NO_TSTATE, and the thread list is
    searched for it again only once a second), the other has a state but no
    Python frame (found, and nothing appended)."""
    lib = tmp_path / "libspinthread.so"
    source = PROGRAMS / "spinthread.c"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-pthread", "-o", lib, source], check=True)
    c = child("native", str(SECONDS + 3), str(lib))
    before = walker.stats()
    walker.mark(c)
    records = [r for r in walker.collect(SECONDS, stop=c) if r.pid == c.proc.pid]
    after = walker.stats()
    delta = {s: after[s] - before[s] for s in PyStat}
    threads = c.truth["threads"]
    by_thread = {k: [r for r in records if r.fsbase == v] for k, v in threads.items()}
    assert all(len(got) >= 50 for got in by_thread.values()), {
        k: len(v) for k, v in by_thread.items()
    }
    for name in ("native", "native_state"):
        for r in by_thread[name]:
            assert python_part(r) == () and not r.flags & pyframes.STACK_PYTHON, r
    main = by_thread["main"]
    assert chains(main, c)[(threads["main"], MAIN)] >= 0.9 * len(main)
    assert delta[PyStat.NO_TSTATE] == len(by_thread["native"])
    assert delta[PyStat.FRAMES] == sum(len(python_part(r)) for r in main)
    # main and the C thread with a state: one search each; the other C
    # thread: one per PY_NO_TSTATE_NS (1 s) of the run
    assert delta[PyStat.SEARCHES] <= 2 + SECONDS + 1, delta
    print(f"{len(records)} samples, {delta[PyStat.SEARCHES]} thread-list searches")

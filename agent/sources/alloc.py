"""Allocation profiles from uprobes on the allocator (bpf/alloc.bpf.c).

The kernel samples allocations by bytes and sends each sampled one, with
its stack, through a ring buffer; frees of sampled blocks follow the same
way. Here each sample is scaled to the allocations it stands for
(agent/sources/sampling.py), summed per stack into alloc_* and remembered by address
for inuse_* until its free arrives. What a process still holds when it exits
(or when its program is replaced by an exec) is what leaked: it is moved
aside and reported by the next live_heap() (a recording's end, an agent's
interval), then forgotten.

Probes go only where they are asked for: into the target processes (uprobes
attached with their pid, so no other process takes a trap), or, with
`all_processes`, into the system's libc for everyone. A COMMAND's process
tree is followed (`follow_forks`) from its first instruction: its files are
probed for every process and the program counts only the tree's (`targets`,
which a fork joins in the kernel before the child runs). A process of the
tree that execs, or whose ld.so maps libraries (its `_dl_debug_state` hook:
program start, dlopen), is stopped by the program until the allocators in
the files it now maps are probed too, then continued. A `--pid` target's
dlopen'd allocators are probed the same way, without the stop (a few
milliseconds late).

User stacks are walked with CFI (agent/sources/unwinding.py, as for every
source) unless the options ask for frame pointers: a process's tables are
loaded when its first sampled allocation announces it, and again after an
exec or when the walker meets a library loaded later.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from agent.config import SourceOptions
from agent.errors import TargetError
from agent.kernel import sessions
from agent.kernel.layout import (
    ALLOC_EVENT_ALLOC,
    ALLOC_EVENT_EXEC,
    ALLOC_EVENT_EXIT,
    ALLOC_EVENT_FORK,
    ALLOC_EVENT_FREE,
    ALLOC_EVENT_MAPS_CHANGED,
    ALLOC_EVENT_UNTRACKED,
    AllocEvent,
    AllocFreeEvent,
    Counter,
)
from agent.kernel.loaded import BpfProgram
from agent.model import RawKey, RawSample, RawStack
from agent.sources.allocators import ROLES, EntryPoint, find_entry_points
from agent.sources.sampling import scaled
from agent.sources.unwinding import Walker, unwind_cflags, unwound_ips
from agent.unwind.needed import needed_libraries, preloaded
from symbolizer.cache import LruCache, file_key
from symbolizer.process import open_mapped_file
from symbolizer.procmaps import MapEntry, parse_maps
from symbolizer.safeopen import open_regular

log = logging.getLogger("bpfprof.alloc")

ALLOC_EVENT_LIBS = 8  # bpf/alloc.bpf.c: ld.so mapped libraries (_dl_debug_state)

PROGRAM = "alloc.bpf.c"
LIVE_ENTRIES = 1 << 18  # sampled blocks alive at once (a 512 KiB rate: 128 GiB live)
MIN_EVENT_PAGES = 2048  # 8 MiB of ring buffer: ~7000 samples between polls


# The one session program (bpf/alloc.bpf.c, UPROBE_SESSION), and the cookie
# (ROLE_*) its link on each allocator role with a return probe carries.
SESSION_PROGRAM = "s_alloc"
SESSION_ROLES = {
    "malloc": 0,
    "calloc": 1,
    "realloc": 2,
    "memalign": 3,
    "posix_memalign": 4,
}


def use_sessions(options: SourceOptions, kernel_has_them: bool) -> bool:
    """Uprobe sessions replace the uretprobes, which only the live heap needs."""
    return options.alloc_inuse and kernel_has_them


def alloc_cflags(
    options: SourceOptions, unwind: bool | None = None, sessions_on: bool = False
) -> list[str]:
    """The program's -D flags: a pure function of the options (`unwind`
    None: the walker if the options ask for it)."""
    limits = options.limits
    flags = [
        f"-DALLOC_RATE={options.alloc_rate}",
        f"-DLIVE_ENTRIES={LIVE_ENTRIES}",
        f"-DPENDING_ENTRIES={limits.target_entries * 4}",
        f"-DCOUNTDOWN_ENTRIES={limits.target_entries * 4}",
        f"-DTARGET_ENTRIES={limits.target_entries}",
        f"-DEVENT_PAGES={max(limits.event_pages, MIN_EVENT_PAGES)}",
    ]
    if not options.all_processes:
        flags.append("-DFILTER_PIDS=1")
        if options.follow_forks:
            flags.append("-DFOLLOW_FORKS=1")
    if not options.alloc_inuse:
        flags.append("-DNO_INUSE=1")
    if sessions_on:
        flags.append("-DUPROBE_SESSION=1")
    if options.unwind == "dwarf" if unwind is None else unwind:
        flags += unwind_cflags(limits)
    return flags


def executable_files(maps_text: str) -> list[str]:
    """The distinct files a process maps executable, from /proc/PID/maps."""
    out: list[str] = []
    for line in maps_text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "x" in parts[1] and parts[5].startswith("/"):
            path = parts[5].removesuffix(" (deleted)")
            if path not in out:
                out.append(path)
    return out


def command_files(argv0: str) -> list[str]:
    """The executable a COMMAND will run and the libraries it will load: the
    held child has not exec'd yet, so its own maps would show our image. A
    script runs its `#!` interpreter (through `env` too), as the kernel does;
    the libraries are found by ld.so's rules (agent/unwind/needed.py), its
    preloads first (an allocator is often preloaded)."""
    exe = shutil.which(argv0)
    if exe is None:
        raise TargetError(f"command not found: {argv0}")
    exe = os.path.realpath(exe)
    for _ in range(4):  # the kernel's limit on nested interpreters
        interpreter = script_interpreter(exe)
        if interpreter is None:
            break
        exe = interpreter
    return [exe, *needed_libraries(exe, preload=preloaded())]


def script_interpreter(path: str) -> str | None:
    """The real path of the interpreter a `#!` script names, or None when
    `path` is not a script (or names none we can find). A COMMAND's files
    are host paths the agent's own user named; still, only a regular file
    is read (a FIFO would block)."""
    try:
        with open_regular(path, nofollow=False) as f:
            head = f.readline(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].decode(errors="replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]  # env -S and the like
        found = shutil.which(words[0]) if words else None
    else:
        found = words[0] if words else None
    return os.path.realpath(found) if found and os.path.isfile(found) else None


def entry_points(files: Iterable[str]) -> list[EntryPoint]:
    """Allocator entry points in these files; unreadable ones are skipped."""
    out: list[EntryPoint] = []
    for name in files:
        # one file (ld.so's /lib/x/libc.so.6 is maps' /usr/lib/x/libc.so.6) is
        # read once, and probed once
        path = os.path.realpath(name)
        try:
            st = os.stat(path)
            out.extend(_file_entry_points(path, st.st_dev, st.st_ino, st.st_mtime_ns))
        except Exception as e:  # not ELF, truncated, vanished: nothing to probe there
            log.debug("no allocator probes in %s: %s", path, e)
    return out


@functools.lru_cache(maxsize=256)
def _file_entry_points(path: str, dev: int, ino: int, mtime_ns: int) -> tuple[EntryPoint, ...]:
    """One file's entry points, read once per version of the file: a followed
    command's children map the same libc (reading its symbols takes ~45 ms)."""
    with open_regular(path, nofollow=False) as f:
        return tuple(find_entry_points(path, f))


_mapped_cache: LruCache[tuple[EntryPoint, ...]] = LruCache(256)


def mapped_entry_points(pid: int, maps_text: str) -> list[EntryPoint]:
    """Allocator entry points in the files a process maps, by their mappings.

    The path in maps is not trusted (a chroot's owner can plant another
    file at it, or a FIFO): each file is opened with open_mapped (the
    kernel's /proc/PID/map_files handle first, the device and inode of the
    maps line checked), and probed by that map_files path, so the kernel
    attaches to the very inode mapped, whatever the path names by then.
    Each version of a file is read once, whichever process maps it."""
    out: list[EntryPoint] = []
    for entry in executable_mappings(maps_text):
        try:
            with open_mapped_file(pid, entry) as f:
                st = os.fstat(f.fileno())
                key = file_key(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                points = _mapped_cache.get(key)
                if points is None:
                    points = tuple(find_entry_points(entry.path, f))
                    _mapped_cache.put(key, points)
        except Exception as e:  # refused, not ELF, vanished: nothing to probe there
            log.debug("no allocator probes in %s of %d: %s", entry.path, pid, e)
            continue
        link = f"/proc/{pid}/map_files/{entry.start:x}-{entry.end:x}"
        out.extend(replace(p, path=link) for p in points)
    return out


def executable_mappings(maps_text: str) -> list[MapEntry]:
    """The first executable mapping of each distinct file in a maps text."""
    out: dict[tuple[str, int], MapEntry] = {}
    for entry in parse_maps(maps_text):
        if entry.is_exec and entry.is_file:
            out.setdefault((entry.dev, entry.inode), entry)
    return list(out.values())


@dataclass
class _Totals:
    objects: float = 0.0
    space: float = 0.0


class AllocSource:
    """The allocation SampleSource; values are (alloc_objects, alloc_space,
    inuse_objects, inuse_space), already unbiased."""

    def __init__(
        self,
        options: SourceOptions,
        command: tuple[str, ...] = (),
        cache_dir: Path | None = None,
    ) -> None:
        self._options = options
        self._walker = Walker(options, cache_dir)
        self._command = command
        self._rate = options.alloc_rate
        self.sessions = use_sessions(options, sessions.supported())
        self._targets: list[int] = []
        self._bpf: BpfProgram | None = None
        self._on_new: Callable[[int], None] | None = None
        self._seen: set[int] = set()
        self._allocs: dict[RawKey, _Totals] = {}
        self._live: dict[tuple[int, int], tuple[RawKey, float, float]] = {}
        # what processes still held when they exited (or exec'd), until the
        # next live_heap() reports it once
        self._ended: dict[RawKey, _Totals] = {}
        self.probes: list[tuple[int, EntryPoint]] = []
        self._probed: set[tuple[int, str, str]] = set()  # _probe_id()s
        self._followed = 0  # children and new programs given probes
        self._follow_failed = 0  # gone (or refused) before their probes
        # forks and execs to probe once the events at hand are handled (their
        # samples announce processes whose maps must be read while they live)
        self._to_follow: list[tuple[int, int]] = []
        self._exec_planned: set[int] = set()  # held COMMANDs: probed before their exec
        self._stopped: set[int] = set()  # stopped by the program until probed (FOLLOW_FORKS)

    @property
    def bpf(self) -> BpfProgram:
        """The loaded program: there from start() to close()."""
        if self._bpf is None:
            raise RuntimeError("the allocation program is not loaded: start() first")
        return self._bpf

    def add_targets(self, pids: Iterable[int]) -> None:
        self._targets.extend(pids)
        if self._bpf is not None:
            raise RuntimeError("allocation probes are attached at start(): add targets before")

    def start(self) -> None:
        self._bpf = self._compile()
        # a held COMMAND has not exec'd yet: its tables load after the exec
        self._walker.start([] if self._command else self._targets)
        table = self.bpf["targets"]
        for pid in self._targets:
            table[table.Key(pid)] = table.Leaf(1)
        self.bpf["events"].open_ring_buffer(self._on_event)
        self._walker.open_rings(self.bpf)
        if self._command:
            self._exec_planned.update(self._targets)
        for pid, point in self._plan():
            self._attach(pid, point)
        if not any(point.role != "libraries" for _, point in self.probes):
            raise TargetError("found no allocator (malloc, jemalloc, tcmalloc, mimalloc) to probe")

    def _compile(self) -> BpfProgram:
        """The walker's build if wanted and accepted, else the frame-pointer one."""
        functions = {SESSION_PROGRAM: "uprobe_session"} if self.sessions else None
        return self._walker.compile(
            PROGRAM,
            lambda unwind: alloc_cflags(self._options, unwind, self.sessions),
            functions,
        )

    def _plan(self) -> list[tuple[int, EntryPoint]]:
        if self._options.all_processes:
            own = executable_files(_read(f"/proc/{os.getpid()}/maps"))
            libc = [p for p in own if os.path.basename(p).startswith("libc.so")]
            return [(-1, e) for e in entry_points(libc)]
        plan: list[tuple[int, EntryPoint]] = []
        for pid in self._targets:
            if self._command:
                # host paths of the command bpfprof itself starts (its user's own)
                points = entry_points(command_files(self._command[0]))
            else:
                points = mapped_entry_points(pid, _read(f"/proc/{pid}/maps"))
            plan.extend((pid, e) for e in points)
        return plan

    def _attach_pid(self, pid: int) -> int:
        """The pid a probe is attached with: -1 (every process, the program
        keeps the tree's) when a COMMAND's tree is followed."""
        return -1 if self._options.follow_forks else pid

    def _attach(self, pid: int, point: EntryPoint) -> None:
        pid = self._attach_pid(pid)
        entry, ret, _ = ROLES[point.role]
        if point.role == "free" and not self._options.alloc_inuse:
            return
        sym = point.symbol.encode()
        if ret and self.sessions:
            # one program at the entry and, for sampled calls only, the return
            self.bpf.attach_uprobe_session(
                name=point.path.encode(),
                sym=sym,
                fn_name=SESSION_PROGRAM,
                pid=pid,
                cookie=SESSION_ROLES[point.role],
            )
        else:
            self.bpf.attach_uprobe(
                name=point.path.encode(),
                sym=sym,
                sym_off=point.probe_offset,
                fn_name=entry,
                pid=pid,
            )
            if ret and self._options.alloc_inuse:
                self.bpf.attach_uretprobe(name=point.path.encode(), sym=sym, fn_name=ret, pid=pid)
        self.probes.append((pid, point))
        self._probed.add(_probe_id(pid, point))

    def _follow(self, pid: int) -> None:
        """Probe the allocator entry points in the files `pid` maps that it
        lacks. The process may be gone by now: that is counted, not raised."""
        try:
            probe_pid = self._attach_pid(pid)
            points = mapped_entry_points(pid, _read(f"/proc/{pid}/maps"))
            new = [e for e in points if _probe_id(probe_pid, e) not in self._probed]
            for point in new:
                self._attach(pid, point)
        except (OSError, LookupError, TargetError) as e:
            self._follow_failed += 1
            log.debug("cannot probe the allocator of process %d: %s", pid, e)
            return
        self._followed += bool(new)

    def _planned(self, pid: int) -> bool:
        """A held COMMAND's first exec runs what start() probed already. The
        probe set would dedupe it too, but only after a library search made just as
        the command starts forking: bench/run.py profiles --only follow took
        11-18 ms to a child's probes that way, 1-6 ms with this skip."""
        if pid in self._exec_planned:
            self._exec_planned.discard(pid)
            return True
        return False

    def _follow_pending(self) -> None:
        pending, self._to_follow = self._to_follow, []
        for kind, pid in pending:
            try:
                if kind != ALLOC_EVENT_EXEC:
                    # mapped now, and perhaps not for long (a forked child
                    # that allocates and exits): snapshot it while it waits
                    self._seen.add(pid)
                    self._announce(pid, changed=True)
                if kind != ALLOC_EVENT_FORK and not (
                    kind == ALLOC_EVENT_EXEC and self._planned(pid)
                ):
                    self._follow(pid)
            finally:
                self._resume(pid)

    def _resume(self, pid: int) -> None:
        """Continue a process the program stopped for its probes."""
        if pid in self._stopped:
            self._stopped.discard(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    # -- events ------------------------------------------------------------

    def _on_event(self, _cpu: int, data: int, size: int) -> None:
        kind = ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32)).contents.value
        if kind in (ALLOC_EVENT_ALLOC, ALLOC_EVENT_UNTRACKED):
            self._on_alloc(ctypes.cast(data, ctypes.POINTER(AllocEvent)).contents, kind)
            return
        event = ctypes.cast(data, ctypes.POINTER(AllocFreeEvent)).contents
        pid = int(event.pid)
        if kind == ALLOC_EVENT_FREE:
            self._live.pop((pid, int(event.addr)), None)
        elif kind == ALLOC_EVENT_EXIT:
            self._process_exited(pid)
        elif kind == ALLOC_EVENT_EXEC:
            self._process_exited(pid)  # the old program's heap went with it
            self._seen.discard(pid)  # announced (and its tables loaded) again on its next sample
            if self._options.follow_forks:
                self._stopped.add(pid)  # the new program and its ld.so are mapped
                self._to_follow.append((kind, pid))
        elif kind in (ALLOC_EVENT_LIBS, ALLOC_EVENT_FORK):
            if self._options.follow_forks:
                self._stopped.add(pid)
            self._to_follow.append((kind, pid))
        elif kind == ALLOC_EVENT_MAPS_CHANGED:
            self._announce(pid, changed=True)

    def _announce(self, pid: int, changed: bool = False) -> None:
        """Tell the runner and load the process's unwind tables."""
        self._walker.announce(pid, self._on_new, changed=changed)

    def _on_alloc(self, ev: AllocEvent, kind: int) -> None:
        pid = int(ev.pid)
        if pid not in self._seen:
            self._seen.add(pid)
            self._announce(pid)
        key = RawKey(pid, int(ev.tid), _comm(ev.comm), _stack(ev))
        objects, space = scaled(int(ev.size), self._rate)
        totals = self._allocs.setdefault(key, _Totals())
        totals.objects += objects
        totals.space += space
        if kind == ALLOC_EVENT_ALLOC and self._options.alloc_inuse:
            self._live[(pid, int(ev.addr))] = (key, objects, space)

    def _process_exited(self, pid: int) -> None:
        """Everything the process held is gone, here and in the kernel; what
        it held is kept aside for the next live_heap(): the leaks at exit."""
        gone = [k for k in self._live if k[0] == pid]
        live = self.bpf["live"] if gone and self._bpf is not None else None
        for k in gone:
            key, objects, space = self._live.pop(k)
            t = self._ended.setdefault(key, _Totals())
            t.objects += objects
            t.space += space
            if live is not None:
                with contextlib.suppress(KeyError):  # already freed meanwhile
                    del live[live.Key(pid, 0, k[1])]

    # -- the SampleSource protocol -------------------------------------------

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        self._on_new = on_new_process
        self.bpf.ring_buffer_poll(timeout_ms)
        self._follow_pending()
        self._walker.poll()

    def drain(self) -> list[RawSample]:
        """Allocations since the last drain (inuse is a snapshot: see live_heap)."""
        self.bpf.ring_buffer_consume()
        self._follow_pending()
        out = [
            RawSample(k, (round(t.objects), round(t.space), 0, 0)) for k, t in self._allocs.items()
        ]
        self._allocs = {}
        return out

    def live_heap(self) -> list[RawSample]:
        """What the sampled blocks still allocated stand for, per stack: in
        live processes, and in those that exited since the last call (what
        they held at their exit, reported this once)."""
        self.bpf.ring_buffer_consume()
        return self._heap()

    def _heap(self) -> list[RawSample]:
        sums, self._ended = self._ended, {}
        for key, objects, space in self._live.values():
            t = sums.setdefault(key, _Totals())
            t.objects += objects
            t.space += space
        return [RawSample(k, (0, 0, round(t.objects), round(t.space))) for k, t in sums.items()]

    def counters(self) -> dict[str, int]:
        table = self.bpf["counters"]
        out = {c.name.lower(): int(table.sum(c.value).value) for c in Counter}
        out["live_blocks"] = len(self._live)
        out["probes"] = len(self.probes)
        out["followed"] = self._followed
        out["follow_failed"] = self._follow_failed
        out.update(self._walker.counters())
        return out

    @property
    def unwinding(self) -> bool:
        """Whether user stacks are walked with CFI (False: frame pointers only)."""
        return self._walker.active

    def python_codes(self) -> list[tuple[int, int]]:
        """New (pid, code object address) pairs of Python frames since the
        last call (agent.sources.base.PythonCodeSource)."""
        return self._walker.python_codes() if self._bpf is not None else []

    def close(self) -> None:
        for pid in list(self._stopped):  # never leave one stopped
            self._resume(pid)
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


def _probe_id(pid: int, point: EntryPoint) -> tuple[int, str, str]:
    """Uprobes are on inodes: a file must not be probed twice for a process,
    whichever path reached it (a command's real path, a map_files link)."""
    dev, ino = point.inode
    return pid, f"{dev}:{ino}" if ino else point.path, point.symbol


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise TargetError(f"cannot read {path}: {e.strerror}") from None


def _comm(raw: bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")


def _stack(ev: AllocEvent) -> RawStack:
    """The record's user stack; a negative size is -errno (no stack). A
    stack cut at the walker's frame limit gets -E2BIG, as in the maps."""
    n = int(ev.stack_bytes)
    if n < 0:
        return RawStack(user_error=n)
    ips, error = unwound_ips(ev.ips, n // 8, int(ev.stack_flags))
    return RawStack(user=tuple(ip for ip in ips if ip), user_error=error)

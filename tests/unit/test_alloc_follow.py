"""The allocation source follows a COMMAND's process tree: its files are
probed for every process (a forked child needs nothing), an exec or ld.so's
hook probes the files the process maps now, once, and continues the process
the program stopped; vanished processes are counted. No BPF: a fake program
records the attachments; the processes are real."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.config import SourceOptions
from agent.kernel import uprobes
from agent.kernel.layout import ALLOC_EVENT_EXEC, ALLOC_EVENT_FORK, AllocFreeEvent
from agent.sources.alloc import (
    ALLOC_EVENT_LIBS,
    AllocSource,
    _file_entry_points,
    alloc_cflags,
    command_files,
    entry_points,
    executable_mappings,
    mapped_entry_points,
    script_interpreter,
)
from agent.unwind.needed import DEFAULT_DIRS, find_library, needed_libraries, preloaded


@dataclass
class FakeBpf:
    """The loaded program as the source attaches to it."""

    attached: list[tuple[str, int, str]] = field(default_factory=list)  # (kind, pid, symbol)
    fail: bool = False

    def _add(self, kind: str, pid: int, sym: bytes) -> None:
        if self.fail:
            raise OSError(3, "No such process")
        self.attached.append((kind, pid, sym.decode()))

    def attach_uprobe(
        self, *, name: bytes, sym: bytes, sym_off: int, fn_name: str, pid: int
    ) -> None:
        self._add("uprobe", pid, sym)

    def attach_uretprobe(self, *, name: bytes, sym: bytes, fn_name: str, pid: int) -> None:
        self._add("uretprobe", pid, sym)

    def attach_uprobe_session(
        self, *, name: bytes, sym: bytes, fn_name: str, pid: int, cookie: int
    ) -> None:
        self._add("session", pid, sym)

    def ring_buffer_poll(self, timeout: int = -1) -> None:
        pass

    def ring_buffer_consume(self) -> None:
        pass


def following(sessions: bool = True, command: tuple[str, ...] = ()) -> tuple[AllocSource, FakeBpf]:
    source = AllocSource(SourceOptions(filter_pids=True, follow_forks=True), command)
    source.sessions = sessions
    bpf = FakeBpf()
    source._bpf = bpf
    return source, bpf


def event(source: AllocSource, kind: int, pid: int) -> None:
    record = AllocFreeEvent(kind=kind, pid=pid)
    source._on_event(0, ctypes.addressof(record), ctypes.sizeof(record))
    source.poll(0, lambda _pid: None)  # follows are handled after the events at hand


@pytest.fixture
def child() -> Iterator[int]:
    """A live process that maps libc, as a forked child of a target would."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        deadline = 200
        while "libc.so" not in Path(f"/proc/{proc.pid}/maps").read_text() and deadline:
            threading.Event().wait(0.01)  # until the loader has mapped libc
            deadline -= 1
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def symbols(bpf: FakeBpf, pid: int) -> set[str]:
    return {sym for _, p, sym in bpf.attached if p == pid}


EVERYONE = -1  # a COMMAND's files are probed for every process; the program keeps its tree's


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_an_exec_probes_the_files_the_new_program_maps_once(child: int) -> None:
    source, bpf = following()
    event(source, ALLOC_EVENT_EXEC, child)  # not seen before: all of it is new
    assert {"malloc", "free", "calloc", "realloc"} <= symbols(bpf, EVERYONE)
    assert "_dl_debug_state" in symbols(bpf, EVERYONE)  # ld.so's hook: dlopen is followed
    # session programs where there is a return to see; free has an entry probe
    assert ("session", EVERYONE, "malloc") in bpf.attached
    assert ("uprobe", EVERYONE, "free") in bpf.attached
    n = len(bpf.attached)
    event(source, ALLOC_EVENT_LIBS, child)  # told again: nothing attached twice
    event(source, ALLOC_EVENT_EXEC, child)
    assert len(bpf.attached) == n
    assert (source._followed, source._follow_failed) == (1, 0)


def test_without_sessions_the_files_get_entry_and_return_probes(child: int) -> None:
    source, bpf = following(sessions=False)
    event(source, ALLOC_EVENT_EXEC, child)
    assert ("uprobe", EVERYONE, "malloc") in bpf.attached
    assert ("uretprobe", EVERYONE, "malloc") in bpf.attached


def test_a_fork_needs_no_probes(child: int) -> None:
    """The child joins the program's targets at its fork, before it runs,
    and its files are its parent's, probed for every process already."""
    source, bpf = following()
    event(source, ALLOC_EVENT_FORK, child)
    assert bpf.attached == [] and source._follow_failed == 0


def test_a_process_gone_before_its_probes_is_counted() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    source, bpf = following()
    event(source, ALLOC_EVENT_EXEC, proc.pid)
    event(source, ALLOC_EVENT_LIBS, proc.pid)
    assert bpf.attached == [] and source._follow_failed == 2


def test_an_attach_the_kernel_refuses_is_counted_not_raised(child: int) -> None:
    source, bpf = following()
    bpf.fail = True
    event(source, ALLOC_EVENT_EXEC, child)
    assert (source._followed, source._follow_failed) == (0, 1)


@pytest.mark.parametrize("kind", [ALLOC_EVENT_EXEC, ALLOC_EVENT_LIBS])
def test_a_process_the_program_stopped_is_continued_once_probed(child: int, kind: int) -> None:
    """bpf/alloc.bpf.c stops a followed process at an exec or at ld.so's
    hook; user space continues it after the attach, failed or not."""
    source, bpf = following()
    bpf.fail = kind == ALLOC_EVENT_LIBS
    os.kill(child, signal.SIGSTOP)
    for _ in range(100):
        if state(child) == "T":
            break
        threading.Event().wait(0.01)
    assert state(child) == "T"
    event(source, kind, child)
    for _ in range(100):
        if state(child) != "T":
            break
        threading.Event().wait(0.01)
    assert state(child) in "SR" and source._stopped == set()


def test_a_held_commands_first_exec_runs_what_was_probed_before(child: int) -> None:
    source, bpf = following(command=("sleep",))
    source._exec_planned.add(child)  # as start() does for the held command
    event(source, ALLOC_EVENT_EXEC, child)
    assert bpf.attached == []
    event(source, ALLOC_EVENT_EXEC, child)  # a later exec is another program
    assert "malloc" in symbols(bpf, EVERYONE)


def test_without_a_command_execs_are_not_followed_and_dlopen_is_per_process(child: int) -> None:
    source = AllocSource(SourceOptions(filter_pids=True))
    bpf = FakeBpf()
    source._bpf = bpf
    event(source, ALLOC_EVENT_EXEC, child)
    assert bpf.attached == []
    event(source, ALLOC_EVENT_LIBS, child)  # a --pid target's ld.so mapped a library
    assert "malloc" in symbols(bpf, child) and source._stopped == set()


def test_follow_forks_is_compiled_in_only_for_targets() -> None:
    assert "-DFOLLOW_FORKS=1" in alloc_cflags(SourceOptions(follow_forks=True), False)
    assert "-DFOLLOW_FORKS=1" not in alloc_cflags(SourceOptions(), False)
    everyone = SourceOptions(follow_forks=True, all_processes=True)
    assert "-DFOLLOW_FORKS=1" not in alloc_cflags(everyone, False)


def test_a_script_runs_its_interpreter(tmp_path: Path) -> None:
    sh = os.path.realpath("/bin/sh")
    script = tmp_path / "run"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o755)
    assert script_interpreter(str(script)) == sh
    files = command_files(str(script))
    assert files[0] == sh and any("libc.so" in f for f in files[1:])
    via_env = tmp_path / "env-run"
    via_env.write_text("#!/usr/bin/env -S sh -e\ntrue\n")
    assert script_interpreter(str(via_env)) == os.path.realpath(str(shutil.which("sh")))
    assert script_interpreter(sh) is None  # ELF, not a script
    assert script_interpreter(str(tmp_path / "missing")) is None
    nowhere = tmp_path / "nowhere"
    nowhere.write_text("#!/no/such/interpreter\n")
    assert script_interpreter(str(nowhere)) is None


def test_a_command_s_libraries_are_ld_so_s_preloads_first_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allocator is often preloaded: LD_PRELOAD by name or by path, and
    /etc/ld.so.preload, are probed like DT_NEEDED libraries (ldd listed the
    by-name ones only)."""
    found = find_library("libm.so.6", DEFAULT_DIRS)
    assert found is not None
    libm = os.path.realpath(found)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    plain = [os.path.realpath(f) for f in command_files("sleep")]
    assert libm not in plain and any("libc.so" in f for f in plain)
    for preload in ("libm.so.6", libm, f"  libm.so.6:{libm} "):
        monkeypatch.setenv("LD_PRELOAD", preload)
        files = [os.path.realpath(f) for f in command_files("sleep")]
        assert files.count(libm) == 1 and files[1] == libm, preload
    conf = tmp_path / "ld.so.preload"
    conf.write_text(f"{libm}\n")
    monkeypatch.setenv("LD_PRELOAD", "libnothere.so")
    assert preloaded(conf=str(conf)) == ["libnothere.so", libm]
    assert needed_libraries("/bin/sleep", preload=["libnothere.so"]) == needed_libraries(
        "/bin/sleep"
    )


def test_entry_points_name_real_paths_and_are_read_once_per_file() -> None:
    files = command_files("sleep")  # ldd names /lib/...; maps name /usr/lib/...
    points = entry_points(files)
    assert points and all(p.path == os.path.realpath(p.path) for p in points)
    libc = next(p.path for p in points if p.symbol == "malloc")
    alias = next(f for f in files if os.path.realpath(f) == libc)
    assert entry_points([alias]) == entry_points([libc])
    _file_entry_points.cache_clear()
    entry_points([alias, libc])
    assert _file_entry_points.cache_info().misses == 1


def test_a_process_s_files_are_probed_by_their_mapped_inode(child: int) -> None:
    """Through /proc/PID/map_files, so the kernel attaches to the mapped inode;
    a maps line naming another inode than the file at its path gives nothing."""
    maps = Path(f"/proc/{child}/maps").read_text()
    points = mapped_entry_points(child, maps)
    malloc = next(p for p in points if p.symbol == "malloc")
    assert malloc.path.startswith(f"/proc/{child}/map_files/")
    assert os.stat(malloc.path).st_ino == malloc.inode[1]
    libc = next(e for e in executable_mappings(maps) if "libc.so" in e.path)
    forged = maps.replace(f" {libc.inode} ", f" {libc.inode + 1} ")
    assert not any(p.symbol == "malloc" for p in mapped_entry_points(child, forged))


def test_a_probed_path_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "lib.so"
    os.mkfifo(fifo)
    with pytest.raises(uprobes.SymbolError, match="cannot read"):
        uprobes.symbol_offset(str(fifo), "malloc")  # would block in open() otherwise
    assert entry_points([str(fifo)]) == []
    assert script_interpreter(str(fifo)) is None


def test_a_map_files_path_is_not_re_rooted() -> None:
    pid = os.getpid()
    link = f"/proc/{pid}/map_files/1000-2000"
    assert uprobes.probe_path(link, pid) == link
    assert uprobes.probe_path("/usr/bin/env", pid) == f"/proc/{pid}/root/usr/bin/env"

"""The walk layouts proved on running interpreters, read from outside.

A child interpreter of each available version (the host's 3.11, pyenv's
3.8-3.13, the Debian 3.13/3.14 roots under chroot) runs nested
functions, classes and methods in two threads, prints for each thread
`threading.get_ident()` and its frames as `sys._getframe()` sees them
(id of the code object, qualname, file, line), then blocks. From outside,
with only the ELF file, /proc/PID/maps and process_vm_readv, the test walks
_PyRuntime → interpreters.head → thread states → (thread_id == ident) →
frames → code objects and must find exactly those frames: same code
addresses, names, files and lines (the innermost frame's line is the
blocking call's, marked in the script).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from symbolizer.cpython.code import read_code
from symbolizer.cpython.interp import Interpreter
from symbolizer.cpython.layout import WalkLayout, inspect_file
from symbolizer.cpython.memory import ProcessMemory
from symbolizer.cpython.walk import find_thread, load_bias, thread_states, walk_frames
from symbolizer.elffile import ElfFile, Segment
from symbolizer.procmaps import parse_maps
from tests.pyroots import RootFactory, install_script, python_in

PYENV = Path("/root/.pyenv/versions")
FUTEX = 202  # x86_64
PTRACE_GETREGS, PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 12, 17, 0x4206, 0x4207
WALL = 0x40000000  # __WALL: wait for a thread of another process
HOST = {
    "3.11": (["/usr/bin/python3.11"], Path("/usr/bin/python3.11")),
    "3.8": ([str(PYENV / "3.8.18/bin/python3.8")], PYENV / "3.8.18/lib/libpython3.8.so.1.0"),
    "3.9": ([str(PYENV / "3.9.18/bin/python3.9")], PYENV / "3.9.18/lib/libpython3.9.so.1.0"),
    "3.10": (
        [str(PYENV / "3.10.13/bin/python3.10")],
        PYENV / "3.10.13/lib/libpython3.10.so.1.0",
    ),
    "3.12": (
        [str(PYENV / "3.12.1/bin/python3.12")],
        PYENV / "3.12.1/lib/libpython3.12.so.1.0",
    ),
    "3.13": (
        [str(PYENV / "3.13.0/bin/python3.13")],
        PYENV / "3.13.0/lib/libpython3.13.so.1.0",
    ),
}

STATIC_311 = Path("/usr/lib/python3.11/config-3.11-x86_64-linux-gnu")
EMBED_C = r"""
#include <Python.h>
int main(int argc, char **argv) {
    Py_Initialize();
    FILE *f = fopen(argv[1], "r");
    return f ? PyRun_SimpleFile(f, argv[1]) : 2;
}
"""

SCRIPT = """
import json, os, sys, threading, time


def report():
    frames = []
    f = sys._getframe(1)
    while f is not None:
        co = f.f_code
        name = getattr(co, "co_qualname", co.co_name)
        frames.append([id(co), name, co.co_filename, f.f_lineno])
        f = f.f_back
    ids = {"tid": threading.get_ident(), "native": threading.get_native_id()}
    line = json.dumps({**ids, "frames": frames}) + "\\n"
    os.write(1, line.encode())  # one write: below PIPE_BUF, never interleaved


class Outer:
    class Inner:
        def method(self, n):
            if n:
                return self.method(n - 1)
            return leaf()


def leaf():
    def inner_fn():
        report()
        sys.stdin.readline()  # MAIN BLOCKS
    inner_fn()


def waiter():
    def wait_here():
        report()
        time.sleep(3600)  # THREAD BLOCKS
    wait_here()


t = threading.Thread(target=waiter)
t.start()
Outer.Inner().method(2)
"""


@dataclass
class Child:
    proc: subprocess.Popen[str]
    interp: Interpreter
    layout: WalkLayout
    runtime: int
    code_type: int
    reports: list[dict[str, object]]
    script: str  # the script's path as the child sees it


def marked_line(marker: str) -> int:
    return next(i for i, line in enumerate(SCRIPT.splitlines(), 1) if marker in line)


def wait_blocked(pid: int, tid: int, timeout: float = 10.0) -> None:
    """Until the thread sits in a blocking syscall other than futex (which
    may be a wait for the GIL, in the middle of Python code): then its
    frames are the ones at the script's blocking call, and stay so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        first = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0]
        if first.isdigit() and int(first) != FUTEX:
            return
        time.sleep(0.005)
    raise AssertionError(f"thread {tid} of {pid} never blocked")


def start(argv: list[str], binary: Path, script: str) -> Iterator[Child]:
    got = inspect_file(binary)
    assert got is not None
    interp, layout = got
    proc = subprocess.Popen(
        [*argv, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        reports = [json.loads(proc.stdout.readline()) for _ in range(2)]
        for report in reports:
            wait_blocked(proc.pid, int(report["native"]))
        ino = os.stat(binary).st_ino
        maps = [e for e in parse_maps(Path(f"/proc/{proc.pid}/maps").read_text())]
        path = next(e.path for e in maps if e.inode == ino)
        with open(binary, "rb") as f:
            bias = load_bias(maps, path, ElfFile(f).segments())
        assert bias is not None
        yield Child(
            proc, interp, layout, bias + interp.runtime, bias + interp.code_type, reports, script
        )
    finally:
        proc.kill()
        proc.wait()


def embedding_binary(out: Path) -> Path:
    """A program that is not called python and links CPython 3.11 in
    statically (its symbols only in .symtab), running the script."""
    if not (STATIC_311 / "libpython3.11-pic.a").is_file():
        pytest.skip("no static libpython3.11 (python3.11-dev)")
    src = out / "embed.c"
    src.write_text(EMBED_C)
    exe = out / "myapp"
    cmd = ["gcc", "-O1", "-I/usr/include/python3.11", "-o", str(exe), str(src)]
    cmd += [str(STATIC_311 / "libpython3.11-pic.a"), "-lm", "-lexpat", "-lz"]
    subprocess.run(cmd, check=True, capture_output=True)
    return exe


@pytest.fixture(params=[*sorted(HOST), "embed-3.11", "root-3.13", "root-3.14"])
def child(
    request: pytest.FixtureRequest, tmp_path: Path, python_root: RootFactory
) -> Iterator[Child]:
    name: str = request.param
    if name == "embed-3.11":
        exe = embedding_binary(tmp_path)
        path = tmp_path / "child.py"
        path.write_text(SCRIPT)
        yield from start([str(exe)], exe, str(path))
        return
    with interpreter_run(name, SCRIPT, tmp_path, python_root) as (argv, binary, script):
        yield from start(argv, binary, script)


@contextmanager
def interpreter_run(
    name: str, text: str, tmp_path: Path, python_root: RootFactory
) -> Iterator[tuple[list[str], Path, str]]:
    """argv, interpreter ELF file and script path (as the child sees it) to
    run `text` with interpreter `name`: a HOST key or "root-3.13"/"root-3.14"."""
    if name.startswith("root-"):
        version = name.removeprefix("root-")
        root = python_root(version)
        script = install_script(root, text)
        try:
            yield python_in(root, version), root / f"usr/bin/python{version}", script
        finally:
            os.unlink(root / script.lstrip("/"))
        return
    argv, binary = HOST[name]
    if not binary.is_file():
        pytest.skip(f"no CPython {name} on this host")
    path = tmp_path / "child.py"
    path.write_text(text, encoding="utf-8")
    yield argv, binary, str(path)


def outside_view(child: Child, tid: int) -> list[list[object]]:
    mem = ProcessMemory(child.proc.pid)
    tstate = find_thread(mem, child.layout, child.runtime, tid)
    assert tstate, f"no thread state with thread_id {tid:#x}"
    out: list[list[object]] = []
    for frame in walk_frames(mem, child.layout, tstate):
        code = read_code(mem, child.layout, child.code_type, frame.code)
        line = code.line(child.interp.version, frame.offset)
        out.append([frame.code, code.name, code.filename, line])
    return out


def test_walk_finds_each_threads_own_frames(child: Child) -> None:
    version = child.interp.version
    mem = ProcessMemory(child.proc.pid)
    assert len(list(thread_states(mem, child.layout, child.runtime))) == 2
    blocked = {"inner_fn": marked_line("MAIN BLOCKS"), "wait_here": marked_line("THREAD BLOCKS")}
    for report in child.reports:
        expected: list[list[object]] = report["frames"]  # type: ignore[assignment]
        innermost = str(expected[0][1]).rsplit(".", 1)[-1]
        expected[0][3] = blocked[innermost]  # it moved on from report() to block
        assert outside_view(child, int(str(report["tid"]))) == expected, version
    main = next(r for r in child.reports if "inner_fn" in str(r["frames"]))
    names = [f[1] for f in main["frames"]]  # type: ignore[attr-defined]
    if version >= (3, 11):
        assert names[:5] == ["leaf.<locals>.inner_fn", "leaf", *["Outer.Inner.method"] * 3]
    else:
        assert names[:5] == ["inner_fn", "leaf", *["method"] * 3]
    assert all(f[2] == child.script for f in main["frames"])  # type: ignore[attr-defined]


def test_a_thread_id_that_is_not_pythons_finds_nothing(child: Child) -> None:
    mem = ProcessMemory(child.proc.pid)
    assert find_thread(mem, child.layout, child.runtime, 0x1234) == 0


def fs_base(tid: int) -> int:
    """The thread's fs base, from its registers (ptrace: seize, interrupt,
    PTRACE_GETREGS, detach); user_regs_struct.fs_base is the 22nd u64."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    regs = (ctypes.c_ulonglong * 27)()
    assert libc.ptrace(PTRACE_SEIZE, tid, None, None) == 0, ctypes.get_errno()
    try:
        assert libc.ptrace(PTRACE_INTERRUPT, tid, None, None) == 0, ctypes.get_errno()
        os.waitpid(tid, WALL)
        assert libc.ptrace(PTRACE_GETREGS, tid, None, ctypes.byref(regs)) == 0
    finally:
        libc.ptrace(PTRACE_DETACH, tid, None, None)
    return int(regs[21])


def test_thread_id_is_the_threads_fs_base(child: Child) -> None:
    """What BPF compares with: the thread state's thread_id (pthread_self)
    is the fs base the kernel holds for that thread."""
    mem = ProcessMemory(child.proc.pid)
    for report in child.reports:
        tid = int(str(report["tid"]))
        tstate = find_thread(mem, child.layout, child.runtime, tid)
        assert mem.u64(tstate + child.layout.tstate_thread_id) == tid
        assert fs_base(int(str(report["native"]))) == tid


def test_load_bias_from_any_mapping_of_the_file() -> None:
    # GIVEN a PIE's two PT_LOADs and the kernel's maps of it at 0x5600_0000_0000
    segments = [Segment(0, 0, 0x2000), Segment(0x2000, 0x3000, 0x500)]
    maps = parse_maps(
        "560000000000-560000002000 r--p 00000000 08:01 42 /opt/app/bin/myapp\n"
        "560000003000-560000004000 r-xp 00002000 08:01 42 /opt/app/bin/myapp\n"
    )
    assert load_bias(maps, "/opt/app/bin/myapp", segments) == 0x560000000000
    assert load_bias(maps[1:], "/opt/app/bin/myapp", segments) == 0x560000000000
    # a non-PIE executable is mapped at its link-time addresses: no bias
    fixed = parse_maps("400000-402000 r-xp 00000000 08:01 7 /usr/bin/old\n")
    assert load_bias(fixed, "/usr/bin/old", [Segment(0, 0x400000, 0x2000)]) == 0
    assert load_bias(maps, "/usr/bin/other", segments) is None

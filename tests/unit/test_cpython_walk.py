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

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from symbolizer.cpython.code import read_code
from symbolizer.cpython.interp import Interpreter
from symbolizer.cpython.layout import WalkLayout, inspect_file
from symbolizer.cpython.memory import ProcessMemory
from symbolizer.cpython.walk import find_thread, load_bias, thread_states, walk_frames
from symbolizer.elffile import ElfFile
from symbolizer.procmaps import parse_maps
from tests.pyroots import RootFactory, install_script, python_in

PYENV = Path("/root/.pyenv/versions")
FUTEX = 202  # x86_64
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


@pytest.fixture(params=[*sorted(HOST), "root-3.13", "root-3.14"])
def child(
    request: pytest.FixtureRequest, tmp_path: Path, python_root: RootFactory
) -> Iterator[Child]:
    name: str = request.param
    if name.startswith("root-"):
        version = name.removeprefix("root-")
        root = python_root(version)
        script = install_script(root, SCRIPT)
        yield from start(python_in(root, version), root / f"usr/bin/python{version}", script)
        os.unlink(root / script.lstrip("/"))
        return
    argv, binary = HOST[name]
    if not binary.is_file():
        pytest.skip(f"no CPython {name} on this host")
    path = tmp_path / "child.py"
    path.write_text(SCRIPT)
    yield from start(argv, binary, str(path))


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

"""PythonNames: Python frames' names from a live interpreter, and after it exits.

A child of Debian's /usr/bin/python3 (3.11) prints the id() of a few code
objects (a nested function, a method, a module-level function) with their
qualname, file, first line and the line of each offset (co_positions), then
waits on stdin. The names must be read from outside; once the child has
exited, only what was decoded while it lived is answered; a live process
whose read fails oddly gets no name. Fakes stand in where a real process
cannot fail on demand.
"""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from symbolizer import parse_maps, read_maps
from symbolizer.cpython.code import CodeInfo
from symbolizer.cpython.memory import MemoryReadError, ProcessMemory
from symbolizer.cpython.names import PyName, PythonNames, SavedTarget
from symbolizer.cpython.target import PythonTarget

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's 3.11; `python3` on PATH is pyenv's

CHILD = """
import json, sys

def outer():
    def inner():
        x = 1
        return x
    return inner

class Klass:
    def method(self, a):
        if a:
            return 1
        return 2

def flat():
    pass

out = {}
for key, co in {"inner": outer().__code__, "method": Klass.method.__code__,
                "flat": flat.__code__, "outer": outer.__code__}.items():
    lines = {2 * i: p[0] for i, p in enumerate(co.co_positions()) if p[0] is not None}
    out[key] = {"id": id(co), "qualname": co.co_qualname, "file": co.co_filename,
                "first": co.co_firstlineno, "lines": lines}
KEEP = "a str, not a code object"
out["not_code"] = id(KEEP)
print(json.dumps(out), flush=True)
sys.stdin.readline()
"""


@dataclass
class Child:
    proc: subprocess.Popen[str]
    codes: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def code(self, key: str) -> int:
        return int(self.codes[key]["id"])

    def end(self) -> None:
        """Let it exit and reap it: its pid then answers ESRCH."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@contextmanager
def spawn(tmp_path: Path) -> Iterator[Child]:
    """The child, killed and reaped on the way out."""
    script = tmp_path / "names_child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield Child(proc, json.loads(proc.stdout.readline()))
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Child]:
    with spawn(tmp_path) as c:
        yield c


def observed(child: Child, **kwargs: Any) -> PythonNames:
    names = PythonNames(**kwargs)
    assert names.observe(child.pid, parse_maps(read_maps(child.pid))) is not None
    return names


class FailingMemory(ProcessMemory):
    """A real reader that fails with `errno` once told to (EFAULT: the
    object's memory was unmapped; EPERM) while the process still lives."""

    fail: int | None = None

    def read(self, address: int, size: int) -> bytes:
        if FailingMemory.fail is not None:
            raise MemoryReadError(FailingMemory.fail, "told to fail")
        return super().read(address, size)


def test_a_live_process_names_each_code_object_with_its_lines(child: Child) -> None:
    """GIVEN a 3.11 child WHEN its code objects are asked for at every
    offset THEN each has its qualname, file, first line and the line
    co_positions gives, and the target is the child's interpreter."""
    names = observed(child)
    target = names.target(child.pid)
    assert isinstance(target, PythonTarget) and target.version == (3, 11)
    for key in ("inner", "method", "flat", "outer"):
        want = child.codes[key]
        for offset, line in want["lines"].items():
            got = names.frame(child.pid, want["id"], int(offset))
            assert got == PyName(want["qualname"], want["file"], line, want["first"])
    assert names.frame(child.pid, child.code("inner"), None) == PyName(
        "outer.<locals>.inner", child.codes["inner"]["file"], 0, child.codes["inner"]["first"]
    )
    counters = names.counters()
    assert counters["python_code_misses"] == 0 and counters["python_code_decoded"] == 4
    assert counters["python_code_hits"] > 0 and counters["python_processes"] == 1


def test_names_decoded_while_it_lived_answer_after_it_exited(child: Child) -> None:
    """GIVEN two code objects prefetched and one not WHEN the child exits
    THEN the prefetched ones still answer (no process to re-check against,
    nothing can reuse their addresses) and the other gets no name."""
    names = observed(child)
    names.prefetch(child.pid, child.code("inner"))
    names.prefetch(child.pid, child.code("method"))
    child.end()
    inner = names.frame(child.pid, child.code("inner"), 0)
    assert inner is not None and inner.qualname == "outer.<locals>.inner"
    method = names.frame(child.pid, child.code("method"), None)
    assert method is not None and method.qualname == "Klass.method"
    assert names.frame(child.pid, child.code("flat"), 0) is None
    names.prefetch(child.pid, child.code("flat"))  # too late: nothing to read, not counted
    s = names.stats
    assert (s.prefetched, s.gone_answers, s.never_decoded, s.code_misses) == (2, 2, 1, 1)


def test_a_live_process_whose_read_fails_gets_no_name_from_the_cache(child: Child) -> None:
    """GIVEN a code object decoded earlier WHEN a live process's re-check
    fails with EFAULT or EPERM THEN no name (the address no longer holds
    what was cached); once reads work again, the name comes back."""
    names = observed(child, memory=FailingMemory)
    names.prefetch(child.pid, child.code("inner"))
    try:
        for err in (errno.EFAULT, errno.EPERM):
            FailingMemory.fail = err
            assert names.frame(child.pid, child.code("inner"), 0) is None
            names.prefetch(child.pid, child.code("flat"))
    finally:
        FailingMemory.fail = None
    assert names.stats.unreadable == 2 and names.stats.prefetch_errors == 2
    assert names.frame(child.pid, child.code("inner"), 0) is not None


def test_an_address_that_holds_no_code_object_gets_no_name(child: Child) -> None:
    names = observed(child)
    assert names.frame(child.pid, int(child.codes["not_code"]), 0) is None
    names.prefetch(child.pid, int(child.codes["not_code"]))
    assert names.stats.unreadable == 1 and names.stats.prefetch_errors == 1
    assert names.counters()["python_code_errors"] == 2


def test_a_process_without_python_is_not_held() -> None:
    """GIVEN a process that runs no CPython (sleep) WHEN observed THEN no
    target, and its frames are counted as having none."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        names = PythonNames()
        assert names.observe(proc.pid, parse_maps(read_maps(proc.pid))) is None
        assert names.target(proc.pid) is None
        assert names.frame(proc.pid, 0x1000, 0) is None
        names.prefetch(proc.pid, 0x1000)  # nothing held: nothing to do
        assert names.stats.no_target == 1 and names.stats.prefetch_errors == 0
    finally:
        proc.kill()
        proc.wait()


def test_re_observing_keeps_code_objects_only_for_the_same_interpreter(child: Child) -> None:
    names = observed(child)
    names.prefetch(child.pid, child.code("inner"))
    maps = parse_maps(read_maps(child.pid))
    names.observe(child.pid, maps)  # a dlopen: same interpreter
    assert child.code("inner") in names.cache.entries(child.pid)
    names.observe(child.pid, [])  # no CPython any more (an exec)
    assert names.target(child.pid) is None and not names.cache.entries(child.pid)


SAVED = SavedTarget("/usr/bin/python3.11", (3, 11), ((0x1000, 0x2000),), ((0x400, 0x3000),))
# 3.11 location table: one entry of 2 code units, "one line" form, delta +1
INFO = CodeInfo("f", "/app/f.py", 10, bytes([0x80 | (11 << 3) | 1, 0, 0]))


def test_saved_names_load_as_a_gone_process() -> None:
    """GIVEN a capture's interpreter and code object WHEN loaded (a replay:
    no process) THEN frames are named from it and the target answers the
    splice's questions."""
    names = PythonNames(proc_root="/nonexistent")
    names.load(7, SAVED, {0xABC0: INFO})
    target = names.target(7)
    assert target == SAVED and target.in_eval(0x1800) and not target.in_eval(0x2000)
    assert target.in_text(0x400) and not target.in_text(0x3000)
    assert names.frame(7, 0xABC0, 2) == PyName("f", "/app/f.py", 11, 10)
    assert names.frame(7, 0xDEF0, 2) is None
    assert names.saved(7) == (SAVED, {0xABC0: INFO})
    assert names.saved(8) is None
    names.forget(7)
    assert names.target(7) is None and len(names) == 0


def test_processes_are_bounded_oldest_first() -> None:
    names = PythonNames(max_processes=2)
    for pid in (1, 2, 3):
        names.load(pid, SAVED, {0x10: INFO})
    assert names.target(1) is None and names.target(3) == SAVED
    assert names.stats.evicted == 1 and len(names.cache) == 2
    names.frame(2, 0x10, None)  # asked for: now the most recent
    names.load(4, SAVED, {})
    assert names.target(2) is not None and names.target(3) is None

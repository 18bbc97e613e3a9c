"""Python frames in every profile type's real source (bpf/python.h hooked
into cpu.bpf.c, waits.h and alloc.bpf.c; the Walker marking CPython
processes and handing over new code objects).

A CPython child (programs/pyprofiled.py) prints the addresses of its
functions' code objects, then spins, sleeps, contends on a lock or
allocates in a known function. Each source samples it; the user stacks it
drains must end in tagged Python frames (symbolizer.cpython.frames.split)
whose code objects are the child's and read back (read_code, with the
layout TargetFinder gives) as the functions' names, and python_codes()
must have handed over those code objects while the child lived.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import SourceOptions
from agent.model import RawSample
from agent.sources.alloc import AllocSource
from agent.sources.cpu import CpuSource
from agent.sources.lock import LockSource
from agent.sources.offcpu import OffCpuSource
from symbolizer.cpython.code import read_code
from symbolizer.cpython.frames import split
from symbolizer.cpython.memory import ProcessMemory
from symbolizer.cpython.names import PythonNames
from symbolizer.cpython.target import TargetFinder
from symbolizer.procmaps import parse_maps, read_maps
from tests.pyroots import install_script, python_in

pytestmark = pytest.mark.bpf

PROGRAM = Path(__file__).parent.parent / "programs" / "pyprofiled.py"
PYTHON = "/usr/bin/python3"  # Debian's 3.11, never the pyenv build on PATH
SECONDS = 2.5
LEAF = {"cpu": "burn", "offcpu": "nap", "lock": "contend", "alloc": "churn"}
# The share of the child's first value (samples, ns off CPU, contentions,
# objects) under its leaf function. Lock: main's join waits too, and the
# contending threads wait for the GIL under other frames as well.
SHARE = {"cpu": 0.8, "offcpu": 0.8, "lock": 0.3, "alloc": 0.8}
SOURCES: dict[str, Callable[[SourceOptions], Any]] = {
    "cpu": CpuSource,
    "offcpu": OffCpuSource,
    "lock": LockSource,
    "alloc": AllocSource,
}


@dataclass
class Run:
    """What one source saw of one child."""

    pid: int
    truth: dict[str, int]  # function name -> code object address
    samples: list[RawSample] = field(default_factory=list)
    codes: list[tuple[int, int]] = field(default_factory=list)  # from python_codes()
    names: dict[int, str] = field(default_factory=dict)  # code address -> name read back
    counters: dict[str, int] = field(default_factory=dict)

    def python(self, sample: RawSample) -> tuple[int, ...]:
        """The code addresses of a sample's Python frames, innermost first."""
        return tuple(f.code for f in split(sample.key.stack.user).python)

    def own(self) -> list[RawSample]:
        return [s for s in self.samples if s.key.pid == self.pid]


def start_child(argv: list[str]) -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["codes"]


def profile(source: Any, argv: list[str], seconds: float = SECONDS) -> Run:
    """Start the child, sample it for `seconds`, and read its code objects'
    names while it still lives."""
    proc, truth = start_child(argv)
    run = Run(proc.pid, truth)
    try:
        source.add_targets([proc.pid])
        source.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            source.poll(100, lambda _pid: None)
            run.codes += source.python_codes()
        run.samples = source.drain()
        run.codes += source.python_codes()
        run.counters = source.counters()
        if proc.poll() is None:
            run.names = read_names(proc.pid, {c for s in run.own() for c in run.python(s)})
    finally:
        source.close()
        proc.kill()
        proc.wait()
    return run


def read_names(pid: int, codes: set[int]) -> dict[int, str]:
    """Each code object's name, read from the process as the resolver would."""
    target = TargetFinder().find(pid, parse_maps(read_maps(pid)))
    assert target is not None, "the child runs no CPython TargetFinder knows"
    mem = ProcessMemory(pid)
    return {c: read_code(mem, target.layout, target.code_type, c).name for c in codes}


def assert_python_frames(run: Run, leaf: str, share: float = 0.8) -> None:
    """Samples are per distinct stack (summed), so shares are of values."""
    own = run.own()
    with_leaf = [s for s in own if run.python(s)[:1] == (run.truth[leaf],)]
    total = sum(s.values[0] for s in own)
    assert total > 0 and sum(s.values[0] for s in with_leaf) >= share * total, [
        (run.python(s), s.values) for s in own
    ]
    chain = [run.names[c] for c in run.python(with_leaf[0])]
    if leaf == "contend":  # in threads
        assert chain == [leaf, "Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap"], chain
    else:
        assert chain == [leaf, "main", "<module>"], chain
    assert {(run.pid, c) for c in run.python(with_leaf[0])} <= set(run.codes)
    assert run.counters["python_codes_new"] >= 3 and run.counters["python_bad_code"] == 0


def options(profile_type: str, **extra: Any) -> SourceOptions:
    return SourceOptions(frequency=199, filter_pids=True, **extra)


@pytest.mark.parametrize("profile_type", list(SOURCES))
def test_each_source_stacks_end_in_the_childs_python_frames(profile_type: str) -> None:
    source = SOURCES[profile_type](options(profile_type))
    run = profile(source, [PYTHON, str(PROGRAM), profile_type, "60"])
    assert_python_frames(run, LEAF[profile_type], SHARE[profile_type])
    assert run.counters["python_found"] >= 1 and run.counters["python_layouts"] == 1


@pytest.mark.parametrize("version", ["3.13", "3.14"])
def test_chrooted_debian_python_gets_python_frames(version: str, python_root: Any) -> None:
    root = python_root(version)
    script = install_script(root, PROGRAM.read_text())
    run = profile(CpuSource(options("cpu")), [*python_in(root, version), script, "cpu", "60"])
    assert_python_frames(run, "burn")


def test_python_off_gives_no_tagged_frames() -> None:
    source = CpuSource(options("cpu", python=False))
    run = profile(source, [PYTHON, str(PROGRAM), "cpu", "60"])
    assert len(run.own()) >= 50
    assert all(not run.python(s) for s in run.own())
    assert run.codes == [] and not any(k.startswith("python_") for k in run.counters)


def test_a_code_object_at_a_freed_ones_address_is_sent_and_named_after_exit() -> None:
    """first() runs, is freed, and second() gets its code object's address
    and runs until the child exits: the walker must send the address again
    (its mark differs), so the names read while the child lived, and kept
    after it exits, say second, not first."""
    source = CpuSource(options("cpu"))
    names = PythonNames()
    source.start()  # before the child: first() must be sampled
    proc, _ = start_child([PYTHON, str(PROGRAM), "reuse", "3"])
    sent: list[tuple[int, int]] = []
    try:
        names.observe(proc.pid, parse_maps(read_maps(proc.pid)))
        source.add_targets([proc.pid])
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            source.poll(50, lambda _pid: None)
            for pid, code in source.python_codes():
                sent.append((pid, code))
                names.prefetch(pid, code)
        assert proc.stdout is not None
        reused = json.loads(proc.stdout.readline())["reused"]
        assert reused, "the child's second code object did not take the first one's address"
        proc.wait(10)
        for pid, code in source.python_codes():
            sent.append((pid, code))
            names.prefetch(pid, code)
        assert sent.count((proc.pid, reused)) == 2, sent
        name = names.frame(proc.pid, reused, None)
        assert name is not None and (name.qualname, name.filename) == ("second", "<second>")
        assert names.counters()["python_gone_answers"] == 1
    finally:
        source.close()
        proc.kill()
        proc.wait()


def python_entry(source: Any, pid: int) -> Any:
    return source._walker._python_maps.get_process(pid)


def test_a_native_process_gets_no_python_entry() -> None:
    source = CpuSource(options("cpu"))
    loop = "i=0; while [ $i -lt 100000000 ]; do i=$((i+1)); done"
    proc = subprocess.Popen(["/bin/sh", "-c", loop])
    try:
        source.add_targets([proc.pid])
        source.start()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            source.poll(100, lambda _pid: None)
        samples = [s for s in source.drain() if s.key.pid == proc.pid]
        assert len(samples) >= 20
        assert python_entry(source, proc.pid) is None
        assert all(not split(s.key.stack.user).python for s in samples)
        assert source.counters()["python_not_python"] >= 1
    finally:
        source.close()
        proc.kill()
        proc.wait()


def test_an_exec_into_a_c_program_removes_the_python_entry() -> None:
    shell = "/bin/dash"
    loop = "i=0; while [ $i -lt 100000000 ]; do i=$((i+1)); done"
    source = CpuSource(options("cpu"))
    # execs on SIGUSR1, once its Python frames were seen
    proc, truth = start_child([PYTHON, str(PROGRAM), "exec", "60", shell, "-c", loop])
    marked: list[Any] = []
    try:
        source.add_targets([proc.pid])
        source.start()
        marked.append(python_entry(source, proc.pid))
        codes: list[tuple[int, int]] = []
        end = time.monotonic() + 5
        while (proc.pid, truth["burn"]) not in codes:
            assert time.monotonic() < end, "no Python frame of the child"
            source.poll(50, lambda _pid: None)
            codes += source.python_codes()
        proc.send_signal(signal.SIGUSR1)
        end = time.monotonic() + 5
        while Path(f"/proc/{proc.pid}/exe").resolve() != Path(shell).resolve():
            assert time.monotonic() < end, "the child did not exec"
            source.poll(50, lambda _pid: None)
            codes += source.python_codes()
        source.drain()  # the Python image's samples
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            source.poll(50, lambda _pid: None)
        after = [s for s in source.drain() if s.key.pid == proc.pid]
        assert marked[0] is not None
        assert python_entry(source, proc.pid) is None
        assert len(after) >= 20 and all(not split(s.key.stack.user).python for s in after)
    finally:
        source.close()
        proc.kill()
        proc.wait()

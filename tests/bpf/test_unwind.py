"""The CFI walker, loaded for real, on programs built here without frame
pointers: every sample in the hot leaf must reach its known callers.

Each program prints "ready", the test loads its tables (as the agent does on
a process's first sample) and then lets it run, so every sample counted is
one the walker had tables for. Symbols come from the symbolizer, stacks
from the CPU source: the whole path a profile takes."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import BpfLimits, SourceOptions
from agent.kernel.bcc_loader import compile_program, render
from agent.pipeline.resolve import StackResolver
from agent.sources.cpu import bpf_cflags, cflags_for
from agent.unwind import loader as loader_module
from agent.unwind.layout import MAX_FRAMES, UnwindMapping, UnwindProc, UnwindRow, UnwindStat
from symbolizer import Symbolizer
from tests.cpurun import sample_until_exit

pytestmark = pytest.mark.bpf

SECONDS = 2.0
HZ = 199
MIN_SAMPLES = 50  # enough for a 90% share to mean something, on a busy host too


@dataclass
class Profile:
    stacks: list[tuple[list[str], int]]  # user function names, leaf first; count
    counters: dict[str, int]
    unwinding: bool

    def having(self, leaf: str) -> list[tuple[list[str], int]]:
        return [(s, n) for s, n in self.stacks if s and s[0] == leaf]

    def share(self, leaf: str, *callers: str) -> tuple[float, int]:
        """Of the samples whose leaf is `leaf`: the share with all `callers`, and their count."""
        hits = self.having(leaf)
        total = sum(n for _, n in hits)
        good = sum(n for s, n in hits if all(c in s for c in callers))
        return (good / total if total else 0.0), total


@pytest.fixture
def profile(unwind_prog: Path, tmp_path: Path) -> Iterator[object]:
    def run(mode: str, unwind: str = "dwarf") -> Profile:
        lib = unwind_prog.parent / "libunwind_test.so"
        proc = subprocess.Popen(
            [str(unwind_prog), mode, str(SECONDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "UNWIND_LIB": str(lib)},
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().startswith("ready")
        symbolizer = Symbolizer()
        symbolizer.observe(proc.pid)
        options = SourceOptions(frequency=HZ, filter_pids=True, unwind=unwind)
        got = sample_until_exit(proc, options, tmp_path, symbolizer, SECONDS + 10)
        resolver = StackResolver(symbolizer)
        stacks = [
            (
                [loc.display_name() for loc in resolver.locations(s.key) if loc.kind != "kernel"],
                s.values[0],
            )
            for s in got.samples
        ]
        return Profile(stacks, got.counters, got.unwinding)

    procs: list[subprocess.Popen[str]] = []
    yield run
    for p in procs:
        p.kill()
        p.wait()


def test_whole_stack_reaches_main_without_frame_pointers(profile) -> None:  # type: ignore[no-untyped-def]
    got = profile("chain")
    assert got.unwinding
    share, total = got.share("hot", "work", "run", "main")
    assert total >= MIN_SAMPLES, got.stacks
    assert share >= 0.9, got.having("hot")[:5]
    print(got.having("hot")[:3])
    assert got.counters["unwind_truncated"] == 0


def test_tables_built_in_the_background_reach_main(profile, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every table built on the builder's thread (as a big binary's is):
    the process is published when they are placed, its samples before
    that walked from their raw stacks, and stacks reach main as before."""
    monkeypatch.setattr(loader_module, "ASYNC_BYTES", 0)
    got = profile("chain")
    share, total = got.share("hot", "work", "run", "main")
    assert total >= MIN_SAMPLES and share >= 0.9, got.having("hot")[:5]
    assert got.counters["unwind_tables_deferred"] >= 2, got.counters  # the program, libc


def test_frame_pointers_alone_do_not_reach_main(profile) -> None:  # type: ignore[no-untyped-def]
    """The control: the same program, with bpf_get_stackid's frame-pointer walk."""
    got = profile("chain", unwind="fp")
    assert not got.unwinding
    share, total = got.share("hot", "main")
    assert total > 0 and share < 0.5


def test_callers_above_libc_frames(profile) -> None:  # type: ignore[no-untyped-def]
    """qsort (Debian's libc, no frame pointers) calls back into the program."""
    got = profile("qsort")
    share, total = got.share("compare", "sort_all", "run", "main")
    assert total >= MIN_SAMPLES and share >= 0.9, got.having("compare")[:5]
    for stack, _ in got.having("compare"):
        if "sort_all" in stack:  # libc's frames sit between the comparator and its caller
            between = stack[1 : stack.index("sort_all")]
            assert any("qsort" in f or "msort" in f for f in between), stack


def test_signal_handler_frames_are_unwound(profile) -> None:  # type: ignore[no-untyped-def]
    got = profile("signal")
    share, total = got.share("hot", "work", "on_signal", "run", "main")
    assert total >= MIN_SAMPLES and share >= 0.9, got.having("hot")[:5]
    for stack, _ in got.having("hot"):
        if "main" in stack:
            # through the trampoline the kernel returns by (__restore_rt, not in
            # stripped libc's symbols) to the interrupted code: raise
            assert stack[-1] == "_start", stack
            assert stack.index("on_signal") < stack.index("raise"), stack


def test_thread_stacks_end_at_the_thread_entry(profile) -> None:  # type: ignore[no-untyped-def]
    got = profile("thread")
    share, total = got.share("hot", "work", "thread_main", "start_thread")
    assert total >= MIN_SAMPLES and share >= 0.9, got.having("hot")[:5]
    for stack, _ in got.having("hot"):
        if "start_thread" in stack:  # clone3's child path marks RIP undefined: nothing after it
            assert stack[stack.index("start_thread") + 1 :] in ([], ["__clone3"], ["clone3"]), stack


def test_main_stacks_end_at_start_with_no_garbage(profile) -> None:  # type: ignore[no-untyped-def]
    got = profile("chain")
    known = {"hot", "work", "run", "main", "__libc_start_call_main", "_start"}
    for stack, _ in got.having("hot"):
        if "main" in stack:
            assert stack[-1] == "_start", stack
            assert all(f in known or f.startswith("__libc_start_main") for f in stack), stack
    assert got.counters["unwind_unsupported"] == 0


def test_a_stack_deeper_than_the_limit_is_marked_truncated(profile) -> None:  # type: ignore[no-untyped-def]
    got = profile("deep")
    hits = got.having("hot")
    total = sum(n for _, n in hits)
    cut = sum(n for s, n in hits if s[-1] == "[user stack truncated]")
    assert total >= MIN_SAMPLES and cut / total >= 0.9, hits[:3]
    assert all(len(s) == 128 for s, _ in hits if s[-1] == "[user stack truncated]")  # 127 + mark
    assert got.counters["unwind_truncated"] >= cut


def test_mixed_frame_pointer_and_cfi_frames(profile) -> None:  # type: ignore[no-untyped-def]
    """fp_middle has frame pointers but no CFI: the walker crosses it with
    its frame pointer, between CFI frames on both sides."""
    got = profile("mixed")
    share, total = got.share("hot", "work", "fp_middle", "run", "main")
    assert total >= MIN_SAMPLES and share >= 0.9, got.having("hot")[:5]
    assert got.counters["unwind_fp_frames"] > 0


def test_python_mirror_of_unwind_h_matches_what_bcc_compiled() -> None:
    flags = bpf_cflags(BpfLimits(), filter_pids=True, follow_forks=False, unwind=True)
    program = compile_program("cpu.bpf.c", flags)
    try:
        for table, mirror in (
            ("unwind_rows", UnwindRow),
            ("unwind_maps", UnwindMapping),
            ("unwind_procs", UnwindProc),
        ):
            leaf = program[table].Leaf
            assert ctypes.sizeof(leaf) == ctypes.sizeof(mirror), table
            for name, *_ in mirror._fields_:
                assert getattr(leaf, name).offset == getattr(mirror, name).offset, (table, name)
        stack = program["ustacks"].Leaf
        assert len(stack().ips) == MAX_FRAMES and stack.ips.offset == 16
        assert len(program["unwind_stats"]) == len(UnwindStat) == 12
    finally:
        program.cleanup()


def test_print_bpf_shows_the_walker() -> None:
    text = render("cpu.bpf.c", cflags_for(SourceOptions(unwind="dwarf")))
    assert "#define UNWIND_DWARF 1" in text and "struct unwind_row {" in text
    assert '#include "unwind.h"' not in text
    assert "#define UNWIND_DWARF" not in render("cpu.bpf.c", cflags_for(SourceOptions(unwind="fp")))


def test_a_library_loaded_later_is_picked_up(profile) -> None:  # type: ignore[no-untyped-def]
    """The tables were loaded before the program's dlopen: the walker meets a
    PC in an unknown mapping, asks for a reload, and has the library's CFI
    from then on (the samples before that may miss their callers)."""
    got = profile("dlopen")
    share, total = got.share("hot", "work", "lib_run", "run", "main")
    assert total >= MIN_SAMPLES and share >= 0.9, got.having("hot")[:5]
    assert got.counters["unwind_maps_reloaded"] >= 1


def record_command(argv: list[str], unwind: str, tmp_path: Path) -> list[tuple[list[str], int]]:
    """Stacks (kernel part leaf first, then user part) of a command started
    behind a shell that waits for a line, so its pid is known before it
    execs; its tables load on its first sample after the exec."""
    proc = subprocess.Popen(
        ["sh", "-c", 'read _ && exec "$@"', "sh", *argv], stdin=subprocess.PIPE, text=True
    )
    symbolizer = Symbolizer()
    options = SourceOptions(frequency=HZ, filter_pids=True, unwind=unwind)
    try:
        samples = sample_until_exit(proc, options, tmp_path, symbolizer, 600).samples
    finally:
        proc.kill()
        proc.wait()
    resolver = StackResolver(symbolizer)
    return [
        ([loc.display_name() for loc in resolver.locations(s.key)], s.values[0]) for s in samples
    ]


@pytest.mark.parametrize("unwind", ["fp", "dwarf"])
def test_kernel_stacks_are_unchanged_and_dd_is_walked(unwind: str, tmp_path: Path) -> None:
    """Debian's dd (no frame pointers, stripped) copying /dev/zero: most
    samples are in the kernel, whose stacks come from bpf_get_stackid in both
    modes and reach the syscall entry; only the CFI walk gets through dd's
    own frames to libc's __libc_start_call_main."""
    # long enough (several s) that the first samples, taken before the
    # tables of a just-exec'd command are loaded, stay a few per cent
    dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=4k", "count=6000000"]
    stacks = record_command(dd, unwind, tmp_path)
    in_kernel = [(s, n) for s, n in stacks if any(f.startswith("entry_SYSCALL_64") for f in s)]
    total = sum(n for _, n in stacks)
    # dd's kernel share is a property of the CPU: over half of its samples
    # on the Intel Xeon VMs, 44-46 % on the AMD EPYC ones; a third is far
    # above what a broken kernel stack (no syscall entry) would leave
    assert total >= MIN_SAMPLES and sum(n for _, n in in_kernel) >= total / 3
    reached = sum(n for s, n in in_kernel if "__libc_start_call_main" in s)
    share = reached / sum(n for _, n in in_kernel)
    if unwind == "dwarf":
        assert share >= 0.9, in_kernel[:3]
    else:
        assert share < 0.5, in_kernel[:3]


def rows_of(path: str) -> int:
    """CFI rows of a file, as the loader counts them."""
    from agent.unwind.table import build_table
    from symbolizer.elffile import ElfFile

    with open(path, "rb") as f:
        return build_table(ElfFile(f), "").count


def exec_files(pid: int) -> set[str]:
    """The files `pid` maps executable."""
    files = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if "x" in fields[1] and len(fields) > 5 and fields[5].startswith("/"):
            files.add(fields[5])
    return files


def test_rows_of_an_exited_program_go_to_the_next(tmp_path: Path) -> None:
    """A shell counts (so it is sampled and its tables loaded), then runs
    program A, then program B (both without frame pointers), with CFI rows
    for the shell's binaries and one of the two programs: B takes the rows
    of A, which no process maps any more, and its samples reach main.
    Before, B found the rows full and was walked with frame pointers only
    (its hot leaves reached main in none of its samples)."""
    from tests.conftest import PROGRAMS, compile_c

    a = compile_c(PROGRAMS / "hotsplit.c", tmp_path / "hsa", "-O2", "-g", "-fomit-frame-pointer")
    b = compile_c(PROGRAMS / "hotsplit.c", tmp_path / "hsb", "-O1", "-g", "-fomit-frame-pointer")
    script = 'read _ && i=0 && while [ $i -lt 100000 ]; do i=$((i+1)); done && "$1" 300 && "$2" 300'
    proc = subprocess.Popen(
        ["sh", "-c", script, "sh", str(a), str(b)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None
    deadline = time.monotonic() + 10
    shell = exec_files(proc.pid)
    while not any("libc" in path for path in shell):  # ld.so maps it after the exec
        assert time.monotonic() < deadline, shell
        time.sleep(0.01)
        shell = exec_files(proc.pid)
    rows_a, rows_b = rows_of(str(a)), rows_of(str(b))
    # the shell's binaries, then one program and not quite room for the other
    room = sum(map(rows_of, shell)) + max(rows_a, rows_b) + min(rows_a, rows_b) // 2
    symbolizer = Symbolizer()
    limits = BpfLimits(unwind_rows=room)
    options = SourceOptions(frequency=HZ, filter_pids=True, follow_forks=True, limits=limits)
    try:
        got = sample_until_exit(proc, options, tmp_path, symbolizer, 60)
    finally:
        proc.kill()
        proc.wait()
    samples, counters = got.samples, got.counters
    assert counters["unwind_rows_evicted"] >= 1 and counters["unwind_rows_full"] == 0, {
        k: v for k, v in counters.items() if k.startswith("unwind_")
    }
    resolver = StackResolver(symbolizer)
    hot = [
        (names, s.values[0])
        for s in samples
        if s.key.comm == "hsb"
        and {"hot_a", "hot_b"}
        & set(names := [loc.display_name() for loc in resolver.locations(s.key)])
    ]
    total = sum(n for _, n in hot)
    whole = sum(n for s, n in hot if "main" in s and {"work_a", "work_b"} & set(s))
    assert total >= MIN_SAMPLES and whole >= 0.9 * total, hot[:5]

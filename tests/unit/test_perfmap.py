"""JIT perf maps: parsing, bounds, growth, and the files a reader refuses.

The reader tests build a fake /proc tree: /proc/PID/status (NSpid, Uid)
and /proc/PID/root/tmp/perf-NSPID.map, owned by whoever runs the test.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from symbolizer import Symbolizer, perfmap_table
from symbolizer.debuginfo import DebugSearch
from symbolizer.perfmap import PerfMapLimits, PerfMapReader, ProcessIds, parse_status
from symbolizer.perfmap_table import PerfMap, parse_line, read_entries
from symbolizer.resolver import ResolvedFrame
from symbolizer.stats import SymbolizerStats

# -- parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,expected",
    [
        (
            b"7f0000001000 40 py::work:/app/main.py\n",
            (0x7F0000001000, 0x40, b"py::work:/app/main.py"),
        ),
        (
            b"0x2000 0x100 LazyCompile:*fib /app/fib.js:3",
            (0x2000, 0x100, b"LazyCompile:*fib /app/fib.js:3"),
        ),
        (b"1000 10  name with  spaces  \n", (0x1000, 0x10, b"name with  spaces")),
        (b"garbage line\n", None),
        (b"1000 10\n", None),  # no name
        (b"zz 10 name\n", None),
        (b"-1000 10 negative\n", None),
        (b"1000 0 empty-region\n", None),
        (b"%x 10 past-2^64\n" % (1 << 64), None),
        (b"1000 %x huge-size\n" % (1 << 64), None),
    ],
)
def test_parse_line(line: bytes, expected: tuple[int, int, bytes] | None) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Name:\tnode\nNSpid:\t4242\t7\nUid:\t1000\t1001\t1000\t1001\n", ProcessIds(7, 1001)),
        ("Uid:\t0\t0\t0\t0\n", ProcessIds(55, 0)),  # no NSpid (kernel < 4.1): our pid
        ("NSpid:\t55\n", None),  # no Uid
        ("NSpid:\tx\nUid:\t0\t0\t0\t0\n", None),
    ],
)
def test_parse_status(text: str, expected: ProcessIds | None) -> None:
    assert parse_status(text, 55) == expected


# -- the table -------------------------------------------------------------------


def _reference(lines: list[tuple[int, int, bytes]], address: int) -> str | None:
    """What a lookup must answer: the last line for the greatest start <= address."""
    by_start = {start: (size, name) for start, size, name in lines}
    starts = sorted(by_start)
    i = bisect_right(starts, address) - 1
    if i < 0:
        return None
    size, name = by_start[starts[i]]
    return name.decode() if address < starts[i] + size else None


def test_batches_answer_as_one_map_read_at_once() -> None:
    """GIVEN entries added in many batches of varied sizes, with reused starts,
    THEN every lookup answers as one map of all the lines would: later wins."""
    rng = random.Random(11)
    table, lines = PerfMap(), []
    for _ in range(60):
        batch = [
            (
                0x1000 + 0x10 * rng.randrange(400),
                rng.choice((8, 16, 40)),
                b"f%d" % rng.randrange(10**6),
            )
            for _ in range(rng.choice((1, 2, 5, 30, 200)))
        ]
        table.extend(batch)
        lines += batch
    assert len(table) == len(lines)
    for address in range(0xF00, 0x1000 + 0x10 * 401, 3):
        found = table.lookup(address)
        assert (found.name if found else None) == _reference(lines, address), hex(address)


def test_runs_kept_apart_past_the_merge_bound_answer_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN a merge bound far below the map's size (many runs stay apart),
    THEN lookups still answer as one map would."""
    monkeypatch.setattr(perfmap_table, "MAX_MERGED", 16)
    test_batches_answer_as_one_map_read_at_once()


def test_a_later_batch_wins_for_the_same_start() -> None:
    table = PerfMap("1000 100 old\n")
    table.extend([(0x1000, 0x10, b"new")])
    found = table.lookup(0x1008)
    assert found is not None and (found.name, found.start, found.size) == ("new", 0x1000, 0x10)
    assert table.lookup(0x1010) is None  # the new, smaller region ends there


def test_an_empty_map_finds_nothing_and_names_decode_leniently() -> None:
    assert PerfMap("").lookup(0) is None
    table = PerfMap()
    table.extend([(0x10, 4, b"caf\xe9")])
    found = table.lookup(0x11)
    assert found is not None and found.name == "caf\ufffd"


# -- bounded streaming reads -----------------------------------------------------


def _read(data: bytes, **kw: Any) -> tuple[PerfMap, int, str, bool]:
    table = PerfMap()
    kw = {"max_bytes": 1 << 20, "max_entries": 1 << 20, **kw}
    chunk = read_entries(io.BytesIO(data), table, **kw)
    return table, chunk.consumed, chunk.stopped, chunk.skipping


def test_a_partial_last_line_is_left_for_the_next_read() -> None:
    table, consumed, stopped, _ = _read(b"1000 10 a\n2000 10 b")
    assert (len(table), consumed, stopped) == (1, len(b"1000 10 a\n"), "")


def test_bytes_and_entries_bound_a_read() -> None:
    data = b"".join(b"%x 10 f%d\n" % (0x1000 * i, i) for i in range(1, 101))
    table, consumed, stopped, _ = _read(data, max_bytes=50)
    kept = data.splitlines(keepends=True)[: len(table)]
    assert stopped == "bytes" and consumed == sum(map(len, kept)) and 50 <= consumed < 50 + 12
    table, _, stopped, _ = _read(data, max_entries=7)
    assert (len(table), stopped) == (7, "entries")


def test_an_over_long_line_is_skipped_even_across_reads() -> None:
    long = b"1000 10 " + b"x" * 100
    table, consumed, _, skipping = _read(long, max_line=32)
    assert (len(table), consumed, skipping) == (0, 99, True)  # dropped, a tail left
    table, consumed, _, skipping = _read(b"yyy\n2000 10 ok\n", max_line=32, skipping=True)
    assert (len(table), skipping) == (1, False) and table.lookup(0x2000) is not None


def test_a_deadline_stops_a_read() -> None:
    ticks = iter(range(10**6))
    data = b"1000 10 f\n" * 5000
    table, _, stopped, _ = _read(data, deadline=3, clock=lambda: next(ticks))
    assert stopped == "time" and 0 < len(table) < 5000


# -- the reader, on a fake /proc tree --------------------------------------------


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeJit:
    """A process PID whose own root is `root`, seen inside as NSPID."""

    proc: Path
    pid: int = 4242
    nspid: int = 7
    euid: int = field(default_factory=os.geteuid)

    def __post_init__(self) -> None:
        (self.proc / str(self.pid) / "root" / "tmp").mkdir(parents=True)
        (self.proc / str(self.pid) / "status").write_text(
            f"Name:\tnode\nNSpid:\t{self.pid}\t{self.nspid}\nUid:\t{self.euid}\t{self.euid}\t0\t0\n"
        )

    @property
    def map_path(self) -> Path:
        return self.proc / str(self.pid) / "root" / "tmp" / f"perf-{self.nspid}.map"

    def append(self, text: str) -> None:
        with open(self.map_path, "a") as f:
            f.write(text)

    def reader(self, clock: Callable[[], float] | None = None, **limits: float) -> PerfMapReader:
        lim = PerfMapLimits(**{"every_s": 0.0, **limits})  # type: ignore[arg-type]
        clock = clock or Clock()
        return PerfMapReader(self.pid, str(self.proc), SymbolizerStats(), lim, clock, clock)


def _name(reader: PerfMapReader, address: int) -> str | None:
    found = reader.lookup(address)
    return found.name if found else None


def test_reads_the_map_named_by_the_namespace_pid(tmp_path: Path) -> None:
    jit = FakeJit(tmp_path)
    jit.append("1000 10 first\n")
    reader = jit.reader()
    assert reader.refresh() and _name(reader, 0x1004) == "first"


def test_growth_is_read_incrementally_and_a_partial_line_completes_later(tmp_path: Path) -> None:
    jit = FakeJit(tmp_path)
    jit.append("1000 10 first\n")
    reader = jit.reader()
    assert _name(reader, 0x1004) == "first"
    jit.append("2000 10 second\n3000 10 thi")
    assert _name(reader, 0x2004) == "second" and _name(reader, 0x3004) is None
    jit.append("rd\n1000 10 first-reused\n")
    assert _name(reader, 0x3004) == "third"
    assert _name(reader, 0x1004) == "first-reused"  # later wins, across reads
    assert len(reader.map) == 4


def test_a_truncated_or_replaced_map_starts_over(tmp_path: Path) -> None:
    jit = FakeJit(tmp_path)
    jit.append("1000 10 aaaaaaaaaaaaaaaaaa\n2000 10 b\n")
    reader = jit.reader()
    assert _name(reader, 0x2004) == "b"
    jit.map_path.write_text("5000 10 c\n")  # shorter than what was read
    assert _name(reader, 0x5004) == "c" and _name(reader, 0x2004) is None
    new = jit.map_path.with_suffix(".new")
    new.write_text("6000 10 d\n" * 3)  # longer, but another inode
    new.rename(jit.map_path)
    assert _name(reader, 0x6004) == "d" and _name(reader, 0x5004) is None


def test_bounds_cut_the_map_count_once_and_stop_reading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jit = FakeJit(tmp_path)
    jit.append("".join(f"{0x1000 * i:x} 10 f{i}\n" for i in range(1, 21)))
    reader = jit.reader(entries=5)
    with caplog.at_level(logging.WARNING, "bpfprof.symbolizer"):
        assert _name(reader, 0x5004) == "f5" and _name(reader, 0x6004) is None
        jit.append("9000 10 later\n")
        assert _name(reader, 0x9004) is None
    assert len(reader.map) == 5 and reader.stats.perf_map_truncated == 1
    assert sum("cut at 5 entries" in r.message for r in caplog.records) == 1


def test_a_byte_bound_cuts_the_map(tmp_path: Path) -> None:
    jit = FakeJit(tmp_path)
    jit.append("".join(f"{0x1000 * i:x} 10 f{i:02d}\n" for i in range(1, 21)))  # 13 bytes a line
    reader = jit.reader(total_bytes=36)
    assert _name(reader, 0x3004) == "f03" and _name(reader, 0x4004) is None
    assert reader.stats.perf_map_truncated == 1


def test_each_refresh_reads_a_bounded_slice(tmp_path: Path) -> None:
    jit = FakeJit(tmp_path)
    jit.append("".join(f"{0x1000 * i:x} 10 f{i:02d}\n" for i in range(1, 21)))
    reader = jit.reader(refresh_bytes=24)
    reader.refresh()
    assert len(reader.map) == 2
    for _ in range(20):
        reader.refresh()
    assert len(reader.map) == 20 and reader.stats.perf_map_truncated == 0


def test_a_quiet_map_is_looked_at_once_per_interval(tmp_path: Path) -> None:
    jit, clock = FakeJit(tmp_path), Clock()
    jit.append("1000 10 a\n")
    reader = jit.reader(clock, every_s=1.0)
    reader.refresh()  # grew: the next look may come at once
    reader.refresh()  # nothing new: quiet for every_s
    jit.append("2000 10 b\n")
    assert _name(reader, 0x2004) is None
    clock.now += 1.0
    assert _name(reader, 0x2004) == "b"


def test_a_growing_map_is_read_within_a_share_of_the_time(tmp_path: Path) -> None:
    """GIVEN each look at the clock takes 0.1 s and the share is 5%,
    THEN a look that found new lines (0.1 s) is followed by none for 2 s."""
    jit, clock = FakeJit(tmp_path), Clock()

    def ticking() -> float:
        clock.now += 0.1
        return clock.now

    jit.append("1000 10 a\n")
    reader = jit.reader(ticking, every_s=1.0, share=0.05)
    reader.refresh()
    looked = clock.now - 0.1
    jit.append("2000 10 b\n")
    while len(reader.map) < 2:
        reader.refresh()
        assert clock.now < looked + 10
    assert clock.now >= looked + 2.0


def test_waiting_for_a_cpu_is_not_counted_as_the_cost_of_a_look(tmp_path: Path) -> None:
    """GIVEN a busy host: each look takes 3 s of wall time but 0.01 s of the
    agent's CPU, THEN the next look waits its CPU cost / share, not 30 s: a
    huge map is read at the pace the agent's own time allows."""
    jit, wall, work = FakeJit(tmp_path), Clock(), Clock()

    def waiting() -> float:
        wall.now += 1.5  # two readings of the wall clock per look
        return wall.now

    def working() -> float:
        work.now += 0.005
        return work.now

    jit.append("1000 10 a\n")
    reader = PerfMapReader(
        jit.pid,
        str(jit.proc),
        SymbolizerStats(),
        PerfMapLimits(every_s=1.0, share=0.05),
        waiting,
        working,
    )
    reader.refresh()
    jit.append("2000 10 b\n")
    wall.now += 1.0  # past the few ms of agent time / 5 %, far short of 30 s
    reader.refresh()
    assert len(reader.map) == 2


def test_a_vanished_process_keeps_its_map(tmp_path: Path) -> None:
    jit = FakeJit(tmp_path)
    jit.append("1000 10 a\n")
    reader = jit.reader()
    assert _name(reader, 0x1004) == "a"
    (tmp_path / str(jit.pid) / "status").unlink()
    assert reader.refresh() and _name(reader, 0x1004) == "a"


def test_no_map_yet_then_one(tmp_path: Path) -> None:
    jit = FakeJit(tmp_path)
    reader = jit.reader()
    assert not reader.refresh() and _name(reader, 0x1004) is None
    jit.append("1000 10 late\n")
    assert _name(reader, 0x1004) == "late" and reader.stats.perf_map_refused == 0


# -- refusals --------------------------------------------------------------------


def _plant_symlink_to(target: Path) -> Callable[[FakeJit], None]:
    return lambda jit: jit.map_path.symlink_to(target)


def _plant(kind: str, tmp_path: Path) -> Callable[[FakeJit], None]:
    secret = tmp_path / "secret"
    secret.write_text("1000 10 SECRET\n")
    return {
        "symlink to a file": _plant_symlink_to(secret),
        "symlink to /dev/zero": _plant_symlink_to(Path("/dev/zero")),
        "fifo": lambda jit: os.mkfifo(jit.map_path),
        "directory": lambda jit: jit.map_path.mkdir(),
    }[kind]


@pytest.mark.parametrize("kind", ["symlink to a file", "symlink to /dev/zero", "fifo", "directory"])
def test_refused_files_are_counted_warned_once_and_never_block(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jit = FakeJit(tmp_path / "proc")
    _plant(kind, tmp_path)(jit)
    reader = jit.reader()
    done = threading.Event()

    def look() -> None:
        for _ in range(3):
            reader.lookup(0x1004)
        done.set()

    with caplog.at_level(logging.WARNING, "bpfprof.symbolizer"):
        threading.Thread(target=look, daemon=True).start()
        assert done.wait(5), "a refused file blocked the reader"
    assert len(reader.map) == 0 and not reader.present
    assert reader.stats.perf_map_refused == 1
    assert sum("not read" in r.message for r in caplog.records) == 1


def test_a_map_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    jit = FakeJit(tmp_path, euid=os.geteuid() + 1)  # the process runs as someone else
    jit.append("1000 10 planted\n")
    reader = jit.reader()
    assert _name(reader, 0x1004) is None and reader.stats.perf_map_refused == 1


def test_a_symlink_out_of_the_process_root_is_not_followed(tmp_path: Path) -> None:
    """A directory symlink on the way resolves inside the process's root."""
    jit = FakeJit(tmp_path / "proc")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f"perf-{jit.nspid}.map").write_text("1000 10 OUTSIDE\n")
    tmp = jit.map_path.parent
    tmp.rmdir()
    tmp.symlink_to(outside)  # absolute: inside the root it means <root>/<outside>
    reader = jit.reader()
    assert _name(reader, 0x1004) is None and not reader.present


# -- through the Symbolizer ------------------------------------------------------


def test_symbolizer_names_jit_code_written_after_it_first_looked(tmp_path: Path) -> None:
    """GIVEN a process with an anonymous executable mapping and no perf map
    when first observed, WHEN its runtime writes the map and later appends
    a second region, THEN both resolve as jit frames (within a few of the
    reader's re-read intervals)."""
    jit = FakeJit(tmp_path / "proc")
    maps = "7f0000000000-7f0000010000 r-xp 00000000 00:00 0 \n"
    (tmp_path / "proc" / str(jit.pid) / "maps").write_text(maps)
    sym = Symbolizer(proc_root=str(tmp_path / "proc"), debug_search=DebugSearch((), ()))
    sym.observe(jit.pid)
    assert sym.resolve_user(jit.pid, 0x7F0000000104).function is None
    jit.append("7f0000000100 40 LazyCompile:*first a.js:1\n")
    _wait_named(sym, jit.pid, 0x7F0000000104, "LazyCompile:*first a.js:1")
    jit.append("7f0000008000 40 LazyCompile:*second a.js:9\n")
    frame = _wait_named(sym, jit.pid, 0x7F0000008010, "LazyCompile:*second a.js:9")
    assert frame.kind == "jit" and frame.symbol_offset == 0x10 and frame.mapping is not None


def _wait_named(sym: Symbolizer, pid: int, address: int, name: str) -> ResolvedFrame:
    """Resolve until named (a re-read may wait a little: see the reader)."""
    deadline = time.monotonic() + 5
    while True:
        frame = sym.resolve_user(pid, address)
        if frame.function == name or time.monotonic() > deadline:
            assert frame.function == name
            return frame
        time.sleep(0.05)

"""The loader's bookkeeping, with a fake /proc and a plain fake for the maps."""

from __future__ import annotations

import os
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from agent.unwind import loader as loader_module
from agent.unwind.layout import MAPPING
from agent.unwind.loader import RangeAllocator, TableBuilder, UnwindLoader, default_cache_dir
from agent.unwind.table import ElfUnwindInfo, TableCache, TableError, load_unwind_info
from symbolizer.budget import Budget
from tests.conftest import PROGRAMS, compile_c


@dataclass
class FakeMaps:
    rows: dict[int, bytes] = field(default_factory=dict)  # first -> data
    mappings: dict[int, bytes] = field(default_factory=dict)
    procs: dict[int, tuple[int, int]] = field(default_factory=dict)
    writes: list[int] = field(default_factory=list)  # first row of each rows write

    def write_rows(self, first: int, data: bytes) -> None:
        self.rows[first] = data
        self.writes.append(first)

    def write_mappings(self, first: int, data: bytes) -> None:
        self.mappings[first] = data

    def set_process(self, pid: int, first_map: int, count: int) -> None:
        self.procs[pid] = (first_map, count)

    def delete_process(self, pid: int) -> None:
        self.procs.pop(pid, None)

    def mappings_of(self, pid: int) -> list[tuple[int, ...]]:
        first, count = self.procs[pid]
        data = self.mappings[first]
        return [MAPPING.unpack_from(data, i * MAPPING.size) for i in range(count)]


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loader") / "prog"
    return compile_c(PROGRAMS / "hotsplit.c", out, "-O2")


def fake_proc(root: Path, pid: int, binary: Path, start: int = 0x555555554000) -> None:
    """/proc/PID with maps for `binary`'s two first segments and a heap."""
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "root").symlink_to("/")
    st = os.stat(binary)  # the device and inode the kernel would print
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x} {st.st_ino}"
    (d / "maps").write_text(
        f"{start:x}-{start + 0x1000:x} r--p 00000000 {ident} {binary}\n"
        f"{start + 0x1000:x}-{start + 0x2000:x} r-xp 00001000 {ident} {binary}\n"
        f"{start + 0x10000:x}-{start + 0x20000:x} rw-p 00000000 00:00 0 [heap]\n"
    )


def loader(root: Path, rows: int = 1 << 16, maps: int = 64) -> tuple[UnwindLoader, FakeMaps]:
    fake = FakeMaps()
    return (
        UnwindLoader(
            fake, max_rows=rows, max_maps=maps, cache=TableCache(None), proc_root=str(root)
        ),
        fake,
    )


def test_a_process_gets_its_executable_mapping(tmp_path: Path, binary: Path) -> None:
    fake_proc(tmp_path, 100, binary)
    unwinder, fake = loader(tmp_path)
    assert unwinder.load(100)
    ((start, end, base, first_row, count),) = fake.mappings_of(100)
    assert (start, end) == (0x555555555000, 0x555555556000)
    assert base - 0x555555554000 == min_fde_address(binary)  # load bias + table base
    assert fake.rows[first_row] and len(fake.rows[first_row]) == count * 12
    assert unwinder.stats.binaries == 1 and unwinder.stats.processes == 1


def min_fde_address(binary: Path) -> int:
    from agent.unwind.table import build_table
    from symbolizer.elffile import ElfFile

    with open(binary, "rb") as f:
        return build_table(ElfFile(f), "").base


def test_binaries_are_loaded_once_and_processes_reloaded(tmp_path: Path, binary: Path) -> None:
    fake_proc(tmp_path, 100, binary)
    fake_proc(tmp_path, 101, binary, start=0x7F0000000000)
    unwinder, fake = loader(tmp_path)
    assert unwinder.load(100) and unwinder.load(101)
    assert len(fake.rows) == 1  # the same file: its rows once
    first = fake.procs[100]
    assert unwinder.load(100)  # after an exec, say: new range, old one freed
    assert fake.procs[100] != first
    unwinder.forget(100)
    assert 100 not in fake.procs and 101 in fake.procs


def test_a_loaded_binary_keeps_no_copy_of_its_rows(tmp_path: Path, binary: Path) -> None:
    """Rows go into the map once; a later process mapping the same file is
    placed from what was kept, as a loader that never saw it would place it."""
    fake_proc(tmp_path, 100, binary)
    fake_proc(tmp_path, 101, binary, start=0x7F0000000000)
    unwinder, fake = loader(tmp_path)
    assert unwinder.load(100) and unwinder.load(101)
    fresh, fresh_maps = loader(tmp_path)
    assert fresh.load(101)
    assert fake.mappings_of(101) == fresh_maps.mappings_of(101)
    kept = [b for b in unwinder._binaries.values() if b is not None]
    assert kept and all(b.info.table.data == b"" and b.row_count for b in kept)


def test_full_maps_are_counted_and_gone_processes_swept(tmp_path: Path, binary: Path) -> None:
    fake_proc(tmp_path, 100, binary)
    fake_proc(tmp_path, 101, binary)
    unwinder, fake = loader(tmp_path, maps=1)
    assert unwinder.load(100)
    assert not unwinder.load(101) and unwinder.stats.maps_full == 1
    (tmp_path / "100" / "maps").unlink()
    (tmp_path / "100" / "root").unlink()
    (tmp_path / "100").rmdir()  # 100 exited: its range is reclaimed
    assert unwinder.load(101) and 100 not in fake.procs


def test_full_rows_leave_the_binary_to_frame_pointers(tmp_path: Path, binary: Path) -> None:
    fake_proc(tmp_path, 100, binary)
    unwinder, fake = loader(tmp_path, rows=2)
    assert unwinder.load(100)
    assert unwinder.stats.rows_full == 1 and not fake.rows
    assert [m[4] for m in fake.mappings_of(100)] == [0]  # known, with no rows


@pytest.fixture(scope="module")
def others(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two more builds of a program: binaries with build IDs of their own."""
    out = tmp_path_factory.mktemp("loader-others")
    return (
        compile_c(PROGRAMS / "hotsplit.c", out / "o0", "-O0"),
        compile_c(PROGRAMS / "hotsplit.c", out / "o1", "-O1"),
    )


def rows_of(binary: Path) -> int:
    from agent.unwind.table import build_table
    from symbolizer.elffile import ElfFile

    with open(binary, "rb") as f:
        return build_table(ElfFile(f), "").count


def multi_proc(root: Path, pid: int, *binaries: Path) -> None:
    """/proc/PID mapping each of `binaries`' text, 1 GiB apart."""
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "root").symlink_to("/")
    lines = []
    for i, binary in enumerate(binaries):
        st = os.stat(binary)
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x} {st.st_ino}"
        start = 0x555555554000 + (i << 30)
        lines.append(f"{start:x}-{start + 0x1000:x} r--p 00000000 {ident} {binary}\n")
        lines.append(f"{start + 0x1000:x}-{start + 0x2000:x} r-xp 00001000 {ident} {binary}\n")
    (d / "maps").write_text("".join(lines))


def exit_proc(root: Path, pid: int) -> None:
    d = root / str(pid)
    (d / "maps").unlink()
    (d / "root").unlink()
    d.rmdir()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def clocked(root: Path, rows: int) -> tuple[UnwindLoader, FakeMaps, Clock]:
    fake, clock = FakeMaps(), Clock()
    unwinder = UnwindLoader(
        fake, max_rows=rows, max_maps=64, cache=TableCache(None), proc_root=str(root), clock=clock
    )
    return unwinder, fake, clock


def row_counts(fake: FakeMaps, pid: int) -> list[int]:
    return [m[4] for m in fake.mappings_of(pid)]


def test_rows_of_a_binary_no_process_maps_go_to_a_new_one(
    tmp_path: Path, binary: Path, others: tuple[Path, Path]
) -> None:
    """Rows for one binary at a time: the second finds the first's process
    gone, takes its rows, and is walked with CFI (before, it was left to
    frame pointers until the agent restarted)."""
    a, b = others
    multi_proc(tmp_path, 100, a)
    multi_proc(tmp_path, 101, b)
    unwinder, fake, _ = clocked(tmp_path, max(rows_of(a), rows_of(b)) + 8)
    assert unwinder.load(100) and row_counts(fake, 100) == [rows_of(a)]
    exit_proc(tmp_path, 100)
    assert unwinder.load(101) and row_counts(fake, 101) == [rows_of(b)]
    assert unwinder.stats.rows_evicted == 1 and unwinder.stats.rows_full == 0
    assert unwinder.stats.binaries == 1 and unwinder.stats.rows == rows_of(b)
    assert 100 not in fake.procs  # let go on the way
    # a binary evicted and mapped again is placed again (from the disk
    # cache in the agent): the same rows, in the same place
    multi_proc(tmp_path, 102, a)
    exit_proc(tmp_path, 101)
    assert unwinder.load(102) and row_counts(fake, 102) == [rows_of(a)]
    assert unwinder.stats.rows_evicted == 2


def test_a_binary_a_running_process_maps_keeps_its_rows(
    tmp_path: Path, others: tuple[Path, Path]
) -> None:
    """No room while the first process runs: the second binary is left to
    frame pointers, and not read again for each process that maps it until
    rows are freed or a second has passed; then it is placed."""
    a, b = others
    multi_proc(tmp_path, 100, a)
    multi_proc(tmp_path, 101, b)
    multi_proc(tmp_path, 102, b)
    multi_proc(tmp_path, 103, b)
    unwinder, fake, clock = clocked(tmp_path, max(rows_of(a), rows_of(b)) + 8)
    assert unwinder.load(100)
    clock.now += 5
    assert unwinder.load(101) and row_counts(fake, 101) == [0]
    assert unwinder.stats.rows_full == 1 and unwinder.stats.rows_evicted == 0
    assert row_counts(fake, 100) == [rows_of(a)]
    exit_proc(tmp_path, 100)
    assert unwinder.load(102) and row_counts(fake, 102) == [0]
    assert unwinder.stats.rows_full == 1  # not tried again: no rows freed, no time passed
    clock.now += 1
    assert unwinder.load(103) and row_counts(fake, 103) == [rows_of(b)]
    assert unwinder.stats.rows_evicted == 1


def test_the_least_recently_mapped_binary_goes_first(
    tmp_path: Path, binary: Path, others: tuple[Path, Path]
) -> None:
    a, b = others
    multi_proc(tmp_path, 100, a)
    multi_proc(tmp_path, 101, b)
    multi_proc(tmp_path, 102, a)
    multi_proc(tmp_path, 103, binary)
    room = rows_of(a) + rows_of(b) + max(0, rows_of(binary) - min(rows_of(a), rows_of(b))) // 2
    assert room < rows_of(a) + rows_of(b) + rows_of(binary)
    unwinder, fake, _ = clocked(tmp_path, room)
    assert unwinder.load(100) and unwinder.load(101) and unwinder.load(102)
    written = len(fake.writes)
    for pid in (100, 101, 102):
        exit_proc(tmp_path, pid)  # a was mapped last (by 102)
    assert unwinder.load(103) and row_counts(fake, 103) == [rows_of(binary)]
    assert unwinder.stats.rows_evicted == 1  # b: a stays
    multi_proc(tmp_path, 104, a)
    assert unwinder.load(104) and row_counts(fake, 104) == [rows_of(a)]
    assert len(fake.writes) == written + 1  # only binary's: a's were not written again


def test_a_process_does_not_evict_its_own_binaries(
    tmp_path: Path, others: tuple[Path, Path]
) -> None:
    """One process maps two binaries that do not fit together: the first
    placed keeps its rows, the second is left to frame pointers."""
    a, b = others
    multi_proc(tmp_path, 100, a, b)
    unwinder, fake, _ = clocked(tmp_path, max(rows_of(a), rows_of(b)) + 8)
    assert unwinder.load(100) and row_counts(fake, 100) == [rows_of(a), 0]
    assert unwinder.stats.rows_evicted == 0 and unwinder.stats.rows_full == 1


class HeldBuilder(TableBuilder):
    """Builds when told to (`run`), on the caller's thread, or fails as told."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[tuple[Future[ElfUnwindInfo], IO[bytes], str, TableCache, Budget]] = []

    def submit(
        self, key: str, f: IO[bytes], build_id: str, cache: TableCache, budget: Budget
    ) -> Future[ElfUnwindInfo]:
        future: Future[ElfUnwindInfo] = Future()
        self.jobs.append((future, f, build_id, cache, budget))
        return future

    def run(self, fail: Exception | None = None) -> None:
        for future, f, build_id, cache, budget in self.jobs:
            with f:
                if fail is not None:
                    future.set_exception(fail)
                else:
                    future.set_result(load_unwind_info(f, build_id, cache, budget))
        self.jobs.clear()


def deferred(root: Path, builder: TableBuilder) -> tuple[UnwindLoader, FakeMaps]:
    fake = FakeMaps()
    unwinder = UnwindLoader(
        fake,
        max_rows=1 << 16,
        max_maps=64,
        cache=TableCache(None),
        proc_root=str(root),
        builder=builder,
    )
    return unwinder, fake


def test_a_big_binarys_table_is_built_in_the_background(
    tmp_path: Path, binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process waits unpublished (its samples keep raw stacks) while the
    table is built, once for every process that maps the file; it is
    published with the rows once they are placed. A walk in user space
    (raw stacks, at a drain) waits for the table."""
    monkeypatch.setattr(loader_module, "ASYNC_BYTES", 0)
    fake_proc(tmp_path, 100, binary)
    fake_proc(tmp_path, 101, binary, start=0x7F0000000000)
    builder = HeldBuilder()
    unwinder, fake = deferred(tmp_path, builder)
    assert unwinder.load(100) and unwinder.load(101)
    assert not fake.procs and not fake.rows and len(builder.jobs) == 1
    assert unwinder.stats.tables_deferred == 1
    assert unwinder.finish_builds() == 0  # not built yet: nothing changes
    # a walk that cannot wait longer goes without the rows
    layout = unwinder.layout(100, wait_s=0.01)
    assert layout is not None and layout[0].rows is None and unwinder.building(100)
    builder.run()
    assert unwinder.finish_builds() == 1
    assert row_counts(fake, 100) == row_counts(fake, 101) == [rows_of(binary)]
    layout = unwinder.layout(100)
    assert layout is not None and layout[0].rows is not None and not unwinder.building(100)


def test_a_raw_walk_waits_for_the_table(
    tmp_path: Path, binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real builder thread: layout() waits for the build, also for
    processes that exited meanwhile (reaped, or a zombie)."""
    monkeypatch.setattr(loader_module, "ASYNC_BYTES", 0)
    fake_proc(tmp_path, 100, binary)
    fake_proc(tmp_path, 101, binary, start=0x7F0000000000)
    unwinder, fake = deferred(tmp_path, TableBuilder())
    assert unwinder.load(100) and unwinder.load(101)
    exit_proc(tmp_path, 100)
    (tmp_path / "101" / "maps").write_text("")  # a zombie: no mappings left
    for pid in (100, 101):
        layout = unwinder.layout(pid)
        assert layout is not None and layout[0].rows is not None
        assert len(layout[0].rows._pcs) == rows_of(binary)
    assert not fake.procs  # gone: not published


def test_a_running_process_is_walked_on_while_its_new_library_builds(
    tmp_path: Path, binary: Path, others: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process published before (a dlopen since): published again at once,
    the new library without rows (frame pointers there) until its table is
    placed; a build that fails leaves it without rows, counted."""
    a, b = others
    multi_proc(tmp_path, 100, binary)
    builder = HeldBuilder()
    unwinder, fake = deferred(tmp_path, builder)
    assert unwinder.load(100) and row_counts(fake, 100) == [rows_of(binary)]
    monkeypatch.setattr(loader_module, "ASYNC_BYTES", 0)
    exit_proc(tmp_path, 100)
    multi_proc(tmp_path, 100, binary, a, b)
    assert unwinder.load(100) and row_counts(fake, 100) == [rows_of(binary), 0, 0]
    assert len(builder.jobs) == 2
    first, *rest = builder.jobs
    builder.jobs = [first]
    builder.run()
    assert unwinder.finish_builds() == 1
    assert row_counts(fake, 100) == [rows_of(binary), rows_of(a), 0]
    builder.jobs = rest
    builder.run(fail=TableError("no CFI"))
    errors = unwinder.stats.errors
    assert unwinder.finish_builds() == 1 and unwinder.stats.errors == errors + 1
    assert row_counts(fake, 100) == [rows_of(binary), rows_of(a), 0]
    # the file that failed is not tried again
    assert unwinder.load(100) and not builder.jobs


def test_the_builder_builds_a_file_once(binary: Path) -> None:
    builder = TableBuilder()
    budget = Budget()
    # the builder closes the files it is given
    futures = [
        builder.submit("k", open(binary, "rb"), "", TableCache(None), budget)  # noqa: SIM115
        for _ in range(2)
    ]
    assert futures[0].result(timeout=30).table.count == rows_of(binary)
    assert futures[1] is futures[0] or futures[1].result(timeout=30).table.count == rows_of(binary)
    null = open("/dev/null", "rb")  # noqa: SIM115
    failed = builder.submit("bad", null, "", TableCache(None), budget)
    with pytest.raises(TableError):
        failed.result(timeout=30)


def test_vanished_process_and_unreadable_file(tmp_path: Path, binary: Path) -> None:
    unwinder, fake = loader(tmp_path)
    assert not unwinder.load(999)
    d = tmp_path / "5"
    d.mkdir()
    (d / "root").symlink_to("/")
    (d / "maps").write_text(
        "400000-401000 r-xp 00000000 08:01 7 /nonexistent/prog\n"
        "7fff00000000-7fff00002000 r-xp 00000000 00:00 0 [vdso]\n"
        "7fff00004000-7fff00006000 rw-p 00000000 00:00 0 [stack]\n"
    )
    assert unwinder.load(5) and unwinder.stats.errors == 1
    assert fake.mappings_of(5) == [
        (0x400000, 0x401000, 0, 0, 0),
        (0x7FFF00000000, 0x7FFF00002000, 0, 0, 0),
    ]
    (d / "maps").write_text("")  # every mapping gone: a process exiting mid-read
    assert unwinder.load(5) and 5 not in fake.procs


def test_range_allocator_first_fit_and_merge() -> None:
    a = RangeAllocator(10)
    assert (a.alloc(4), a.alloc(4), a.alloc(4)) == (0, 4, None)
    a.free(0, 4)
    assert a.used == 4 and a.alloc(2) == 0
    a.free(4, 4)
    a.free(0, 2)
    assert a.used == 0 and a.alloc(10) == 0
    assert RangeAllocator(0).alloc(1) is None


def test_cache_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPFPROF_CACHE_DIR", "/x")
    assert default_cache_dir() == Path("/x/unwind")
    monkeypatch.delenv("BPFPROF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/y")
    assert default_cache_dir() == Path("/y/bpfprof/unwind")

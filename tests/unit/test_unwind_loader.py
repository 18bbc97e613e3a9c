"""The loader's bookkeeping, with a fake /proc and a plain fake for the maps."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.unwind.layout import MAPPING
from agent.unwind.loader import RangeAllocator, UnwindLoader, default_cache_dir
from agent.unwind.table import TableCache
from tests.conftest import PROGRAMS, compile_c


@dataclass
class FakeMaps:
    rows: dict[int, bytes] = field(default_factory=dict)  # first -> data
    mappings: dict[int, bytes] = field(default_factory=dict)
    procs: dict[int, tuple[int, int]] = field(default_factory=dict)

    def write_rows(self, first: int, data: bytes) -> None:
        self.rows[first] = data

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

"""The Symbolizer on processes: real ones built and run here, and fake
/proc trees written from plain records."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from symbolizer import Symbolizer, parse_maps, read_maps
from symbolizer import resolver as resolver_module
from symbolizer.process import is_mapped
from tests.programs import symtest
from tests.programs.symtest import Programs, Running


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    if not symtest.have_gcc():
        pytest.skip("gcc is not installed")
    return symtest.build(tmp_path_factory.mktemp("symtest"))


def _symbol_start(path: Path | str, name: str) -> int:
    return next(s for s, _, n in symtest.function_symbols(path) if n == name)


# -- real processes ------------------------------------------------------------

OWN = ["main", "main_static", "main_work", "nosize_fn"]
LIB = ["lib_static_helper", "lib_add", "lib_mul"]


@pytest.mark.parametrize("which", ["pie", "nopie"])
def test_live_process_resolves_and_survives_exit(programs: Programs, which: str) -> None:
    exe = getattr(programs, which)
    run = Running(exe)
    try:
        sym = Symbolizer()
        sym.observe(run.pid)
        before = {n: sym.resolve_user(run.pid, a + 1) for n, a in run.addresses.items()}
    finally:
        run.stop()
    assert not os.path.exists(f"/proc/{run.pid}")
    # WHEN the process is gone THEN the snapshot still resolves, identically
    after = {n: sym.resolve_user(run.pid, a + 1) for n, a in run.addresses.items()}
    assert after == before
    for names, path in ((OWN, exe), (LIB, programs.lib)):
        for name in names:
            frame = after[name]
            assert (frame.function, frame.symbol_offset) == (name, 1)
            assert frame.mapping is not None and frame.mapping.path == str(path)
            assert frame.mapping.contains(run.addresses[name]) and frame.mapping.is_exec
            assert frame.build_id == symtest.readelf_build_id(path)
            assert frame.elf_vaddr == _symbol_start(path, name) + 1
    assert sym.process_name(run.pid) == exe.name
    assert sym.executable_path(run.pid) == str(exe)


def test_libc_function(programs: Programs) -> None:
    """&qsort as the library saw it: the vaddr must be qsort's st_value in
    the libc file (an independent check of the load-bias math)."""
    run = Running(programs.pie)
    try:
        sym = Symbolizer()
        frame = sym.resolve_user(run.pid, run.addresses["qsort"])  # observes on first use
    finally:
        run.stop()
    assert frame.function == "qsort" and frame.symbol_offset == 0
    assert frame.mapping is not None
    libc = f"/proc/self/root{frame.mapping.path}"
    assert frame.elf_vaddr == _symbol_start(libc, "qsort")
    assert frame.build_id == symtest.readelf_build_id(libc)


def test_processes_share_one_table_per_file(programs: Programs) -> None:
    first, second = Running(programs.pie), Running(programs.nopie)
    try:
        sym = Symbolizer()
        sym.observe(first.pid)
        loaded = sym.stats.tables_loaded
        sym.observe(second.pid)
    finally:
        first.stop()
        second.stop()
    # only the non-PIE executable is new; the library and libc are shared
    assert sym.stats.tables_loaded == loaded + 1
    for name in ("lib_add", "qsort"):
        a = sym.table_for(first.pid, first.addresses[name])
        b = sym.table_for(second.pid, second.addresses[name])
        assert a is not None and a is b


@pytest.mark.skipif(os.geteuid() != 0, reason="map_files needs CAP_SYS_ADMIN (root)")
def test_deleted_library_resolves_through_map_files(programs: Programs, tmp_path: Path) -> None:
    for path in (programs.lib, programs.pie):
        shutil.copy(path, tmp_path / path.name)
    exe = tmp_path / programs.pie.name
    run = Running(exe)  # its rpath names the original library's directory
    try:
        (tmp_path / programs.pie.name).unlink()
        sym = Symbolizer()
        sym.observe(run.pid)
    finally:
        run.stop()
    frame = sym.resolve_user(run.pid, run.addresses["main_work"])
    assert frame.mapping is not None and frame.mapping.deleted
    assert frame.function == "main_work"
    assert sym.process_name(run.pid) == exe.name


def test_a_pid_that_exited_is_recorded_and_counted_once_not_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process that exits before its maps are read is the common case on
    a busy host (hundreds a second): counted once for record's one-line
    summary, not a warning each."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # can never exist
    sym = Symbolizer()
    with caplog.at_level(logging.WARNING, logger="bpfprof.symbolizer"):
        sym.observe(pid)
        sym.observe(pid)
        frame = sym.resolve_user(pid, 0x401000)
    assert (frame.function, frame.mapping, frame.address) == (None, None, 0x401000)
    assert sym.stats.vanished_pids == 2 and sym.stats.misses == 1
    assert sym.stats.exited_unread == 1
    assert caplog.records == []
    assert sym.process_name(pid) == "" and sym.executable_path(pid) == ""


def test_maps_unreadable_for_another_reason_are_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "77" / "maps").mkdir(parents=True)  # reading it fails, and not as "gone"
    sym = Symbolizer(proc_root=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="bpfprof.symbolizer"):
        sym.observe(77)
        sym.observe(77)
    assert [r.getMessage()[:26] for r in caplog.records] == ["cannot read maps of pid 77"]
    assert sym.stats.exited_unread == 0


# -- fake /proc trees ----------------------------------------------------------


@dataclass
class FakeProcess:
    """What a test /proc/PID holds: maps text, exe link, files by mapping."""

    pid: int
    maps: str
    exe: str = ""
    comm: str = ""
    map_files: dict[str, Path] = field(default_factory=dict)  # "start-end" → file

    def write(self, proc: Path, root: Path) -> None:
        d = proc / str(self.pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "maps").write_text(self.maps)
        if self.comm:
            (d / "comm").write_text(self.comm + "\n")
        for link, target in (("exe", self.exe), ("root", str(root))):
            if target and not (d / link).is_symlink():
                (d / link).symlink_to(target)
        (d / "map_files").mkdir(exist_ok=True)
        for span, target in self.map_files.items():
            (d / "map_files" / span).symlink_to(target)


def maps_line(start: int, end: int, offset: int, path: Path | str, of: Path | None = None) -> str:
    """A maps line naming the device and inode of the file mapped (`of`, else
    `path` itself), as the kernel prints them; a made-up one for no file."""
    try:
        st = os.stat(of or path)
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x} {st.st_ino}"
    except OSError:
        ident = "08:01 1"
    return f"{start:x}-{end:x} r-xp {offset:08x} {ident} {path}\n"


LIB_BASE = 0x7F0000000000


def test_newer_snapshot_wins_older_still_resolves(programs: Programs, tmp_path: Path) -> None:
    """GIVEN a process observed running the non-PIE build with the library,
    then (after an exec) the PIE build loaded over the same range."""
    proc = tmp_path / "proc"
    lib_text = maps_line(LIB_BASE + 0x1000, LIB_BASE + 0x2000, 0x1000, programs.lib)
    nopie_text = maps_line(0x401000, 0x402000, 0x1000, programs.nopie)
    FakeProcess(50, lib_text + nopie_text, comm="old").write(proc, Path("/"))
    sym = Symbolizer(proc_root=str(proc))
    sym.observe(50)
    pie_text = maps_line(0x401000, 0x402000, 0x1000, programs.pie)  # PIE loaded at 0x400000
    FakeProcess(50, pie_text, comm="new").write(proc, Path("/"))
    sym.observe(50)
    # WHEN addresses are resolved THEN the newest snapshot holding each one answers
    pie_main = sym.resolve_user(50, 0x400000 + _symbol_start(programs.pie, "main"))
    assert pie_main.function == "main"
    assert pie_main.build_id == symtest.readelf_build_id(programs.pie)
    old_only = sym.resolve_user(50, LIB_BASE + _symbol_start(programs.lib, "lib_mul"))
    assert old_only.function == "lib_mul"
    assert sym.process_name(50) == "new"


def test_deleted_mapping_uses_map_files_not_the_path(programs: Programs, tmp_path: Path) -> None:
    """The path of a deleted mapping now names another file (the PIE); the
    mapped file (the library) is reachable only through map_files."""
    proc, root = tmp_path / "proc", tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    shutil.copy(programs.pie, root / "usr/lib/libsymtest.so")
    span = (0x7F0000001000, 0x7F0000002000)
    line = maps_line(*span, 0x1000, "/usr/lib/libsymtest.so (deleted)", programs.lib)
    FakeProcess(60, line, map_files={f"{span[0]:x}-{span[1]:x}": programs.lib}).write(proc, root)
    sym = Symbolizer(proc_root=str(proc))
    lib_add = 0x7F0000000000 + _symbol_start(programs.lib, "lib_add")
    frame = sym.resolve_user(60, lib_add)
    assert frame.function == "lib_add"
    assert frame.build_id == symtest.readelf_build_id(programs.lib)


def test_container_path_resolves_under_proc_root(programs: Programs, tmp_path: Path) -> None:
    proc, root = tmp_path / "proc", tmp_path / "container"
    (root / "app").mkdir(parents=True)
    shutil.copy(programs.nopie, root / "app/server")
    line = maps_line(0x401000, 0x402000, 0x1000, "/app/server", root / "app/server")
    FakeProcess(70, line).write(proc, root)
    sym = Symbolizer(proc_root=str(proc))
    frame = sym.resolve_user(70, _symbol_start(programs.nopie, "main_work") + 4)
    assert (frame.function, frame.symbol_offset) == ("main_work", 4)


BROKEN = {
    "random bytes": b"\x13\x37" * 2000,
    "truncated ELF": b"\x7fELF\x02\x01\x01" + b"\0" * 20,
    "text": b"#!/bin/sh\n",
}


@pytest.mark.parametrize("content", BROKEN.values(), ids=BROKEN.keys())
def test_unusable_file_leaves_address_with_mapping(
    content: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc, root = tmp_path / "proc", tmp_path / "root"
    root.mkdir()
    (root / "bad").write_bytes(content)
    line = maps_line(0x10000, 0x20000, 0, "/bad", root / "bad")
    FakeProcess(80, line).write(proc, root)
    FakeProcess(81, line).write(proc, root)
    sym = Symbolizer(proc_root=str(proc))
    with caplog.at_level(logging.WARNING, logger="bpfprof.symbolizer"):
        frames = [sym.resolve_user(pid, 0x10010) for pid in (80, 81, 80)]
    assert [f.function for f in frames] == [None] * 3
    assert all(f.mapping is not None and f.mapping.path == "/bad" for f in frames)
    assert sym.stats.bad_elf == 1 and sym.stats.misses == 3
    assert len(caplog.records) == 1


def test_missing_file_is_counted_and_address_kept(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    FakeProcess(90, maps_line(0x10000, 0x20000, 0, "/no/such/file")).write(proc, tmp_path)
    sym = Symbolizer(proc_root=str(proc))
    frame = sym.resolve_user(90, 0x10010)
    assert frame.function is None and frame.mapping is not None
    assert sym.stats.unreadable_files == 1


def test_anonymous_and_unmapped_addresses(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    anon = "7f0000000000-7f0000010000 r-xp 00000000 00:00 0 \n"
    FakeProcess(95, anon).write(proc, tmp_path)
    sym = Symbolizer(proc_root=str(proc))
    jit = sym.resolve_user(95, 0x7F0000000100)
    assert jit.function is None and jit.mapping is not None and jit.build_id == ""
    assert sym.resolve_user(95, 0x1000).mapping is None


def test_forget_drops_the_snapshot(programs: Programs, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    FakeProcess(99, maps_line(0x401000, 0x402000, 0x1000, programs.nopie)).write(proc, Path("/"))
    sym = Symbolizer(proc_root=str(proc))
    address = _symbol_start(programs.nopie, "main")
    assert sym.resolve_user(99, address).function == "main"
    sym.forget(99)
    assert sym.table_for(99, address) is None
    shutil.rmtree(proc / "99")
    assert sym.resolve_user(99, address).function is None  # re-observed: gone


def test_this_process_maps_match_its_own_view() -> None:
    entries = parse_maps(read_maps(os.getpid()))
    sym = Symbolizer()
    sym.observe(os.getpid())
    text = next(e for e in entries if e.is_exec and e.is_file)
    assert sym.resolve_user(os.getpid(), text.start).mapping == text


def test_maps_out_of_order_still_resolve(programs: Programs, tmp_path: Path) -> None:
    """A replayed or hand-written maps text need not be sorted like the kernel's."""
    proc = tmp_path / "proc"
    lib_text = maps_line(LIB_BASE + 0x1000, LIB_BASE + 0x2000, 0x1000, programs.lib)
    nopie_text = maps_line(0x401000, 0x402000, 0x1000, programs.nopie)
    FakeProcess(51, lib_text + nopie_text).write(proc, Path("/"))
    sym = Symbolizer(proc_root=str(proc))
    assert sym.resolve_user(51, _symbol_start(programs.nopie, "main")).function == "main"


def test_observe_says_whether_the_maps_changed_and_takes_the_callers_text(
    programs: Programs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a process observed once
    proc = tmp_path / "proc"
    text = maps_line(0x401000, 0x402000, 0x1000, programs.nopie)
    FakeProcess(52, text).write(proc, Path("/"))
    sym = Symbolizer(proc_root=str(proc))
    assert sym.observe(52) is True
    parsed: list[str] = []
    real_parse = resolver_module.parse_maps
    monkeypatch.setattr(resolver_module, "parse_maps", lambda t: parsed.append(t) or real_parse(t))
    # WHEN it is observed again with the same maps THEN nothing is parsed or added
    assert sym.observe(52) is False and parsed == []
    # WHEN the caller hands over maps it read (an exec) THEN they are used, not /proc's
    lib_text = maps_line(LIB_BASE + 0x1000, LIB_BASE + 0x2000, 0x1000, programs.lib)
    assert sym.observe(52, lib_text) is True and parsed == [lib_text]
    lib_mul = sym.resolve_user(52, LIB_BASE + _symbol_start(programs.lib, "lib_mul"))
    assert lib_mul.function == "lib_mul"
    # and the same text again changes nothing
    assert sym.observe(52, lib_text) is False and parsed == [lib_text]


# -- which file is read: the mapped inode, or none ------------------------------


def test_a_file_planted_at_the_path_is_refused(programs: Programs, tmp_path: Path) -> None:
    """A chroot's owner copies (or hard links) another library to the path
    maps shows: a file, but not the mapped inode, so it is not read."""
    proc, root = tmp_path / "proc", tmp_path / "chroot"
    (root / "lib").mkdir(parents=True)
    shutil.copy(programs.lib, root / "lib/libsymtest.so")  # another inode
    line = maps_line(
        LIB_BASE + 0x1000, LIB_BASE + 0x2000, 0x1000, "/lib/libsymtest.so", programs.lib
    )
    FakeProcess(61, line).write(proc, root)
    sym = Symbolizer(proc_root=str(proc))
    frame = sym.resolve_user(61, LIB_BASE + _symbol_start(programs.lib, "lib_add"))
    assert frame.function is None and frame.mapping is not None
    assert sym.stats.refused_files == 1 and sym.stats.unreadable_files == 0


def test_map_files_wins_over_a_planted_path(programs: Programs, tmp_path: Path) -> None:
    proc, root = tmp_path / "proc", tmp_path / "chroot"
    (root / "lib").mkdir(parents=True)
    shutil.copy(programs.pie, root / "lib/libsymtest.so")
    span = (LIB_BASE + 0x1000, LIB_BASE + 0x2000)
    line = maps_line(*span, 0x1000, "/lib/libsymtest.so", programs.lib)
    FakeProcess(62, line, map_files={f"{span[0]:x}-{span[1]:x}": programs.lib}).write(proc, root)
    sym = Symbolizer(proc_root=str(proc))
    frame = sym.resolve_user(62, LIB_BASE + _symbol_start(programs.lib, "lib_add"))
    assert frame.function == "lib_add" and sym.stats.refused_files == 0


def test_a_symlink_in_the_root_stays_in_the_root(programs: Programs, tmp_path: Path) -> None:
    """An absolute link inside the process's root is resolved there: a link
    to the host's copy of the mapped library does not reach it."""
    proc, root = tmp_path / "proc", tmp_path / "chroot"
    (root / "lib").mkdir(parents=True)
    (root / "lib/libsymtest.so").symlink_to(programs.lib)
    line = maps_line(
        LIB_BASE + 0x1000, LIB_BASE + 0x2000, 0x1000, "/lib/libsymtest.so", programs.lib
    )
    FakeProcess(63, line).write(proc, root)
    sym = Symbolizer(proc_root=str(proc))
    assert sym.resolve_user(63, LIB_BASE + _symbol_start(programs.lib, "lib_add")).function is None
    assert sym.stats.unreadable_files == 1


@pytest.mark.parametrize(
    "dev,inode,expected",
    [
        ("same", 0, True),
        ("same", 1, False),  # another inode
        ("00:00", 0, False),  # another device
        ("fe00", 0, False),  # not "major:minor"
        ("zz:00", 0, False),
    ],
)
def test_is_mapped_compares_device_and_inode(dev: str, inode: int, expected: bool) -> None:
    st = os.stat(__file__)
    same = f"{os.major(st.st_dev):x}:{os.minor(st.st_dev):02x}"
    entry = parse_maps(f"1000-2000 r-xp 0 {same if dev == 'same' else dev} {st.st_ino + inode} /x")[
        0
    ]
    assert is_mapped(st, entry) is expected
    assert is_mapped(st, entry, device=False) is (expected or dev == "00:00")


def test_a_file_of_a_process_that_exited_meanwhile_is_counted_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Maps read (here: given), then the process is gone before its files
    are opened: counted once; a file missing from a live process is warned."""
    maps = "00400000-00401000 r-xp 00000000 08:01 1234 /usr/bin/prog\n"
    sym = Symbolizer(proc_root=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="bpfprof.symbolizer"):
        sym.observe(88, maps_text=maps)
    assert caplog.records == [] and sym.stats.exited_unread == 1
    assert sym.stats.unreadable_files == 1
    (tmp_path / "89" / "root").mkdir(parents=True)  # alive, but the file is not there
    with caplog.at_level(logging.WARNING, logger="bpfprof.symbolizer"):
        sym.observe(89, maps_text=maps)
    assert [r.getMessage()[:25] for r in caplog.records] == ["cannot open /usr/bin/prog"]
    assert sym.stats.exited_unread == 1
    (tmp_path / "90").mkdir()  # a zombie: its entry is there, its root is not
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bpfprof.symbolizer"):
        sym.observe(90, maps_text=maps.replace("prog", "other"))
    assert caplog.records == [] and sym.stats.exited_unread == 2

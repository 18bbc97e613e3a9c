"""The debug-file search opens only what a root agent may read for a user.

Each case builds a stripped program whose `.gnu_debuglink` (or build ID)
names a debug file, and puts at the candidate path something a hostile
user could: a symlink, a FIFO, a file that is not ELF, a file of another
user. `file_crc32` is spied on: what it is never given was never read
whole.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from symbolizer import debuginfo
from symbolizer.debuginfo import Binary, DebugFile, DebugSearch, find_debug_file, read_debuglink
from symbolizer.elf import ElfError, open_elf, read_build_id
from symbolizer.objfile import dwarf_loader, places_of
from tests.programs import symtest, symtest_dwarf

pytestmark = pytest.mark.skipif(not symtest.have_gcc(), reason="gcc is not installed")


@dataclass
class Split:
    """A stripped binary in `bin_dir` and its genuine debug file kept apart."""

    stripped: Path
    debug: Path  # the genuine one, outside the binary's directory
    build_id: str

    @property
    def beside(self) -> Path:
        """Where the debuglink names it: next to the binary."""
        return self.stripped.parent / self.debug.name


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Split:
    out = tmp_path_factory.mktemp("split")
    exe = symtest_dwarf.build_c(out, "dbg", "-O2", "-g")
    stripped = symtest_dwarf.split_debug(exe, out, out, "debuglink")
    kept = out / "kept"
    kept.mkdir()
    shutil.move(out / "dbg.debug", kept / "dbg.debug")
    return Split(stripped, kept / "dbg.debug", symtest.readelf_build_id(exe))


@pytest.fixture
def split(built: Split, tmp_path: Path) -> Split:
    """A fresh directory holding only the stripped binary."""
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(built.stripped, d / built.stripped.name)
    return Split(d / built.stripped.name, built.debug, built.build_id)


@pytest.fixture
def crc_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """(st_dev, st_ino) of every file whose CRC was computed."""
    seen: list[tuple[int, int]] = []
    real = debuginfo.file_crc32

    def spy(f: io.BufferedReader, limit: int = debuginfo.MAX_DEBUG_FILE) -> int:
        st = os.fstat(f.fileno())
        seen.append((st.st_dev, st.st_ino))
        return real(f, limit)

    monkeypatch.setattr(debuginfo, "file_crc32", spy)
    yield seen


def search(split: Split, debug_dirs: tuple[str, ...] = (), root: str = "") -> DebugFile | None:
    with open(split.stripped, "rb") as f:
        link = read_debuglink(open_elf(f))
        binary = Binary(str(split.stripped), os.fstat(f.fileno()))
    return find_debug_file(binary, split.build_id, link, DebugSearch(debug_dirs, ()), root)


def ident(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_the_genuine_file_next_to_the_binary_is_found_open(split: Split) -> None:
    shutil.copy(split.debug, split.beside)
    found = search(split)
    assert found is not None
    with found.file:
        assert found.path == str(split.beside)
        assert os.fstat(found.file.fileno()).st_ino == split.beside.stat().st_ino
        assert found.file.tell() == 0 and read_build_id(found.file) == split.build_id


def test_a_symlink_next_to_the_binary_is_not_followed(split: Split) -> None:
    """Even to the genuine debug file: the link itself is refused, so a link
    to /etc/shadow is never opened."""
    split.beside.symlink_to(split.debug)
    assert search(split) is None


def test_a_symlink_to_a_secret_is_never_read(
    split: Split, tmp_path: Path, crc_reads: list[tuple[int, int]]
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x7fELF" + b"ROOTONLY" * 1000)
    os.chmod(secret, 0o600)
    split.beside.symlink_to(secret)
    assert search(split) is None
    assert ident(secret) not in crc_reads


def test_a_directory_on_the_way_that_is_a_symlink_is_refused(split: Split, tmp_path: Path) -> None:
    """The .debug/ directory replaced by a link elsewhere: refused, though the
    file it leads to is the genuine one."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(split.debug, elsewhere / split.debug.name)
    (split.stripped.parent / ".debug").symlink_to(elsewhere)
    assert search(split) is None


def test_a_fifo_is_refused_at_once(split: Split) -> None:
    os.mkfifo(split.beside)
    result: list[DebugFile | None] = []
    worker = threading.Thread(target=lambda: result.append(search(split)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the search blocked on a FIFO"
    assert result == [None]


def test_not_elf_is_refused_before_its_crc(split: Split, crc_reads: list[tuple[int, int]]) -> None:
    split.beside.write_bytes(b"not an ELF file at all" * 100)
    assert search(split) is None
    assert crc_reads == []


def test_another_build_id_is_refused_before_its_crc(
    split: Split, tmp_path: Path, crc_reads: list[tuple[int, int]]
) -> None:
    other = symtest_dwarf.build_c(tmp_path, "other", "-O1", "-g")
    shutil.copy(other, split.beside)
    assert search(split) is None
    assert crc_reads == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize(
    "binary_uid,debug_uid,found",
    [(4242, 4242, True), (4242, 0, True), (4242, 4343, False), (0, 4343, False)],
)
def test_a_file_beside_the_binary_must_be_root_s_or_the_binary_owner_s(
    split: Split, binary_uid: int, debug_uid: int, found: bool
) -> None:
    shutil.copy(split.debug, split.beside)
    os.chown(split.stripped, binary_uid, 0)
    os.chown(split.beside, debug_uid, 0)
    result = search(split)
    assert (result is not None) == found
    if result is not None:
        result.file.close()


def test_the_crc_read_is_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"\0" * 5000)
    with open(big, "rb") as f:
        assert debuginfo.file_crc32(f, 5000) == debuginfo.file_crc32(f)
        with pytest.raises(OSError) as err:
            debuginfo.file_crc32(f, 4999)
    assert err.value.errno == errno.EFBIG


def test_a_debuglink_claiming_more_than_a_name_and_a_crc_is_none(built: Split) -> None:
    """A .gnu_debuglink whose header claims 6 GB is not a link to follow,
    and nothing of it is read (the binary's budget stays whole)."""
    data = bytearray(built.stripped.read_bytes())
    elf = open_elf(io.BytesIO(bytes(data)))
    sec = elf.section(".gnu_debuglink")
    assert sec is not None and read_debuglink(elf) is not None
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    struct.pack_into("<Q", data, shoff + sec.index * 64 + 0x20, 6 << 30)  # sh_size
    lying = open_elf(io.BytesIO(bytes(data)))
    spent = lying.budget.used_bytes
    assert read_debuglink(lying) is None and lying.budget.used_bytes == spent


def _build_id_path(root: Path, build_id: str) -> Path:
    return root / "usr/lib/debug/.build-id" / build_id[:2] / f"{build_id[2:]}.debug"


def test_relative_build_id_links_inside_the_root_still_work(split: Split, tmp_path: Path) -> None:
    """Fedora's layout: .build-id/xx/yyy.debug -> ../../<path>.debug."""
    root = tmp_path / "root"
    target = root / "usr/lib/debug/usr/bin/dbg.debug"
    target.parent.mkdir(parents=True)
    shutil.copy(split.debug, target)
    link = _build_id_path(root, split.build_id)
    link.parent.mkdir(parents=True)
    link.symlink_to("../../usr/bin/dbg.debug")
    found = search(split, ("/usr/lib/debug",), str(root))
    assert found is not None
    with found.file:
        assert os.fstat(found.file.fileno()).st_ino == target.stat().st_ino


def test_an_absolute_link_resolves_inside_the_root_not_on_the_host(
    split: Split, tmp_path: Path
) -> None:
    """A link to /kept/dbg.debug inside a root names root/kept/dbg.debug; the
    host's file at that path (the genuine debug file) is not reached."""
    root = tmp_path / "root"
    link = _build_id_path(root, split.build_id)
    link.parent.mkdir(parents=True)
    link.symlink_to(split.debug)  # absolute: exists on the host, not in the root
    assert search(split, ("/usr/lib/debug",), str(root)) is None
    inside = root / str(split.debug).lstrip("/")
    inside.parent.mkdir(parents=True)
    shutil.copy(split.debug, inside)
    found = search(split, ("/usr/lib/debug",), str(root))
    assert found is not None
    with found.file:
        assert os.fstat(found.file.fileno()).st_ino == inside.stat().st_ino


def test_a_build_id_fifo_in_the_root_is_refused(split: Split, tmp_path: Path) -> None:
    root = tmp_path / "root"
    fifo = _build_id_path(root, split.build_id)
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    result: list[DebugFile | None] = []
    worker = threading.Thread(
        target=lambda: result.append(search(split, ("/usr/lib/debug",), str(root))), daemon=True
    )
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the search blocked on a FIFO"
    assert result == [None]


@pytest.mark.parametrize(
    "path,expected",
    [
        (
            "/proc/12/root/usr/lib/debug/x.debug",
            [
                ("/proc/12/root", "/usr/lib/debug/x.debug", "in_root"),
                ("", "/usr/lib/debug/x.debug", "in_root"),
            ],
        ),
        ("/proc/12/map_files/1000-2000", [("", "/proc/12/map_files/1000-2000", "kernel")]),
        ("/usr/lib/debug/x.debug", [("", "/usr/lib/debug/x.debug", "in_root")]),
        ("/proc/12/root", [("", "/proc/12/root", "in_root")]),
    ],
)
def test_a_kept_path_is_reopened_by_its_rule(
    path: str, expected: list[tuple[str, str, str]]
) -> None:
    assert [tuple(p) for p in places_of(path)] == expected


def test_dwarf_is_not_read_from_a_file_nothing_can_check(built: Split) -> None:
    """No build ID and no identity: a swapped file could not be told apart."""
    with pytest.raises(ElfError):
        dwarf_loader([str(built.debug)], "", None)()
    assert dwarf_loader([str(built.debug)], built.build_id, None)().info


def test_dwarf_is_reread_only_from_the_same_file(built: Split, tmp_path: Path) -> None:
    """A file at the place that has another build ID, or without one another
    identity, is passed over: DWARF comes from the next place that matches."""
    st = os.stat(built.debug)
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    copy = tmp_path / "copy.debug"
    shutil.copy(built.debug, copy)
    with pytest.raises(ElfError):
        dwarf_loader([str(built.debug)], "00" * 20, None)()
    with pytest.raises(ElfError):
        dwarf_loader([str(copy)], "", identity)()
    assert dwarf_loader([str(copy), str(built.debug)], "", identity)().info

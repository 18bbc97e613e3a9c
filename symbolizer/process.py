"""What the symbolizer keeps of one process: its maps, snapshot by snapshot.

A snapshot is the maps text parsed at one observe(), plus the symbol
table of each executable file mapping, loaded right then: once the process
exits, /proc/PID and often the files themselves are gone. After an exec
the process is observed again; the newer snapshot is searched first, and
an address it does not cover falls back to older ones (a sample taken just
before the exec may still be waiting in a BPF map).
"""

from __future__ import annotations

import errno
import os
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import BinaryIO

from symbolizer.elf import ElfSymbols
from symbolizer.places import KERNEL, Place, open_place
from symbolizer.procmaps import MapEntry
from symbolizer.safeopen import UnsafeFile

FileId = tuple[str, int]  # (dev, inode) as printed in maps: one mapped file


def file_id(entry: MapEntry) -> FileId:
    return (entry.dev, entry.inode)


@dataclass(frozen=True)
class Snapshot:
    """The mappings of one maps text (ascending) and their tables by file."""

    maps: tuple[MapEntry, ...]
    tables: dict[FileId, ElfSymbols] = field(default_factory=dict)

    def find(self, address: int) -> MapEntry | None:
        i = bisect_right(self.maps, address, key=lambda m: m.start) - 1
        if i >= 0 and self.maps[i].contains(address):
            return self.maps[i]
        return None


@dataclass
class ProcessInfo:
    """Everything captured about one pid; snapshots newest first."""

    pid: int
    exe: str = ""
    comm: str = ""
    snapshots: list[Snapshot] = field(default_factory=list)
    # (length, hash) of the newest snapshot's maps text: "unchanged" without parsing
    maps_digest: tuple[int, int] = (0, 0)
    exited: bool = False  # it exited before its maps or one of its files could be read

    def add(self, snapshot: Snapshot, keep: int) -> None:
        self.snapshots.insert(0, snapshot)
        del self.snapshots[keep:]

    def find(self, address: int) -> tuple[MapEntry, ElfSymbols | None] | None:
        """The mapping holding `address` in the newest snapshot covering it."""
        for snap in self.snapshots:
            entry = snap.find(address)
            if entry is not None:
                return entry, snap.tables.get(file_id(entry))
        return None


def read_exe(pid: int, proc_root: str = "/proc") -> str:
    """The executable's path (as the process sees it), "" if unreadable."""
    try:
        target = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        return ""
    return target.removesuffix(" (deleted)")


def read_comm(pid: int, proc_root: str = "/proc") -> str:
    try:
        with open(f"{proc_root}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().rstrip("\n")
    except OSError:
        return ""


def open_mapped(pid: int, entry: MapEntry, proc_root: str = "/proc") -> tuple[BinaryIO, Place]:
    """Open the file behind a mapping, and say where it was found.

    First /proc/PID/map_files/<start>-<end>: the kernel's own handle on
    the mapped inode (root has the CAP_SYS_ADMIN it needs), right even for
    a deleted or replaced file. Else the path under /proc/PID/root, with
    symlinks confined to that root: a container's files are found there.
    The path is never trusted as such: for a chrooted process, maps shows
    the path from the host's root (the reader's), and a user who owns the
    chroot can plant a link or a copy at that path re-rooted; so whatever
    is opened must be a regular file whose device and inode are the ones
    the maps line names. Raises UnsafeFile on a mismatch, else the last
    OSError.
    """
    places = [Place("", f"{proc_root}/{pid}/map_files/{entry.start:x}-{entry.end:x}", KERNEL)]
    if not entry.deleted:
        places.append(Place(f"{proc_root}/{pid}/root", entry.path))
    error: OSError = FileNotFoundError(errno.ENOENT, "no such file", entry.path)
    refused: UnsafeFile | None = None  # a wrong file outranks a missing one
    for place in places:
        try:
            f = open_place(place)
        except OSError as exc:
            error = exc
            continue
        # through map_files the kernel hands over the mapped file itself: the
        # inode is checked (a range remapped meanwhile), not the device, which
        # btrfs reports per subvolume in fstat but per file system in maps
        if is_mapped(os.fstat(f.fileno()), entry, device=place.how != KERNEL):
            return f, place
        f.close()
        refused = UnsafeFile(errno.EXDEV, f"not the mapped {entry.dev} {entry.inode}", place.shown)
    raise refused or error


def open_mapped_file(pid: int, entry: MapEntry, proc_root: str = "/proc") -> BinaryIO:
    """The file behind a mapping (see open_mapped)."""
    return open_mapped(pid, entry, proc_root)[0]


def is_mapped(st: os.stat_result, entry: MapEntry, device: bool = True) -> bool:
    """Whether a file's fstat is the inode a maps line names. maps prints
    the device as hex "major:minor" of the inode's superblock, the same
    device fstat gives, overlayfs included (checked on kernel 6.18: both
    show the overlay's anonymous device)."""
    major, sep, minor = entry.dev.partition(":")
    try:
        dev = (int(major, 16), int(minor, 16))
    except ValueError:
        return False
    same_dev = not device or (os.major(st.st_dev), os.minor(st.st_dev)) == dev
    return bool(sep) and same_dev and st.st_ino == entry.inode

"""What the symbolizer keeps of one process: its maps, snapshot by snapshot.

A snapshot is the maps text parsed at one observe(), plus the symbol
table of each executable file mapping, loaded right then: once the process
exits, /proc/PID and often the files themselves are gone. After an exec
the process is observed again; the newer snapshot is searched first, and
an address it does not cover falls back to older ones (a sample taken just
before the exec may still be waiting in a BPF map).
"""

from __future__ import annotations

import os
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import IO

from symbolizer.elf import ElfSymbols
from symbolizer.procmaps import MapEntry

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


def open_mapped_file(pid: int, entry: MapEntry, proc_root: str = "/proc") -> IO[bytes]:
    """Open the file behind a mapping, as the process sees it.

    /proc/PID/root/<path> resolves the path in the process's mount
    namespace, so binaries inside containers are found. A deleted file
    (unlinked or replaced since it was mapped) is reached only through
    /proc/PID/map_files/<start>-<end>, which needs CAP_SYS_ADMIN; the path
    is not tried then, as it may name a newer, different file.
    Raises the last OSError if no way works.
    """
    candidates = [f"{proc_root}/{pid}/map_files/{entry.start:x}-{entry.end:x}"]
    if not entry.deleted:
        candidates.insert(0, f"{proc_root}/{pid}/root{entry.path}")
    error: OSError = FileNotFoundError(entry.path)
    for path in candidates:
        try:
            return open(path, "rb")
        except OSError as exc:
            error = exc
    raise error

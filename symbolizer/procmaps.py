"""`/proc/PID/maps`: one tiny reader and a parser of its text.

The reader only touches the file system; the parser takes the text, so
tests feed it inline lines (and a recorded maps text can be replayed).
"""

from __future__ import annotations

from dataclasses import dataclass

_DELETED = " (deleted)"


@dataclass(frozen=True)
class MapEntry:
    """One line of /proc/PID/maps: [start, end) mapped from `path` at `offset`.

    `path` is what the kernel printed, minus the " (deleted)" suffix, which
    becomes `deleted`: the file was unlinked (or replaced, e.g. by a package
    upgrade) after it was mapped, so the path may now name another file or
    none, and only /proc/PID/map_files still reaches the mapped one.
    """

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    deleted: bool = False

    @property
    def is_exec(self) -> bool:
        return "x" in self.perms

    @property
    def is_file(self) -> bool:
        """A mapping backed by a file (not [heap], [vdso], or anonymous memory)."""
        return self.inode != 0 and self.path.startswith("/")

    @property
    def size(self) -> int:
        return self.end - self.start

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end

    def file_offset(self, address: int) -> int:
        """The file offset mapped at `address` (meaningful for file mappings)."""
        return address - self.start + self.offset


def parse_maps_line(line: str) -> MapEntry | None:
    """Parse one maps line; None for a line that is not one (blank, garbled).

    The path is the sixth field and may itself contain spaces, hence the
    bounded split; anonymous mappings have no sixth field at all.
    """
    fields = line.split(None, 5)
    if len(fields) < 5:
        return None
    span, perms, offset, dev, inode = fields[:5]
    start, sep, end = span.partition("-")
    path = fields[5].rstrip("\n") if len(fields) == 6 else ""
    deleted = path.endswith(_DELETED)
    if deleted:
        path = path[: -len(_DELETED)]
    try:
        entry = MapEntry(
            int(start, 16), int(end, 16), perms, int(offset, 16), dev, int(inode), path, deleted
        )
    except ValueError:
        return None
    return entry if sep and entry.end > entry.start else None


def parse_maps(text: str) -> list[MapEntry]:
    """All mappings of a maps text, in the kernel's (ascending address) order."""
    entries = (parse_maps_line(line) for line in text.splitlines())
    return [e for e in entries if e is not None]


def read_maps(pid: int, proc_root: str = "/proc") -> str:
    """The maps text of `pid`. Raises OSError if the process is gone or hidden.

    surrogateescape keeps non-UTF-8 paths intact, so os.fsencode() turns
    them back into the exact bytes to open.
    """
    with open(f"{proc_root}/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
        return f.read()

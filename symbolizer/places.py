"""Where a file was found, so that it can be opened again the same safe way.

The symbolizer opens a binary or a debug file once to build its table and
again later, lazily, for its DWARF. Both opens must follow the same rule,
or the second one is where a user swaps in a symlink. A `Place` says
which rule:

- IN_ROOT: `path` resolved inside `root` ("" for the host's root, else
  e.g. /proc/PID/root): symlinks followed but confined to that root (a
  container's /lib -> usr/lib, Fedora's relative .build-id links);
- NO_SYMLINKS: inside `root`, but a symlink in any component is refused:
  for files in a directory the process's user controls (a debuglink
  target next to its binary), and for a path from /proc/PID/maps, which
  the kernel prints canonical (d_path), so a symlink on it was planted;
- KERNEL: a /proc/PID/map_files/<start>-<end> magic link: the kernel's
  own handle on the mapped inode, whatever its path now names.

Whatever is opened must be a regular file (safeopen's rule); the caller
still checks it is the expected file (build ID or identity).
"""

from __future__ import annotations

from typing import BinaryIO, Literal, NamedTuple

from symbolizer.safeopen import open_in_root, open_regular

How = Literal["in_root", "no_symlinks", "kernel"]
IN_ROOT: How = "in_root"
NO_SYMLINKS: How = "no_symlinks"
KERNEL: How = "kernel"


class Place(NamedTuple):
    """A file's path inside a root, and how it may be resolved."""

    root: str
    path: str
    how: How = IN_ROOT

    @property
    def shown(self) -> str:
        """The path as one string, for messages and the table's debug_file."""
        return f"{self.root}{self.path}"


def open_place(place: Place, owner: int | None = None) -> BinaryIO:
    """Open `place` by its rule. Raises OSError (UnsafeFile for a file that
    is not regular or not `owner`'s, ELOOP for a refused symlink)."""
    if place.how == KERNEL:
        return open_regular(place.path, owner=owner, nofollow=False)
    if place.how == NO_SYMLINKS:
        return open_in_root(place.root, place.path, owner=owner, nofollow=True, symlinks=False)
    return open_in_root(place.root, place.path, owner=owner)

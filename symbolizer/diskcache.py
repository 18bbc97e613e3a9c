"""An optional on-disk cache of parsed symbol tables, keyed by build ID.

A restarted agent would otherwise parse libc's symbol table and decode
its DWARF units again. What is stored per build ID: the function index,
the load segments, where the DWARF came from, the DWARF unit index and
every unit decoded so far; new units are merged in at each save.

The format is `marshal` of plain lists, tuples, dicts, ints and strings,
with a format version: it loads in milliseconds and, unlike pickle,
cannot run code. Even so, a file planted by another user could feed the
agent wrong names, so the directories are created 0700 (an existing one
is tightened; a symlink, another user's or a shared one is refused) and a
file is only read if it and its directory belong to us and are not
writable by others.
Any unreadable, foreign or stale entry is ignored (and replaced at the
next save). Writes go to an O_EXCL|O_NOFOLLOW temporary file (0600)
renamed into place, so a crash never leaves half a file and a planted
name is replaced, never written through.
"""

from __future__ import annotations

import gc
import marshal
import os
import stat
from pathlib import Path
from typing import Any

from symbolizer.safewrite import private_dir, write_atomic

FORMAT = 4  # 4: PLT stubs joined the symbol index
MAX_ENTRY = 1 << 30


class SymbolCache:
    """<dir>/<first 2 hex of the build ID>/<build ID>.sym"""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, build_id: str) -> str:
        return os.path.join(self.directory, build_id[:2], f"{build_id}.sym")

    def load(self, build_id: str) -> Any | None:
        if not _valid(build_id):
            return None
        path = self._path(build_id)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not (_trusted(st) and _trusted(os.stat(os.path.dirname(path)))):
                    return None
                if st.st_size > MAX_ENTRY:
                    return None
                entry = _loads(f.read())
        except (OSError, EOFError, ValueError, TypeError):
            return None
        if not isinstance(entry, tuple) or len(entry) != 3 or entry[:2] != (FORMAT, build_id):
            return None
        return entry[2]

    def store(self, build_id: str, state: Any) -> None:
        """Write atomically; raises OSError (or ValueError) on failure."""
        if not _valid(build_id):
            raise ValueError(f"not a build ID: {build_id!r}")
        path = Path(self._path(build_id))
        private_dir(Path(self.directory))  # 0700 at each level, ours, not shared
        private_dir(path.parent)
        write_atomic(path, marshal.dumps((FORMAT, build_id, state)))  # 0600


def _valid(build_id: str) -> bool:
    return 4 <= len(build_id) <= 128 and all(c in "0123456789abcdef" for c in build_id)


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _loads(blob: bytes) -> Any:
    """marshal.loads without the cyclic GC: the entry is hundreds of
    thousands of new containers, and each collection they trigger walks
    every object the process holds (measured: 35 ms to 150 ms for libc's
    entry, depending on what else is alive)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return marshal.loads(blob)
    finally:
        if enabled:
            gc.enable()

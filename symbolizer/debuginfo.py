"""Finding a binary's separate debug file, in the order gdb searches.

Distributions strip binaries and ship their DWARF and full symbol table
apart (Debian's *-dbg/-dbgsym, Fedora's debuginfo). The links between
them, tried in this order:

1. the GNU build ID: `<debug dir>/.build-id/<first 2 hex>/<rest>.debug`,
   under the process's root (a container's own debug packages) and then
   the host's; the candidate's build ID must equal the binary's;
2. a debuginfod client cache (read only, nothing is fetched):
   `<cache>/<build id>/debuginfo`, the layout of DEBUGINFOD_CACHE_PATH
   (default ~/.cache/debuginfod_client);
3. `.gnu_debuglink` (a file name and the CRC-32 of the debug file): next
   to the binary, in its `.debug/` directory, and under
   `<debug dir>/<binary's directory>/`. The CRC is checked, as gdb does,
   because a name alone often matches the debug file of another build.

`DebugSearch` holds the directories, so tests point it at a temporary
tree instead of the real /usr/lib/debug.

The agent runs as root and the names it tries come from files a local
user controls (the binary, its directory, a chroot the user owns), so
every candidate is opened through symbolizer/places.py, never by a plain
path:

- under the process's root a candidate is resolved inside that root:
  symlinks are followed but cannot leave it (Debian's and Fedora's
  .build-id links are relative symlinks inside the root and still work);
  the host's own directories are searched the same way from "/";
- a debuglink candidate in the binary's own directory (or its `.debug/`)
  sits where the binary's owner may write: it must be reached through no
  symlink at all, and be owned by root or by the binary's owner (so a
  user's link to /etc/shadow, or a file another user dropped in a shared
  directory, is never read; a hard link to a root-owned file is kept
  out by the kernel's protected_hardlinks);
- only regular files: opening never blocks (a FIFO is refused, not
  waited on);
- a candidate must start with the ELF magic and carry the expected build
  ID (where the binary has one) before the whole file is read for the
  CRC, and the CRC reads at most MAX_DEBUG_FILE bytes;
- the file found is returned open: what was checked is what is read.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from symbolizer.elf import ElfError, read_build_id
from symbolizer.elffile import ElfFile
from symbolizer.places import IN_ROOT, NO_SYMLINKS, Place, open_place

_CRC_CHUNK = 1 << 20
MAX_DEBUG_FILE = 1 << 30  # bytes a debuglink CRC may read (libLLVM's debug file: ~0.5 GiB)
MAX_DEBUGLINK = 4096  # a file name (NAME_MAX is 255), padding and a CRC
_ELF_MAGIC = b"\x7fELF"
log = logging.getLogger("bpfprof.symbolizer")


def _default_debuginfod_caches() -> tuple[str, ...]:
    env = os.environ.get("DEBUGINFOD_CACHE_PATH")
    if env:
        return (env,)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return (os.path.join(xdg, "debuginfod_client"),)


@dataclass(frozen=True)
class DebugSearch:
    """Where separate debug files are looked for."""

    debug_dirs: tuple[str, ...] = ("/usr/lib/debug",)
    debuginfod_caches: tuple[str, ...] = field(default_factory=_default_debuginfod_caches)


@dataclass(frozen=True)
class DebugLink:
    """The contents of .gnu_debuglink: the debug file's name and CRC-32."""

    name: str
    crc: int


def parse_debuglink(data: bytes, little_endian: bool = True) -> DebugLink | None:
    """A NUL-terminated name, padded to 4 bytes, then the CRC (file byte order)."""
    end = data.find(b"\0")
    if end <= 0:
        return None
    at = (end + 4) & ~3
    if at + 4 > len(data):
        return None
    (crc,) = struct.unpack_from("<I" if little_endian else ">I", data, at)
    name = os.fsdecode(data[:end])
    return DebugLink(name, crc) if "/" not in name else None


def read_debuglink(elf: ElfFile) -> DebugLink | None:
    """The .gnu_debuglink of a file, if it has a plausible one: a name and
    a CRC, so a section claiming more than MAX_DEBUGLINK bytes is none."""
    sec = elf.section(".gnu_debuglink")
    if sec is None or sec.header.type == "SHT_NOBITS" or sec.header.size > MAX_DEBUGLINK:
        return None
    return parse_debuglink(elf.read(sec), elf.little)


@dataclass
class DebugFile:
    """A separate debug file, found and open: read it from `file` (its
    checks were made on this very descriptor), reopen it by `place`."""

    place: Place
    file: BinaryIO

    @property
    def path(self) -> str:
        return self.place.shown


@dataclass(frozen=True)
class Binary:
    """What the search needs of the binary: the path its process sees, and
    the fstat of the open binary (its owner, and its identity, so that a
    debuglink naming the binary itself is skipped)."""

    path: str
    stat: os.stat_result | None = None

    @property
    def owners(self) -> tuple[int, ...]:
        return (0,) if self.stat is None else (0, self.stat.st_uid)

    def same(self, st: os.stat_result) -> bool:
        return self.stat is not None and (st.st_dev, st.st_ino) == (
            self.stat.st_dev,
            self.stat.st_ino,
        )


def file_crc32(f: BinaryIO, limit: int = MAX_DEBUG_FILE) -> int:
    """The CRC-32 of an open file from its start; OSError(EFBIG) past `limit`."""
    crc, total = 0, 0
    f.seek(0)
    while chunk := f.read(_CRC_CHUNK):
        total += len(chunk)
        if total > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        crc = zlib.crc32(chunk, crc)
    return crc


def find_debug_file(
    binary: Binary | str,
    build_id: str,
    link: DebugLink | None,
    search: DebugSearch,
    root: str = "",
) -> DebugFile | None:
    """The binary's separate debug file, open; None if none is found.

    `binary` is the path the process sees (with the binary's fstat where
    known), `root` the prefix that reaches that view from here
    ("/proc/PID/root" for a process, "" for a path). The caller closes
    the file.
    """
    found = Binary(binary) if isinstance(binary, str) else binary
    crc = link.crc if link is not None else None
    for place in _by_build_id(build_id, search, root):
        debug = _open_checked(place, lambda f: _build_id_of(f) == build_id)
        if debug is not None:
            return debug
    if link is None or crc is None:
        return None
    for place in _by_debuglink(found.path, link, search, root):
        owners = found.owners if place.how == NO_SYMLINKS else None
        debug = _open_checked(place, lambda f: _debuglink_matches(f, found, build_id, crc), owners)
        if debug is not None:
            return debug
    return None


def _open_checked(
    place: Place, matches: Callable[[BinaryIO], bool], owners: tuple[int, ...] | None = None
) -> DebugFile | None:
    """`place` open if it is a regular ELF file (of one of `owners`) that
    `matches`; closed and None otherwise."""
    try:
        f = open_place(place)
    except OSError:
        return None
    try:
        st = os.fstat(f.fileno())
        if owners is not None and st.st_uid not in owners:
            raise OSError(errno.EPERM, f"owned by uid {st.st_uid}")
        if f.read(4) != _ELF_MAGIC or not matches(f):
            raise OSError(errno.ENOEXEC, "not the debug file")
        f.seek(0)
        return DebugFile(place, f)
    except (OSError, ElfError) as exc:
        log.debug("debug file candidate %s refused: %s", place.shown, exc)
        f.close()
        return None


def _debuglink_matches(f: BinaryIO, binary: Binary, build_id: str, crc: int) -> bool:
    """Not the binary itself, the binary's build ID (or none), then the CRC."""
    if binary.same(os.fstat(f.fileno())):
        return False
    if build_id and _build_id_of(f) not in ("", build_id):
        return False
    return file_crc32(f) == crc


def _by_build_id(build_id: str, search: DebugSearch, root: str) -> Iterator[Place]:
    if len(build_id) < 4:
        return
    rel = f".build-id/{build_id[:2]}/{build_id[2:]}.debug"
    for prefix in _roots(root):
        for d in search.debug_dirs:
            yield Place(prefix, f"{d}/{rel}", IN_ROOT)
    for cache in search.debuginfod_caches:
        yield Place("", f"{cache}/{build_id}/debuginfo", IN_ROOT)


def _by_debuglink(binary: str, link: DebugLink, search: DebugSearch, root: str) -> Iterator[Place]:
    directory = os.path.dirname(binary)
    for prefix in _roots(root):
        yield Place(prefix, f"{directory}/{link.name}", NO_SYMLINKS)
        yield Place(prefix, f"{directory}/.debug/{link.name}", NO_SYMLINKS)
        for d in search.debug_dirs:
            yield Place(prefix, f"{d}{directory}/{link.name}", IN_ROOT)


def _roots(root: str) -> tuple[str, ...]:
    return (root, "") if root else ("",)


def _build_id_of(f: BinaryIO) -> str | None:
    """The build ID of an open candidate, None if it cannot be read as ELF."""
    try:
        f.seek(0)
        return read_build_id(f)
    except (OSError, ElfError):
        return None

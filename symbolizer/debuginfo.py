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
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from symbolizer.elf import ElfError, read_build_id

_CRC_CHUNK = 1 << 20


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


def read_debuglink(elf: Any) -> DebugLink | None:
    sec = elf.get_section_by_name(".gnu_debuglink")
    if sec is None or sec["sh_type"] == "SHT_NOBITS":
        return None
    return parse_debuglink(sec.data(), elf.little_endian)


def file_crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def find_debug_file(
    binary: str,
    build_id: str,
    link: DebugLink | None,
    search: DebugSearch,
    root: str = "",
) -> str:
    """The host path of the binary's separate debug file, "" if none is found.

    `binary` is the path the process sees, `root` the prefix that reaches
    that view from here ("/proc/PID/root" for a process, "" for a path).
    """
    for path in _by_build_id(build_id, search, root):
        if _build_id_of(path) == build_id:
            return path
    if link is not None:
        own_id = build_id
        for path in _by_debuglink(binary, link, search, root):
            if _same_file(path, root + binary):
                continue
            if _crc_matches(path, link.crc) and (not own_id or _build_id_of(path) in ("", own_id)):
                return path
    return ""


def _by_build_id(build_id: str, search: DebugSearch, root: str) -> Iterator[str]:
    if len(build_id) < 4:
        return
    rel = f".build-id/{build_id[:2]}/{build_id[2:]}.debug"
    for prefix in _roots(root):
        for d in search.debug_dirs:
            yield f"{prefix}{d}/{rel}"
    for cache in search.debuginfod_caches:
        yield f"{cache}/{build_id}/debuginfo"


def _by_debuglink(binary: str, link: DebugLink, search: DebugSearch, root: str) -> Iterator[str]:
    directory = os.path.dirname(binary)
    for prefix in _roots(root):
        yield f"{prefix}{directory}/{link.name}"
        yield f"{prefix}{directory}/.debug/{link.name}"
        for d in search.debug_dirs:
            yield f"{prefix}{d}{directory}/{link.name}"


def _roots(root: str) -> tuple[str, ...]:
    return (root, "") if root else ("",)


def _build_id_of(path: str) -> str | None:
    """The build ID of a candidate, None if it cannot be read as ELF."""
    try:
        with open(path, "rb") as f:
            return read_build_id(f)
    except (OSError, ElfError):
        return None


def _crc_matches(path: str, crc: int) -> bool:
    try:
        return os.path.isfile(path) and file_crc32(path) == crc
    except OSError:
        return False


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

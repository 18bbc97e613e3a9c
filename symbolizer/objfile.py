"""One binary and every source of symbols for it, combined into ElfSymbols.

The function table merges the binary's own .symtab/.dynsym, the full
.symtab of its separate debug file (a stripped binary keeps only
.dynsym), and MiniDebugInfo: `.gnu_debugdata`, an xz-compressed ELF
holding the local function symbols that .dynsym lacks (Fedora ships its
binaries this way). DWARF comes from the separate debug file if one is
found, else from the binary itself.

DWARF is read lazily, at the first address that needs it, by re-opening
the file: the loader checks it is still the same file (same build ID, or
same inode, size and mtime without one), so a binary replaced by an
upgrade is never read as the old one.
"""

from __future__ import annotations

import io
import logging
import lzma
import os
import re
from collections.abc import Callable, Sequence
from typing import IO, Any

from symbolizer.budget import Budget, BudgetExceeded
from symbolizer.debuginfo import Binary, DebugSearch, find_debug_file, read_debuglink
from symbolizer.dwarf import DwarfInfo
from symbolizer.dwarf_units import SECTION_NAMES, Sections
from symbolizer.elf import (
    ElfError,
    ElfSymbols,
    build_id_of,
    function_candidates,
    guarded,
    load_segments,
    open_elf,
    read_build_id,
)
from symbolizer.elffile import ElfFile
from symbolizer.places import KERNEL, NO_SYMLINKS, Place, open_place
from symbolizer.sections import MAX_SECTION_SIZE, SectionHeader, read_section
from symbolizer.symtab import Candidate

Warn = Callable[[str], None]
MAX_MINI_DEBUGINFO = 64 << 20


def _log_warning(message: str) -> None:
    logging.getLogger("bpfprof.symbolizer").warning("%s", message)


def load_object(
    f: IO[bytes],
    opened: str | Place,
    binary: str = "",
    root: str = "",
    search: DebugSearch | None = None,
    warn: Warn = _log_warning,
) -> ElfSymbols:
    """Everything symbolization needs from the binary open as `f`.

    `opened` is where `f` was opened (perhaps /proc/PID/map_files/..; a
    plain string is a host path), `binary` the path as its process sees
    it, `root` the prefix reaching that process's files
    ("/proc/PID/root", or "" for the host's).
    Raises ElfError if the binary itself is unusable; a bad debug file
    only costs its extras, with a warning.
    """
    budget = Budget()  # one for everything read for this binary (see budget.py)
    elf = open_elf(f, budget)
    build_id = build_id_of(elf)
    segments = load_segments(elf)
    candidates = guarded(lambda: function_candidates(elf, budget))
    headers = elf.with_contents()
    place = opened if isinstance(opened, Place) else Place("", opened)
    binary = binary or place.path
    search = search or DebugSearch()
    link = _quietly(lambda: read_debuglink(elf), None)
    found = find_debug_file(Binary(binary, os.fstat(f.fileno())), build_id, link, search, root)
    dwarf = None
    debug = ""
    if found is not None:
        with found.file:
            try:
                candidates += _symbols_of(found.file, budget)
                # found under /proc/PID/root: the same path on the host (build
                # ID checked) still works once the process has exited
                places = [found.place]
                if found.place.root:
                    places.append(found.place._replace(root=""))
                loader = dwarf_loader(places, build_id, _identity(found.file), budget)
                dwarf = DwarfInfo(loader, _prefixed(found.path, warn))
                debug = found.path
            except BudgetExceeded:
                raise
            except (OSError, ElfError) as exc:
                warn(f"cannot use debug file {found.path} of {binary}: {exc}")
    if not debug and (".debug_info" in headers or ".zdebug_info" in headers):
        # /proc/PID/... dies with the process (a `record -- COMMAND` resolves
        # after it exits): the host path is tried next, with no symlink on
        # it (maps prints paths canonical), and the loader's build-ID (or
        # identity) check keeps a different file out.
        places = [place] + ([Place("", binary, NO_SYMLINKS)] if binary != place.path else [])
        loader = dwarf_loader(places, build_id, _identity(f), budget)
        dwarf = DwarfInfo(loader, _prefixed(binary, warn))
        debug = binary
    if ".gnu_debugdata" in headers and ".symtab" not in headers:
        candidates += _quietly(
            lambda: _mini_debuginfo(f, headers[".gnu_debugdata"], elf, budget), []
        )
    return ElfSymbols(build_id, segments, candidates, dwarf, debug)


def _prefixed(path: str, warn: Warn) -> Warn:
    return lambda message: warn(f"{path}: {message}")


def _quietly(step: Callable[[], Any], default: Any) -> Any:
    try:
        return guarded(step)
    except BudgetExceeded:
        raise  # the whole file is over its budget, not just this extra
    except ElfError:
        return default


def _symbols_of(f: IO[bytes], budget: Budget | None = None) -> list[Candidate]:
    """The function symbols of an open (debug) file."""
    elf = open_elf(f, budget)
    return guarded(lambda: function_candidates(elf, budget))


def _identity(f: IO[bytes]) -> tuple[int, int, int, int]:
    st = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


_PROC_ROOT = re.compile(r"(/proc/\d+/root)(/.*)")


def places_of(path: str) -> list[Place]:
    """Where a path kept as a string (the disk cache's debug_file) is opened
    again: a /proc/PID/root path inside that root, then on the host; a
    map_files path through the kernel's link; any other on the host."""
    inside = _PROC_ROOT.fullmatch(path)
    if inside is not None:
        return [Place(inside[1], inside[2]), Place("", inside[2])]
    if re.fullmatch(r"/proc/\d+/map_files/[0-9a-f]+-[0-9a-f]+", path):
        return [Place("", path, KERNEL)]
    return [Place("", path)]


def dwarf_loader(
    paths: Sequence[str | Place],
    build_id: str,
    identity: tuple[int, int, int, int] | None,
    budget: Budget | None = None,
) -> Callable[[], Sections]:
    """A function reading the DWARF sections from the first of `paths` that
    is still the expected file (its build ID, or `identity` without one).

    Each place is opened by its own rule (symbolizer/places.py): never a
    symlink out of its root, never anything but a regular file. With
    neither a build ID nor an identity nothing could tell a swapped file
    apart, so nothing is read. The sections are paid for by what is left
    of the binary's `budget`, its clock restarted."""
    places = [p for path in paths for p in ([path] if isinstance(path, Place) else places_of(path))]

    def load() -> Sections:
        spend = budget or Budget()
        spend.restart_clock()
        for place in places:
            try:
                with open_place(place) as f:
                    if build_id and read_build_id(f) != build_id:
                        continue
                    if not build_id and (identity is None or _identity(f) != identity):
                        continue
                    return read_dwarf_sections(f, budget=spend)
            except OSError:
                continue
        shown = ", ".join(p.shown for p in places)
        raise ElfError(f"no longer readable as the same file: {shown}")

    return load


def read_dwarf_sections(
    f: IO[bytes], max_size: int = MAX_SECTION_SIZE, budget: Budget | None = None
) -> Sections:
    """The DWARF sections of an open file, paid for by `budget`, which the
    Sections keep: decoding their units later spends from it too."""
    budget = budget or Budget()
    elf = open_elf(f, budget)
    if not elf.little:
        raise ElfError("big-endian DWARF is not supported")
    sections = Sections(budget=budget)
    for name, header in elf.with_contents().items():
        field = SECTION_NAMES.get(name.replace(".zdebug_", ".debug_", 1))
        if field is not None and not getattr(sections, field):
            data = read_section(f, header, elf.elfclass, elf.little, max_size, budget)
            setattr(sections, field, data)
    return sections


def _mini_debuginfo(
    f: IO[bytes], header: SectionHeader, elf: ElfFile, budget: Budget | None = None
) -> list[Candidate]:
    """Function symbols of the xz-compressed ELF in .gnu_debugdata.

    The inner ELF is decompressed no further than the budget has left, and
    its own sections and symbols are paid for by the same budget."""
    budget = budget or Budget()
    raw = read_section(f, header, elf.elfclass, elf.little, budget=budget)
    limit = min(MAX_MINI_DEBUGINFO, budget.bytes_left)
    dec = lzma.LZMADecompressor()
    data = dec.decompress(raw, max_length=limit)
    if not dec.eof:
        if len(data) >= limit:
            raise BudgetExceeded(
                f".gnu_debugdata: decompresses to more than the {limit} bytes left to it"
            )
        raise ElfError(".gnu_debugdata is truncated")
    budget.take_bytes(len(data), ".gnu_debugdata: decompressing")
    return function_candidates(open_elf(io.BytesIO(data), budget), budget)

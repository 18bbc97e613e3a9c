"""Where a uprobe on a symbol goes: the symbol's offset in its file.

A uprobe is placed at a file offset. BCC finds it with its own ELF reader
inside libbcc.so (which links LLVM); the agent reads the symbol tables with
the symbolizer's (symbolizer/elffile.py) instead and converts the symbol's
virtual address to a file offset through the PT_LOAD segment that holds it,
as BCC does.
"""

from __future__ import annotations

import os

from symbolizer.budget import ElfError
from symbolizer.cache import LruCache, file_key
from symbolizer.elffile import PT_LOAD, ElfFile
from symbolizer.safeopen import open_regular


class SymbolError(LookupError):
    """The file lacks the symbol, or is not an ELF file we can read."""


def probe_path(path: str, pid: int) -> str:
    """The path to open for a process's file: through its root (a container's
    files are seen there), unless the probe is for every process, or the
    path is already a /proc one (a /proc/PID/map_files link: the mapped
    inode itself, see alloc.mapped_entry_points)."""
    if pid > 0 and not path.startswith("/proc/"):
        rooted = f"/proc/{pid}/root{path}"
        if os.path.exists(rooted):
            return rooted
    return path


def symbol_offset(path: str, symbol: str) -> int:
    """The file offset of a defined function `symbol` in the ELF file `path`."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SymbolError(f"cannot read {path}: {e.strerror}") from None
    functions, segments = _symbols(path, file_key(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    try:
        address = functions[symbol]
    except KeyError:
        raise SymbolError(f"no function {symbol} in {path}") from None
    return file_offset(address, segments, path)


def file_offset(address: int, segments: tuple[tuple[int, int, int], ...], path: str = "") -> int:
    """A virtual address's offset in the file, from (vaddr, memsz, offset)
    of each PT_LOAD segment."""
    for vaddr, memsz, offset in segments:
        if vaddr <= address < vaddr + memsz:
            return address - vaddr + offset
    raise SymbolError(f"address {address:#x} is in no loadable segment of {path}")


Symbols = tuple[dict[str, int], tuple[tuple[int, int, int], ...]]
_cache: LruCache[Symbols] = LruCache(32)


def _symbols(path: str, key: str) -> Symbols:
    """_read(path), once per version of a file (its file_key) whatever path
    reaches it: each process's libc is opened through its own /proc/PID/root,
    and reading libc's symbols takes ~5 ms."""
    hit = _cache.get(key)
    if hit is None:
        hit = _read(path)
        _cache.put(key, hit)
    return hit


def _read(path: str) -> Symbols:
    """Defined functions by name (first one wins: .dynsym, then .symtab) and
    the PT_LOAD segments of an ELF file."""
    try:
        # a regular file only: a FIFO at a probed path would block the agent
        with open_regular(path, nofollow=False) as f:
            elf = ElfFile(f)
            segments = tuple(
                (p.vaddr, p.memsz, p.offset) for p in elf.program_headers if p.type == PT_LOAD
            )
            functions: dict[str, int] = {}
            for sym in elf.functions():
                functions.setdefault(sym.name, sym.address)
    except (OSError, ElfError) as e:
        raise SymbolError(f"cannot read symbols of {path}: {e}") from None
    return functions, segments

"""Which allocator entry points to probe in a process, and where exactly.

A process may allocate through glibc, through jemalloc, tcmalloc or
mimalloc (linked or preloaded), or through an allocator linked statically
into its executable. So every executable file it maps is searched for the
entry points below by name (.dynsym and .symtab, defined functions only);
aliases at one address are probed once.

Where a probe goes decides its cost. The kernel emulates a few x86
instructions at a uprobe (push, jmp/call/jcc, nop) and must single-step any
other one out of line, which costs about 12 us against 1 us. glibc's
`malloc` starts with `push`, but `free` starts with `test rdi, rdi; je`. So
entry probes (for functions without a return probe) go to the first
emulated instruction of the prologue, provided nothing before it writes an
argument register or branches away, except the `test rdi, rdi; j(n)e` of a
free whose taken branch is free(NULL), a no-op. Return probes hook the
function's first instruction whatever it is, so a function that needs one
is probed there for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO

from agent.sources.probepoint import probe_offset
from symbolizer.elffile import EM_X86_64, ElfFile

# role -> (entry program, return program or "", argument registers read)
ROLES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "malloc": ("on_malloc", "on_return", ("rdi",)),
    "calloc": ("on_calloc", "on_return", ("rdi", "rsi")),
    "realloc": ("on_realloc", "on_return", ("rdi", "rsi")),
    "memalign": ("on_memalign", "on_return", ("rdi", "rsi")),
    "posix_memalign": ("on_posix_memalign", "on_posix_memalign_return", ("rdi", "rsi", "rdx")),
    "free": ("on_free", "", ("rdi",)),
    # ld.so's debugger hook: libraries were (or are about to be) mapped, so a
    # dlopen'd allocator is probed before its first call (agent/sources/alloc.py)
    "libraries": ("on_libs", "", ()),
}

# Entry points by name. Allocator-specific names are probed too, since a
# program may call them directly; operator new/delete only where an
# allocator library defines them (libstdc++'s call malloc, probed already).
SYMBOLS: dict[str, str] = {
    "malloc": "malloc",
    "calloc": "calloc",
    "realloc": "realloc",
    "free": "free",
    "cfree": "free",
    "valloc": "malloc",
    "pvalloc": "malloc",
    "aligned_alloc": "memalign",
    "memalign": "memalign",
    "posix_memalign": "posix_memalign",
    # jemalloc's non-standard API
    "mallocx": "malloc",
    "rallocx": "realloc",
    "dallocx": "free",
    "sdallocx": "free",
    # tcmalloc
    "tc_malloc": "malloc",
    "tc_calloc": "calloc",
    "tc_realloc": "realloc",
    "tc_free": "free",
    "tc_memalign": "memalign",
    "tc_posix_memalign": "posix_memalign",
    # mimalloc
    "mi_malloc": "malloc",
    "mi_calloc": "calloc",
    "mi_realloc": "realloc",
    "mi_free": "free",
    "mi_malloc_aligned": "malloc",
    # ld.so (not an allocator): where it tells debuggers of new libraries
    "_dl_debug_state": "libraries",
}
CXX_SYMBOLS: dict[str, str] = {
    "_Znwm": "malloc",  # operator new(size_t)
    "_Znam": "malloc",  # operator new[](size_t)
    "_ZdlPv": "free",  # operator delete(void*)
    "_ZdaPv": "free",  # operator delete[](void*)
    "_ZdlPvm": "free",  # sized delete
}
ALLOCATOR_LIBRARIES = ("libjemalloc", "libtcmalloc", "libmimalloc")


@dataclass(frozen=True)
class EntryPoint:
    """One function to probe: its symbol in `path`, its role, where."""

    path: str
    symbol: str
    role: str
    address: int  # ELF virtual address of the symbol
    probe_offset: int = 0  # bytes past the symbol where the entry probe goes
    # (st_dev, st_ino) of the file: uprobes are on inodes, and one file may be
    # reached by several paths (ld.so's, maps', a /proc/PID/map_files link)
    inode: tuple[int, int] = (0, 0)


def wanted_symbols(path: str) -> dict[str, str]:
    base = path.rsplit("/", 1)[-1]
    if base.startswith(ALLOCATOR_LIBRARIES):
        return {**SYMBOLS, **CXX_SYMBOLS}
    return SYMBOLS


def find_entry_points(path: str, f: IO[bytes]) -> list[EntryPoint]:
    """The allocator functions an ELF file defines, one per address (the
    standard name preferred), each with its probe offset."""
    inode = _inode(f)
    elf = ElfFile(f)
    wanted = wanted_symbols(path)
    x86_64 = elf.machine == EM_X86_64
    order = list(wanted)
    by_address: dict[int, str] = {}
    for sym in elf.functions(wanted):
        if sym.ifunc:  # a resolver's address, not the allocator's
            continue
        kept = by_address.get(sym.address)
        if kept is None or order.index(sym.name) < order.index(kept):
            by_address[sym.address] = sym.name
    out = []
    for address, name in sorted(by_address.items()):
        role = wanted[name]
        _, ret_program, registers = ROLES[role]
        offset = 0
        if x86_64 and not ret_program:
            offset = probe_offset(elf.code_at(address), registers, allow_null_check=role == "free")
        out.append(EntryPoint(path, name, role, address, offset, inode))
    return out


def _inode(f: IO[bytes]) -> tuple[int, int]:
    try:
        st = os.fstat(f.fileno())
    except OSError:  # an in-memory file (io.UnsupportedOperation)
        return (0, 0)
    return (st.st_dev, st.st_ino)

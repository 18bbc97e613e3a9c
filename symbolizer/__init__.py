"""bpfprof's native symbolizer: process and kernel addresses to function
names, file:line and inline chains (docs/symbolizer.md tells the search
order, what is supported and the limits).

An independent package (it imports nothing from the agent) that returns its
own small frozen dataclasses.

Usage by the agent::

    sym = Symbolizer(proc_root="/proc", kallsyms_path="/proc/kallsyms")
    sym.observe(pid)                  # when a pid is first seen, and after exec
    f = sym.resolve_user(pid, addr)   # ResolvedFrame; callers pass return address - 1
    f.lines                           # inline chain, innermost first, with file:line
    k = sym.resolve_kernel(addr)      # ResolvedFrame with mapping None
    e = sym.resolve_elf(path, vaddr)  # a file's own virtual address (addr2line-like)
    sym.save_cache()                  # with cache_dir: decoded tables to disk
    sym.process_name(pid), sym.executable_path(pid)
    sym.forget(pid)                   # when the process is done
    sym.stats                         # SymbolizerStats counters

Public API:

- `Symbolizer(proc_root="/proc", kallsyms_path="/proc/kallsyms",
  notes_path="/sys/kernel/notes", cache_size=512, max_snapshots=8,
  debug_search=DebugSearch(), cache_dir=None)` with
  `observe(pid)`, `resolve_user(pid, address)`, `resolve_kernel(address)`,
  `resolve_elf(path, vaddr)`, `load_file(path)`, `save_cache()`,
  `kernel_symbols()`, `kernel_build_id()`, `table_for(pid, address)`,
  `process_name(pid)`, `executable_path(pid)`, `forget(pid)`, `stats`.
- `ResolvedFrame(address, mapping, build_id, function, symbol_offset, elf_vaddr,
  module, lines, kind)`: `function` None means unsymbolized; address and
  mapping are kept. `lines` are `ResolvedLine(function, system_name, file,
  line, column, start_line)`, innermost first; `function` is demangled,
  `system_name` the mangled name.
- `DebugSearch(debug_dirs, debuginfod_caches)`: where separate debug files are.
- `demangle(name)`: C++ and Rust (v0 and legacy) names.
- `MapEntry`, `parse_maps(text)`, `read_maps(pid, proc_root)`.
- `ElfSymbols` (`build_id`, `lookup(vaddr) -> Symbol | None`,
  `file_offset_to_vaddr(offset) -> int | None`), `load_elf(path_or_file)`,
  `read_build_id(file)`, `build_id_from_notes(data)`, `ElfError`,
  `Symbol(name, start, size)`.
- `KernelSymbols.from_text(text)` (`lookup(address) -> KernelSymbol | None`,
  `text_start`), `KernelSymbol(name, start, module)`, `read_kallsyms(path)`,
  `read_kernel_notes(path)`.

Why it is built this way:

- Maps and symbol tables are captured at observe(), while the process
  lives: a process that exits during a recording is symbolized afterwards
  from that snapshot. Tables are parsed eagerly and files closed, so nothing
  depends on /proc/PID or the file later, and no file descriptors pile up.
- One table per build ID (or per file identity without one), in a bounded
  LRU: libc is parsed once for the whole host, not once per process.
- Address → file offset (through the maps entry) → ELF vaddr (through the
  PT_LOAD holding that offset): one formula for PIE, non-PIE and libraries.
- No exception escapes observe() or resolve_*(): a vanished pid, an
  unreadable or corrupt file is counted in `stats`, logged once per key on
  the "bpfprof.symbolizer" logger, and leaves the address unsymbolized.
- Readers of /proc and files are tiny functions taking a root path; the
  parsers take text or bytes, so tests feed them inline input.
"""

from symbolizer.debuginfo import DebugSearch
from symbolizer.demangle import demangle
from symbolizer.elf import (
    ElfError,
    ElfSymbols,
    Segment,
    build_id_from_notes,
    load_elf,
    read_build_id,
)
from symbolizer.frames import ResolvedLine
from symbolizer.kernel import KernelSymbol, KernelSymbols, read_kallsyms, read_kernel_notes
from symbolizer.procmaps import MapEntry, parse_maps, read_maps
from symbolizer.resolver import ResolvedFrame, Symbolizer
from symbolizer.stats import SymbolizerStats
from symbolizer.symtab import Symbol

__all__ = [
    "DebugSearch",
    "ElfError",
    "ElfSymbols",
    "KernelSymbol",
    "KernelSymbols",
    "MapEntry",
    "ResolvedFrame",
    "ResolvedLine",
    "Segment",
    "Symbol",
    "Symbolizer",
    "SymbolizerStats",
    "build_id_from_notes",
    "demangle",
    "load_elf",
    "parse_maps",
    "read_build_id",
    "read_kallsyms",
    "read_kernel_notes",
    "read_maps",
]

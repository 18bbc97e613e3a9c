"""ElfSymbols to and from the plain data the on-disk cache stores.

The state is (segments, symbol index, debug file, DWARF state): the DWARF
state is the unit index and the decoded units (see DwarfInfo.export). A
restored table re-opens its debug file only if an address falls into a
unit not decoded before, checking the file's build ID first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from symbolizer.dwarf import DwarfInfo
from symbolizer.elf import ElfSymbols, Segment
from symbolizer.objfile import dwarf_loader
from symbolizer.symtab import SymbolIndex


def table_state(table: ElfSymbols) -> tuple[Any, ...]:
    segments = [(s.offset, s.vaddr, s.filesz) for s in table.segments]
    dwarf = table.dwarf.export() if table.dwarf is not None else None
    return (segments, table.index.to_plain(), table.debug_file, dwarf)


def restore_table(
    build_id: str, state: tuple[Any, ...], warn: Callable[[str, str], None]
) -> ElfSymbols:
    """Raises ValueError/TypeError/IndexError/KeyError on a malformed state."""
    segments, index, debug_file, dwarf_state = state
    dwarf = None
    if dwarf_state is not None:
        if not isinstance(debug_file, str) or not debug_file:
            raise ValueError("DWARF state without its file")

        def warn_dwarf(message: str) -> None:
            warn(f"debug:{debug_file}", f"{debug_file}: {message}")

        dwarf = DwarfInfo(dwarf_loader([debug_file], build_id, None), warn_dwarf, dwarf_state)
    table = ElfSymbols(
        build_id,
        [Segment(int(o), int(v), int(n)) for o, v, n in segments],
        SymbolIndex.from_plain(index),
        dwarf,
        str(debug_file),
    )
    table.saved = True
    return table

"""From DWARF source frames and a symbol name to what callers get.

Naming follows llvm-symbolizer: every frame is named by its DWARF linkage
name (else plain name), except the outermost, which takes the symbol
table's name when there is one. That is what distinguishes compiler
clones (`work.constprop.0`, `foo.cold`) that DWARF calls plain `work`.
Names are demangled; the mangled form is kept as `system_name` (pprof's
Function.system_name).
"""

from __future__ import annotations

from dataclasses import dataclass

from symbolizer.demangle import demangle
from symbolizer.dwarf import SourceFrame


@dataclass(frozen=True)
class ResolvedLine:
    """One frame of an inline chain (pprof: one Line of a Location)."""

    function: str
    system_name: str = ""
    file: str = ""
    line: int = 0
    column: int = 0
    start_line: int = 0


def source_lines(source: tuple[SourceFrame, ...], symbol: str) -> tuple[ResolvedLine, ...]:
    """Innermost first; () when neither DWARF nor the symbol table knows the address."""
    if not source:
        return (ResolvedLine(demangle(symbol), symbol),) if symbol else ()
    last = len(source) - 1
    out = []
    for i, frame in enumerate(source):
        mangled = symbol if i == last and symbol else frame.function
        name = demangle(mangled) if mangled else "??"
        out.append(
            ResolvedLine(name, mangled, frame.file, frame.line, frame.column, frame.decl_line)
        )
    return tuple(out)

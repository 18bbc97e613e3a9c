"""An ELF file's headers, symbols, code and dynamic entries, read with `struct`.

The one ELF reader of the agent's probes and unwind tables: where a uprobe
goes (a function's address and the PT_LOAD that maps it), the first bytes
of an allocator's code, the PT_LOAD segments that pair file offsets with
link-time addresses, and the DT_NEEDED/DT_RUNPATH a command's loader
follows. pyelftools builds an object per symbol and per header field, which
cost ~60-85 ms per read of libc's .dynsym; unpacking the tables with
`struct` takes a few ms.

Every section read goes through `sections.read_section` and every symbol
kept is counted, both against the file's `Budget`: these files are mapped
by any local user, and a header may claim anything. Any malformed header
raises ElfError, never an IndexError or struct.error.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import IO

from symbolizer.budget import CHECK_EVERY, Budget, ElfError
from symbolizer.sections import MAX_SECTION_SIZE, SectionHeader, read_section

EM_X86_64 = 62
PT_LOAD, PT_NOTE = 1, 4
PF_X = 1
STT_FUNC, STT_GNU_IFUNC = 2, 10
FUNCTION_KINDS = frozenset({STT_FUNC, STT_GNU_IFUNC})
DT_NULL, DT_NEEDED, DT_RPATH, DT_RUNPATH = 0, 1, 15, 29
_SHN_UNDEF, _SHN_LORESERVE, _SHN_XINDEX = 0, 0xFF00, 0xFFFF
MAX_HEADERS = 1 << 16  # program or section headers: more is not a real file
MAX_DYNAMIC = 1 << 20  # bytes of .dynamic, .dynstr (libc's: 0.5 KB and 1 KB)

_SECTION_TYPES = {
    0: "SHT_NULL",
    1: "SHT_PROGBITS",
    2: "SHT_SYMTAB",
    3: "SHT_STRTAB",
    4: "SHT_RELA",
    6: "SHT_DYNAMIC",
    7: "SHT_NOTE",
    8: "SHT_NOBITS",
    9: "SHT_REL",
    11: "SHT_DYNSYM",
}
# (ELF header after e_ident, program header, section header, symbol, dynamic entry)
_LAYOUTS = {
    64: ("HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ", "IBBHQQ", "qQ"),
    32: ("HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII", "IIIBBH", "iI"),
}


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD program header: file bytes [offset, offset+filesz) at vaddr."""

    offset: int
    vaddr: int
    filesz: int


@dataclass(frozen=True)
class ProgramHeader:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True)
class Section:
    """A section header: what read_section needs, its sh_link, sh_addralign
    and sh_entsize."""

    header: SectionHeader
    link: int
    index: int
    align: int = 0
    entsize: int = 0

    @property
    def name(self) -> str:
        return self.header.name


@dataclass(frozen=True)
class FunctionSymbol:
    """A defined function symbol; `name` without its @version."""

    name: str
    address: int
    size: int
    ifunc: bool  # STT_GNU_IFUNC: the address is a resolver's
    table: str  # ".dynsym" or ".symtab"


@dataclass(frozen=True)
class Dynamic:
    """What the dynamic loader reads of a file to find its libraries."""

    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()


class ElfFile:
    """The headers of one ELF file, read at once; contents on demand.

    The stream must stay open while contents are read; `budget` (a fresh
    default one if None) pays for the header tables and every read."""

    def __init__(self, stream: IO[bytes], budget: Budget | None = None) -> None:
        self.stream = stream
        self.budget = budget or Budget()
        try:
            self._read_headers()
        except ElfError:
            raise
        except (struct.error, IndexError, ValueError, OSError, UnicodeDecodeError) as exc:
            raise ElfError(f"{type(exc).__name__}: {exc}") from exc

    def _read_headers(self) -> None:
        self.stream.seek(0)
        ident = self.stream.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            raise ElfError("not an ELF file (bad magic)")
        if ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise ElfError(f"unknown ELF class {ident[4]} or data encoding {ident[5]}")
        self.elfclass = 64 if ident[4] == 2 else 32
        self.little = ident[5] == 1
        order = "<" if self.little else ">"
        ehdr, phdr, shdr, sym, dyn = (struct.Struct(order + f) for f in _LAYOUTS[self.elfclass])
        self._sym, self._dyn = sym, dyn
        fields = ehdr.unpack(self._exact(16, ehdr.size, "ELF header"))
        self.type, self.machine = fields[0], fields[1]
        phoff, shoff, phentsize, phnum = fields[4], fields[5], fields[8], fields[9]
        shentsize, shnum, shstrndx = fields[10], fields[11], fields[12]
        self.program_headers = tuple(
            ProgramHeader(t, fl, off, va, fs, ms, al)
            for t, fl, off, va, fs, ms, al in self._phdrs(phdr, phoff, phentsize, phnum)
        )
        self.sections = self._section_table(shdr, shoff, shentsize, shnum, shstrndx)

    def _exact(self, offset: int, size: int, what: str) -> bytes:
        self.budget.take_bytes(size, what)
        self.stream.seek(offset)
        data = self.stream.read(size)
        if len(data) != size:
            raise ElfError(f"{what}: truncated ({len(data)} of {size} bytes)")
        return data

    def _table(
        self, offset: int, entsize: int, count: int, layout: struct.Struct, what: str
    ) -> bytes:
        if count == 0:
            return b""
        if entsize != layout.size or count > MAX_HEADERS:
            raise ElfError(f"{what}: {count} entries of {entsize} bytes")
        return self._exact(offset, entsize * count, what)

    def _phdrs(
        self, layout: struct.Struct, offset: int, entsize: int, count: int
    ) -> Iterator[tuple[int, ...]]:
        data = self._table(offset, entsize, count, layout, "program headers")
        for t, a, b, c, d, e, f, g in layout.iter_unpack(data):
            if self.elfclass == 64:  # type, flags, offset, vaddr, paddr, filesz, memsz, align
                yield t, a, b, c, e, f, g
            else:  # type, offset, vaddr, paddr, filesz, memsz, flags, align
                yield t, f, a, b, d, e, g

    def _section_table(
        self, layout: struct.Struct, offset: int, entsize: int, count: int, strndx: int
    ) -> tuple[Section, ...]:
        if offset == 0:
            return ()
        if count == 0 or strndx == _SHN_XINDEX:  # extended numbering: in section 0
            first = layout.unpack(self._exact(offset, layout.size, "section header 0"))
            count = count or first[5]
            strndx = first[6] if strndx == _SHN_XINDEX else strndx
        data = self._table(offset, entsize, count, layout, "section headers")
        raw = list(layout.iter_unpack(data))
        names = b""
        if 0 < strndx < len(raw):
            names = self._contents(raw[strndx], f"section names ({strndx})")
        out = []
        for i, (name, type_, flags, addr, off, size, link, _, align, entsize) in enumerate(raw):
            end = names.find(b"\0", name)
            text = names[name : end if end >= 0 else None].decode("utf-8", "replace")
            kind = _SECTION_TYPES.get(type_, f"SHT_{type_:#x}")
            header = SectionHeader(text, kind, flags, off, size, addr)
            out.append(Section(header, link, i, align, entsize))
        return tuple(out)

    def _contents(self, fields: tuple[int, ...], what: str) -> bytes:
        _, type_, flags, addr, off, size, *_ = fields
        kind = _SECTION_TYPES.get(type_, f"SHT_{type_:#x}")
        header = SectionHeader(what, kind, flags, off, size, addr)
        return self._read(header, MAX_DYNAMIC)

    def _read(
        self, header: SectionHeader, max_size: int = MAX_SECTION_SIZE, budget: Budget | None = None
    ) -> bytes:
        return read_section(
            self.stream, header, self.elfclass, self.little, max_size, budget or self.budget
        )

    # -- what callers ask --------------------------------------------------

    def section(self, name: str) -> Section | None:
        """The first section of that name."""
        return next((s for s in self.sections if s.name == name), None)

    def with_contents(self) -> dict[str, SectionHeader]:
        """Name → header of every section with bytes in the file (the first
        of each name): what the DWARF and MiniDebugInfo readers look up."""
        found: dict[str, SectionHeader] = {}
        for sec in self.sections:
            if sec.header.type != "SHT_NOBITS" and sec.name not in found:
                found[sec.name] = sec.header
        return found

    def read(self, section: Section, budget: Budget | None = None) -> bytes:
        """A section's contents, decompressed, paid for by `budget` (the
        file's if None: an unwind table has its own, see unwind_budget)."""
        return self._read(section.header, budget=budget)

    def segments(self) -> tuple[Segment, ...]:
        return tuple(
            Segment(p.offset, p.vaddr, p.filesz) for p in self.program_headers if p.type == PT_LOAD
        )

    def code_at(self, vaddr: int, size: int = 48) -> bytes:
        """Up to `size` file bytes at a virtual address in an executable PT_LOAD."""
        for p in self.program_headers:
            if p.type == PT_LOAD and p.flags & PF_X and p.vaddr <= vaddr < p.vaddr + p.filesz:
                n = min(size, p.vaddr + p.filesz - vaddr)
                self.budget.take_bytes(n, "code")
                self.stream.seek(p.offset + vaddr - p.vaddr)
                return self.stream.read(n)
        return b""

    def symbol_tables(self) -> Iterator[tuple[str, Section]]:
        """(name, section) of .dynsym, then .symtab, where the file has them."""
        for table in (".dynsym", ".symtab"):
            sec = self.section(table)
            if sec is not None and sec.header.type in ("SHT_DYNSYM", "SHT_SYMTAB"):
                yield table, sec

    def functions(self, names: Collection[str] | None = None) -> Iterator[FunctionSymbol]:
        """Defined functions with a non-zero address, .dynsym's then .symtab's,
        in table order; only those called `names` (without @version) if given."""
        for table, sec in self.symbol_tables():
            for raw, info, _shndx, value, size in self.function_entries(sec):
                if not value:
                    continue
                name = raw.split(b"@", 1)[0].decode("utf-8", "replace")
                if names is None or name in names:
                    yield FunctionSymbol(name, value, size, info & 0xF == STT_GNU_IFUNC, table)

    def function_entries(
        self, sec: Section, budget: Budget | None = None
    ) -> Iterator[tuple[bytes, int, int, int, int]]:
        """symbol_entries of the functions (STT_FUNC, STT_GNU_IFUNC) only."""
        return self.symbol_entries(sec, budget, FUNCTION_KINDS)

    def symbol_entries(
        self, sec: Section, budget: Budget | None = None, kinds: Collection[int] | None = None
    ) -> Iterator[tuple[bytes, int, int, int, int]]:
        """(name, st_info, st_shndx, st_value, st_size) of each defined entry
        of a symbol table section whose type is in `kinds` (any if None), in
        table order: the one reader of symbol tables (the symbolizer's
        candidates, the probes' lookups by name and the interpreter's data
        symbols all go through it). The section and its string table are
        read through `budget` (the file's if None), and every CHECK_EVERY
        entries the ones yielded are paid to it."""
        budget = budget or self.budget
        if not 0 <= sec.link < len(self.sections):
            raise ElfError(f"{sec.name}: string table {sec.link} does not exist")
        strtab = self.read(self.sections[sec.link], budget)
        data = self.read(sec, budget)
        is64 = self.elfclass == 64
        usable = len(data) - len(data) % self._sym.size
        kept = 0
        for i, fields in enumerate(self._sym.iter_unpack(data[:usable])):
            if i % CHECK_EVERY == CHECK_EVERY - 1:
                budget.take_entries(kept, "symbols")
                kept = 0
            if is64:
                name_off, info, _, shndx, value, size = fields
            else:
                name_off, value, size, info, _, shndx = fields
            if shndx == _SHN_UNDEF or (kinds is not None and info & 0xF not in kinds):
                continue
            end = strtab.find(b"\0", name_off)
            kept += 1
            yield strtab[name_off : end if end >= 0 else None], info, shndx, value, size
        budget.take_entries(kept, "symbols")

    def dynamic(self) -> Dynamic:
        """DT_NEEDED, DT_RPATH and DT_RUNPATH of the .dynamic section (a
        static file has none); the strings come from its sh_link table."""
        sec = self.section(".dynamic")
        if sec is None or sec.header.type != "SHT_DYNAMIC":
            return Dynamic()
        if not 0 <= sec.link < len(self.sections):
            raise ElfError(f".dynamic: string table {sec.link} does not exist")
        data = self._read(sec.header, MAX_DYNAMIC)
        strings = self._read(self.sections[sec.link].header, MAX_DYNAMIC)
        found: dict[int, list[str]] = {DT_NEEDED: [], DT_RPATH: [], DT_RUNPATH: []}
        usable = len(data) - len(data) % self._dyn.size
        for tag, value in self._dyn.iter_unpack(data[:usable]):
            if tag == DT_NULL:
                break
            if tag in found:
                end = strings.find(b"\0", value)
                text = strings[value : end if end >= 0 else None].decode("utf-8", "replace")
                found[tag].append(text)
        return Dynamic(
            tuple(found[DT_NEEDED]),
            tuple(p for v in found[DT_RPATH] for p in v.split(":")),
            tuple(p for v in found[DT_RUNPATH] for p in v.split(":")),
        )

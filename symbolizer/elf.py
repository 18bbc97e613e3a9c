"""ELF files: function symbols, the GNU build ID, and file offset → vaddr.

symbolizer/elffile.py's `ElfFile` reads the headers, segments and section
table with `struct`, as it does for the probes and unwind tables: one ELF
reader for the whole agent (pyelftools builds one object per symbol and
header field: about 80 ms for libc's .dynsym, against a few ms here).
Everything is read eagerly and the file is not kept open: a table must
outlive the process (and the file) it came from. Section contents are read
through `sections.read_section`, which never decompresses more than an
SHF_COMPRESSED section's budget allows, paid for by the file's `Budget`,
as are its header tables and every symbol kept.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

from symbolizer.budget import Budget
from symbolizer.budget import ElfError as ElfError  # defined there, known by all as elf's
from symbolizer.dwarf import DwarfInfo
from symbolizer.elffile import PT_NOTE, ElfFile
from symbolizer.elffile import Segment as Segment  # one PT_LOAD type for every reader
from symbolizer.plt import plt_candidates
from symbolizer.sections import SHF_COMPRESSED
from symbolizer.symtab import Candidate, Symbol, SymbolIndex

T = TypeVar("T")

NT_GNU_BUILD_ID = 3

_SHN_LORESERVE = 0xFF00
_BINDING_RANK = {1: 2, 2: 1}  # GLOBAL over WEAK over LOCAL (and the rest)


class ElfSymbols:
    """The function symbols and load segments of one ELF file (one build ID),
    and, when a file with DWARF was found for it, `dwarf` (file:line and
    inline frames) and `debug_file`, the file that DWARF came from."""

    def __init__(
        self,
        build_id: str,
        segments: Iterable[Segment],
        candidates: Iterable[Candidate] | SymbolIndex,
        dwarf: DwarfInfo | None = None,
        debug_file: str = "",
    ) -> None:
        self.build_id = build_id
        self.segments = tuple(segments)
        self._index = candidates if isinstance(candidates, SymbolIndex) else SymbolIndex(candidates)
        self.dwarf = dwarf
        self.debug_file = debug_file
        self.saved = False  # written to the on-disk cache (see persist.py)

    def dirty(self) -> bool:
        """DWARF units were decoded since the last save."""
        return self.dwarf is not None and self.dwarf.new_units > 0

    @property
    def index(self) -> SymbolIndex:
        return self._index

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, vaddr: int) -> Symbol | None:
        """The function containing ELF virtual address `vaddr`, if any."""
        return self._index.lookup(vaddr)

    def file_offset_to_vaddr(self, offset: int) -> int | None:
        """The ELF virtual address of a file offset, through its PT_LOAD.

        The segment's p_offset, not the start of the mapping, is the anchor:
        the kernel maps whole pages, so a mapping starts at the page below
        the segment, and only p_offset/p_vaddr pair a file byte with its
        link-time address. This one formula serves non-PIE executables
        (vaddr is the runtime address), PIE executables and shared libraries
        (vaddr is the runtime address minus the load bias) alike.
        """
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        return None


def load_elf(
    source: str | os.PathLike[str] | IO[bytes], budget: Budget | None = None
) -> ElfSymbols:
    """Parse a file (path or binary file object).

    Raises ElfError if it is not a usable ELF (BudgetExceeded if it costs
    more than `budget`); OSError if a path cannot be opened.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            return load_elf(f, budget)
    budget = budget or Budget()
    elf = open_elf(source, budget)
    return _guarded(
        lambda: ElfSymbols(_build_id(elf), elf.segments(), function_candidates(elf, budget))
    )


def read_build_id(stream: IO[bytes]) -> str:
    """Just the GNU build ID ("" if none): cheap, to find a cached table first.

    The agent asks this of every binary of every new process, so the common
    case (a 64-bit little-endian ELF with the note in a PT_NOTE segment) is
    read from the program headers alone: ~7 µs, where reading the section
    table too (ElfFile) costs more. Anything else (ELF32, big-endian, a
    note only in a section) takes the general path."""
    try:
        fast = _fast_build_id(stream)
    except (OSError, struct.error):
        fast = None
    if fast:
        return fast
    return build_id_of(open_elf(stream))


_EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR64 = struct.Struct("<IIQQQQQQ")
_MAX_NOTE = 1 << 16


def _fast_build_id(stream: IO[bytes]) -> str | None:
    """The build ID from the PT_NOTE segments of an ELF64 LE file, else None."""
    stream.seek(0)
    head = stream.read(_EHDR64.size)
    if len(head) < _EHDR64.size or head[:4] != b"\x7fELF" or head[4:6] != b"\x02\x01":
        return None
    fields = _EHDR64.unpack(head)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    if phentsize != _PHDR64.size or not 0 < phnum <= 256:
        return None
    stream.seek(phoff)
    table = stream.read(phentsize * phnum)
    for i in range(len(table) // phentsize):
        p_type, _, offset, _, _, filesz, _, align = _PHDR64.unpack_from(table, i * phentsize)
        if p_type == PT_NOTE and 0 < filesz <= _MAX_NOTE:
            stream.seek(offset)
            found = build_id_from_notes(stream.read(filesz), True, 8 if align == 8 else 4)
            if found:
                return found
    return None


def _guarded(step: Callable[[], T]) -> T:
    """Run a parsing step, turning any failure into ElfError.

    ElfFile turns a malformed header into ElfError, but a step reading
    tables it points into may still meet struct.error, IndexError or
    UnicodeDecodeError, and reads may fail with OSError: to the caller all
    of them mean the same thing, this file cannot be symbolized.
    """
    try:
        return step()
    except ElfError:
        raise  # already says what is wrong (BudgetExceeded must stay itself)
    except Exception as exc:
        raise ElfError(f"{type(exc).__name__}: {exc}") from exc


def parse_notes(
    data: bytes, little_endian: bool = True, align: int = 4
) -> Iterator[tuple[bytes, int, bytes]]:
    """(name, type, desc) of each note in a note section/segment's bytes.

    Name and desc are each padded to `align`: 4 for classic notes such as
    the build ID, 8 in segments with p_align 8 (.note.gnu.property).
    """
    header = struct.Struct("<III" if little_endian else ">III")
    pos = 0
    while pos + header.size <= len(data):
        namesz, descsz, ntype = header.unpack_from(data, pos)
        name_at = pos + header.size
        desc_at = name_at + _round_up(namesz, align)
        if desc_at + descsz > len(data):
            return  # truncated
        pos = desc_at + _round_up(descsz, align)
        yield (
            data[name_at : name_at + namesz].rstrip(b"\0"),
            ntype,
            data[desc_at : desc_at + descsz],
        )


def build_id_from_notes(data: bytes, little_endian: bool = True, align: int = 4) -> str:
    for name, ntype, desc in parse_notes(data, little_endian, align):
        if name == b"GNU" and ntype == NT_GNU_BUILD_ID:
            return desc.hex()
    return ""


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def open_elf(stream: IO[bytes], budget: Budget | None = None) -> ElfFile:
    """The file's headers (ElfFile), paid for by `budget`, or ElfError."""
    return _guarded(lambda: ElfFile(stream, budget))


def guarded(step: Callable[[], T]) -> T:
    return _guarded(step)


def build_id_of(elf: ElfFile) -> str:
    return _guarded(lambda: _build_id(elf))


def load_segments(elf: ElfFile) -> list[Segment]:
    return list(elf.segments())


def _build_id(elf: ElfFile) -> str:
    """From PT_NOTE segments, else SHT_NOTE sections (files without phdrs).

    Notes bigger than _MAX_NOTE, or compressed, are not read: a build ID
    note is 36 bytes, whatever size a header claims."""
    notes = [
        (_note_bytes(elf, p.offset, p.filesz), p.align)
        for p in elf.program_headers
        if p.type == PT_NOTE and p.filesz <= _MAX_NOTE
    ]
    if not notes:
        notes = [
            (elf.read(s), s.align)
            for s in elf.sections
            if s.header.type == "SHT_NOTE"
            and s.header.size <= _MAX_NOTE
            and not s.header.flags & SHF_COMPRESSED
        ]
    for data, align in notes:
        found = build_id_from_notes(data, elf.little, 8 if align == 8 else 4)
        if found:
            return found
    return ""


def _note_bytes(elf: ElfFile, offset: int, size: int) -> bytes:
    """A note segment's bytes (what the file holds of them), paid for."""
    elf.budget.take_bytes(size, "PT_NOTE")
    elf.stream.seek(offset)
    return elf.stream.read(size)


def function_candidates(elf: ElfFile, budget: Budget | None = None) -> list[Candidate]:
    """Function symbols of .symtab and .dynsym; .symtab ones rank higher;
    then the PLT stubs (`memcmp@plt`, see plt.py), ranked below them all.

    Their bytes, and each symbol kept, are taken from `budget` (a fresh
    default one if None): BudgetExceeded when the file asks for more. A
    zero-size symbol extends at most to the end of its section (`limit`)."""
    budget = budget or Budget()
    sections = elf.sections
    extents = [(s.header.addr, s.header.addr + s.header.size) for s in sections]
    found: list[Candidate] = []
    for sec in sections:
        if sec.header.type not in ("SHT_SYMTAB", "SHT_DYNSYM"):
            continue
        from_symtab = sec.header.type == "SHT_SYMTAB"
        for raw, info, shndx, value, size in elf.function_entries(sec, budget):
            if shndx >= min(_SHN_LORESERVE, len(extents)):
                continue
            name = raw.decode("utf-8", "replace")
            plainness = len(name.lstrip("_")) - len(name)
            rank = (from_symtab, size > 0, plainness, _BINDING_RANK.get(info >> 4, 0))
            limit = value + size if size else extents[shndx][1]
            found.append(Candidate(value, size, name, limit, rank))
    best: dict[int, Candidate] = {}
    for c in found:
        if c.start not in best or c.rank > best[c.start].rank:
            best[c.start] = c
    return found + plt_candidates(elf, budget, lambda a: best[a].name if a in best else None)

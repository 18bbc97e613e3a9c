"""Names for x86_64 PLT stubs (`memcmp@plt`), as objdump and perf give them.

A call into another library goes through a stub of a few bytes that no
symbol table covers, so a sample on it (4 % of sqlite3's, calling memcmp)
would stay an address. Each stub jumps through a GOT slot, and the
dynamic relocation that fills the slot names the target:

    stub:  [endbr64] [bnd] jmp *disp32(%rip)      ; ff 25 disp32
    slot = address after that jmp + disp32
    .rela.plt: R_X86_64_JUMP_SLOT  slot → .dynsym[sym]  (lazy .plt, .plt.sec)
    .rela.dyn: R_X86_64_GLOB_DAT   slot → .dynsym[sym]  (.plt.got)

Decoding the stub's own jump, as binutils' synthetic symbol table does,
serves every layout ld emits without knowing it: the lazy `.plt` (16-byte
entries after the 16-byte PLT0 header), the IBT layout (`-z ibtplt`,
CET distributions: the jumps live in `.plt.sec`, while `.plt` keeps only
endbr/push/jmp PLT0 and stays unnamed, as objdump leaves it) and `.plt.got`
(8 or 16 bytes). A slot filled by R_X86_64_IRELATIVE (an ifunc called
inside its own library, e.g. libc's memcpy) is named after the function
at its addend, `*ABS*+0x…@plt` (objdump's label) when there is none.

Every section is read through the file's Budget and every stub kept is
paid for as an entry, like any other symbol.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from symbolizer.budget import Budget
from symbolizer.elffile import EM_X86_64, ElfFile, Section
from symbolizer.symtab import Candidate

R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, R_X86_64_IRELATIVE = 6, 7, 37
STUB_SECTIONS = (".plt", ".plt.sec", ".plt.got")
# below every real symbol at the same address: a stub never hides a function
PLT_RANK = (False, True, -(1 << 20), 0)

_RELA64 = struct.Struct("<QQq")
_SYM64 = struct.Struct("<IBBHQQ")
# where `jmp *disp32(%rip)` may start in a stub: bare, after bnd (f2),
# after endbr64 (f3 0f 1e fa), after both
_JMP_AT = (0, 1, 4, 5)
_PREFIXES = {0: b"", 1: b"\xf2", 4: b"\xf3\x0f\x1e\xfa", 5: b"\xf3\x0f\x1e\xfa\xf2"}


def plt_candidates(
    elf: ElfFile, budget: Budget, function_at: Callable[[int], str | None]
) -> list[Candidate]:
    """One `name@plt` candidate per stub whose GOT slot a relocation names.

    `function_at` names the file's function starting at an address (for
    IRELATIVE slots). Files other than ELF64 x86_64 have none here."""
    if elf.machine != EM_X86_64 or elf.elfclass != 64 or not elf.little:
        return []
    stubs = [s for s in map(elf.section, STUB_SECTIONS) if s is not None and _has_code(s)]
    if not stubs:
        return []
    wanted = [".rela.plt"] + ([".rela.dyn"] if any(s.name == ".plt.got" for s in stubs) else [])
    slots: dict[int, str] = {}
    for name in wanted:
        sec = elf.section(name)
        if sec is not None and sec.header.type == "SHT_RELA":
            slots.update(_slot_names(elf, sec, budget, function_at))
    found = []
    for sec in stubs:
        for start, size, slot in _stub_jumps(sec, elf.read(sec, budget)):
            target = slots.get(slot)
            if target:
                found.append(Candidate(start, size, target + "@plt", start + size, PLT_RANK))
    budget.take_entries(len(found), "PLT stubs")
    return found


def _has_code(sec: Section) -> bool:
    return sec.header.type == "SHT_PROGBITS" and sec.header.size > 0


def _stub_jumps(sec: Section, data: bytes) -> list[tuple[int, int, int]]:
    """(start, size, GOT slot) of each stub of a section that jumps through one."""
    stride = sec.entsize if sec.entsize in (8, 16) else 16
    base = sec.header.addr
    out = []
    for at in range(0, len(data) - stride + 1, stride):
        for pos in _JMP_AT:
            end = at + pos + 6
            if (
                end <= at + stride
                and data[at + pos : at + pos + 2] == b"\xff\x25"
                and data[at : at + pos] == _PREFIXES[pos]
            ):
                (disp,) = struct.unpack_from("<i", data, at + pos + 2)
                out.append((base + at, stride, base + end + disp))
                break
    return out


def _slot_names(
    elf: ElfFile, rela: Section, budget: Budget, function_at: Callable[[int], str | None]
) -> dict[int, str]:
    """GOT slot → target name, for the call relocations of one SHT_RELA section."""
    data = elf.read(rela, budget)
    symtab = elf.sections[rela.link] if 0 < rela.link < len(elf.sections) else None
    syms = strtab = b""
    if symtab is not None and symtab.header.type in ("SHT_DYNSYM", "SHT_SYMTAB"):
        syms = elf.read(symtab, budget)
        if 0 <= symtab.link < len(elf.sections):
            strtab = elf.read(elf.sections[symtab.link], budget)
    usable = len(data) - len(data) % _RELA64.size
    names: dict[int, str] = {}
    for offset, info, addend in _RELA64.iter_unpack(data[:usable]):
        kind, index = info & 0xFFFFFFFF, info >> 32
        if kind in (R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT) and index:
            name = _symbol_name(syms, strtab, index)
            if name:
                names[offset] = name
        elif kind == R_X86_64_IRELATIVE:
            names[offset] = function_at(addend) or f"*ABS*+{addend:#x}"
    return names


def _symbol_name(syms: bytes, strtab: bytes, index: int) -> str:
    """The name of symbol `index` (without @version), "" if out of range."""
    at = index * _SYM64.size
    if at + _SYM64.size > len(syms):
        return ""
    name_off = _SYM64.unpack_from(syms, at)[0]
    end = strtab.find(b"\0", name_off)
    raw = strtab[name_off : end if end >= 0 else None]
    return raw.split(b"@", 1)[0].decode("utf-8", "replace")

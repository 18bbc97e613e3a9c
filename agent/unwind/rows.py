"""Compact x86-64 unwind rows: what the BPF walker follows, 12 bytes each.

A row says, from its address up to the next row's: how to compute the CFA,
where the caller's RBP is, and (implicitly) that the return address is at
CFA-8, which is true of all compiler-generated x86-64 code. Forms that fit
none of the kinds below become CFA_UNSUPPORTED, which ends the walk there.

The C side is `struct unwind_row` in bpf/unwind.h; `ROW` is its layout.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from agent.unwind.cfa import EXPRESSION, OFFSET, SAME, UNDEFINED, CfiRow, Rule, interpret
from agent.unwind.ehframe import CfiError, Fde, sleb128
from symbolizer.budget import Budget

# cfa_type: mirrored by the CFA_* defines of bpf/unwind.h.
CFA_NONE = 0  # no CFI here (a gap between FDEs): fall back to frame pointers
CFA_RSP = 1  # CFA = RSP + cfa_offset
CFA_RBP = 2  # CFA = RBP + cfa_offset
CFA_PLT = 3  # CFA = RSP + 8, + 8 more when (RIP & 15) >= cfa_offset (PLT stubs)
CFA_SIGNAL = 4  # signal trampoline: RSP at *(RSP + off), RIP after it (ucontext)
CFA_END = 5  # return address undefined: the outermost frame (_start, thread entry)
CFA_UNSUPPORTED = 6  # CFA in another register, RA not at CFA-8, other expressions

# rbp_type
RBP_SAME = 0  # RBP is unchanged in this frame
RBP_AT_CFA = 1  # saved at CFA + rbp_offset
RBP_AT_RSP = 2  # saved at RSP + rbp_offset (signal frames: the ucontext)

DW_RBP, DW_RSP, DW_RA = 6, 7, 16
TRACKED = (DW_RBP, DW_RA)

ROW = struct.Struct("<IihBB")  # pc - base, cfa_offset, rbp_offset, cfa_type, rbp_type
assert ROW.size == 12

# DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit<N>; DW_OP_ge;
# DW_OP_lit3; DW_OP_shl; DW_OP_plus -- what binutils writes for .plt sections.
_PLT = re.compile(rb"\x77\x08\x80\x00\x3f\x1a([\x30-\x4f])\x2a\x33\x24\x22", re.DOTALL)
_BREG7 = 0x77
_DEREF = 0x06
_S16 = range(-(1 << 15), 1 << 15)
_S32 = range(-(1 << 31), 1 << 31)


@dataclass(frozen=True)
class Row:
    address: int  # ELF virtual address
    cfa_type: int
    cfa_offset: int = 0
    rbp_type: int = RBP_SAME
    rbp_offset: int = 0

    def same_rule(self, other: Row) -> bool:
        return (self.cfa_type, self.cfa_offset, self.rbp_type, self.rbp_offset) == (
            other.cfa_type,
            other.cfa_offset,
            other.rbp_type,
            other.rbp_offset,
        )


def breg7_offset(expression: bytes, deref: bool = False) -> int | None:
    """N of `DW_OP_breg7 N` (with a trailing DW_OP_deref if `deref`), else None."""
    if len(expression) < 2 or expression[0] != _BREG7:
        return None
    try:
        value, pos = sleb128(expression, 1)
    except CfiError:
        return None
    return value if expression[pos:] == (bytes([_DEREF]) if deref else b"") else None


def x86_row(row: CfiRow) -> Row:
    """The compact form of one DWARF rule row (see the CFA_* kinds)."""
    ra = row.registers.get(DW_RA)
    if ra is not None and ra.kind == UNDEFINED:
        return Row(row.address, CFA_END)
    unsupported = Row(row.address, CFA_UNSUPPORTED)
    cfa = row.cfa
    if cfa.expression:
        return _expression_row(row, ra) or unsupported
    if cfa.register not in (DW_RSP, DW_RBP) or ra != Rule(OFFSET, -8):
        return unsupported
    kind = CFA_RSP if cfa.register == DW_RSP else CFA_RBP
    rbp = row.registers.get(DW_RBP)
    if cfa.offset not in _S32:
        return unsupported
    if rbp is None or rbp.kind in (SAME, UNDEFINED):
        return Row(row.address, kind, cfa.offset)
    if rbp.kind == OFFSET and rbp.value in _S16:
        return Row(row.address, kind, cfa.offset, RBP_AT_CFA, rbp.value)
    return unsupported


def _expression_row(row: CfiRow, ra: Rule | None) -> Row | None:
    """The two expression forms x86-64 code uses: PLT stubs and signal frames."""
    plt = _PLT.fullmatch(row.cfa.expression)
    if plt and ra == Rule(OFFSET, -8):
        return Row(row.address, CFA_PLT, plt.group(1)[0] - 0x30)
    sp_at = breg7_offset(row.cfa.expression, deref=True)
    if sp_at is None or ra is None or ra.kind != EXPRESSION:
        return None
    if breg7_offset(ra.expression) != sp_at + 8 or sp_at not in _S32:
        return None  # the walker reads RIP right after RSP, as in struct sigcontext
    rbp = row.registers.get(DW_RBP)
    if rbp is None:
        return Row(row.address, CFA_SIGNAL, sp_at)
    rbp_at = breg7_offset(rbp.expression) if rbp.kind == EXPRESSION else None
    if rbp_at is None or rbp_at not in _S16:
        return None
    return Row(row.address, CFA_SIGNAL, sp_at, RBP_AT_RSP, rbp_at)


def fde_rows(fde: Fde) -> list[Row]:
    """The rows of one FDE; a program that cannot be read becomes one
    CFA_UNSUPPORTED row, so the walk stops there instead of guessing."""
    if fde.cie.ra_register != DW_RA:
        return [Row(fde.pc_begin, CFA_UNSUPPORTED)]
    try:
        return [x86_row(r) for r in interpret(fde, TRACKED)]
    except (CfiError, IndexError, ValueError):
        return [Row(fde.pc_begin, CFA_UNSUPPORTED)]


_PAY_EVERY = 16  # FDEs between payments to the budget (each is bounded by cfa.py)


def merge_rows(fdes: Iterable[Fde], budget: Budget | None = None) -> list[Row]:
    """All rows of a binary, ascending, gaps marked CFA_NONE, runs merged.

    Where two FDEs overlap (a broken or doubly described range) the later
    one starts where it says and the earlier one is cut there. Rows made
    are entries of `budget`, paid (with a look at its clock) every
    _PAY_EVERY FDEs: a table past it raises BudgetExceeded.
    """
    budget = budget or Budget(max_entries=1 << 62, max_seconds=float("inf"))
    out: list[Row] = []
    end = -1
    paid = 0
    for i, fde in enumerate(sorted(fdes, key=lambda f: f.pc_begin)):
        if 0 <= end < fde.pc_begin:
            out.append(Row(end, CFA_NONE))
        while out and out[-1].address >= fde.pc_begin:
            out.pop()
        out.extend(fde_rows(fde))
        end = fde.pc_end
        if i % _PAY_EVERY == _PAY_EVERY - 1:
            budget.take_entries(len(out) - paid, "CFI rows")
            paid = len(out)
    if end >= 0:
        out.append(Row(end, CFA_NONE))
    return compact(out)


def compact(rows: list[Row]) -> list[Row]:
    """Drop each row that repeats the rule of the row before it."""
    kept: list[Row] = []
    for row in rows:
        if kept and kept[-1].same_rule(row):
            continue
        kept.append(row)
    return kept


def pack(rows: list[Row], base: int) -> bytes:
    """The rows as `struct unwind_row`s, addresses made relative to `base`."""
    return b"".join(
        ROW.pack(r.address - base, r.cfa_offset, r.rbp_offset, r.cfa_type, r.rbp_type) for r in rows
    )


def unpack(data: bytes, base: int) -> list[Row]:
    return [
        Row(pc + base, cfa_type, cfa_offset, rbp_type, rbp_offset)
        for pc, cfa_offset, rbp_offset, cfa_type, rbp_type in ROW.iter_unpack(data)
    ]

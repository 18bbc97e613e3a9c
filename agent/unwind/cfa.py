"""The DW_CFA_* interpreter: an FDE's instructions to a table of rules.

The table is the one DWARF describes (section 6.4.1 of DWARF 5): one row per
code address where a rule changes, each giving how to compute the CFA
(canonical frame address: the caller's stack pointer before the call) and
where each register of the caller was saved. The CIE's initial instructions
run first; DW_CFA_restore goes back to the rules they set.

Rules stay architecture-neutral here (DWARF register numbers, raw
expression bytes); `agent.unwind.rows` maps them to x86-64 rows the BPF
walker can follow.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass

from agent.unwind.ehframe import CfiError, Fde, sleb128, uleb128

UNDEFINED, SAME, OFFSET, VAL_OFFSET, REGISTER, EXPRESSION, VAL_EXPRESSION = (
    "undefined",
    "same",
    "offset",
    "val_offset",
    "register",
    "expression",
    "val_expression",
)


@dataclass(frozen=True)
class Rule:
    """Where the caller's value of a register is: `kind` with its operand
    (a CFA-relative offset, a register number, or an expression)."""

    kind: str
    value: int = 0
    expression: bytes = b""


@dataclass(frozen=True)
class CfaRule:
    """CFA = register + offset, or the value of a DWARF expression."""

    register: int = -1
    offset: int = 0
    expression: bytes = b""


@dataclass(frozen=True)
class CfiRow:
    """The rules in force from `address` up to the next row's address."""

    address: int
    cfa: CfaRule
    registers: dict[int, Rule]


# Bounds on one FDE, far above what compilers emit (a few hundred bytes, a
# few dozen rows, remember_state nested once or twice), so that a hostile
# program is an error before it costs memory or time.
MAX_PROGRAM = 1 << 20  # instruction bytes
MAX_ROWS_PER_FDE = 1 << 16
MAX_REMEMBERED = 64  # DW_CFA_remember_state depth

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class _State:
    def __init__(self, cfa: CfaRule, registers: dict[int, Rule]) -> None:
        self.cfa = cfa
        self.registers = registers

    def copy(self) -> _State:
        return _State(self.cfa, dict(self.registers))


def interpret(fde: Fde, track: Collection[int] | None = None) -> list[CfiRow]:
    """The rule table of one FDE, rows in ascending address order.

    `track` limits the registers kept (the others' rules are parsed and
    dropped), which keeps big tables cheap. Raises CfiError on an unknown
    opcode, a truncated program or one past the MAX_* bounds.
    """
    if len(fde.instructions) + len(fde.cie.initial_instructions) > MAX_PROGRAM:
        raise CfiError(f"CFI program of the FDE at 0x{fde.offset:x} is over {MAX_PROGRAM} bytes")
    initial = _State(CfaRule(), {})
    _run(fde.cie.initial_instructions, fde, initial, None, track, [], fde.pc_begin)
    rows: list[CfiRow] = []
    state = initial.copy()
    _run(fde.instructions, fde, state, initial, track, rows, fde.pc_begin)
    return rows


def _run(
    code: bytes,
    fde: Fde,
    state: _State,
    initial: _State | None,
    track: Collection[int] | None,
    rows: list[CfiRow],
    loc: int,
) -> None:
    cie = fde.cie
    stack: list[_State] = []
    pos = 0

    def keep(reg: int, rule: Rule) -> None:
        if track is None or reg in track:
            state.registers[reg] = rule

    def restore(reg: int) -> None:
        saved = initial.registers.get(reg) if initial else None
        if saved is None:
            state.registers.pop(reg, None)
        else:
            state.registers[reg] = saved

    def advance(delta: int) -> None:
        nonlocal loc
        if initial is not None and loc < fde.pc_end:
            _emit(rows, loc, state)
        loc += delta * cie.code_align

    while pos < len(code):
        op = code[pos]
        pos += 1
        high, low = op & 0xC0, op & 0x3F
        if high == 0x40:  # DW_CFA_advance_loc
            advance(low)
        elif high == 0x80:  # DW_CFA_offset
            off, pos = uleb128(code, pos)
            keep(low, Rule(OFFSET, off * cie.data_align))
        elif high == 0xC0:  # DW_CFA_restore
            restore(low)
        elif op == 0x00:  # DW_CFA_nop
            pass
        elif op == 0x02:  # DW_CFA_advance_loc1
            advance(_need(code, pos, 1)[0])
            pos += 1
        elif op == 0x03:
            advance(_U16.unpack_from(_need(code, pos, 2))[0])
            pos += 2
        elif op == 0x04:
            advance(_U32.unpack_from(_need(code, pos, 4))[0])
            pos += 4
        elif op in (0x05, 0x11, 0x14, 0x15, 0x2F):  # offsets, CFA-relative
            reg, pos = uleb128(code, pos)
            signed = op in (0x11, 0x15)
            off, pos = sleb128(code, pos) if signed else uleb128(code, pos)
            off *= -cie.data_align if op == 0x2F else cie.data_align
            keep(reg, Rule(VAL_OFFSET if op in (0x14, 0x15) else OFFSET, off))
        elif op == 0x06:  # DW_CFA_restore_extended
            reg, pos = uleb128(code, pos)
            restore(reg)
        elif op in (0x07, 0x08):  # DW_CFA_undefined, DW_CFA_same_value
            reg, pos = uleb128(code, pos)
            keep(reg, Rule(UNDEFINED if op == 0x07 else SAME))
        elif op == 0x09:  # DW_CFA_register
            reg, pos = uleb128(code, pos)
            other, pos = uleb128(code, pos)
            keep(reg, Rule(REGISTER, other))
        elif op == 0x0A:  # DW_CFA_remember_state
            if len(stack) >= MAX_REMEMBERED:
                raise CfiError("DW_CFA_remember_state nested too deep")
            stack.append(state.copy())
        elif op == 0x0B:  # DW_CFA_restore_state
            if not stack:
                raise CfiError("DW_CFA_restore_state without remember_state")
            saved = stack.pop()
            state.cfa, state.registers = saved.cfa, saved.registers
        elif op in (0x0C, 0x12):  # DW_CFA_def_cfa, DW_CFA_def_cfa_sf
            reg, pos = uleb128(code, pos)
            if op == 0x0C:
                off, pos = uleb128(code, pos)
            else:
                off, pos = sleb128(code, pos)
                off *= cie.data_align
            state.cfa = CfaRule(reg, off)
        elif op == 0x0D:  # DW_CFA_def_cfa_register
            reg, pos = uleb128(code, pos)
            state.cfa = CfaRule(reg, state.cfa.offset)
        elif op in (0x0E, 0x13):  # DW_CFA_def_cfa_offset(_sf)
            if op == 0x0E:
                off, pos = uleb128(code, pos)
            else:
                off, pos = sleb128(code, pos)
                off *= cie.data_align
            state.cfa = CfaRule(state.cfa.register, off, state.cfa.expression)
        elif op == 0x0F:  # DW_CFA_def_cfa_expression
            block, pos = _block(code, pos)
            state.cfa = CfaRule(expression=block)
        elif op in (0x10, 0x16):  # DW_CFA_expression, DW_CFA_val_expression
            reg, pos = uleb128(code, pos)
            block, pos = _block(code, pos)
            keep(reg, Rule(EXPRESSION if op == 0x10 else VAL_EXPRESSION, 0, block))
        elif op == 0x2E:  # DW_CFA_GNU_args_size: only matters to exception handling
            _, pos = uleb128(code, pos)
        elif op == 0x2D:  # DW_CFA_GNU_window_save (SPARC; AArch64 RA signing)
            pass
        elif op == 0x01:
            raise CfiError("DW_CFA_set_loc is not supported")
        else:
            raise CfiError(f"unknown CFA opcode 0x{op:02x}")
    if initial is not None and loc < fde.pc_end:
        _emit(rows, loc, state)


def _emit(rows: list[CfiRow], loc: int, state: _State) -> None:
    row = CfiRow(loc, state.cfa, dict(state.registers))
    if rows and rows[-1].address == loc:
        rows[-1] = row  # a zero advance: the later rules win
    elif len(rows) >= MAX_ROWS_PER_FDE:
        raise CfiError(f"more than {MAX_ROWS_PER_FDE} rows in one FDE")
    else:
        rows.append(row)


def _need(code: bytes, pos: int, size: int) -> bytes:
    if pos + size > len(code):
        raise CfiError("truncated CFA instruction")
    return code[pos : pos + size]


def _block(code: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = uleb128(code, pos)
    return _need(code, pos, size), pos + size

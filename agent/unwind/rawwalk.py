"""The walk of bpf/unwind.h, in user space, over a copied stack.

A sample taken before a process's tables were loaded (its first
milliseconds; a child that lives for a few) is walked in the kernel with
frame pointers only, which stops at the leaf in code built without them.
With UNWIND_RAW the program also sends the sample's registers and the top
pages of its stack (`struct unwind_raw_stack`); once the loader has read
the process's mappings, `walk` follows the same rows over that copy, frame
for frame as the kernel would have, and the whole stack replaces the
frame-pointer one.

Memory is what was copied and nothing else: a saved register above the
copy ends the walk, and the stack is marked truncated (its callers exist
but were not kept), as is one deeper than MAX_FRAMES.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from agent.unwind.layout import MAX_FRAMES, PAGE, RAW_HEADER, STACK_TRUNCATED
from agent.unwind.rows import (
    CFA_END,
    CFA_NONE,
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    CFA_SIGNAL,
    RBP_AT_CFA,
    RBP_AT_RSP,
    ROW,
)

MIN_PC, MAX_PC = 4096, 0x00007FFFFFFFFFFF  # UNWIND_MIN_PC, UNWIND_MAX_PC
_U64 = struct.Struct("<Q")
_MASK = (1 << 64) - 1
STACK_REACH = 8 << 20  # a thread's stack is at most this far above its sp (ulimit -s)


@dataclass(frozen=True)
class RawStack:
    """One struct unwind_raw_stack: registers and stack bytes from `base`."""

    hash: int
    pid: int
    ip: int
    sp: int
    bp: int
    base: int
    data: bytes

    def read(self, addr: int) -> int | None:
        """The u64 at `addr`, None outside the copy."""
        off = addr - self.base
        if off < 0 or off + 8 > len(self.data):
            return None
        return int(_U64.unpack_from(self.data, off)[0])


def parse_raw(buf: bytes) -> RawStack:
    """A record as the ring buffer hands it over (header, then its pages)."""
    hash_, ip, sp, bp, base, pid, pages = RAW_HEADER.unpack_from(buf)
    size = min(pages * PAGE, len(buf) - RAW_HEADER.size)
    data = bytes(buf[RAW_HEADER.size : RAW_HEADER.size + size])
    return RawStack(hash_, pid, ip, sp, bp, base, data)


class Rows:
    """One binary's packed rows (agent.unwind.rows.ROW), searchable by pc."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        words = array("I")
        words.frombytes(data[: len(data) - len(data) % ROW.size])
        self._pcs = words[0::3]  # a row is three u32 words; the pc comes first

    def find(self, rel: int) -> tuple[int, int, int, int] | None:
        """(pc, cfa_offset, rbp_offset, cfa_type, rbp_type) minus the pc: the
        last row at or below `rel`, as unwind_find_row."""
        i = bisect_right(self._pcs, rel) - 1
        if i < 0:
            return None
        _, cfa_offset, rbp_offset, cfa_type, rbp_type = ROW.unpack_from(self._data, i * ROW.size)
        return cfa_type, cfa_offset, rbp_type, rbp_offset


@dataclass(frozen=True)
class Mapping:
    """An executable mapping as the loader placed it; rows None: no CFI."""

    start: int
    end: int
    base: int
    rows: Rows | None


class _State:
    def __init__(self, raw: RawStack) -> None:
        self.pc, self.sp, self.bp = raw.ip, raw.sp, raw.bp
        self.exact = 1
        self.flags = 0


def walk(raw: RawStack, mappings: Sequence[Mapping]) -> tuple[tuple[int, ...], int]:
    """(ips leaf first, STACK_* flags) of a copied stack; `mappings` sorted."""
    starts = [m.start for m in mappings]
    st = _State(raw)
    ips: list[int] = []
    while len(ips) < MAX_FRAMES:
        ips.append(st.pc)
        if not _frame(st, raw, mappings, starts) or st.pc == 0:
            break
        if st.pc < MIN_PC or st.pc > MAX_PC or len(ips) >= MAX_FRAMES:
            st.flags |= STACK_TRUNCATED
            break
    return tuple(ips), st.flags


def _row(st: _State, mappings: Sequence[Mapping], starts: list[int]) -> tuple[int, ...] | None:
    pc = st.pc - 1 + st.exact
    i = bisect_left(starts, pc + 1) - 1
    if i < 0 or pc >= mappings[i].end:
        return None
    m = mappings[i]
    if m.rows is None or pc < m.base or pc - m.base > 0xFFFFFFFF:
        return None
    return m.rows.find(pc - m.base)


def _frame(st: _State, raw: RawStack, mappings: Sequence[Mapping], starts: list[int]) -> bool:
    """Replace (pc, sp, bp) by the caller's, as unwind_frame; False: the end."""
    row = _row(st, mappings, starts)
    kind = row[0] if row else CFA_NONE
    if row is None or kind == CFA_NONE:
        return _fp(st, raw)
    _, offset, rbp_type, rbp_offset = row
    if kind == CFA_SIGNAL:
        sp, ip = raw.read(st.sp + offset), raw.read(st.sp + offset + 8)
        bp = raw.read(st.sp + rbp_offset) if rbp_type == RBP_AT_RSP else st.bp
        if sp is None or ip is None or bp is None:
            return _cut(st, raw, st.sp + offset)
        st.sp, st.pc, st.bp, st.exact = sp, ip, bp, 1
        return True
    if kind == CFA_END:
        return False
    if kind == CFA_RSP:
        cfa = st.sp + offset
    elif kind == CFA_RBP:
        cfa = st.bp + offset
    elif kind == CFA_PLT:
        cfa = st.sp + 8 + (8 if (st.pc & 15) >= offset else 0)
    else:
        return False  # unsupported: the kernel stops here too
    cfa &= _MASK
    ra = raw.read(cfa - 8)
    bp = raw.read(cfa + rbp_offset) if rbp_type == RBP_AT_CFA else st.bp
    if ra is None or bp is None:
        return _cut(st, raw, cfa)
    st.sp, st.pc, st.bp, st.exact = cfa, ra, bp, 0
    return True


def _fp(st: _State, raw: RawStack) -> bool:
    if st.bp == 0 or st.bp < st.sp:
        return False
    bp, ra = raw.read(st.bp), raw.read(st.bp + 8)
    if bp is None or ra is None:
        return _cut(st, raw, st.bp)
    st.sp, st.bp, st.pc, st.exact = st.bp + 16, bp, ra, 0
    return True


def _cut(st: _State, raw: RawStack, addr: int) -> bool:
    """A read outside the copy ends the walk; just above it (the rest of a
    stack, STACK_REACH), callers exist that were not kept: truncated."""
    top = raw.base + len(raw.data)
    if top <= addr < raw.sp + STACK_REACH:
        st.flags |= STACK_TRUNCATED
    return False

"""The user-space walk of raw stacks (agent/unwind/rawwalk.py) on stacks
written inline: the same rows the kernel follows, over a copy of memory."""

from __future__ import annotations

import struct

from agent.unwind.layout import RAW_HEADER, STACK_TRUNCATED
from agent.unwind.rawwalk import Mapping, RawStack, Rows, parse_raw, walk
from agent.unwind.rows import CFA_END, CFA_RBP, CFA_RSP, RBP_AT_CFA, ROW

SP = 0x7FFC00001000
TEXT = 0x400000


def rows(*spec: tuple[int, int, int, int, int]) -> Rows:
    return Rows(b"".join(ROW.pack(*r) for r in spec))


# A at +0x000 (CFA = rsp+16), B at +0x100 (CFA = rsp+32), C at +0x200 (outermost)
TABLE = rows((0x000, 16, 0, CFA_RSP, 0), (0x100, 32, 0, CFA_RSP, 0), (0x200, 0, 0, CFA_END, 0))
TEXT_MAP = [Mapping(TEXT, TEXT + 0x1000, TEXT, TABLE)]


def stack(words: dict[int, int], size: int = 4096) -> bytes:
    data = bytearray(size)
    for offset, value in words.items():
        struct.pack_into("<Q", data, offset, value)
    return bytes(data)


def test_a_cfi_stack_is_walked_to_its_outermost_frame() -> None:
    # GIVEN A's return address into B at sp+8, B's into C at sp+16+24
    raw = RawStack(1, 42, TEXT + 0x10, SP, 0, SP, stack({8: TEXT + 0x150, 40: TEXT + 0x250}))
    # WHEN walked THEN leaf first, ending cleanly at C
    assert walk(raw, TEXT_MAP) == ((TEXT + 0x10, TEXT + 0x150, TEXT + 0x250), 0)


def test_a_caller_above_the_copy_marks_the_stack_truncated() -> None:
    raw = RawStack(1, 42, TEXT + 0x10, SP, 0, SP, stack({8: TEXT + 0x150}, size=32))
    assert walk(raw, TEXT_MAP) == ((TEXT + 0x10, TEXT + 0x150), STACK_TRUNCATED)


def test_no_rows_means_frame_pointers_as_in_the_kernel() -> None:
    # GIVEN code without CFI whose rbp chain is [rbp]=0 (end), [rbp+8]=ra
    no_cfi = [Mapping(TEXT, TEXT + 0x1000, 0, None)]
    raw = RawStack(1, 42, TEXT + 0x10, SP, SP + 64, SP, stack({64: 0, 72: TEXT + 0x20}))
    ips, flags = walk(raw, no_cfi)
    # THEN one frame-pointer step; the caller's rbp (0) ends it at its own frame
    assert ips == (TEXT + 0x10, TEXT + 0x20) and flags == 0


def test_rbp_based_cfa_and_a_saved_rbp() -> None:
    # GIVEN a frame with CFA = rbp+16 and the caller's rbp saved at CFA-16
    table = rows((0x000, 16, -16, CFA_RBP, RBP_AT_CFA), (0x200, 0, 0, CFA_END, 0))
    frame = SP + 0x40
    raw = RawStack(1, 42, TEXT + 0x10, SP, frame, SP, stack({0x40: 0x1234, 0x48: TEXT + 0x210}))
    ips, flags = walk(raw, [Mapping(TEXT, TEXT + 0x1000, TEXT, table)])
    assert ips == (TEXT + 0x10, TEXT + 0x210) and flags == 0


def test_an_impossible_return_address_is_not_a_frame() -> None:
    raw = RawStack(1, 42, TEXT + 0x10, SP, 0, SP, stack({8: 0x7FFFFFFFFFFFFFFF}))
    assert walk(raw, TEXT_MAP) == ((TEXT + 0x10,), STACK_TRUNCATED)


def test_a_pc_outside_every_mapping_stops_without_frame_pointers() -> None:
    raw = RawStack(1, 42, 0x900000, SP, 0, SP, stack({}))
    assert walk(raw, TEXT_MAP) == ((0x900000,), 0)


def test_a_record_is_parsed_as_the_kernel_wrote_it() -> None:
    header = RAW_HEADER.pack(7, TEXT + 1, SP + 8, 5, SP, 42, 1)
    raw = parse_raw(header + stack({8: 99}) + b"tail past the pages")
    assert (raw.hash, raw.pid, raw.ip, raw.sp, raw.bp, raw.base) == (7, 42, TEXT + 1, SP + 8, 5, SP)
    assert len(raw.data) == 4096 and raw.read(SP + 8) == 99 and raw.read(SP + 4096) is None

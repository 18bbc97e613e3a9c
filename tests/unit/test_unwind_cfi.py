"""The CFI parser and the x86-64 row compiler on hand-made CIE/FDE bytes.

Each section is assembled here byte by byte, so every case states exactly
the encoding it exercises."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.unwind.cfa import EXPRESSION, OFFSET, SAME, CfaRule, CfiRow, Rule, interpret
from agent.unwind.ehframe import CfiError, Fde, parse_section, read_encoded, sleb128, uleb128
from agent.unwind.rows import (
    CFA_END,
    CFA_NONE,
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    CFA_SIGNAL,
    CFA_UNSUPPORTED,
    RBP_AT_CFA,
    RBP_AT_RSP,
    Row,
    breg7_offset,
    merge_rows,
    pack,
    unpack,
    x86_row,
)
from agent.unwind.table import (
    ElfUnwindInfo,
    Segment,
    TableCache,
    TableError,
    UnwindTable,
    decode_cached,
    encode_cached,
    table_from_fdes,
)


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        done = (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)


# The x86-64 CIE every compiler emits: CFA = rsp+8, RA at cfa-8.
CIE_INIT = bytes([0x0C, 7, 8, 0x80 | 16, 1])
PUSH_RBP = bytes([0x41, 0x0E, 16, 0x80 | 6, 2])  # advance 1; cfa rsp+16; rbp at cfa-16
MOV_RBP = bytes([0x43, 0x0D, 6])  # advance 3; cfa register rbp


def entry(body: bytes, wide: bool = False) -> bytes:
    if wide:
        return struct.pack("<IQ", 0xFFFFFFFF, len(body)) + body
    return struct.pack("<I", len(body)) + body


def eh_cie(aug: bytes = b"zR", aug_data: bytes = b"\x1b", init: bytes = CIE_INIT) -> bytes:
    body = struct.pack("<I", 0) + b"\x01" + aug + b"\0" + uleb(1) + sleb(-8) + bytes([16])
    if aug.startswith(b"z"):
        body += uleb(len(aug_data)) + aug_data
    return entry(body + init)


def eh_fde(here: int, cie_at: int, vaddr: int, begin: int, size: int, code: bytes) -> bytes:
    """An FDE placed at section offset `here` (section loaded at `vaddr`),
    with pc-relative sdata4 addresses as GCC writes them."""
    pointer_field = here + 4
    pc_field = here + 8
    body = struct.pack("<I", pointer_field - cie_at)
    body += struct.pack("<iI", begin - (vaddr + pc_field), size) + uleb(0) + code
    return entry(body)


def section(*fdes: tuple[int, int, bytes], vaddr: int = 0x2000, cie: bytes = b"") -> bytes:
    data = cie or eh_cie()
    for begin, size, code in fdes:
        data += eh_fde(len(data), 0, vaddr, begin, size, code)
    return data + b"\0\0\0\0"


def test_leb128() -> None:
    assert uleb128(bytes([0xE5, 0x8E, 0x26]), 0) == (624485, 3)
    assert sleb128(bytes([0xC0, 0xBB, 0x78]), 0) == (-123456, 3)
    assert sleb128(sleb(-8), 0) == (-8, 1)
    with pytest.raises(CfiError):
        uleb128(bytes([0x80]), 0)


@pytest.mark.parametrize(
    ("encoding", "raw", "field", "value"),
    [
        (0x1B, struct.pack("<i", -0x10), 0x1000, 0xFF0),  # pcrel sdata4
        (0x03, struct.pack("<I", 0x1234), 0, 0x1234),  # udata4
        (0x00, struct.pack("<Q", 0x400000), 0, 0x400000),  # absptr
        (0x0C, struct.pack("<q", 5), 0, 5),  # sdata8
        (0x01, uleb(300), 0, 300),  # uleb128
        (0x02, struct.pack("<H", 7), 0, 7),  # udata2
    ],
)
def test_pointer_encodings(encoding: int, raw: bytes, field: int, value: int) -> None:
    assert read_encoded(raw, 0, encoding, field)[0] == value


@pytest.mark.parametrize("encoding", [0x9B, 0x07, 0x5B])  # indirect, bad format, aligned
def test_refused_pointer_encodings(encoding: int) -> None:
    with pytest.raises(CfiError):
        read_encoded(b"\0" * 8, 0, encoding, 0)


def test_pcrel_fde_addresses_and_a_prologue() -> None:
    fdes = parse_section(section((0x1000, 0x40, PUSH_RBP + MOV_RBP)), 0x2000, is_eh_frame=True)
    assert [(f.pc_begin, f.pc_end) for f in fdes] == [(0x1000, 0x1040)]
    rows = [x86_row(r) for r in interpret(fdes[0])]
    assert rows == [
        Row(0x1000, CFA_RSP, 8),
        Row(0x1001, CFA_RSP, 16, RBP_AT_CFA, -16),
        Row(0x1004, CFA_RBP, 16, RBP_AT_CFA, -16),
    ]


def test_remember_restore_state_and_restore() -> None:
    code = bytes([0x0A, 0x41, 0x0E, 32, 0x80 | 6, 3, 0x42, 0x0B, 0xC6])
    (fde,) = parse_section(section((0x1000, 0x10, code)), 0x2000, is_eh_frame=True)
    rows = interpret(fde)
    assert [(r.address, r.cfa.offset, r.registers.get(6)) for r in rows] == [
        (0x1000, 8, None),
        (0x1001, 32, Rule(OFFSET, -24)),
        (0x1003, 8, None),  # restore_state brings back cfa rsp+8
    ]


def test_augmentation_with_personality_and_lsda() -> None:
    # "zPLR": a personality pointer (udata4), then the LSDA and FDE encodings
    cie = eh_cie(b"zPLR", b"\x03" + struct.pack("<I", 0xABCD) + b"\x1b\x1b")
    (fde,) = parse_section(section((0x1000, 0x20, PUSH_RBP), cie=cie), 0x2000, is_eh_frame=True)
    assert (fde.pc_begin, fde.pc_end, fde.cie.augmentation) == (0x1000, 0x1020, "zPLR")
    assert x86_row(interpret(fde)[-1]) == Row(0x1001, CFA_RSP, 16, RBP_AT_CFA, -16)


def debug_cie(wide: bool = False) -> bytes:
    cie_id = struct.pack("<Q", 2**64 - 1) if wide else struct.pack("<I", 0xFFFFFFFF)
    return entry(cie_id + b"\x03\0" + uleb(1) + sleb(-8) + uleb(16) + CIE_INIT, wide)


def test_debug_frame_entries() -> None:
    data = debug_cie() + entry(struct.pack("<IQQ", 0, 0x401000, 0x30) + PUSH_RBP)
    (fde,) = parse_section(data, 0, is_eh_frame=False)
    assert (fde.pc_begin, fde.pc_end, fde.cie.version) == (0x401000, 0x401030, 3)
    assert interpret(fde)[-1].cfa == CfaRule(7, 16)


def test_debug_frame_wide_cie_after_its_fde() -> None:
    # .debug_frame points at CIEs by section offset, so a CIE may come later;
    # this one also uses the 64-bit DWARF length form.
    fde = entry(struct.pack("<IQQ", 0, 0x401000, 0x30) + PUSH_RBP)
    fde = fde[:4] + struct.pack("<I", len(fde)) + fde[8:]
    (parsed,) = parse_section(fde + debug_cie(wide=True), 0, is_eh_frame=False)
    assert parsed.cie.offset == len(fde) and parsed.pc_end == 0x401030


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("<I", 100) + b"\0" * 8,  # runs past the end
        section((0x1000, 0x10, b""), cie=eh_cie(b"zX", b"")),  # unknown augmentation
        entry(struct.pack("<I", 8) + struct.pack("<iI", 0, 1)),  # points at no CIE
    ],
)
def test_malformed_sections(data: bytes) -> None:
    with pytest.raises(CfiError):
        parse_section(data, 0, is_eh_frame=True)


@pytest.mark.parametrize(
    "code",
    [
        bytes([0x0B]),  # restore_state without remember_state
        bytes([0x01, 0, 0, 0, 0]),  # set_loc
        bytes([0x3F]),  # not an opcode
        bytes([0x03, 0x01]),  # truncated advance_loc2
    ],
)
def test_bad_programs_raise(code: bytes) -> None:
    (fde,) = parse_section(section((0x1000, 0x10, code)), 0x2000, is_eh_frame=True)
    with pytest.raises(CfiError):
        interpret(fde)


def test_every_operand_form_is_decoded() -> None:
    code = b"".join(
        [
            bytes([0x02, 1]),  # advance_loc1
            bytes([0x05, 6]) + uleb(2),  # offset_extended: rbp at cfa-16
            bytes([0x03]) + struct.pack("<H", 1),
            bytes([0x12, 7]) + sleb(-3),  # def_cfa_sf: rsp + 24
            bytes([0x04]) + struct.pack("<I", 1),
            bytes([0x13]) + sleb(-4) + bytes([0x08, 6]),  # def_cfa_offset_sf 32; rbp same
            bytes([0x41, 0x09, 6, 3, 0x2E, 8, 0x2D]),  # rbp in rbx; args_size; window_save
            bytes([0x41, 0x14, 6]) + uleb(1) + bytes([0x15, 6]) + sleb(-1),  # val_offset(_sf)
            bytes([0x41, 0x2F, 6]) + uleb(3),  # GNU_negative_offset_extended: cfa+24
            bytes([0x41, 0x06, 6, 0x16, 6, 1, 0x30]),  # restore_extended; val_expression
            bytes([0x41, 0x0C, 6, 16, 0x0F, 2, 0x77, 0x08, 0x10, 16, 2, 0x77, 0x10]),
        ]
    )
    (fde,) = parse_section(section((0x1000, 0x20, code)), 0x2000, is_eh_frame=True)
    rows = [(r.address - 0x1000, r.cfa, r.registers.get(6)) for r in interpret(fde)]
    assert [(a, c.register, c.offset, r.kind if r else None) for a, c, r in rows] == [
        (0, 7, 8, None),
        (1, 7, 8, OFFSET),
        (2, 7, 24, OFFSET),
        (3, 7, 32, SAME),
        (4, 7, 32, "register"),
        (5, 7, 32, "val_offset"),
        (6, 7, 32, OFFSET),
        (7, 7, 32, "val_expression"),
        (8, -1, 0, "val_expression"),
    ]
    assert rows[-1][1].expression == b"\x77\x08" and rows[6][2] == Rule(OFFSET, 24)


def row(cfa: CfaRule, **registers: Rule) -> CfiRow:
    names = {"rbp": 6, "ra": 16}
    return CfiRow(0x10, cfa, {names[k]: v for k, v in registers.items()})


RA = Rule(OFFSET, -8)
PLT_EXPR = bytes([0x77, 8, 0x80, 0, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])


@pytest.mark.parametrize(
    ("rule_row", "expected"),
    [
        (row(CfaRule(7, 8), ra=RA), Row(0x10, CFA_RSP, 8)),
        (row(CfaRule(6, 16), ra=RA, rbp=Rule(OFFSET, -16)), Row(0x10, CFA_RBP, 16, 1, -16)),
        (row(CfaRule(7, 8), ra=Rule("undefined")), Row(0x10, CFA_END)),
        (row(CfaRule(expression=PLT_EXPR), ra=RA), Row(0x10, CFA_PLT, 11)),
        (
            row(
                CfaRule(expression=bytes([0x77]) + sleb(160) + b"\x06"),
                ra=Rule(EXPRESSION, 0, bytes([0x77]) + sleb(168)),
                rbp=Rule(EXPRESSION, 0, bytes([0x77]) + sleb(120)),
            ),
            Row(0x10, CFA_SIGNAL, 160, RBP_AT_RSP, 120),
        ),
        (
            row(
                CfaRule(expression=bytes([0x77]) + sleb(160) + b"\x06"),
                ra=Rule(EXPRESSION, 0, bytes([0x77]) + sleb(168)),
            ),
            Row(0x10, CFA_SIGNAL, 160),
        ),
        # the unsupported forms, each stopping the walk rather than guessing
        (row(CfaRule(5, 0), ra=RA), Row(0x10, CFA_UNSUPPORTED)),  # CFA in rdi (longjmp)
        (row(CfaRule(7, 8), ra=Rule("register", 5)), Row(0x10, CFA_UNSUPPORTED)),
        (row(CfaRule(7, 8)), Row(0x10, CFA_UNSUPPORTED)),  # no RA rule at all
        (row(CfaRule(7, 8), ra=RA, rbp=Rule("register", 9)), Row(0x10, CFA_UNSUPPORTED)),
        (row(CfaRule(7, 8), ra=RA, rbp=Rule(OFFSET, -(1 << 20))), Row(0x10, CFA_UNSUPPORTED)),
        (row(CfaRule(expression=b"\x77\x08\x06"), ra=RA), Row(0x10, CFA_UNSUPPORTED)),
        (row(CfaRule(expression=b"\x9c"), ra=RA), Row(0x10, CFA_UNSUPPORTED)),
        (
            row(
                CfaRule(expression=b"\x77\x10\x06"),
                ra=Rule(EXPRESSION, 0, b"\x77\x20"),  # RIP not right after RSP
            ),
            Row(0x10, CFA_UNSUPPORTED),
        ),
        (
            row(
                CfaRule(expression=b"\x77\x10\x06"),
                ra=Rule(EXPRESSION, 0, b"\x77\x18"),
                rbp=Rule(OFFSET, -16),
            ),
            Row(0x10, CFA_UNSUPPORTED),
        ),
    ],
)
def test_x86_rows(rule_row: CfiRow, expected: Row) -> None:
    assert x86_row(rule_row) == expected


def test_breg7_offsets() -> None:
    assert breg7_offset(bytes([0x77]) + sleb(-24)) == -24
    assert breg7_offset(b"\x77\x10\x06", deref=True) == 16
    assert breg7_offset(b"\x77\x10\x06") is None
    assert breg7_offset(b"\x76\x10") is None
    assert breg7_offset(b"\x77\x90") is None  # truncated LEB


def test_merge_marks_gaps_cuts_overlaps_and_compacts() -> None:
    data = section(
        (0x1000, 0x10, PUSH_RBP),
        (0x1010, 0x10, b""),  # adjacent: no gap row, and its first row merges with none
        (0x1040, 0x10, b""),  # a gap before it
        (0x1048, 0x10, PUSH_RBP),  # overlaps the one before: that one is cut
    )
    rows = merge_rows(parse_section(data, 0x2000, is_eh_frame=True))
    assert rows == [
        Row(0x1000, CFA_RSP, 8),
        Row(0x1001, CFA_RSP, 16, RBP_AT_CFA, -16),
        Row(0x1010, CFA_RSP, 8),
        Row(0x1020, CFA_NONE),
        Row(0x1040, CFA_RSP, 8),
        Row(0x1049, CFA_RSP, 16, RBP_AT_CFA, -16),
        Row(0x1058, CFA_NONE),
    ]


def test_unreadable_fde_becomes_one_unsupported_row() -> None:
    data = section((0x1000, 0x10, bytes([0x3F])))
    rows = merge_rows(parse_section(data, 0x2000, is_eh_frame=True))
    assert rows == [Row(0x1000, CFA_UNSUPPORTED), Row(0x1010, CFA_NONE)]


def test_pack_roundtrip_and_table_limits() -> None:
    rows = [Row(0x401000, CFA_RSP, 8), Row(0x401004, CFA_RBP, 16, RBP_AT_CFA, -16)]
    assert unpack(pack(rows, 0x400000), 0x400000) == rows
    fdes = parse_section(section((0x1000, 0x10, PUSH_RBP)), 0x2000, is_eh_frame=True)
    table = table_from_fdes("ab", fdes)
    assert (table.base, table.count) == (0x1000, 3)
    assert table_from_fdes("ab", []).count == 0
    (near,) = fdes
    far = [near, Fde(0, near.cie, 1 << 33, (1 << 33) + 0x10, b"")]
    with pytest.raises(TableError):
        table_from_fdes("ab", far)


def test_cache_roundtrip_and_rejects(tmp_path: Path) -> None:
    table = UnwindTable("beef", 0x1000, pack([Row(0x1000, CFA_RSP, 8)], 0x1000))
    assert decode_cached("beef", encode_cached(table)) == table
    assert decode_cached("beef", encode_cached(table)[:-1]) is None
    assert decode_cached("beef", b"short") is None
    assert decode_cached("beef", b"BPFUNW00" + encode_cached(table)[8:]) is None
    cache = TableCache(tmp_path / "unwind")
    assert cache.get("beef") is None
    cache.put(table)
    assert cache.get("beef") == table
    assert TableCache(None).get("beef") is None and cache.path("") is None
    TableCache(None).put(table)  # no directory: nothing to do


def test_load_bias_from_segments() -> None:
    info = ElfUnwindInfo(
        UnwindTable("", 0, b""),
        (Segment(0, 0, 0x1000), Segment(0x1000, 0x1000, 0x5000)),
    )
    assert info.load_bias(0x7F0000001000, 0x1000) == 0x7F0000000000
    assert info.load_bias(0x400000, 0) == 0x400000
    assert info.load_bias(0x400000, 0x9000) is None

"""Where the running kernel keeps a task's FS base, from its own BTF.

The Python walker (bpf/python.h) finds the current thread's PyThreadState
by its `thread_id`, which is pthread_self(): on x86-64 that is the thread's
FS base, saved in `task_struct.thread.fsbase`. The kernel headers BCC
compiles against describe another kernel than the running one (see
/work/shared/HOST.md), so the offset cannot come from them; the running
kernel describes its own structs in /sys/kernel/btf/vmlinux. This module
reads just enough of that BTF (header, type section, string section) to
follow task_struct -> member `thread` -> struct thread_struct -> member
`fsbase`, and hands the byte offset to BPF as a -D define.

`fsbase_offset(data)` is a pure function over the file's bytes; a file
that is not BTF, is truncated, or lacks the types raises BtfError.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
MAX_BTF_BYTES = 64 << 20  # vmlinux's BTF is ~5 MB; a bigger one is not a kernel's
MAX_TYPES = 1 << 20  # ~150k in a distro kernel
MAX_NESTING = 8  # anonymous struct/union levels searched for a member

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off+len
_TYPE = struct.Struct("<III")  # name_off, info, size_or_type
_MEMBER = struct.Struct("<III")  # name_off, type, offset
KIND_INT, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_DECL_TAG = 13, 14, 15, 17
KIND_TYPE_TAG, KIND_ENUM64 = 18, 19
_QUALIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}
# bytes after the 12-byte common header: fixed, and per vlen entry
_EXTRA = {KIND_INT: (4, 0), KIND_ARRAY: (12, 0), KIND_VAR: (4, 0), KIND_DECL_TAG: (4, 0)}
_PER_VLEN = {
    KIND_STRUCT: 12,
    KIND_UNION: 12,
    KIND_ENUM: 8,
    KIND_FUNC_PROTO: 8,
    KIND_DATASEC: 12,
    KIND_ENUM64: 12,
}


class BtfError(Exception):
    """The data is not usable BTF, or does not describe the fields needed."""


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int  # a struct's size, a qualifier's or typedef's target type id
    members: tuple[tuple[str, int, int], ...]  # (name, type id, bit offset) of a struct/union


def fsbase_offset(data: bytes) -> int:
    """offsetof(task_struct, thread) + offsetof(thread_struct, fsbase), in bytes."""
    types = parse_types(data)
    task = _struct_named(types, "task_struct")
    thread_type, thread_bits = _member(types, task, "thread")
    _, fsbase_bits = _member(types, _resolve(types, thread_type), "fsbase")
    bits = thread_bits + fsbase_bits
    if bits % 8:
        raise BtfError("task_struct.thread.fsbase is a bitfield")
    return bits // 8


def read_fsbase_offset(path: Path = VMLINUX_BTF) -> int:
    """The running kernel's offset (reads at most MAX_BTF_BYTES of `path`)."""
    with path.open("rb") as f:
        data = f.read(MAX_BTF_BYTES + 1)
    if len(data) > MAX_BTF_BYTES:
        raise BtfError(f"{path}: larger than {MAX_BTF_BYTES} bytes")
    return fsbase_offset(data)


def parse_types(data: bytes) -> list[BtfType | None]:
    """Every type of the BTF blob by id (id 0 is void: None). Only structs,
    unions and qualifiers keep their details; the rest are skipped over."""
    if len(data) < _HEADER.size:
        raise BtfError("shorter than a BTF header")
    magic, version, _, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != 1:
        raise BtfError(f"not BTF (magic {magic:#x}, version {version})")
    types_at, strings_at = hdr_len + type_off, hdr_len + str_off
    if types_at + type_len > len(data) or strings_at + str_len > len(data):
        raise BtfError("a section runs past the end of the data")
    strings = data[strings_at : strings_at + str_len]
    return [None, *_types(data[types_at : types_at + type_len], strings)]


def _types(section: bytes, strings: bytes) -> Iterator[BtfType]:
    pos = 0
    for _ in range(MAX_TYPES):
        if pos >= len(section):
            return
        if pos + _TYPE.size > len(section):
            raise BtfError(f"type at {pos} truncated")
        name_off, info, size_or_type = _TYPE.unpack_from(section, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        pos += _TYPE.size
        fixed, _ = _EXTRA.get(kind, (0, 0))
        members: tuple[tuple[str, int, int], ...] = ()
        if kind in (KIND_STRUCT, KIND_UNION):
            members = _members(section, pos, vlen, strings, bool(info >> 31))
        pos += fixed + vlen * _PER_VLEN.get(kind, 0)
        yield BtfType(kind, _name(strings, name_off), size_or_type, members)
    raise BtfError(f"more than {MAX_TYPES} types")


def _members(
    section: bytes, pos: int, vlen: int, strings: bytes, bitfields: bool
) -> tuple[tuple[str, int, int], ...]:
    if pos + vlen * _MEMBER.size > len(section):
        raise BtfError(f"members at {pos} truncated")
    out = []
    for i in range(vlen):
        name_off, type_id, offset = _MEMBER.unpack_from(section, pos + i * _MEMBER.size)
        bits = offset & 0xFFFFFF if bitfields else offset  # kind_flag: size in the top 8 bits
        out.append((_name(strings, name_off), type_id, bits))
    return tuple(out)


def _name(strings: bytes, off: int) -> str:
    if off >= len(strings):
        raise BtfError(f"name offset {off} outside the string section")
    end = strings.find(b"\0", off)
    return strings[off : end if end >= 0 else None].decode("utf-8", "replace")


def _struct_named(types: list[BtfType | None], name: str) -> BtfType:
    for t in types:
        if t is not None and t.kind == KIND_STRUCT and t.name == name and t.members:
            return t
    raise BtfError(f"no struct {name} in the BTF")


def _resolve(types: list[BtfType | None], type_id: int) -> BtfType:
    """The struct or union behind typedefs and qualifiers."""
    for _ in range(MAX_NESTING):
        t = types[type_id] if 0 < type_id < len(types) else None
        if t is None:
            raise BtfError(f"type id {type_id} does not exist")
        if t.kind not in _QUALIFIERS:
            if t.kind not in (KIND_STRUCT, KIND_UNION):
                raise BtfError(f"type {t.name or type_id} is not a struct")
            return t
        type_id = t.size_or_type
    raise BtfError(f"type id {type_id}: qualifiers nested too deep")


def _member(
    types: list[BtfType | None], struct_type: BtfType, name: str, depth: int = 0
) -> tuple[int, int]:
    """(type id, bit offset) of member `name`, looking inside anonymous
    structs and unions, where the kernel keeps many of its fields."""
    for member, type_id, bits in struct_type.members:
        if member == name:
            return type_id, bits
    if depth < MAX_NESTING:
        for member, type_id, bits in struct_type.members:
            if member:
                continue
            try:
                inner_type, inner_bits = _member(types, _resolve(types, type_id), name, depth + 1)
            except BtfError:
                continue
            return inner_type, bits + inner_bits
    raise BtfError(f"struct {struct_type.name or '(anonymous)'} has no member {name}")

"""BCC's JSON descriptions of map key and value types, as ctypes types.

BCC describes each map's key and leaf type as JSON (`bpf_table_key_desc`):
a C type name (`"unsigned int"`), or `[name, fields, "struct" | "union" |
"struct_packed"]` where each field is `[name, type]`, `[name, type, [n]]`
(an array), `[name, type, bits]` (a bitfield) or a nested struct or union
description (anonymous when its name is empty). The loader child sends these
descriptions; this module turns them into the same ctypes types BCC's
`BPF._decode_table_type` makes, without importing BCC (whose library links
LLVM). The names of the structs' fields, padding included, are BCC's.
"""

from __future__ import annotations

import ctypes
from typing import Any

SCALARS: dict[str, Any] = {
    "_Bool": ctypes.c_bool,
    "char": ctypes.c_char,
    "wchar_t": ctypes.c_wchar,
    "signed char": ctypes.c_byte,
    "unsigned char": ctypes.c_ubyte,
    "short": ctypes.c_short,
    "unsigned short": ctypes.c_ushort,
    "int": ctypes.c_int,
    "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long,
    "unsigned long": ctypes.c_ulong,
    "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "long double": ctypes.c_longdouble,
    "__int128": ctypes.c_int64 * 2,
    "unsigned __int128": ctypes.c_uint64 * 2,
}
KINDS = ("struct", "union", "struct_packed")


class TypeDescError(ValueError):
    """A description this decoder does not understand."""


def decode(desc: Any) -> Any:
    """The ctypes type a description stands for."""
    if isinstance(desc, str):
        try:
            return SCALARS[desc]
        except KeyError:
            raise TypeDescError(f"unknown C type {desc!r}") from None
    if not (isinstance(desc, list) and len(desc) >= 2 and isinstance(desc[1], list)):
        raise TypeDescError(f"not a type description: {desc!r}")
    anonymous: list[str] = []
    fields: list[tuple[Any, ...]] = []
    for field in desc[1]:
        fields.append(_field(field, anonymous))
    kind = desc[2] if len(desc) > 2 else "struct"
    if kind not in KINDS:
        raise TypeDescError(f"unknown aggregate kind {kind!r}")
    base: Any = ctypes.Union if kind == "union" else ctypes.Structure
    body: dict[str, Any] = {"_anonymous_": anonymous, "_fields_": fields}
    if kind == "struct_packed":
        body["_pack_"] = 1
    return type(str(desc[0]) or "anon", (base,), body)


def _field(field: Any, anonymous: list[str]) -> tuple[Any, ...]:
    if not isinstance(field, list) or len(field) not in (2, 3):
        raise TypeDescError(f"not a field description: {field!r}")
    if len(field) == 2:
        return (field[0], decode(field[1]))
    name, ftype, extra = field
    if isinstance(extra, list):  # an array, [n]
        return (name, decode(ftype) * int(extra[0]))
    if isinstance(extra, int):  # a bitfield of `extra` bits
        return (name, decode(ftype), extra)
    if extra in KINDS:  # a nested struct or union, described in place
        if name == "":
            name = f"__anon{len(anonymous)}"
            anonymous.append(name)
        return (name, decode(field))
    raise TypeDescError(f"not a field description: {field!r}")

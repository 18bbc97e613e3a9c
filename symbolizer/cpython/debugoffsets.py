"""CPython 3.13+ layouts from the interpreter's own `_Py_DebugOffsets`.

Since 3.13 `_PyRuntime` starts with a `_Py_DebugOffsets` struct published
for out-of-process tools: the cookie "xdebugpy", PY_VERSION_HEX,
`free_threaded`, then one group of u64 per struct (its sizeof, then the
offsets of some of its fields). It is statically initialised
(`_Py_DebugOffsets_INIT` in pycore_runtime.h (3.13) /
pycore_debug_offsets.h (3.14)), so the file's .data holds it and no
process has to be read.

The groups' field lists change between minor versions (3.14 added
`threads_main`, `code_object_generation`, `tlbc_generation`,
`stackpointer`, `tlbc_index`, `co_tlbc` and a set group), so each version
has its list below; only the groups up to the unicode object are read.
A parse is accepted only if every group's size is sane and every field
lies inside it: a layout that fails is UnsupportedInterpreter.

What BPF needs and the struct lacks is a per-version constant: the frame
owner values (pycore_frame.h 3.13: FRAME_OWNED_BY_CSTACK = 3; 3.14's
pycore_interpframe_structs.h: FRAME_OWNED_BY_INTERPRETER = 3, _CSTACK = 4)
and the _PyStackRef tag bits of 3.14's f_executable (pycore_stackref.h).
"""

from __future__ import annotations

import struct

from symbolizer.cpython.interp import Interpreter, UnsupportedInterpreter, file_bytes
from symbolizer.cpython.layout import INSTR_POINTER, WalkLayout
from symbolizer.elffile import ElfFile

_HEADER = 24  # cookie[8], version, free_threaded
_MAX_STRUCT = 1 << 20  # no CPython struct is near this (3.14 _PyRuntime: 309 KiB)
_COMMON = {
    "runtime_state": ("finalizing", "interpreters_head"),
    "thread_state": (
        "prev",
        "next",
        "interp",
        "current_frame",
        "thread_id",
        "native_thread_id",
        "datastack_chunk",
        "status",
    ),
    "pyobject": ("ob_type",),
    "type_object": ("tp_name", "tp_repr", "tp_flags"),
    "tuple_object": ("ob_item", "ob_size"),
    "list_object": ("ob_item", "ob_size"),
    "dict_object": ("ma_keys", "ma_values"),
    "float_object": ("ob_fval",),
    "long_object": ("lv_tag", "ob_digit"),
    "bytes_object": ("ob_size", "ob_sval"),
    "unicode_object": ("state", "length", "asciiobject_size"),
}
_INTERP_313 = (
    "id",
    "next",
    "threads_head",
    "gc",
    "imports_modules",
    "sysdict",
    "builtins",
    "ceval_gil",
    "gil_runtime_state",
    "gil_runtime_state_enabled",
    "gil_runtime_state_locked",
    "gil_runtime_state_holder",
)
_FRAME_313 = ("previous", "executable", "instr_ptr", "localsplus", "owner")
_CODE_313 = (
    "filename",
    "name",
    "qualname",
    "linetable",
    "firstlineno",
    "argcount",
    "localsplusnames",
    "localspluskinds",
    "co_code_adaptive",
)
_ORDER = (
    "runtime_state",
    "interpreter_state",
    "thread_state",
    "interpreter_frame",
    "code_object",
    "pyobject",
    "type_object",
    "tuple_object",
    "list_object",
    "set_object",
    "dict_object",
    "float_object",
    "long_object",
    "bytes_object",
    "unicode_object",
)
GROUPS: dict[tuple[int, int], dict[str, tuple[str, ...]]] = {
    (3, 13): {
        **_COMMON,
        "interpreter_state": _INTERP_313,
        "interpreter_frame": _FRAME_313,
        "code_object": _CODE_313,
    },
    (3, 14): {
        **_COMMON,
        "interpreter_state": (
            *_INTERP_313[:3],
            "threads_main",
            *_INTERP_313[3:],
            "code_object_generation",
            "tlbc_generation",
        ),
        "interpreter_frame": (*_FRAME_313, "stackpointer", "tlbc_index"),
        "code_object": (*_CODE_313, "co_tlbc"),
        "set_object": ("used", "table", "mask"),
    },
}
# (FRAME_OWNED_BY_CSTACK, first owner that is no Python function, f_executable tag mask)
_CONSTANTS = {(3, 13): (3, 3, 0), (3, 14): (4, 3, 7)}
_COMPACT_EXTRA = 16  # PyCompactUnicodeObject = PyASCIIObject + utf8_length + utf8


def parse_debug_offsets(data: bytes, version: tuple[int, int]) -> dict[str, int]:
    """ "group.field" → value (and "group.size") of a `_Py_DebugOffsets`."""
    groups = GROUPS.get(version)
    if groups is None:
        raise UnsupportedInterpreter(f"CPython {version[0]}.{version[1]}: no debug offsets")
    out: dict[str, int] = {}
    pos = _HEADER
    for group in (g for g in _ORDER if g in groups):
        names = ("size", *groups[group])
        values = struct.unpack_from(f"<{len(names)}Q", data, pos)
        pos += 8 * len(names)
        size = values[0]
        if not 0 < size <= _MAX_STRUCT or any(v >= size for v in values[1:]):
            raise UnsupportedInterpreter(
                f"CPython {version[0]}.{version[1]}: debug offsets of {group} do not fit "
                f"its size {size}: {values[1:]}"
            )
        out.update({f"{group}.{n}": v for n, v in zip(names, values, strict=True)})
    return out


def debug_offsets_size(version: tuple[int, int]) -> int:
    """Bytes of `_Py_DebugOffsets` that parse_debug_offsets reads."""
    groups = GROUPS[version]
    return _HEADER + sum(8 * (1 + len(groups[g])) for g in _ORDER if g in groups)


def layout_from_debug_offsets(interp: Interpreter, elf: ElfFile) -> WalkLayout:
    """The WalkLayout of a 3.13+ file, from the debug offsets in its .data."""
    if interp.version not in GROUPS:
        raise UnsupportedInterpreter(f"CPython {interp.version[0]}.{interp.version[1]}")
    data = file_bytes(elf, interp.runtime, debug_offsets_size(interp.version))
    return layout_from_offsets(parse_debug_offsets(data, interp.version), interp.version)


def layout_from_offsets(d: dict[str, int], version: tuple[int, int]) -> WalkLayout:
    cstack, skip_from, tag_mask = _CONSTANTS[version]
    return WalkLayout(
        runtime_interpreters_head=d["runtime_state.interpreters_head"],
        interp_tstate_head=d["interpreter_state.threads_head"],
        tstate_next=d["thread_state.next"],
        tstate_thread_id=d["thread_state.thread_id"],
        tstate_frame=d["thread_state.current_frame"],
        cframe_current_frame=-1,
        frame_previous=d["interpreter_frame.previous"],
        frame_code=d["interpreter_frame.executable"],
        code_tag_mask=tag_mask,
        frame_instr=d["interpreter_frame.instr_ptr"],
        instr_kind=INSTR_POINTER,
        code_adaptive=d["code_object.co_code_adaptive"],
        frame_owner=d["interpreter_frame.owner"],
        owner_cstack=cstack,
        frame_is_entry=-1,
        code_filename=d["code_object.filename"],
        code_name=d["code_object.name"],
        code_qualname=d["code_object.qualname"],
        code_firstlineno=d["code_object.firstlineno"],
        code_linetable=d["code_object.linetable"],
        object_type=d["pyobject.ob_type"],
        unicode_state=d["unicode_object.state"],
        unicode_length=d["unicode_object.length"],
        unicode_ascii_size=d["unicode_object.asciiobject_size"],
        unicode_compact_size=d["unicode_object.asciiobject_size"] + _COMPACT_EXTRA,
        bytes_ob_size=d["bytes_object.ob_size"],
        bytes_ob_sval=d["bytes_object.ob_sval"],
        owner_skip_from=skip_from,
    )

"""Where the fields a Python stack walk reads lie, per CPython version (x86_64).

The BPF walker mirrors `WalkLayout` field by field into a C struct, so the
first fifteen names and their order never change; new fields go at the
end. Every value is a byte offset, or -1 where the version has no such
field.

3.8-3.12 are tables: each number is `offsetof()` of the named field,
computed by compiling against that release's own headers (Include/
cpython/pystate.h, cpython/code.h, internal/pycore_runtime.h (3.8:
pycore_pystate.h), pycore_interp.h, pycore_frame.h, frameobject.h) with its
pyconfig.h: 3.8.18, 3.9.18, 3.10.13, 3.12.1 from pyenv builds and 3.11.2
from Debian 12's python3.11-dev. Patch releases keep these layouts (the
struct changes of a minor version land before its first release
candidate); the live-walk tests check each against a running interpreter.
3.13+ come from the interpreter's own `_Py_DebugOffsets`
(symbolizer/cpython/debugoffsets.py); docs/python.md lists the sources.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from symbolizer.budget import Budget
from symbolizer.cpython.interp import Interpreter, UnsupportedInterpreter, find_interpreter
from symbolizer.elffile import ElfFile
from symbolizer.safeopen import open_regular

INSTR_BYTES, INSTR_UNITS, INSTR_POINTER = 0, 1, 2  # WalkLayout.instr_kind


@dataclass(frozen=True)
class WalkLayout:
    """Offsets for the walk _PyRuntime → interpreter → thread → frames → code."""

    runtime_interpreters_head: int  # _PyRuntime.interpreters.head
    interp_tstate_head: int  # PyInterpreterState.tstate_head (<=3.10) / threads.head
    tstate_next: int
    tstate_thread_id: int  # pthread_self(): the fs base on x86_64
    tstate_frame: int  # .frame (<=3.10) / .cframe (3.11, 3.12) / .current_frame (3.13+)
    cframe_current_frame: int  # _PyCFrame.current_frame (3.11, 3.12)
    frame_previous: int  # PyFrameObject.f_back / _PyInterpreterFrame.previous
    frame_code: int  # f_code (<=3.12) / f_executable (3.13+)
    code_tag_mask: int  # low bits to clear from frame_code's value (3.14 _PyStackRef)
    frame_instr: int  # f_lasti / prev_instr / instr_ptr
    instr_kind: int  # INSTR_BYTES, INSTR_UNITS or INSTR_POINTER
    code_adaptive: int  # PyCodeObject.co_code_adaptive (3.11+)
    frame_owner: int  # _PyInterpreterFrame.owner, a char (3.11+)
    owner_cstack: int  # FRAME_OWNED_BY_CSTACK (3.12+)
    frame_is_entry: int  # _PyInterpreterFrame.is_entry (3.11 only)
    # -- what the host reads of code objects and strings --
    code_filename: int
    code_name: int
    code_qualname: int  # 3.11+
    code_firstlineno: int  # an int
    code_linetable: int  # co_lnotab (<=3.9) / co_linetable (3.10+), a bytes object
    object_type: int  # PyObject.ob_type
    unicode_state: int  # PyASCIIObject.state: kind bits 2-4, compact 5, ascii 6
    unicode_length: int  # PyASCIIObject.length, in code points
    unicode_ascii_size: int  # sizeof(PyASCIIObject): compact ASCII data follows
    unicode_compact_size: int  # sizeof(PyCompactUnicodeObject): other kinds' data
    bytes_ob_size: int
    bytes_ob_sval: int
    owner_skip_from: int  # owners >= this are not Python function frames (3.12+)


_PY38 = WalkLayout(
    runtime_interpreters_head=32,
    interp_tstate_head=8,
    tstate_next=8,
    tstate_thread_id=176,
    tstate_frame=24,
    cframe_current_frame=-1,
    frame_previous=24,
    frame_code=32,
    code_tag_mask=0,
    frame_instr=104,
    instr_kind=INSTR_BYTES,
    code_adaptive=-1,
    frame_owner=-1,
    owner_cstack=-1,
    frame_is_entry=-1,
    code_filename=104,
    code_name=112,
    code_qualname=-1,
    code_firstlineno=40,
    code_linetable=120,
    object_type=8,
    unicode_state=32,
    unicode_length=16,
    unicode_ascii_size=48,
    unicode_compact_size=72,
    bytes_ob_size=16,
    bytes_ob_sval=32,
    owner_skip_from=-1,
)
_PY311 = replace(
    _PY38,
    runtime_interpreters_head=40,  # int _initialized came first
    interp_tstate_head=16,  # threads.head, after next
    tstate_thread_id=152,
    tstate_frame=56,  # cframe
    cframe_current_frame=8,
    frame_previous=48,
    frame_code=32,
    frame_instr=56,  # prev_instr
    instr_kind=INSTR_POINTER,
    code_adaptive=184,
    frame_owner=69,
    frame_is_entry=68,
    code_filename=112,
    code_name=120,
    code_qualname=128,
    code_firstlineno=72,
    code_linetable=136,
)
TABLES: dict[tuple[int, int], WalkLayout] = {
    (3, 8): _PY38,
    (3, 9): _PY38,  # no field the walk reads moved
    (3, 10): replace(_PY38, frame_instr=96, instr_kind=INSTR_UNITS),
    (3, 11): _PY311,
    (3, 12): replace(
        _PY311,
        interp_tstate_head=72,
        tstate_thread_id=136,
        cframe_current_frame=0,
        frame_previous=8,
        frame_code=0,
        code_adaptive=192,
        frame_owner=70,
        owner_cstack=3,
        frame_is_entry=-1,
        code_firstlineno=68,
        unicode_ascii_size=40,  # wstr went away
        unicode_compact_size=56,
        owner_skip_from=3,
    ),
}


def walk_layout(interp: Interpreter, elf: ElfFile) -> WalkLayout:
    """The layout of the interpreter `find_interpreter(elf)` found."""
    if interp.version in TABLES:
        return TABLES[interp.version]
    if interp.version >= (3, 13):
        from symbolizer.cpython.debugoffsets import layout_from_debug_offsets

        return layout_from_debug_offsets(interp, elf)
    raise UnsupportedInterpreter(f"CPython {interp.version[0]}.{interp.version[1]}: no layout")


def inspect_file(path: str | Path) -> tuple[Interpreter, WalkLayout] | None:
    """Interpreter facts and layout of an ELF file; None if it has no CPython.

    E.g. `inspect_file("/usr/bin/python3.11")`. Raises ElfError for a bad
    file, UnsupportedInterpreter for a CPython the walker cannot follow."""
    with open_regular(str(path), nofollow=False) as stream:
        elf = ElfFile(stream, Budget())
        interp = find_interpreter(elf)
        if interp is None:
            return None
        return interp, walk_layout(interp, elf)

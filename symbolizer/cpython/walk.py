"""The Python stack walk, done from user space with a WalkLayout.

This is the walk the BPF walker (bpf/python.h) does in the kernel, written
once in Python over process_vm_readv: the tests prove the layouts with it
against running interpreters, and it is the reference the BPF walker's
output is compared with.

    _PyRuntime + runtime_interpreters_head → PyInterpreterState*
      + interp_tstate_head → PyThreadState*, then tstate_next ...
        the one whose thread_id is the thread's pthread_self() (on x86_64
        the fs base the kernel holds for the task)
      + tstate_frame → the newest frame (3.11/3.12: via _PyCFrame)
        frame_code → code object; frame_instr → instruction; frame_previous

3.12+ frames owned by the C stack (shims that mark an entry from C) and
3.14's interpreter-owned frames carry no Python function: skipped, by
owner >= owner_skip_from. Every list is bounded (MAX_THREADS,
MAX_FRAMES): a cycle in corrupt memory ends the walk, it never hangs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from symbolizer.cpython.layout import INSTR_BYTES, INSTR_POINTER, WalkLayout
from symbolizer.cpython.memory import ProcessMemory
from symbolizer.elffile import Segment
from symbolizer.procmaps import MapEntry

MAX_THREADS = 4096
MAX_FRAMES = 256


@dataclass(frozen=True)
class PyFrame:
    """What BPF emits per Python frame: code address, bytecode byte offset."""

    code: int
    offset: int  # bytes into the bytecode; -1 before the first instruction


def load_bias(maps: Sequence[MapEntry], path: str, segments: Sequence[Segment]) -> int | None:
    """Runtime address minus link-time address of the file mapped as `path`.

    A mapping at file offset `o` lies in the PT_LOAD whose file bytes hold
    `o`; its start is that segment's vaddr + (o - p_offset) plus the bias."""
    for entry in maps:
        if entry.path != path:
            continue
        for seg in segments:
            if seg.offset <= entry.offset < seg.offset + max(seg.filesz, 1):
                return entry.start - (seg.vaddr + entry.offset - seg.offset)
    return None


def thread_states(mem: ProcessMemory, layout: WalkLayout, runtime: int) -> Iterator[int]:
    """Addresses of the main interpreter's thread states."""
    interp = mem.pointer(runtime + layout.runtime_interpreters_head)
    if not interp:
        return
    tstate = mem.pointer(interp + layout.interp_tstate_head)
    for _ in range(MAX_THREADS):
        if not tstate:
            return
        yield tstate
        tstate = mem.pointer(tstate + layout.tstate_next)


def find_thread(mem: ProcessMemory, layout: WalkLayout, runtime: int, thread_id: int) -> int:
    """The thread state whose thread_id is `thread_id`; 0 if none."""
    for tstate in thread_states(mem, layout, runtime):
        if mem.u64(tstate + layout.tstate_thread_id) == thread_id:
            return tstate
    return 0


def walk_frames(mem: ProcessMemory, layout: WalkLayout, tstate: int) -> list[PyFrame]:
    """The thread's Python frames, innermost first."""
    frame = mem.pointer(tstate + layout.tstate_frame)
    if layout.cframe_current_frame >= 0 and frame:
        frame = mem.pointer(frame + layout.cframe_current_frame)
    out: list[PyFrame] = []
    for _ in range(MAX_FRAMES):
        if not frame:
            break
        if _is_python(mem, layout, frame):
            code = mem.pointer(frame + layout.frame_code) & ~layout.code_tag_mask
            out.append(PyFrame(code, _offset(mem, layout, frame, code)))
        frame = mem.pointer(frame + layout.frame_previous)
    return out


def _is_python(mem: ProcessMemory, layout: WalkLayout, frame: int) -> bool:
    """False for a 3.12+ frame owned by the C stack or the interpreter."""
    skip = layout.owner_skip_from
    return skip < 0 or mem.u8(frame + layout.frame_owner) < skip


def _offset(mem: ProcessMemory, layout: WalkLayout, frame: int, code: int) -> int:
    if layout.instr_kind == INSTR_POINTER:
        return mem.pointer(frame + layout.frame_instr) - (code + layout.code_adaptive)
    lasti = mem.i32(frame + layout.frame_instr)
    return lasti if layout.instr_kind == INSTR_BYTES or lasti < 0 else 2 * lasti

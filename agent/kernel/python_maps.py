"""The Python walker's maps in a loaded program (see bpf/python.h).

A `PyMapWriter` (agent/unwind/pyloader.py) over one program's
python_layouts, python_procs and python_new_codes, and its self-metrics.
"""

from __future__ import annotations

import contextlib
from typing import Any

from agent.kernel.loaded import BpfProgram
from agent.unwind.pyframes import PyCodeRef, PyLayout, PyProc, PyStat


class BccPythonMaps:
    """The python_* maps of one loaded program."""

    def __init__(self, program: BpfProgram) -> None:
        self._program = program
        self._layouts = program["python_layouts"]
        self._procs = program["python_procs"]
        self._codes = program["python_new_codes"]

    def set_layout(self, index: int, layout: PyLayout) -> None:
        self._layouts[self._layouts.Key(index)] = _leaf(self._layouts, layout)

    def get_process(self, pid: int) -> PyProc | None:
        """The entry of `pid`, None when there is none (never marked, or
        deleted by the exec tracepoint)."""
        try:
            leaf = self._procs[self._procs.Key(pid)]
        except KeyError:
            return None
        return PyProc.from_buffer_copy(bytes(leaf))

    def set_process(self, pid: int, proc: PyProc) -> None:
        """Raises OSError when the map is full."""
        self._procs[self._procs.Key(pid)] = _leaf(self._procs, proc)

    def delete_process(self, pid: int) -> None:
        with contextlib.suppress(KeyError):  # the exec tracepoint removed it already
            del self._procs[self._procs.Key(pid)]

    def pop_codes(self, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` new (pid, code address) pairs, oldest first."""
        return [(int(r.pid), int(r.code)) for r in self._codes.pop_many(limit)]

    def stats(self) -> dict[str, int]:
        table = self._program["python_stats"]
        return {s.name.lower(): int(table.sum(s.value).value) for s in PyStat}


def _leaf(table: Any, value: PyLayout | PyProc | PyCodeRef) -> Any:
    """The table's own ctypes type holding `value`'s bytes (the mirror's
    layout is checked against BCC's by tests/bpf/test_python_walk.py)."""
    return table.Leaf.from_buffer_copy(bytes(value))

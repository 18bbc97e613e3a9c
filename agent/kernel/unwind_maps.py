"""The walker's maps in a loaded program (see bpf/unwind.h).

Rows go in with BPF_MAP_UPDATE_BATCH: one system call per binary instead
of one per row (python3.11 has about 65,000). A kernel without batch
support for arrays gets one update per row.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

from agent.kernel import bpfsys
from agent.kernel.loaded import BpfProgram
from agent.unwind.layout import MAPPING, UnwindStat
from agent.unwind.rows import ROW

BATCH = 8192  # elements per system call: bounds the temporary buffers


class BccUnwindMaps:
    """A `MapWriter` over one program's unwind_rows, unwind_maps and unwind_procs."""

    def __init__(self, program: BpfProgram) -> None:
        self._program = program
        self._rows = program["unwind_rows"]
        self._maps = program["unwind_maps"]
        self._procs = program["unwind_procs"]
        # with UNWIND_RAW: raw stacks each process sent before it was loaded
        self._raw_sent = _table(program, "unwind_raw_sent")

    def write_rows(self, first: int, data: bytes) -> None:
        _write_array(self._rows, first, data, ROW.size)

    def write_mappings(self, first: int, data: bytes) -> None:
        _write_array(self._maps, first, data, MAPPING.size)

    def set_process(self, pid: int, first_map: int, count: int) -> None:
        leaf = self._procs.Leaf()
        leaf.first_map, leaf.map_count = first_map, count
        self._procs[self._procs.Key(pid)] = leaf
        if self._raw_sent is not None:  # loaded: its next image gets a new budget
            with contextlib.suppress(KeyError):
                del self._raw_sent[self._raw_sent.Key(pid)]

    def delete_process(self, pid: int) -> None:
        with contextlib.suppress(KeyError):  # the exec tracepoint removed it already
            del self._procs[self._procs.Key(pid)]

    def stats(self) -> dict[str, int]:
        table = self._program["unwind_stats"]
        return {s.name.lower(): int(table.sum(s.value).value) for s in UnwindStat}


def _table(program: BpfProgram, name: str) -> Any:
    """A map the build may lack (None then)."""
    try:
        return program[name]
    except KeyError:
        return None


def _write_array(table: Any, first: int, data: bytes, size: int) -> None:
    count = len(data) // size
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        keys = (ctypes.c_uint32 * n)(*range(first + start, first + start + n))
        chunk = data[start * size : (start + n) * size]
        values = ctypes.create_string_buffer(chunk, len(chunk))
        if bpfsys.update_batch(table.map_fd, keys, values, n):
            continue
        for i in range(n):  # no batch support: one element at a time
            leaf = table.Leaf.from_buffer_copy(chunk, i * size)
            table[table.Key(first + start + i)] = leaf

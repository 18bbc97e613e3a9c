"""A loaded BPF program held as file descriptors: BCC's interface, without BCC.

The loader child (agent/kernel/loader_child.py) compiles a program and
hands over its maps, functions and attachments as fds. `LoadedProgram`
gives the sources the part of BCC's `BPF` object they use: `program[name]`
tables with `Key`/`Leaf` ctypes types, ring buffers, perf-event, uprobe and
tracepoint attachments, and `cleanup()`. Everything goes through
agent/kernel/bpfsys.py (libbcc_bpf), so this process never loads libbcc.so and the
LLVM it links.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from agent.kernel import bpfsys, sessions, typedesc, uprobes

# enum bpf_map_type
MAP_HASH = 1
MAP_ARRAY = 2
MAP_PERCPU_HASH = 5
MAP_PERCPU_ARRAY = 6
MAP_STACK_TRACE = 7
MAP_LRU_HASH = 9
MAP_LRU_PERCPU_HASH = 10
MAP_QUEUE = 22
MAP_RINGBUF = 27

_NOT_IN_NAMES = re.compile(rb"[^a-zA-Z0-9_]")


class BpfProgram(Protocol):
    """What the sources use of a loaded program: LoadedProgram here, a plain
    fake in unit tests. Maps are found by name and differ in kind (hash,
    array, ring buffer), as in BCC, so `program[name]` stays untyped; the
    rest is checked."""

    def __getitem__(self, name: str, /) -> Any: ...

    def attach_perf_event(
        self,
        ev_type: int,
        ev_config: int,
        fn_name: str | bytes,
        sample_period: int = 0,
        sample_freq: int = 0,
        cpu: int = -1,
    ) -> None: ...

    def attach_uprobe(
        self, name: bytes, sym: bytes, fn_name: str | bytes, pid: int = -1, sym_off: int = 0
    ) -> None: ...

    def attach_uretprobe(
        self, name: bytes, sym: bytes, fn_name: str | bytes, pid: int = -1
    ) -> None: ...

    def attach_uprobe_session(
        self, name: bytes, sym: bytes, fn_name: str | bytes, pid: int = -1, cookie: int = 0
    ) -> None: ...

    def ring_buffer_poll(self, timeout: int = -1) -> None: ...

    def ring_buffer_consume(self) -> None: ...

    def cleanup(self) -> None: ...


class Table:
    """A hash-like map (hash, LRU hash, stack trace): BCC's TableBase."""

    def __init__(self, name: str, fd: int, max_entries: int, key: Any, leaf: Any) -> None:
        self.name = name
        self.map_fd = fd
        self.max_entries = max_entries
        self.Key = key
        self.Leaf = leaf

    def __getitem__(self, key: Any) -> Any:
        leaf = self.Leaf()
        if not bpfsys.lookup(self.map_fd, key, leaf):
            raise KeyError(key)
        return leaf

    def __setitem__(self, key: Any, leaf: Any) -> None:
        bpfsys.update(self.map_fd, key, leaf)

    def __delitem__(self, key: Any) -> None:
        if not bpfsys.delete(self.map_fd, key):
            raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        key = None
        while True:
            following = self.Key()
            if not bpfsys.next_key(self.map_fd, key, following):
                return
            yield following
            key = following

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def keys(self) -> list[Any]:
        return list(self)

    def items(self) -> list[tuple[Any, Any]]:
        out = []
        for key in self:
            with contextlib.suppress(KeyError):  # deleted since it was listed
                out.append((key, self[key]))
        return out

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def clear(self) -> None:
        for key in self.keys():
            with contextlib.suppress(KeyError):
                del self[key]

    def items_lookup_and_delete_batch(self) -> Iterator[tuple[Any, Any]]:
        """Every (key, value), removed from the map in batches (as BCC's,
        values of a scalar type come out as ints)."""
        keys = (self.Key * self.max_entries)()
        values = (self.Leaf * self.max_entries)()
        n = bpfsys.lookup_and_delete_batch(
            self.map_fd, keys, values, ctypes.sizeof(self.Key), ctypes.sizeof(self.Leaf)
        )
        for i in range(n):
            yield keys[i], values[i]


class ArrayTable(Table):
    """An array map: every index exists; deleting zeroes the value."""

    def _index(self, key: Any) -> Any:
        if isinstance(key, int):
            key = self.Key(key + len(self) if key < 0 else key)
        if not 0 <= key.value < self.max_entries:
            raise IndexError("array index out of range")
        return key

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._index(key))

    def __setitem__(self, key: Any, leaf: Any) -> None:
        super().__setitem__(self._index(key), leaf)

    def __delitem__(self, key: Any) -> None:
        super().__setitem__(self._index(key), self.Leaf())

    def __iter__(self) -> Iterator[Any]:
        return (self.Key(i) for i in range(self.max_entries))

    def __len__(self) -> int:
        return self.max_entries


class PerCpuArray(ArrayTable):
    """A per-CPU array: a value is one element per possible CPU, each
    padded to 8 bytes by the kernel. `sum(i)` adds them up."""

    def __init__(self, name: str, fd: int, max_entries: int, key: Any, leaf: Any) -> None:
        self.sLeaf = leaf
        cpus = bpfsys.possible_cpus()
        if ctypes.sizeof(leaf) % 8 == 0:
            per_cpu = leaf
        elif leaf in (ctypes.c_uint, ctypes.c_int):
            per_cpu = ctypes.c_uint64 if leaf == ctypes.c_uint else ctypes.c_int64
        else:
            raise ValueError(f"per-CPU map {name}: values must be 8-byte aligned")
        super().__init__(name, fd, max_entries, key, per_cpu * cpus)

    def sum(self, key: Any) -> Any:
        return self.sLeaf(sum(self[key]))


class RingBuf:
    """A BPF_RINGBUF_OUTPUT map; events go to the program's poll."""

    def __init__(self, name: str, fd: int, buffers: bpfsys.RingBuffers) -> None:
        self.name = name
        self.map_fd = fd
        self._buffers = buffers

    def open_ring_buffer(self, callback: Callable[[Any, Any, int], Any]) -> None:
        self._buffers.add(self.map_fd, callback)


class QueueTable:
    """A BPF_QUEUE map: no keys, values taken in order (BCC's QueueStack)."""

    def __init__(self, name: str, fd: int, max_entries: int, leaf: Any) -> None:
        self.name = name
        self.map_fd = fd
        self.max_entries = max_entries
        self.Leaf = leaf

    def pop(self) -> Any:
        """The oldest value, removed; KeyError when the queue is empty."""
        leaf = self.Leaf()
        if not bpfsys.pop(self.map_fd, leaf):
            raise KeyError("queue empty")
        return leaf

    def pop_many(self, limit: int) -> list[Any]:
        """Up to `limit` values, oldest first, removed."""
        out = []
        for _ in range(limit):
            leaf = self.Leaf()
            if not bpfsys.pop(self.map_fd, leaf):
                break
            out.append(leaf)
        return out


def make_table(spec: dict[str, Any], fd: int, buffers: bpfsys.RingBuffers) -> Any:
    """The facade for one map the loader child described."""
    name, kind = str(spec["name"]), int(spec["type"])
    if kind == MAP_RINGBUF:
        return RingBuf(name, fd, buffers)
    if kind == MAP_QUEUE:  # keyless: BCC describes no key type
        leaf = typedesc.decode(json.loads(spec["leaf_desc"]))
        if ctypes.sizeof(leaf) != spec["leaf_size"]:
            raise typedesc.TypeDescError(f"map {name}: decoded value size differs")
        return QueueTable(name, fd, int(spec["max_entries"]), leaf)
    key = typedesc.decode(json.loads(spec["key_desc"]))
    leaf = typedesc.decode(json.loads(spec["leaf_desc"]))
    if (ctypes.sizeof(key), ctypes.sizeof(leaf)) != (spec["key_size"], spec["leaf_size"]):
        raise typedesc.TypeDescError(
            f"map {name}: decoded key/value sizes {ctypes.sizeof(key)}/{ctypes.sizeof(leaf)} "
            f"differ from the kernel's {spec['key_size']}/{spec['leaf_size']}"
        )
    cls: type[Table] = Table  # hash, LRU hash, stack trace; other types as the kernel allows
    if kind == MAP_PERCPU_ARRAY:
        cls = PerCpuArray
    elif kind == MAP_ARRAY:
        cls = ArrayTable
    return cls(name, fd, int(spec["max_entries"]), key, leaf)


class LoadedProgram:
    """The maps, functions and attachments of one program, by fd."""

    def __init__(self, name: str, reply: dict[str, Any], fds: list[int]) -> None:
        self.name = name
        self._buffers = bpfsys.RingBuffers()
        links = {int(link["fd"]): str(link["kind"]) for link in reply.get("attachments", [])}
        # perf-event, tracepoint and uprobe links (closed with their disable)
        self._perf = [fd for i, fd in enumerate(fds) if links.get(i) == "tracepoint"]
        # raw tracepoint links: closing one detaches it
        self._raw = [fd for i, fd in enumerate(fds) if links.get(i) == "raw_tracepoint"]
        self._fds = [fd for i, fd in enumerate(fds) if i not in links]  # maps and programs
        self._uprobe_events: list[bytes] = []
        self.tables: dict[str, Any] = {}
        self.funcs: dict[str, int] = {}
        try:
            if set(links.values()) - {"tracepoint", "raw_tracepoint"}:
                raise ValueError(f"{name}: unknown attachment kinds {sorted(links.values())}")
            self.funcs = {str(k): fds[int(i)] for k, i in reply["functions"].items()}
            for spec in reply["maps"]:
                self.tables[spec["name"]] = make_table(spec, fds[spec["fd"]], self._buffers)
        except Exception:
            self.cleanup()
            raise

    def __getitem__(self, name: str | bytes) -> Any:
        key = name.decode() if isinstance(name, bytes) else name
        return self.tables[key]

    def _function(self, name: str | bytes) -> int:
        key = name.decode() if isinstance(name, bytes) else name
        try:
            return self.funcs[key]
        except KeyError:
            raise KeyError(f"{self.name} has no loaded function {key}") from None

    # -- attachments -----------------------------------------------------------

    def attach_perf_event(
        self,
        ev_type: int,
        ev_config: int,
        fn_name: str | bytes,
        sample_period: int = 0,
        sample_freq: int = 0,
        cpu: int = -1,
    ) -> None:
        """Run the function on a perf event, on one CPU or (-1) each online one."""
        prog = self._function(fn_name)
        for one in [cpu] if cpu >= 0 else bpfsys.online_cpus():
            self._perf.append(
                bpfsys.attach_perf_event(
                    prog,
                    ev_type,
                    ev_config,
                    sample_period=sample_period,
                    sample_freq=sample_freq,
                    cpu=one,
                )
            )

    def attach_uprobe(
        self,
        name: bytes,
        sym: bytes,
        fn_name: str | bytes,
        pid: int = -1,
        sym_off: int = 0,
    ) -> None:
        self._attach_uprobe(name, sym, fn_name, pid, sym_off, ret=False)

    def attach_uretprobe(
        self, name: bytes, sym: bytes, fn_name: str | bytes, pid: int = -1
    ) -> None:
        self._attach_uprobe(name, sym, fn_name, pid, 0, ret=True)

    def _attach_uprobe(
        self, name: bytes, sym: bytes, fn_name: str | bytes, pid: int, sym_off: int, *, ret: bool
    ) -> None:
        """Where BCC raises a bare Exception, this raises OSError or
        uprobes.SymbolError (a LookupError)."""
        prog = self._function(fn_name)
        path = uprobes.probe_path(name.decode(), pid)
        offset = uprobes.symbol_offset(path, sym.decode()) + sym_off
        raw = path.encode()
        kind = b"r" if ret else b"p"
        event = b"%s_%s_0x%x_%d" % (kind, _NOT_IN_NAMES.sub(b"_", raw), offset, pid)
        self._perf.append(bpfsys.attach_uprobe(prog, ret, event, raw, offset, pid))
        self._uprobe_events.append(event)

    def attach_uprobe_session(
        self, name: bytes, sym: bytes, fn_name: str | bytes, pid: int = -1, cookie: int = 0
    ) -> None:
        """A uprobe session at `sym`'s entry (agent/kernel/sessions.py), whose
        program's bpf_get_attach_cookie() gives `cookie`; the function must
        have been loaded as "uprobe_session". Raises OSError."""
        path = uprobes.probe_path(name.decode(), pid)
        offset = uprobes.symbol_offset(path, sym.decode())
        fd = self._function(fn_name)
        self._raw.append(sessions.link(fd, path.encode(), [offset], pid, [cookie]))

    def attach_tracepoint(self, tp: str | bytes, fn_name: str | bytes) -> None:
        """`tp` is "category:name"; the function must be a tracepoint program."""
        text = tp.decode() if isinstance(tp, bytes) else tp
        category, _, event = text.partition(":")
        fd = bpfsys.attach_tracepoint(self._function(fn_name), category.encode(), event.encode())
        self._perf.append(fd)

    def attach_raw_tracepoint(self, tp: str | bytes, fn_name: str | bytes) -> None:
        text = tp.encode() if isinstance(tp, str) else tp
        self._raw.append(bpfsys.attach_raw_tracepoint(self._function(fn_name), text))

    # -- ring buffers ----------------------------------------------------------

    def ring_buffer_poll(self, timeout: int = -1) -> None:
        self._buffers.poll(timeout)

    def ring_buffer_consume(self) -> None:
        self._buffers.consume()

    def cleanup(self) -> None:
        """Detach everything, then close the programs and maps (idempotent)."""
        for fd in self._perf:
            bpfsys.close_perf_event(fd)
        for event in self._uprobe_events:
            bpfsys.detach_uprobe(event)
        for fd in self._raw:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._perf, self._raw, self._uprobe_events = [], [], []
        self._buffers.free()
        for fd in self._fds:
            with contextlib.suppress(OSError):  # not ours to worry about any more
                os.close(fd)
        self._fds = []
        self.tables = {}
        self.funcs = {}

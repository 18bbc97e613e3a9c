"""BPF maps, ring buffers and attachments through libbcc_bpf, without BCC.

`libbcc_bpf.so.0` is BCC's build of its libbpf wrapper (src/cc/libbpf.c):
map operations, ring buffers and the perf-event, uprobe and tracepoint
attachments, with no compiler in it. `libbcc.so` holds the same functions
but links LLVM and clang (about 85 MiB of the agent's resident memory), so
the agent process uses this library and leaves compiling to a short-lived
child (agent/kernel/loader_child.py). Signatures are BCC 0.26's libbpf.h.

Every call returns a negative value on failure with errno set; the wrappers
here turn that into OSError (or KeyError where a missing key is the usual
cause, as BCC's tables do).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from functools import cache
from typing import Any

LIBRARY = "libbcc_bpf.so.0"

# enum bpf_probe_attach_type
PROBE_ENTRY = 0
PROBE_RETURN = 1

# perf_event_attr.type and the software counters' config
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0

# ring_buffer_sample_fn: int (*)(void *ctx, void *data, size_t size), as BCC declares it
RINGBUF_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)

_I, _U32, _U64, _P, _S = (
    ctypes.c_int,
    ctypes.c_uint32,
    ctypes.c_uint64,
    ctypes.c_void_p,
    ctypes.c_char_p,
)
_PU32 = ctypes.POINTER(ctypes.c_uint32)

# name -> (restype, argtypes)
SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "bpf_lookup_elem": (_I, [_I, _P, _P]),
    "bpf_update_elem": (_I, [_I, _P, _P, ctypes.c_ulonglong]),
    "bpf_delete_elem": (_I, [_I, _P]),
    "bpf_get_first_key": (_I, [_I, _P, ctypes.c_size_t]),
    "bpf_get_next_key": (_I, [_I, _P, _P]),
    "bpf_lookup_and_delete": (_I, [_I, _P, _P]),
    "bpf_lookup_and_delete_batch": (_I, [_I, _PU32, _PU32, _P, _P, _PU32]),
    "bpf_update_batch": (_I, [_I, _P, _P, _PU32]),
    "bpf_new_ringbuf": (_P, [_I, RINGBUF_CALLBACK, _P]),
    "bpf_add_ringbuf": (_I, [_P, _I, RINGBUF_CALLBACK, _P]),
    "bpf_poll_ringbuf": (_I, [_P, _I]),
    "bpf_consume_ringbuf": (_I, [_P]),
    "bpf_free_ringbuf": (None, [_P]),
    "bpf_attach_perf_event": (_I, [_I, _U32, _U32, _U64, _U64, _I, _I, _I]),
    "bpf_attach_uprobe": (_I, [_I, _I, _S, _S, _U64, _I, _U32]),
    "bpf_detach_uprobe": (_I, [_S]),
    "bpf_attach_tracepoint": (_I, [_I, _S, _S]),
    "bpf_attach_raw_tracepoint": (_I, [_I, _S]),
    "bpf_close_perf_event_fd": (_I, [_I]),
}


@cache
def lib() -> Any:
    """The library, its functions typed (loaded on first use)."""
    handle = ctypes.CDLL(LIBRARY, use_errno=True)
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(handle, name)
        fn.restype, fn.argtypes = restype, argtypes
    return handle


def _failed(what: str) -> OSError:
    err = ctypes.get_errno() or errno.EINVAL
    return OSError(err, f"{what}: {os.strerror(err)}")


def lookup(fd: int, key: Any, leaf: Any) -> bool:
    """Fill `leaf` with the value at `key`; False when there is none."""
    return int(lib().bpf_lookup_elem(fd, ctypes.byref(key), ctypes.byref(leaf))) >= 0


def update(fd: int, key: Any, leaf: Any, flags: int = 0) -> None:
    if lib().bpf_update_elem(fd, ctypes.byref(key), ctypes.byref(leaf), flags) < 0:
        raise _failed("could not update the map")


def delete(fd: int, key: Any) -> bool:
    """Delete `key`; False when it was not there."""
    return int(lib().bpf_delete_elem(fd, ctypes.byref(key))) >= 0


def pop(fd: int, leaf: Any) -> bool:
    """Take the next element of a queue or stack map into `leaf`; False
    when it is empty (ENOENT)."""
    if lib().bpf_lookup_and_delete(fd, None, ctypes.byref(leaf)) >= 0:
        return True
    if ctypes.get_errno() == errno.ENOENT:
        return False
    raise _failed("could not pop from the map")


def next_key(fd: int, key: Any, out: Any) -> bool:
    """Put the key after `key` (None: the first) in `out`; False at the end."""
    if key is None:
        return int(lib().bpf_get_first_key(fd, ctypes.byref(out), ctypes.sizeof(out))) >= 0
    return int(lib().bpf_get_next_key(fd, ctypes.byref(key), ctypes.byref(out))) >= 0


def lookup_and_delete_batch(fd: int, keys: Any, values: Any, key_size: int, leaf_size: int) -> int:
    """Move up to len(keys) entries into the arrays; how many were moved.

    The kernel hands out whole buckets, so a call may return fewer than fit
    (or ENOSPC when a bucket is larger than what is left): it is repeated,
    from the batch token it returned, until ENOENT says the map is empty.
    """
    capacity = len(keys)
    token = ctypes.c_uint32(0)
    count = ctypes.c_uint32(0)
    total = 0
    while total < capacity:
        count.value = capacity - total
        res = lib().bpf_lookup_and_delete_batch(
            fd,
            ctypes.byref(token) if total else None,
            ctypes.byref(token),
            ctypes.byref(keys, key_size * total),
            ctypes.byref(values, leaf_size * total),
            ctypes.byref(count),
        )
        err = ctypes.get_errno()
        total += count.value
        if res != 0:
            if err == errno.ENOENT:
                break
            if err == errno.ENOSPC and total:
                break  # the next bucket does not fit: the caller goes again
            raise OSError(err, f"BPF_MAP_LOOKUP_AND_DELETE_BATCH failed: {os.strerror(err)}")
        if count.value == 0:
            break  # no progress (a bucket being refilled meanwhile)
    return total


def update_batch(fd: int, keys: Any, values: Any, count: int) -> bool:
    """BPF_MAP_UPDATE_BATCH; False if the kernel lacks it for this map type."""
    done = ctypes.c_uint32(count)
    if lib().bpf_update_batch(fd, keys, values, ctypes.byref(done)) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 0):
        return False
    raise _failed("BPF_MAP_UPDATE_BATCH failed")


def attach_perf_event(
    prog_fd: int, ev_type: int, ev_config: int, *, sample_period: int, sample_freq: int, cpu: int
) -> int:
    """A perf event on one CPU (all processes) running the program; its fd."""
    fd = int(
        lib().bpf_attach_perf_event(
            prog_fd, ev_type, ev_config, sample_period, sample_freq, -1, cpu, -1
        )
    )
    if fd < 0:
        raise _failed(f"cannot attach to perf event {ev_type}:{ev_config} on CPU {cpu}")
    return fd


def attach_uprobe(prog_fd: int, ret: bool, event: bytes, path: bytes, offset: int, pid: int) -> int:
    kind = PROBE_RETURN if ret else PROBE_ENTRY
    fd = int(lib().bpf_attach_uprobe(prog_fd, kind, event, path, offset, pid, 0))
    if fd < 0:
        raise _failed(f"cannot attach a uprobe to {path.decode(errors='replace')}+{offset:#x}")
    return fd


def attach_tracepoint(prog_fd: int, category: bytes, name: bytes) -> int:
    fd = int(lib().bpf_attach_tracepoint(prog_fd, category, name))
    if fd < 0:
        raise _failed(f"cannot attach to tracepoint {category.decode()}:{name.decode()}")
    return fd


def attach_raw_tracepoint(prog_fd: int, name: bytes) -> int:
    fd = int(lib().bpf_attach_raw_tracepoint(prog_fd, name))
    if fd < 0:
        raise _failed(f"cannot attach to raw tracepoint {name.decode()}")
    return fd


def close_perf_event(fd: int) -> None:
    """Disable and close a perf event (a perf-event, uprobe or tracepoint link)."""
    lib().bpf_close_perf_event_fd(fd)


def detach_uprobe(event: bytes) -> None:
    """Remove a uprobe's tracefs event, if the legacy interface made one."""
    lib().bpf_detach_uprobe(event)


class RingBuffers:
    """One libbpf ring_buffer manager over any number of ring buffer maps."""

    def __init__(self) -> None:
        self._manager: int | None = None
        self._callbacks: list[Any] = []  # ctypes callbacks must outlive the manager

    def add(self, map_fd: int, callback: Callable[[Any, Any, int], Any]) -> None:
        def call(ctx: Any, data: Any, size: int) -> int:
            ret = callback(ctx, data, size)
            try:
                return int(ret)
            except (TypeError, ValueError):
                return 0

        fn = RINGBUF_CALLBACK(call)
        self._callbacks.append(fn)
        if self._manager is None:
            manager = lib().bpf_new_ringbuf(map_fd, fn, None)
            if not manager:
                raise _failed("cannot open the ring buffer")
            self._manager = int(manager)
        elif lib().bpf_add_ringbuf(self._manager, map_fd, fn, None) < 0:
            raise _failed("cannot open the ring buffer")

    def poll(self, timeout_ms: int) -> None:
        if self._manager is None:
            raise RuntimeError("no ring buffer is open")
        lib().bpf_poll_ringbuf(self._manager, timeout_ms)

    def consume(self) -> None:
        if self._manager is None:
            raise RuntimeError("no ring buffer is open")
        lib().bpf_consume_ringbuf(self._manager)

    def free(self) -> None:
        if self._manager is not None:
            lib().bpf_free_ringbuf(self._manager)
            self._manager = None
        self._callbacks.clear()


def cpu_list(text: str) -> list[int]:
    """The CPUs of a kernel cpu list ("0-3,8,10-11")."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def online_cpus() -> list[int]:
    with open("/sys/devices/system/cpu/online") as f:
        return cpu_list(f.read())


@cache
def possible_cpus() -> int:
    """How many values a per-CPU map holds per key."""
    with open("/sys/devices/system/cpu/possible") as f:
        return len(cpu_list(f.read()))

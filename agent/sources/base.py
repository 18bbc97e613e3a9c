"""What every sample source offers the runner.

A source compiles (in a loader child, see bcc_loader.py) and attaches its
BPF program in `start()`, tells the runner about processes it sees for the
first time (so their maps are captured while they live), and hands over what
the kernel counted in `drain()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from agent.model import RawSample


class SampleSource(Protocol):
    def add_targets(self, pids: Iterable[int]) -> None:
        """Restrict sampling to these processes (before `start`)."""

    def start(self) -> None:
        """Compile, load and attach the BPF programs."""

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        """Wait up to timeout_ms for new-process events and report each."""

    def drain(self) -> list[RawSample]:
        """Everything counted since the last drain."""

    def counters(self) -> dict[str, int]:
        """Self-metrics since start (samples, map full, collisions, ...)."""

    def close(self) -> None:
        """Detach and free the programs."""


@runtime_checkable
class SnapshotSource(Protocol):
    """A source with state that is a snapshot, not a sum: the allocation
    source's live heap. Drains give what happened since the last drain
    (alloc_*); live_heap() gives what is still allocated now (inuse_*), to
    be added once per profile, at its end."""

    def live_heap(self) -> list[RawSample]:
        """Every sampled block still allocated, scaled, per stack."""


@runtime_checkable
class PythonCodeSource(Protocol):
    """A source whose stacks carry Python frames (bpf/python.h): it hands
    over the (pid, code object address) pairs its walker met for the first
    time, so the core reads their names while the process still lives."""

    def python_codes(self) -> list[tuple[int, int]]:
        """New (pid, code address) pairs since the last call."""

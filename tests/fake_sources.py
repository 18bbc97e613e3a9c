"""A plain fake SampleSource for the drivers' unit tests (runner, core)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.model import RawSample


@dataclass
class FakeSource:
    """Hands out `batches` one drain at a time; counts like the kernel would.
    `seen` are announced at the next poll; `fail_start` makes start() fail."""

    batches: list[list[RawSample]]
    started: bool = False
    closed: bool = False
    drained: int = 0
    seen: list[int] = field(default_factory=list)
    fail_start: bool = False

    def add_targets(self, pids: Iterable[int]) -> None:
        pass

    def start(self) -> None:
        if self.fail_start:
            raise OSError("the kernel said no")
        self.started = True

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        for pid in self.seen:
            on_new_process(pid)
        self.seen = []

    def drain(self) -> list[RawSample]:
        self.drained += 1
        return self.batches.pop(0) if self.batches else []

    def counters(self) -> dict[str, int]:
        return {"samples": 10 * self.drained, "map_full": self.drained, "user_collision": 1}

    def close(self) -> None:
        self.closed = True

"""Aggregation: sum drained kernel counts per (thread, stack) over a window."""

from __future__ import annotations

from collections.abc import Iterable

from agent.model import RawKey, RawSample


class Aggregator:
    """Sums the values of RawSamples that share a key.

    The kernel already counts per key within one drain; this merges drains
    (and the two halves of the double buffer) into one window.
    """

    def __init__(self) -> None:
        self._values: dict[RawKey, list[int]] = {}

    def add(self, samples: Iterable[RawSample]) -> None:
        for s in samples:
            acc = self._values.get(s.key)
            if acc is None:
                self._values[s.key] = list(s.values)
            else:
                for i, v in enumerate(s.values):
                    acc[i] += v

    def __len__(self) -> int:
        return len(self._values)

    def pids(self) -> set[int]:
        return {k.pid for k in self._values}

    def total(self, index: int = 0) -> int:
        return sum(v[index] for v in self._values.values())

    def take(self) -> list[RawSample]:
        """Everything aggregated so far, in a stable order; then start over."""
        out = [RawSample(k, tuple(v)) for k, v in self._values.items()]
        self._values = {}
        return out

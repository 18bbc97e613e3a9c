"""A bounded LRU of symbol tables, shared by every process mapping a file.

A library such as libc is mapped by nearly every process: its table is
parsed once and shared. Keys are the GNU build ID ("build-id:<hex>"), or,
for files without one, the file's identity ("file:dev:inode:size:mtime"),
which changes whenever the file is replaced. The same table is often
filed under both keys, so a later process finds it by identity without
reading the file's notes again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class LruCache(Generic[V]):
    """A dict that forgets its least recently used entry beyond `capacity`.

    Evicting a table does not break processes that already hold it: their
    snapshots keep a reference; only sharing with later processes stops.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def values(self) -> list[V]:
        """Each distinct value once (a table is often filed under two keys)."""
        seen: dict[int, V] = {}
        for value in self._items.values():
            seen.setdefault(id(value), value)
        return list(seen.values())

    def put(self, key: str, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def build_id_key(build_id: str) -> str:
    return f"build-id:{build_id}"


def file_key(dev: int, inode: int, size: int, mtime_ns: int) -> str:
    return f"file:{dev}:{inode}:{size}:{mtime_ns}"

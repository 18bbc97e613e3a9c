"""A sorted, bisectable index of function symbols (format independent).

Rules, in the order lookup() applies them to an address:
1. the nearest symbol starting at or below it, if it has a size covering it;
2. else a sized symbol starting earlier that still covers it (the address
   is inside an outer function, past a nested or zero-size symbol);
3. else, if the nearest symbol has no size (hand-written assembly often
   omits `.size`), that symbol, up to the end of its section (`limit`).
Several symbols at one address (aliases) collapse to the best ranked.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Symbol:
    """A function: name, start address, size (0 when the file gave none)."""

    name: str
    start: int
    size: int


class Candidate(NamedTuple):
    """A symbol as read from a file, before aliases are collapsed.

    `limit` is where its extent ends (start+size, or its section's end when
    it has no size); `rank` orders aliases, the highest wins.
    """

    start: int
    size: int
    name: str
    limit: int
    rank: tuple[bool, bool, int, int]


Plain = tuple[list[int], list[int], list[int], list[str], list[int]]


class SymbolIndex:
    """Parallel arrays sorted by start address; `lookup` is one bisect."""

    def __init__(self, candidates: Iterable[Candidate]) -> None:
        best: dict[int, Candidate] = {}
        for cand in candidates:
            kept = best.get(cand.start)
            if kept is None or cand.rank > kept.rank:
                best[cand.start] = cand
        chosen = sorted(best.values())
        self._starts = [c.start for c in chosen]
        self._sizes = [c.size for c in chosen]
        self._limits = [c.limit for c in chosen]
        self._names = [c.name for c in chosen]
        self._cover = _covering_sized(chosen)

    def __len__(self) -> int:
        return len(self._starts)

    def to_plain(self) -> Plain:
        return self._starts, self._sizes, self._limits, self._names, self._cover

    @classmethod
    def from_plain(
        cls, plain: tuple[list[int], list[int], list[int], list[str], list[int]]
    ) -> SymbolIndex:
        """Rebuild from to_plain()'s lists (the on-disk cache), without sorting again."""
        index = cls(())
        starts, sizes, limits, cover = (list(map(int, x)) for x in plain[:3] + plain[4:])
        names = [str(n) for n in plain[3]]
        if not len(starts) == len(sizes) == len(limits) == len(names) == len(cover):
            raise ValueError("inconsistent symbol index")
        index._starts, index._sizes, index._limits, index._names, index._cover = (
            starts, sizes, limits, names, cover,
        )  # fmt: skip
        return index

    def lookup(self, address: int) -> Symbol | None:
        i = bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        if self._sizes[i] and address < self._limits[i]:
            return self._symbol(i)
        outer = self._cover[i]
        if outer >= 0 and address < self._limits[outer]:
            return self._symbol(outer)
        if not self._sizes[i] and address < self._limits[i]:
            return self._symbol(i)
        return None

    def _symbol(self, i: int) -> Symbol:
        return Symbol(self._names[i], self._starts[i], self._sizes[i])


def _covering_sized(chosen: list[Candidate]) -> list[int]:
    """For each i, the sized symbol at or before i reaching furthest (or -1).

    If any sized symbol starting at or before i covers an address past
    start[i], this one does: a prefix maximum makes rule 2 O(1).
    """
    cover: list[int] = []
    best, best_end = -1, -1
    for i, cand in enumerate(chosen):
        if cand.size and cand.limit > best_end:
            best, best_end = i, cand.limit
        cover.append(best)
    return cover

"""Kernel text symbols from /proc/kallsyms.

kallsyms gives addresses and names but no sizes, so a kernel address
belongs to the nearest text symbol at or below it. Two limits keep that
from naming a far-away function: core kernel symbols end at `_etext`, and
an address below the first symbol belongs to nothing. Module symbols
(`name\\t[module]`, which includes BPF programs as `[bpf]`) keep their
module name.

Parsing is one regular expression over the whole text (about 150 ms for
120k lines here), which skips data symbols without splitting their lines.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

_TEXT_LINE = re.compile(r"^([0-9a-fA-F]+) ([tTwW]) (\S+)(?:\t\[(\S+)\])?$", re.MULTILINE)
_TYPE_RANK = {"T": 2, "W": 1}  # global over weak over local
_TEXT_MARKERS = ("_text", "_stext")
_END_MARKERS = ("_etext", "_einittext")  # ends of ranges, not functions
_MARKERS = frozenset(_TEXT_MARKERS + _END_MARKERS)


@dataclass(frozen=True)
class KernelSymbol:
    """A kernel text symbol; `module` is "" for the core kernel image."""

    name: str
    start: int
    module: str = ""


class KernelSymbols:
    """Kernel text symbols as parallel sorted arrays with a bisect lookup."""

    def __init__(
        self, rows: Iterable[tuple[int, str, str]], text_start: int = 0, text_end: int = 0
    ) -> None:
        """`rows` are (start, name, module), one per address."""
        ordered = sorted(rows)
        self._starts = array("Q", (r[0] for r in ordered))
        self._names = [r[1] for r in ordered]
        self._modules = [r[2] for r in ordered]
        self.text_start = text_start
        self.text_end = text_end

    @classmethod
    def from_text(cls, text: str) -> KernelSymbols:
        """Parse kallsyms text. All-zero addresses (kptr_restrict hides them
        from unprivileged readers) give an empty table rather than one that
        names every address after the same symbol.

        Built column by column from a streaming match, never as one tuple per
        line: a tuple per line of 120k lines costs tens of MiB at the peak,
        which is what a profiler's RSS is judged by."""
        starts, names, modules, kinds = array("Q"), [], [], []
        markers: dict[str, int] = {}
        module_names: dict[str, str] = {}  # one string object per module name
        for m in _TEXT_LINE.finditer(text):
            addr = int(m.group(1), 16)
            name = m.group(3)
            if name in _MARKERS:
                markers[name] = min(markers.get(name, addr), addr)
            if addr == 0 or name in _END_MARKERS:
                continue
            starts.append(addr)
            names.append(name)
            module = m.group(4) or ""
            modules.append(module_names.setdefault(module, module))
            kinds.append(m.group(2))
        order = sorted(range(len(starts)), key=starts.__getitem__)
        table = cls((), markers.get("_text", markers.get("_stext", 0)), markers.get("_etext", 0))
        last = 0  # index of the row that holds the latest address
        for i in order:
            addr = starts[i]
            if table._starts and table._starts[-1] == addr:  # an alias: rank only these
                if _rank(kinds[i], names[i]) > _rank(kinds[last], names[last]):
                    table._names[-1], table._modules[-1], last = names[i], modules[i], i
                continue
            table._starts.append(addr)
            table._names.append(names[i])
            table._modules.append(modules[i])
            last = i
        return table

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, address: int) -> KernelSymbol | None:
        """The text symbol containing `address`, or None."""
        i = bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        start, module = self._starts[i], self._modules[i]
        if not module and start < self.text_end <= address:
            return None  # past the end of core text, in a gap before modules
        return KernelSymbol(self._names[i], start, module)


def _rank(kind: str, name: str) -> tuple[int, int]:
    """Among aliases prefer global symbols, then the plainer name
    (`sys_read` over `__x64_sys_read`, a function over `_stext`)."""
    return _TYPE_RANK.get(kind, 0), len(name.lstrip("_")) - len(name)


def read_kernel_notes(path: str = "/sys/kernel/notes") -> bytes:
    """The running kernel's ELF notes; build_id_from_notes() finds its build ID
    (what perf records for [kernel.kallsyms], to match a vmlinux later)."""
    with open(path, "rb") as f:
        return f.read()


def read_kallsyms(path: str = "/proc/kallsyms") -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()

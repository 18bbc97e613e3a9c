"""Kernel text symbols from /proc/kallsyms.

kallsyms gives addresses and names but no sizes, so a kernel address
belongs to the nearest text symbol at or below it. Limits keep that from
naming a far-away function: a core kernel symbol ends at the end of its
range, `_etext` for the kernel's text and `_einittext` for init text
(which lies above it: without that bound the last init function,
`use_tpause_delay` here, named every address of a BPF program unloaded
before kallsyms was read), and an address below the first symbol belongs
to nothing. Module symbols (`name\\t[module]`, which includes BPF programs
as `bpf_prog_<tag>_<name>\\t[bpf]`) keep their module name.

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
    """Kernel text symbols: sorted start addresses with a bisect lookup.

    Each address keeps only the offset of its line in the kallsyms text; the
    name is parsed from the text when looked up. The text itself (a few MiB
    of ASCII) is the only large object: a string per symbol would cost tens
    of MiB, and a profiler's RSS is judged by its peak."""

    def __init__(
        self,
        rows: Iterable[tuple[int, str, str]] = (),
        text_start: int = 0,
        text_end: int = 0,
        init_end: int = 0,
    ) -> None:
        """`rows` are (start, name, module), one per address."""
        self._index("".join(_line(*row) for row in sorted(rows)))
        self.text_start = text_start
        self.text_end = text_end
        self.init_end = init_end

    @classmethod
    def from_text(cls, text: str) -> KernelSymbols:
        """Parse kallsyms text. All-zero addresses (kptr_restrict hides them
        from readers without CAP_SYSLOG) give an empty table rather than one
        that names every address after the same symbol, and set `hidden`."""
        table = cls.__new__(cls)
        markers = table._index(text)
        table.text_start = next((markers[m] for m in _TEXT_MARKERS if m in markers), 0)
        table.text_end = markers.get("_etext", 0)
        table.init_end = markers.get("_einittext", 0)
        return table

    def _index(self, text: str) -> dict[str, int]:
        """Index the text symbols of `text`; returns the range markers."""
        starts, offsets = array("Q"), array("Q")
        markers: dict[str, int] = {}
        zeros = 0
        for m in _TEXT_LINE.finditer(text):
            addr, name = int(m.group(1), 16), m.group(3)
            if name in _MARKERS:
                markers[name] = min(markers.get(name, addr), addr)
            zeros += addr == 0
            if addr == 0 or name in _END_MARKERS:
                continue
            starts.append(addr)
            offsets.append(m.start())
        self._text = text
        self._starts, self._offsets = array("Q"), array("Q")
        for i in sorted(range(len(starts)), key=starts.__getitem__):
            if self._starts and self._starts[-1] == starts[i]:  # an alias: rank only these
                if _rank(*self._kind_name(offsets[i])) > _rank(*self._kind_name(self._offsets[-1])):
                    self._offsets[-1] = offsets[i]
                continue
            self._starts.append(starts[i])
            self._offsets.append(offsets[i])
        # every address zero: kptr_restrict hid them (not merely an empty text)
        self.hidden = zeros > 0 and not self._starts
        return markers

    def _match(self, offset: int) -> re.Match[str]:
        m = _TEXT_LINE.match(self._text, offset)
        assert m is not None  # offsets come from matches of the same text
        return m

    def _kind_name(self, offset: int) -> tuple[str, str]:
        m = self._match(offset)
        return m.group(2), m.group(3)

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, address: int) -> KernelSymbol | None:
        """The text symbol containing `address`, or None."""
        i = bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        m = self._match(self._offsets[i])
        start, name, module = self._starts[i], m.group(3), m.group(4) or ""
        if not module and address >= self._core_end(start):
            return None  # past the end of its range: a gap, init data, modules, BPF
        return KernelSymbol(name, start, module)

    def _core_end(self, start: int) -> int:
        """Where a core symbol starting at `start` must end: the first range
        end above it (`_etext`, `_einittext`). Past `_einittext` there is no
        core text, so nothing extends; a text without that marker (a table
        built from rows) leaves the symbols above its ends unbounded."""
        above = [e for e in (self.text_end, self.init_end) if e > start]
        if above:
            return min(above)
        return start if self.init_end else 1 << 64


def _line(start: int, name: str, module: str) -> str:
    """One kallsyms line, for tables built from rows."""
    return f"{start:x} T {name}" + (f"\t[{module}]" if module else "") + "\n"


def _rank(kind: str, name: str) -> tuple[int, int]:
    """Among aliases prefer global symbols, then the plainer name
    (`sys_read` over `__x64_sys_read`, a function over `_stext`)."""
    return _TYPE_RANK.get(kind, 0), len(name.lstrip("_")) - len(name)


def read_kernel_notes(path: str = "/sys/kernel/notes") -> bytes:
    """The running kernel's ELF notes; build_id_from_notes() finds its build ID
    (what perf records for [kernel.kallsyms], to match a vmlinux later)."""
    with open(path, "rb") as f:
        return f.read()


def hidden_kallsyms_message(path: str, sysctl: str = "/proc/sys/kernel/kptr_restrict") -> str:
    """Why kallsyms read as zeros, what it costs and how to fix it."""
    try:
        with open(sysctl) as f:
            setting = f"kernel.kptr_restrict={f.read().strip()}"
    except OSError:
        setting = "kernel.kptr_restrict"
    return (
        f"{path} shows every kernel address as 0 ({setting} hides them from a process "
        "without CAP_SYSLOG): kernel frames will be unnamed addresses. Run with CAP_SYSLOG "
        "(the bpfprof.service unit grants it) or lower kernel.kptr_restrict"
    )


def read_kallsyms(path: str = "/proc/kallsyms") -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()

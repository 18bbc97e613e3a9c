"""Symbolizer speed against llvm-symbolizer and pyelftools, on the same
addresses in one run.

    .venv/bin/python -m bench.symbolizer [--count N] [--elf PATH]

Default: N random addresses in libc's .text, with Debian's libc6-dbg
debug file found by build ID. Prints, for each tool, the time from a fresh
process/state to all answers, and per-address times once loaded;
for bpfprof also with a warm on-disk cache (a restarted agent).

The pyelftools row is the baseline the symbolizer's own decoders were
written against (docs/performance.md, "Symbolizer"): function from .symtab,
file:line from the unit's line program found through .debug_aranges, each
unit decoded once and kept, as a careful pyelftools user would. It does
less than bpfprof (no inline chains), so it flatters pyelftools.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import random
import subprocess
import tempfile
import time
from typing import Any

from elftools.elf.elffile import ELFFile

import symbolizer.dwarf
from symbolizer import Symbolizer

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
DEBUG_DIR = "/usr/lib/debug/.build-id"


def text_addresses(path: str, count: int, seed: int = 1) -> list[int]:
    with open(path, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        lo, hi = text["sh_addr"], text["sh_addr"] + text["sh_size"]
    rng = random.Random(seed)
    return [rng.randrange(lo, hi) for _ in range(count)]


def llvm(path: str, addresses: list[int]) -> tuple[float, float]:
    """(seconds for all from a fresh process, µs per address in a second pass)."""
    stdin = "\n".join(map(hex, addresses)) + "\n"
    began = time.perf_counter()
    subprocess.run(["llvm-symbolizer", f"--obj={path}"], input=stdin, text=True,
                   capture_output=True, check=True)  # fmt: skip
    once = time.perf_counter() - began
    began = time.perf_counter()
    subprocess.run(["llvm-symbolizer", f"--obj={path}"], input=stdin * 2, text=True,
                   capture_output=True, check=True)  # fmt: skip
    twice = time.perf_counter() - began
    return once, (twice - once) / len(addresses) * 1e6


def ours(path: str, addresses: list[int], cache_dir: str | None) -> tuple[float, float, int]:
    # a restarted agent starts without the previous symbolizer's objects:
    # collect them, or the cyclic GC walks them all through this pass
    gc.collect()
    began = time.perf_counter()
    sym = Symbolizer(cache_dir=cache_dir)
    resolved = sum(bool(sym.resolve_elf(path, a).lines) for a in addresses)
    cold = time.perf_counter() - began
    sym.save_cache()
    began = time.perf_counter()
    for a in addresses:
        sym.resolve_elf(path, a)
    warm = (time.perf_counter() - began) / len(addresses) * 1e6
    return cold, warm, resolved


def debug_file(path: str) -> str:
    """The separate debug file of `path` by build ID, else `path` itself."""
    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections("SHT_NOTE"):
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    build_id = str(note["n_desc"])
                    candidate = f"{DEBUG_DIR}/{build_id[:2]}/{build_id[2:]}.debug"
                    with contextlib.suppress(OSError):
                        open(candidate, "rb").close()
                        return candidate
    return path


class PyelftoolsLookup:
    """Function and file:line of an address with pyelftools' public API."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (lives as long as the lookup)
        elf = ELFFile(self._file)
        symtab = elf.get_section_by_name(".symtab") or elf.get_section_by_name(".dynsym")
        funcs = sorted(
            (s["st_value"], s["st_value"] + s["st_size"], s.name)
            for s in symtab.iter_symbols()
            if s["st_info"]["type"] == "STT_FUNC" and s["st_size"]
        )
        self._starts = [f[0] for f in funcs]
        self._funcs = funcs
        self._dwarf = elf.get_dwarf_info()
        self._aranges = self._dwarf.get_aranges()
        self._units: dict[int, tuple[list[int], list[tuple[str, int] | None]]] = {}
        self.line_seconds = 0.0  # spent decoding line programs

    def close(self) -> None:
        self._file.close()

    def lookup(self, address: int) -> tuple[str | None, tuple[str, int] | None]:
        i = bisect.bisect_right(self._starts, address) - 1
        name = self._funcs[i][2] if i >= 0 and address < self._funcs[i][1] else None
        offset = self._aranges.cu_offset_at_addr(address) if self._aranges else None
        if offset is None:
            return name, None
        rows = self._units.get(offset)
        if rows is None:
            began = time.perf_counter()
            rows = self._units[offset] = self._rows(offset)
            self.line_seconds += time.perf_counter() - began
        addrs, lines = rows
        j = bisect.bisect_right(addrs, address) - 1
        return name, lines[j] if j >= 0 else None

    def _rows(self, offset: int) -> tuple[list[int], list[tuple[str, int] | None]]:
        """The unit's rows sorted by address; an end of sequence maps to None."""
        program = self._dwarf.line_program_for_CU(self._dwarf.get_CU_at(offset))
        if program is None:
            return [], []
        files = program["file_entry"]
        base = 0 if program["version"] >= 5 else 1
        rows = []
        for entry in program.get_entries():
            state = entry.state
            if state is None:
                continue
            if state.end_sequence:
                rows.append((state.address, None))
            else:
                index = state.file - base
                name = files[index].name.decode() if 0 <= index < len(files) else "?"
                rows.append((state.address, (name, state.line)))
        rows.sort(key=lambda r: r[0])
        return [r[0] for r in rows], [r[1] for r in rows]


class LineTimer:
    """Time bpfprof's line-program decoder while it runs (the figure the
    pyelftools comparison in symbolizer/dwarf_line.py is about)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.units = 0

    def __enter__(self) -> LineTimer:
        self._real = real = symbolizer.dwarf.parse_line_table

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began
                self.units += 1

        symbolizer.dwarf.parse_line_table = timed  # type: ignore[assignment]
        return self

    def __exit__(self, *_: object) -> None:
        symbolizer.dwarf.parse_line_table = self._real  # type: ignore[assignment]


def pyelftools(path: str, addresses: list[int]) -> tuple[float, float, int, float, int]:
    """(seconds for all from a fresh state, µs per address once loaded,
    resolved, seconds in line programs, units decoded)."""
    gc.collect()
    began = time.perf_counter()
    lookup = PyelftoolsLookup(debug_file(path))
    resolved = sum(lookup.lookup(a)[1] is not None for a in addresses)
    cold = time.perf_counter() - began
    began = time.perf_counter()
    for a in addresses:
        lookup.lookup(a)
    warm = (time.perf_counter() - began) / len(addresses) * 1e6
    lookup.close()
    return cold, warm, resolved, lookup.line_seconds, len(lookup._units)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--elf", default=LIBC)
    args = parser.parse_args(argv)
    addresses = text_addresses(args.elf, args.count)
    l_all, l_per = llvm(args.elf, addresses)
    p_all, p_per, p_resolved, p_lines, p_units = pyelftools(args.elf, addresses)
    with tempfile.TemporaryDirectory() as cache, LineTimer() as lines:
        cold, warm, resolved = ours(args.elf, addresses, cache)
        disk, _, _ = ours(args.elf, addresses, cache)
    print(f"{args.count} random .text addresses in {args.elf}")
    print(f"llvm-symbolizer  fresh process: {l_all:6.2f} s   loaded: {l_per:6.1f} µs/address")
    print(f"pyelftools       cold:          {p_all:6.2f} s   warm:   {p_per:6.1f} µs/address"
          f"   ({p_resolved} resolved, file:line only)")  # fmt: skip
    print(f"bpfprof          cold:          {cold:6.2f} s   warm:   {warm:6.1f} µs/address"
          f"   ({resolved} resolved)")  # fmt: skip
    print(f"bpfprof          disk cache:    {disk:6.2f} s")
    print(f"line programs alone: pyelftools {p_lines:.2f} s ({p_units} units), "
          f"bpfprof {lines.seconds:.2f} s ({lines.units} units): "
          f"{p_lines / max(lines.seconds, 1e-9):.1f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

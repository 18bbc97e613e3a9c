"""Fuzzing the ELF, DWARF and CFI readers with a seeded mutator.

A small program with DWARF and CFI is compiled once; each case mutates it
(bit flips, truncation, a section's size or offset changed, a run of 0xff
where a LEB128 is read, a compressed-section header claiming a huge size)
and runs every reader the agent runs on a mapped file: the symbol table
(load_object), DWARF lookups at the program's addresses, and the unwind
table. For every case: only the readers' own errors escape, and the cost
stays within a bound set from the file's budget (time and peak memory).
"""

from __future__ import annotations

import contextlib
import io
import random
import shutil
import struct
import subprocess
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.unwind.table import TableCache, TableError, load_unwind_info
from symbolizer.budget import MAX_FILE_SECONDS
from symbolizer.elf import ElfError
from symbolizer.objfile import load_object
from tests.elfcraft import CHDR64, EHDR, SHDR, SHF_COMPRESSED, sections

SEED = 20261128
CASES = 300
PEAK_BYTES = 48 << 20  # a 20 KB file: anything near the 128 MiB budget is a leak
SECONDS = MAX_FILE_SECONDS  # per case, all readers together

PROGRAM = r"""
#include <stdio.h>
static inline int sq(int x) { return x * x; }
int work(int n) { int s = 0; for (int i = 0; i < n; i++) s += sq(i); return s; }
int main(int argc, char **argv) { printf("%d\n", work(argc * 1000)); return 0; }
"""

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "p.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-g", "-O2", "-o", str(d / "p"), str(d / "p.c")], check=True)
    return (d / "p").read_bytes()


def _headers(blob: bytes) -> dict[str, tuple[int, list[int]]]:
    """name -> (offset of its section header, header fields)."""
    shoff = EHDR.unpack_from(blob)[6]
    return {n: (shoff + i * SHDR.size, f) for i, (n, f) in enumerate(sections(blob))}


def _set_field(blob: bytearray, at: int, index: int, value: int) -> None:
    fields = list(SHDR.unpack_from(blob, at))
    fields[index] = value
    SHDR.pack_into(blob, at, *fields)


def mutate(blob: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation, named for the failure message."""
    out = bytearray(blob)
    heads = _headers(blob)
    name = rng.choice(sorted(heads))
    at, fields = heads[name]
    kind = rng.choice(["flip", "truncate", "size", "offset", "leb", "claim", "flips"])
    if kind in ("flip", "flips"):
        for _ in range(1 if kind == "flip" else 64):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del out[rng.randrange(len(out)) :]
    elif kind == "size":
        _set_field(out, at, 5, rng.choice([0, 1, 7, fields[5] * 2, 1 << 31, (1 << 64) - 1]))
    elif kind == "offset":
        _set_field(out, at, 4, rng.choice([0, len(blob) - 1, len(blob) + 4096, 1 << 40]))
    elif kind == "leb":
        off, size = fields[4], fields[5]
        if size > 16:
            start = off + rng.randrange(size - 8)
            end = min(off + size, start + rng.randrange(8, 4096))
            out[start:end] = b"\xff" * (end - start)
    else:  # a compressed header claiming a huge size in front of the section
        off, size = fields[4], fields[5]
        if size >= CHDR64.size:
            claimed = rng.choice([1 << 30, 6 << 30, (1 << 64) - 1])
            CHDR64.pack_into(out, off, rng.choice([1, 2, 7]), 0, claimed, 1)
            _set_field(out, at, 2, fields[2] | SHF_COMPRESSED)
    return f"{kind} {name}", bytes(out)


def run_readers(data: bytes, path: Path) -> None:
    """Every reader the agent runs on a mapped file; only their errors pass."""
    path.write_bytes(data)
    try:
        with open(path, "rb") as f:
            table = load_object(f, str(path), warn=lambda _: None)
        if table.dwarf is not None:
            for seg in table.segments:
                for vaddr in range(seg.vaddr, seg.vaddr + min(seg.filesz, 0x2000), 0x40):
                    table.dwarf.frames(vaddr)
        for seg in table.segments:
            table.lookup(seg.vaddr)
    except ElfError:
        pass
    with contextlib.suppress(ElfError, TableError):
        load_unwind_info(io.BytesIO(data), "", TableCache(None))


def measure(step: Callable[[], None]) -> tuple[float, int]:
    tracemalloc.start()
    started = time.monotonic()
    try:
        step()
    finally:
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return elapsed, peak


def test_unmutated_program_is_read(program: bytes, tmp_path: Path) -> None:
    """The baseline works, so the fuzz cases test failures, not a broken setup."""
    path = tmp_path / "p"
    path.write_bytes(program)
    with open(path, "rb") as f:
        table = load_object(f, str(path))
    assert len(table) > 0 and table.dwarf is not None
    assert load_unwind_info(io.BytesIO(program), "", TableCache(None)).table.count > 0


def test_mutated_files_fail_only_with_reader_errors_within_budget(
    program: bytes, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    worst_time, worst_peak = (0.0, ""), (0, "")
    for case in range(CASES):
        what, data = mutate(program, rng)
        label = f"case {case} ({what})"
        path = tmp_path / f"m{case % 4}"
        elapsed, peak = measure(lambda: run_readers(data, path))  # noqa: B023 (run at once)
        worst_time = max(worst_time, (elapsed, label))
        worst_peak = max(worst_peak, (peak, label))
        assert elapsed < SECONDS, f"{label}: {elapsed:.2f} s"
        assert peak < PEAK_BYTES, f"{label}: peak {peak >> 20} MiB"
    print(f"worst time {worst_time}, worst peak {worst_peak}")


def test_claimed_sizes_past_the_budget_cost_nothing(program: bytes, tmp_path: Path) -> None:
    """Every section claiming 6 GiB compressed: refused before decompression."""
    out = bytearray(program)
    for _name, (at, fields) in _headers(program).items():
        if fields[5] >= CHDR64.size and fields[1] not in (8,):  # not NOBITS
            CHDR64.pack_into(out, fields[4], 1, 0, 6 << 30, 1)
            _set_field(out, at, 2, fields[2] | SHF_COMPRESSED)
    elapsed, peak = measure(lambda: run_readers(bytes(out), tmp_path / "claims"))
    assert peak < 8 << 20 and elapsed < 1.0


def test_leb128_runs_are_linear(program: bytes, tmp_path: Path) -> None:
    """1.5 MB of 0xff in .eh_frame and .debug_info: an error at once, not a stall."""
    heads = _headers(program)
    run = b"\xff" * 1_500_000
    out = bytearray(program)
    for name in (".eh_frame", ".debug_info"):
        at, _ = heads[name]
        _set_field(out, at, 4, len(out) + 8)  # point the section at the run
        _set_field(out, at, 5, len(run) + 16)
        out += bytes(8) + struct.pack("<I", len(run) + 12) + bytes(4) + b"\x01zR\0" + run
        out += bytes(-len(out) % 8)
    elapsed, _ = measure(lambda: run_readers(bytes(out), tmp_path / "leb"))
    assert elapsed < 1.0

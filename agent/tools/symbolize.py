"""`bpfprof symbolize`: addresses to function, file:line and inline chain.

An addr2line for what the agent sees: the same Symbolizer, debug-file
search, JIT perf maps and caches that profiles are symbolized with, so a
user can check one frame by hand. The plain output is llvm-symbolizer's
--pretty-print layout, one address per paragraph:

    0x1184: sq at /src/inl.c:2:40
     (inlined by) add_sq at /src/inl.c:3:49
     (inlined by) work at /src/inl.c:6:38

`--json` prints one JSON array with an object per address.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import InputError, TargetError, UsageError
from symbolizer import ResolvedFrame, Symbolizer
from symbolizer.debuginfo import DebugSearch
from symbolizer.elf import ElfError

KERNEL_START = 1 << 63


@dataclass(frozen=True)
class SymbolizeRequest:
    elf: str | None
    pid: int | None
    addresses: tuple[str, ...]
    as_json: bool = False
    debug_dirs: tuple[str, ...] = ()
    cache_dir: str | None = None


def parse_address(text: str) -> int:
    """Hex with 0x, or decimal; anything else is a usage error."""
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise UsageError(f"bad address {text!r}: expected hex (0x...) or decimal") from None
    if not 0 <= value < 1 << 64:
        raise UsageError(f"bad address {text!r}: not a 64-bit address")
    return value


def symbolize(req: SymbolizeRequest) -> str:
    """The text to print; raises a BpfprofError for bad input."""
    if (req.elf is None) == (req.pid is None):
        raise UsageError("give exactly one of --elf PATH or --pid PID")
    if not req.addresses:
        raise UsageError("give at least one address")
    addresses = [parse_address(a) for a in req.addresses]
    search = DebugSearch(debug_dirs=req.debug_dirs) if req.debug_dirs else None
    sym = Symbolizer(debug_search=search, cache_dir=req.cache_dir)
    frames = _resolve_elf(sym, req.elf, addresses) if req.elf else _resolve_pid(sym, req, addresses)
    sym.save_cache()
    if req.as_json:
        return json.dumps([_as_json(f, req.elf or "") for f in frames], indent=1) + "\n"
    return "".join(format_frame(f) for f in frames)


def _resolve_elf(sym: Symbolizer, path: str, addresses: list[int]) -> list[ResolvedFrame]:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    try:
        sym.load_file(path)
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not an ELF file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except ElfError as e:
        raise InputError(f"{path}: not a usable ELF file ({e})") from None
    return [sym.resolve_elf(path, a) for a in addresses]


def _resolve_pid(
    sym: Symbolizer, req: SymbolizeRequest, addresses: list[int]
) -> list[ResolvedFrame]:
    pid = req.pid
    assert pid is not None
    if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
        raise TargetError(f"no process with pid {pid}")
    sym.observe(pid)
    if sym.stats.vanished_pids:
        raise TargetError(f"cannot read the memory maps of pid {pid} (not root?)")
    return [
        sym.resolve_kernel(a) if a >= KERNEL_START else sym.resolve_user(pid, a) for a in addresses
    ]


def _where(line: Any) -> str:
    if not line.file:
        return "??:0:0"
    return f"{line.file}:{line.line}:{line.column}"


def format_frame(frame: ResolvedFrame) -> str:
    """llvm-symbolizer --pretty-print style, a blank line after each address."""
    head = f"0x{frame.address:x}: "
    if not frame.lines:
        where = _module(frame)
        return f"{head}?? at ??:0:0{where}\n\n"
    out = []
    for i, line in enumerate(frame.lines):
        prefix = head if i == 0 else " (inlined by) "
        out.append(f"{prefix}{line.function} at {_where(line)}\n")
    return "".join(out) + "\n"


def _module(frame: ResolvedFrame) -> str:
    if frame.mapping is not None:
        m = frame.mapping
        return f" ({os.path.basename(m.path) or '[anon]'}+0x{m.file_offset(frame.address):x})"
    return ""


def _as_json(frame: ResolvedFrame, elf: str) -> dict[str, Sequence[Any] | Any]:
    m = frame.mapping
    return {
        "address": f"0x{frame.address:x}",
        "module": m.path if m else (frame.module or elf),
        "build_id": frame.build_id,
        "elf_vaddr": None if frame.elf_vaddr is None else f"0x{frame.elf_vaddr:x}",
        "kind": frame.kind,
        "function": frame.function,
        "frames": [
            {
                "function": ln.function,
                "system_name": ln.system_name,
                "file": ln.file,
                "line": ln.line,
                "column": ln.column,
                "start_line": ln.start_line,
                "inlined": i < len(frame.lines) - 1,
            }
            for i, ln in enumerate(frame.lines)
        ],
    }

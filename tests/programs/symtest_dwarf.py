"""Builds the DWARF test programs and asks llvm-symbolizer about them.

Each build is one compiler configuration (optimisation, DWARF version,
PIE or not, compressed sections, C++ or Rust); `probe_addresses` picks
addresses spread over every function; `llvm_frames` returns
llvm-symbolizer's inline chain for each, as (function, file, line,
column) tuples, innermost first, with linkage (mangled) names so that
demangler differences do not hide DWARF differences.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.programs import symtest

HERE = Path(__file__).parent
Frame = tuple[str, str, int, int]


def run(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout


def build_c(out: Path, name: str, *flags: str) -> Path:
    exe = out / name
    src = HERE / "symtest_inline.c"
    run("gcc", *flags, "-Wl,--build-id=sha1", f"-I{HERE}", src, "-o", exe)
    return exe


def build_cpp(out: Path, *flags: str) -> Path:
    exe = out / "symtest_cpp"
    run("g++", "-O2", "-g", *flags, "-Wl,--build-id=sha1", HERE / "symtest_cpp.cpp", "-o", exe)
    return exe


def have_rustc() -> bool:
    return shutil.which("rustc") is not None


def build_rust(out: Path) -> Path:
    exe = out / "symtest_rust"
    run("rustc", "-O", "-g", "-C", "link-arg=-Wl,--build-id=sha1", HERE / "symtest_rust.rs",
        "-o", exe)  # fmt: skip
    return exe


def split_debug(exe: Path, out: Path, root: Path, by: str) -> Path:
    """Strip `exe` into out/<name>.stripped; its debug file goes under the
    build-ID tree of `root` (by="build-id") or next to it with a
    .gnu_debuglink (by="debuglink")."""
    stripped = out / f"{exe.name}.{by}.stripped"
    debug = out / f"{exe.name}.debug"
    run("objcopy", "--only-keep-debug", exe, debug)
    run("objcopy", "--strip-all", exe, stripped)
    if by == "build-id":
        build_id = symtest.readelf_build_id(exe)
        target = root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(debug, target)
    else:
        run("objcopy", f"--add-gnu-debuglink={debug}", stripped)
    return stripped


def probe_addresses(path: Path, per_function: int = 24, limit: int = 3000) -> list[int]:
    """Up to `per_function` addresses spread over each sized function, at
    most `limit` in all (evenly thinned: Rust links in much of std)."""
    probes: set[int] = set()
    for start, size, _ in symtest.function_symbols(path):
        if size <= 0:
            continue
        step = max(1, size // per_function)
        probes.update(range(start, start + size, step))
    ordered = sorted(probes)
    return ordered[:: -(-len(ordered) // limit)]


def llvm_frames(path: Path, addresses: list[int], *extra: str) -> list[list[Frame]]:
    """llvm-symbolizer's frames per address (LLVM output style: function
    and file:line:column lines, a blank line after each address)."""
    cmd = ["llvm-symbolizer", "--no-demangle", "--inlines", f"--obj={path}", *extra]
    out = run(*cmd, *map(hex, addresses))
    blocks = out.split("\n\n")
    result = []
    for block in blocks[: len(addresses)]:
        lines = block.strip("\n").splitlines()
        frames = []
        for fn, loc in zip(lines[::2], lines[1::2], strict=True):
            file, line, col = loc.rsplit(":", 2)
            frames.append((fn, "" if file == "??" else file, int(line), int(col)))
        result.append(frames)
    assert len(result) == len(addresses)
    return result

"""Builds the symbolizer test programs with gcc and runs them.

`build(tmp)` compiles symtest_lib.c into a shared library and
symtest_main.c into a PIE and a non-PIE executable linked against it;
`Running` starts one, collects the "name address" lines it prints, and
stops it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
CFLAGS = ["-O1", "-g0", "-Wl,--build-id=sha1"]


@dataclass(frozen=True)
class Programs:
    lib: Path
    pie: Path
    nopie: Path


def have_gcc() -> bool:
    return shutil.which("gcc") is not None


def gcc(*args: str | Path) -> None:
    subprocess.run(["gcc", *map(str, args)], check=True, capture_output=True)


def build(out: Path) -> Programs:
    lib = out / "libsymtest.so"
    gcc(*CFLAGS, "-fPIC", "-shared", HERE / "symtest_lib.c", "-o", lib)
    pie, nopie = out / "symtest_pie", out / "symtest_nopie"
    link = ["-L", out, "-lsymtest", f"-Wl,-rpath,{out}"]
    gcc(*CFLAGS, "-fPIE", "-pie", HERE / "symtest_main.c", *link, "-o", pie)
    gcc(*CFLAGS, "-fno-pie", "-no-pie", HERE / "symtest_main.c", *link, "-o", nopie)
    return Programs(lib, pie, nopie)


class Running:
    """A started test program; `addresses` maps function name → address."""

    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.pid = self.proc.pid
        self.addresses: dict[str, int] = {}
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "ready":
                break
            name, addr = line.split()
            self.addresses[name] = int(addr, 16)

    def stop(self) -> None:
        """Kill the process and reap it: /proc/PID is gone afterwards."""
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdin:
            self.proc.stdin.close()
        if self.proc.stdout:
            self.proc.stdout.close()


# -- independent oracles ------------------------------------------------------


def function_symbols(path: Path | str) -> list[tuple[int, int, str]]:
    """(start, size, name) of defined function symbols, read by pyelftools
    (independently of the struct-based reader under test)."""
    from elftools.elf.elffile import ELFFile

    found = []
    with open(path, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if sec["sh_type"] not in ("SHT_SYMTAB", "SHT_DYNSYM"):
                continue
            for sym in sec.iter_symbols():
                kind = sym["st_info"]["type"]
                if kind in ("STT_FUNC", "STT_LOOS") and sym["st_shndx"] != "SHN_UNDEF":
                    found.append((sym["st_value"], sym["st_size"], sym.name))
    return found


def probe_addresses(functions: list[tuple[int, int, str]]) -> list[int]:
    """Starts, second bytes, middles, last bytes and one-past-ends."""
    probes: set[int] = set()
    for start, size, _ in functions:
        probes.update((start, start + 1))
        probes.update((start + size // 2, start + size - 1, start + size) if size else (start + 3,))
    return sorted(probes)


def _first_lines(cmd: list[str], addresses: list[int]) -> list[str]:
    """Function names from an addr2line-style tool: two lines per address."""
    out = subprocess.run(
        [*cmd, *map(hex, addresses)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert len(out) == 2 * len(addresses), out[:10]
    return out[::2]


def llvm_symbolizer_names(path: Path | str, addresses: list[int], empty_dir: Path) -> list[str]:
    """llvm-symbolizer on ELF vaddrs, symbol tables only: pointing its debug
    directory at an empty one keeps it off installed DWARF (libc6-dbg)."""
    cmd = ["llvm-symbolizer", f"--debug-file-directory={empty_dir}", "--no-inlines"]
    cmd += ["--output-style=GNU", "--functions=linkage", f"--obj={path}"]
    return _first_lines(cmd, addresses)


def addr2line_names(path: Path | str, addresses: list[int]) -> list[str]:
    return _first_lines(["addr2line", "-f", "-e", str(path)], addresses)


def readelf_build_id(path: Path | str) -> str:
    out = subprocess.run(["readelf", "-n", str(path)], check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if "Build ID:" in line:
            return line.split("Build ID:")[1].strip()
    return ""

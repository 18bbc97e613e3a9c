"""The Debian CPython roots (tests/pyroots.py): real interpreters that start,
run threads and carry the symbols a Python-frame reader looks for.

Ground truth comes from outside the roots: the package versions the roots
were unpacked from, binutils' `nm -D` for the symbols, results the host's
own Python computes for the threaded script.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from symbolizer.elffile import ElfFile
from tests.conftest import is_root
from tests.pyroots import (
    PyRootError,
    RootFactory,
    host_mirror,
    install_script,
    mirrors_in,
    packages,
    python_in,
    root_for,
)

VERSIONS = ["3.13", "3.14"]

THREADS = """
import json, os, sys, threading

def work(n, out):
    out[n] = (sum(i * i for i in range(n)), threading.get_native_id())

out = {}
threads = [threading.Thread(target=work, args=(n, out)) for n in (10_000, 20_000, 30_000, 40_000)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"pid": os.getpid(), "out": out}))
"""


def run_in(root: Path, version: str, *args: str) -> str:
    cmd = [*python_in(root, version), *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def nm_dynamic(binary: Path) -> dict[str, tuple[str, int]]:
    """Defined dynamic symbols by name: (nm's type letter, address)."""
    cmd = ["nm", "-D", "--defined-only", str(binary)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = (line.split() for line in out.stdout.splitlines())
    return {r[2]: (r[1], int(r[0], 16)) for r in rows if len(r) == 3}


def read_at(elf: ElfFile, vaddr: int, size: int) -> bytes:
    """File bytes at a link-time address, through the PT_LOAD that maps it."""
    seg = next(s for s in elf.segments() if s.vaddr <= vaddr < s.vaddr + s.filesz)
    elf.stream.seek(seg.offset + vaddr - seg.vaddr)
    return elf.stream.read(size)


@pytest.mark.parametrize("version", VERSIONS)
def test_interpreter_is_the_packaged_version(python_root: RootFactory, version: str) -> None:
    root = python_root(version)
    said = run_in(root, version, "-c", "import platform; print(platform.python_version())")
    assert said.strip().startswith(f"{version}.")
    # the interpreter is the one of the package the manifest names, at that version
    assert packages(root)[f"python{version}-minimal"].startswith(said.strip() + "-")


@pytest.mark.parametrize("version", VERSIONS)
def test_threaded_script_runs(python_root: RootFactory, version: str) -> None:
    root = python_root(version)
    path = install_script(root, THREADS)
    try:
        said = json.loads(run_in(root, version, path))
    finally:
        (root / path.lstrip("/")).unlink()
    results = {int(n): value for n, (value, _) in said["out"].items()}
    assert results == {n: sum(i * i for i in range(n)) for n in (10_000, 20_000, 30_000, 40_000)}
    tids = {tid for _, tid in said["out"].values()}
    assert len(tids) == 4 and said["pid"] not in tids  # four real OS threads


@pytest.mark.parametrize("version", VERSIONS)
def test_binary_has_the_runtime_symbols(python_root: RootFactory, version: str) -> None:
    binary = python_root(version) / "usr" / "bin" / f"python{version}"
    symbols = nm_dynamic(binary)
    assert symbols["_PyRuntime"][0] in "DB" and symbols["Py_Version"][0] == "R"
    with open(binary, "rb") as f:
        elf = ElfFile(f)
        runtime = elf.section(".PyRuntime")
        assert runtime is not None and runtime.header.addr == symbols["_PyRuntime"][1]
        (hexversion,) = struct.unpack("<I", read_at(elf, symbols["Py_Version"][1], 4))
        needed = elf.dynamic().needed
    assert f"{hexversion >> 24}.{(hexversion >> 16) & 0xFF}" == version
    # the root is self-contained: every library the binary names is inside it
    libdir = python_root(version) / "usr" / "lib" / "x86_64-linux-gnu"
    assert needed and all((libdir / name).is_file() for name in needed)


@pytest.mark.parametrize("version", VERSIONS)
def test_second_call_uses_the_cache(python_root: RootFactory, version: str) -> None:
    first = python_root(version)
    before = (first / "usr" / "bin" / f"python{version}").stat()
    started = time.monotonic()
    again = root_for(version)
    assert time.monotonic() - started < 0.1
    after = (again / "usr" / "bin" / f"python{version}").stat()
    assert again == first and after.st_ino == before.st_ino and after.st_ctime == before.st_ctime
    assert not list(first.parent.glob(".build-*"))


@pytest.mark.skipif(not is_root(), reason="apt-get as root, like the real build")
def test_unreachable_mirror_is_one_clear_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(PyRootError, match=r"apt-get update of .*127\.0\.0\.1:1.*connect") as e:
        root_for("3.13", cache=cache, mirror="http://127.0.0.1:1/debian")
    assert "\n" not in str(e.value)
    assert [p.name for p in cache.iterdir()] == [".lock"]  # no half root, no build dir


def test_unknown_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PyRootError, match=r"no Debian suite known for Python 3\.9"):
        root_for("3.9", cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_cache_others_can_write_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    with pytest.raises(PyRootError, match="not group/other-writable"):
        root_for("3.13", cache=cache, mirror="http://127.0.0.1:1/debian")
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
            "Components: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n"
            "Suites: bookworm-security\nComponents: main\n",
            ["http://deb.debian.org/debian"],
            id="deb822-security-left-out",
        ),
        pytest.param(
            "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
            "Types: deb deb-src\nURIs: http://a.example/debian http://b.example/debian\n"
            "Suites: bookworm\n",
            ["http://a.example/debian", "http://b.example/debian"],
            id="deb822-sources-only-left-out",
        ),
        pytest.param(
            "# deb http://old.example/debian bookworm main\n"
            "deb http://security.debian.org/debian-security bookworm-security main\n"
            "deb [signed-by=/n.gpg] https://deb.nodesource.com/node_20.x nodistro main\n"
            "deb-src http://src.example/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main\n",
            ["http://m.example/debian/"],
            id="one-line",
        ),
        pytest.param("", [], id="empty"),
    ],
)
def test_mirrors_in(text: str, expected: list[str]) -> None:
    assert mirrors_in(text) == expected


def test_host_mirror_reads_the_sources_files(tmp_path: Path) -> None:
    with pytest.raises(PyRootError, match="no Debian archive mirror"):
        host_mirror(tmp_path)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("")
    (tmp_path / "sources.list.d" / "a-nodesource.list").write_text(
        "deb https://deb.nodesource.com/node_20.x nodistro main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    assert host_mirror(tmp_path) == "http://mirror.example/debian"

"""Code objects read from a live interpreter: names, files, lines, bad input.

A child interpreter (the host's 3.11 and pyenv's 3.8-3.13) defines nested
functions, classes and methods, with names and a file name of every str
kind (ASCII, latin-1, UCS-2, UCS-4) and a qualname longer than the name
bound, and prints for each code object its id, qualname, file name, first
line, line table and (3.11+) the line of every instruction offset by
`co_positions()`. The reader must reproduce each from outside. The child
also builds fakes in a ctypes buffer (strings with a bad kind or a huge
length, a bytes object claiming 1 TiB, a code object header copied from a
real one) for the bad-input and address-reuse cases.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from symbolizer.cpython.code import (
    MAX_LINETABLE,
    MAX_NAME,
    BadCodeObject,
    read_bytes,
    read_code,
    read_str,
)
from symbolizer.cpython.codecache import CodeCache
from symbolizer.cpython.layout import WalkLayout, inspect_file
from symbolizer.cpython.memory import MAX_READ, MemoryReadError, ProcessMemory
from tests.conftest import REPO, is_root
from tests.pyroots import RootFactory
from tests.unit.test_cpython_walk import HOST, interpreter_run

FILENAME = "/tmp/名前/😀-tëst.py"

CHILD = r'''
import json, struct, sys

SRC = """
def café(x):
    def 函数():
        class 𐐀Klass:
            def méthode(self):
                y = 1
                return y
        return 𐐀Klass
    return 函数


class Outer:
    class Inner:
        def method(self, a):
            if a:
                return [
                    a,
                    2,
                ]
            return None
""" + "class " + "L" * 1100 + ":\n    def " + "m" * 1100 + "(self):\n        pass\n"
ns = {}
exec(compile(SRC, sys.argv[1], "exec"), ns)
klass = ns["café"](1)()
long_class = next(v for k, v in ns.items() if k.startswith("LLL"))
inner = next(c for c in ns["café"].__code__.co_consts if hasattr(c, "co_code"))
long_method = getattr(long_class, "m" * 1100)
codes = [ns["café"].__code__, inner, klass.méthode.__code__,
         ns["Outer"].Inner.method.__code__, long_method.__code__, sys._getframe().f_code]
out = []
for co in codes:
    item = {"id": id(co), "name": getattr(co, "co_qualname", co.co_name),
            "file": co.co_filename, "first": co.co_firstlineno}
    if sys.version_info >= (3, 11):
        item["table"] = co.co_linetable.hex()
        item["lines"] = [(2 * i, p[0]) for i, p in enumerate(co.co_positions())]
    else:
        item["table"] = (co.co_linetable if sys.version_info >= (3, 10) else co.co_lnotab).hex()
    out.append(item)

facts = {"codes": out, "str": id("a str, not code"), "code_type": id(type(codes[0]))}
try:
    import ctypes
except ImportError:  # Debian's -minimal packages have no ctypes: no fakes
    print(json.dumps({**facts, "base": None, "head": None}), flush=True)
    sys.stdin.readline()
    sys.exit()
buf = ctypes.create_string_buffer(8192)
base = ctypes.addressof(buf)
def put(at, fmt, *values):
    struct.pack_into(fmt, buf, at, *values)
put(0, "<QQq", 1, 0, 5)                      # a str with kind 3: state 0b0110_1100
put(32, "<I", (3 << 2) | (1 << 5) | (1 << 6))
put(256, "<QQq", 1, 0, 1 << 40)              # a compact ASCII str claiming 2**40 chars
put(256 + 32, "<I", (1 << 2) | (1 << 5) | (1 << 6))
put(512, "<QQq", 1, 0, 1 << 40)             # a bytes object claiming 1 TiB
HEAD = 4096                                 # room for a copied code object header
print(json.dumps({**facts, "base": base, "head": base + HEAD}), flush=True)
for line in sys.stdin:
    which = int(line)
    ctypes.memmove(base + HEAD, id(codes[which]), 256)
    print("copied", flush=True)
'''


@dataclass
class Child:
    proc: subprocess.Popen[str]
    version: tuple[int, int]
    layout: WalkLayout
    facts: dict[str, object]
    mem: ProcessMemory

    def copy_header(self, which: int) -> None:
        self.at("head")  # skips without ctypes
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{which}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "copied\n"

    @property
    def code_type(self) -> int:
        return int(str(self.facts["code_type"]))

    def at(self, name: str, plus: int = 0) -> int:
        if self.facts[name] is None:
            pytest.skip("no ctypes in this interpreter to build fakes with")
        return int(str(self.facts[name])) + plus


@pytest.fixture(params=[*sorted(HOST), "root-3.13", "root-3.14"])
def child(
    request: pytest.FixtureRequest, tmp_path: Path, python_root: RootFactory
) -> Iterator[Child]:
    with interpreter_run(request.param, CHILD, tmp_path, python_root) as (argv, binary, script):
        yield from start(argv, binary, script)


def start(argv: list[str], binary: Path, script: str) -> Iterator[Child]:
    got = inspect_file(binary)
    assert got is not None
    proc = subprocess.Popen(
        [*argv, script, FILENAME],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        assert proc.stdout is not None
        facts = json.loads(proc.stdout.readline())
        yield Child(proc, got[0].version, got[1], facts, ProcessMemory(proc.pid))
    finally:
        proc.kill()
        proc.wait()


def codes(child: Child) -> list[dict[str, object]]:
    result: list[dict[str, object]] = child.facts["codes"]  # type: ignore[assignment]
    return result


def test_reader_reproduces_every_code_object(child: Child) -> None:
    for item in codes(child):
        info = read_code(child.mem, child.layout, child.code_type, int(str(item["id"])))
        name = str(item["name"])
        if len(name) > MAX_NAME:
            assert info.name == name[:MAX_NAME] + "…"
        else:
            assert info.name == name
        assert (info.filename, info.firstlineno) == (item["file"], item["first"])
        assert info.linetable.hex() == item["table"]
        for offset, line in item.get("lines", []):  # type: ignore[attr-defined]
            assert info.line(child.version, offset) == line, (name, offset)
    names = [str(i["name"]) for i in codes(child)]
    if child.version >= (3, 11):
        assert names[2] == "café.<locals>.函数.<locals>.𐐀Klass.méthode"
        assert names[3] == "Outer.Inner.method"
    assert len(names[4]) > MAX_NAME


def test_bad_addresses_raise_clear_errors(child: Child) -> None:
    with pytest.raises(MemoryReadError) as unmapped:
        read_code(child.mem, child.layout, child.code_type, 0x10000)
    assert unmapped.value.errno == errno.EFAULT
    with pytest.raises(MemoryReadError) as null:
        child.mem.read(0, 8)
    assert null.value.errno == errno.EFAULT
    with pytest.raises(MemoryReadError) as big:
        child.mem.read(child.at("str"), MAX_READ + 1)
    assert big.value.errno == errno.E2BIG
    with pytest.raises(BadCodeObject, match="is not PyCode_Type"):
        read_code(child.mem, child.layout, child.code_type, child.at("str"))


def test_garbage_strings_and_bytes_are_refused_or_bounded(child: Child) -> None:
    with pytest.raises(BadCodeObject, match="state"):
        read_str(child.mem, child.layout, child.at("base"), MAX_NAME)
    text = read_str(child.mem, child.layout, child.at("base", 256), MAX_NAME)
    assert len(text) == MAX_NAME + 1 and text.endswith("…")  # cut, not 2**40 reads
    with pytest.raises(BadCodeObject, match="size 1099511627776"):
        read_bytes(child.mem, child.layout, child.at("base", 512), MAX_LINETABLE)


def test_dead_process_is_esrch() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(MemoryReadError) as gone:
        ProcessMemory(proc.pid).read(0x400000, 8)
    assert gone.value.errno == errno.ESRCH


def test_a_process_the_reader_may_not_trace_is_eperm() -> None:
    """An unprivileged reader (uid 65534) of root's process: EPERM.

    The reader runs the module (standard library only) from a copy in a
    directory anyone may read, with the system interpreter: the checkout and
    its venv may sit in a directory uid 65534 cannot enter (CI's clone)."""
    if not is_root():
        pytest.skip("needs root to run a reader as another user")
    shared = Path(tempfile.mkdtemp(prefix="bpfprof-eperm-"))
    target = subprocess.Popen(["sleep", "60"])
    try:
        shared.chmod(0o755)
        module = shared / "memory.py"
        module.write_bytes((REPO / "symbolizer" / "cpython" / "memory.py").read_bytes())
        module.chmod(0o644)
        probe = (
            "from memory import MemoryReadError, ProcessMemory\n"
            "try:\n"
            f"    ProcessMemory({target.pid}).read(0x400000, 8)\n"
            "except MemoryReadError as e:\n"
            "    print(e.errno)\n"
        )
        done = subprocess.run(
            ["/usr/bin/python3", "-c", probe],
            user=65534,
            group=65534,
            extra_groups=[],
            env={"PYTHONPATH": str(shared)},
            cwd=shared,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        target.kill()
        target.wait()
        shutil.rmtree(shared)
    assert done.stdout.strip() == str(errno.EPERM)


def test_cache_hits_and_sees_another_code_object_at_a_reused_address(child: Child) -> None:
    cache = CodeCache(max_entries=4)
    first, second = codes(child)[2], codes(child)[3]
    child.copy_header(2)
    reused = child.at("head")
    got = cache.get(child.mem, child.layout, child.code_type, reused)
    assert got.name == first["name"]
    assert cache.get(child.mem, child.layout, child.code_type, reused) is got
    assert (cache.stats.misses, cache.stats.hits) == (1, 1)
    child.copy_header(3)  # another code object now lives at that address
    again = cache.get(child.mem, child.layout, child.code_type, reused)
    assert (again.name, again.firstlineno) == (second["name"], second["first"])
    assert cache.stats.stale == 1
    with pytest.raises(BadCodeObject):
        cache.get(child.mem, child.layout, child.code_type, child.at("str"))
    assert cache.stats.errors == 1 and len(cache) == 1


def test_cache_is_bounded_and_forgets_a_process(child: Child) -> None:
    cache = CodeCache(max_entries=3)
    for item in codes(child):
        cache.get(child.mem, child.layout, child.code_type, int(str(item["id"])))
    assert len(cache) == 3 and cache.stats.evictions == len(codes(child)) - 3
    cache.forget(child.proc.pid + 1)
    assert len(cache) == 3
    cache.forget(child.proc.pid)
    assert len(cache) == 0

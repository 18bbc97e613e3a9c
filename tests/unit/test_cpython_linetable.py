"""Line tables decoded from bytes, against what each real interpreter says.

Every available CPython (pyenv's 3.8-3.13, the host's 3.11, the Debian
3.13/3.14 roots when built) compiles the same source and prints, per code
object, its line table bytes and the line of every instruction offset
by its own API: `co_positions()` (3.11+), `co_lines()` (3.10),
`dis.findlinestarts` (3.8, 3.9). The decoders must agree on every offset.
Hand-built tables check the documented formats' corners.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from symbolizer.cpython.linetable import (
    line_for,
    linetable310_line,
    lnotab_line,
    location_line,
)
from tests.pyroots import RootFactory, install_script, python_in

PYENV = Path("/root/.pyenv/versions")
INTERPRETERS = {
    (3, 8): PYENV / "3.8.18/bin/python3.8",
    (3, 9): PYENV / "3.9.18/bin/python3.9",
    (3, 10): PYENV / "3.10.13/bin/python3.10",
    (3, 11): Path("/usr/bin/python3.11"),
    (3, 12): PYENV / "3.12.1/bin/python3.12",
    (3, 13): PYENV / "3.13.0/bin/python3.13",
}

SAMPLE = (
    """
import os


def simple(a, b):
    c = a + b
    return c * 2


class Outer:
    def method(self, items):
        total = 0
        for i in items:
            if i % 3 == 0:
                total += i
            elif i % 5:
                total -= (
                    i
                    * 2
                )
        return total

    class Inner:
        @staticmethod
        def far():
            x = 1
"""
    + "\n" * 300
    + """            return x + os.getpid()


def gen(n):
    try:
        yield from range(n)
    except ValueError:
        raise
    finally:
        pass
"""
)

DUMP = r"""
import dis, json, sys, types
src = open(sys.argv[1]).read()
top = compile(src, "sample.py", "exec")
out = []
def visit(co):
    if sys.version_info >= (3, 11):
        lines = [(2 * i, p[0]) for i, p in enumerate(co.co_positions())]
        table = co.co_linetable
    elif sys.version_info >= (3, 10):
        lines = [(o, line) for s, e, line in co.co_lines() for o in range(s, e, 2)]
        table = co.co_linetable
    else:
        starts = list(dis.findlinestarts(co))
        lines = []
        for o in range(0, len(co.co_code), 2):
            lines.append((o, [line for s, line in starts if s <= o][-1]))
        table = co.co_lnotab
    out.append({"name": co.co_name, "first": co.co_firstlineno,
                "table": table.hex(), "lines": lines})
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            visit(c)
visit(top)
print(json.dumps(out))
"""


def dumped(argv: list[str], dump: str, sample: str) -> list[dict[str, object]]:
    done = subprocess.run([*argv, dump, sample], capture_output=True, text=True, check=True)
    result: list[dict[str, object]] = json.loads(done.stdout)
    return result


def host_dump(version: tuple[int, int], tmp_path: Path) -> list[dict[str, object]]:
    python = INTERPRETERS[version]
    if not python.is_file():
        pytest.skip(f"no CPython {version[0]}.{version[1]} on this host")
    sample, dump = tmp_path / "sample.py", tmp_path / "dump.py"
    sample.write_text(SAMPLE)
    dump.write_text(DUMP)
    return dumped([str(python)], str(dump), str(sample))


def root_dump(root: Path, version: str) -> list[dict[str, object]]:
    dump, sample = install_script(root, DUMP), install_script(root, SAMPLE)
    try:
        return dumped(python_in(root, version), dump, sample)
    finally:
        for path in (dump, sample):
            os.unlink(root / path.lstrip("/"))


@pytest.mark.parametrize("version", [*sorted(INTERPRETERS), "root-3.13", "root-3.14"])
def test_every_offset_has_the_interpreters_own_line(
    version: tuple[int, int] | str, tmp_path: Path, python_root: RootFactory
) -> None:
    if isinstance(version, str):
        name = version.removeprefix("root-")
        codes = root_dump(python_root(name), name)
        version = (3, int(name.split(".")[1]))
    else:
        codes = host_dump(version, tmp_path)
    assert {c["name"] for c in codes} >= {"simple", "method", "far", "gen"}
    checked = 0
    for code in codes:
        table, first = bytes.fromhex(str(code["table"])), int(str(code["first"]))
        for offset, line in code["lines"]:  # type: ignore[attr-defined]
            assert line_for(version, table, first, offset) == line, (code["name"], offset)
            checked += 1
    assert checked > 60
    far = next(c for c in codes if c["name"] == "far")
    assert max(line for _, line in far["lines"] if line) > 300  # type: ignore[attr-defined]


def test_lnotab_format_corners() -> None:
    # GIVEN offsets 0-5 on line 10, 6-11 on 12, from 12 a step back of 3 and
    # then up by 254 in two pairs with no bytecode (how a big step is split),
    # and from 16 up by 46 more
    table = bytes([6, 2, 6, 0xFD, 0, 127, 0, 127, 4, 46])
    assert [lnotab_line(table, 10, o) for o in (0, 5, 6, 11)] == [10, 10, 12, 12]
    assert lnotab_line(table, 10, 12) == 9 + 254
    assert lnotab_line(table, 10, 16) == 9 + 300
    assert lnotab_line(b"", 42, 100) == 42
    assert lnotab_line(b"\x04", 42, 100) == 42  # odd length: the half pair is ignored


def test_pep626_table_corners() -> None:
    # [0, 4) line 5, [4, 6) no line, [6, 10) line 5 + 3, then nothing
    table = bytes([4, 0, 2, 0x80, 4, 3])
    assert [linetable310_line(table, 5, o) for o in (0, 3, 4, 6, 9)] == [5, 5, None, 8, 8]
    assert linetable310_line(table, 5, 10) is None


def test_location_table_entry_kinds() -> None:
    table = bytes(
        [
            0x80 | (0 << 3) | 1, 5,  # short form: 2 units, same line
            0x80 | (12 << 3) | 0, 1, 4,  # one-line form: +2, 1 unit
            0x80 | (13 << 3) | 0, 0x0B,  # no columns: svarint 11 → -5
            0x80 | (15 << 3) | 1,  # no location: 2 units
            0x80 | (14 << 3) | 0, 0x40 | 8, 1, 0, 1, 2,  # long: svarint 72 → +36
        ]
    )  # fmt: skip
    lines = [location_line(table, 100, 2 * unit) for unit in range(7)]
    assert lines == [100, 100, 102, 97, None, None, 133]
    assert location_line(table, 100, 14) is None  # past the table
    assert location_line(bytes([0x05]), 1, 0) is None  # not an entry start
    assert location_line(bytes([0x80 | (14 << 3), 0x40]), 1, 0) == 1  # cut-off varint

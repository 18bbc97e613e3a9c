"""CPython interpreter discovery and walk layouts, checked against the headers.

Each table of symbolizer/cpython/layout.py is compared with `offsetof()`
compiled against that release's own installed headers (pyenv's 3.8-3.13
builds, Debian's python3.11-dev); the 3.13 debug offsets read from the
files must agree with the same compiler. Discovery is checked against
`readelf` on real interpreters and on files that are not CPython.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
from pathlib import Path

import pytest

from symbolizer.budget import Budget
from symbolizer.cpython.debugoffsets import parse_debug_offsets
from symbolizer.cpython.interp import UnsupportedInterpreter, find_interpreter
from symbolizer.cpython.layout import TABLES, WalkLayout, inspect_file
from symbolizer.elffile import ElfFile
from tests.conftest import compile_c

PYENV = Path("/root/.pyenv/versions")
HOST = Path("/usr/bin/python3.11")
# version → (headers, the interpreter file that holds _PyRuntime)
BUILDS = {
    (3, 8): (PYENV / "3.8.18/include/python3.8", PYENV / "3.8.18/lib/libpython3.8.so.1.0"),
    (3, 9): (PYENV / "3.9.18/include/python3.9", PYENV / "3.9.18/lib/libpython3.9.so.1.0"),
    (3, 10): (PYENV / "3.10.13/include/python3.10", PYENV / "3.10.13/lib/libpython3.10.so.1.0"),
    (3, 11): (Path("/usr/include/python3.11"), HOST),
    (3, 12): (PYENV / "3.12.1/include/python3.12", PYENV / "3.12.1/lib/libpython3.12.so.1.0"),
    (3, 13): (PYENV / "3.13.0/include/python3.13", PYENV / "3.13.0/lib/libpython3.13.so.1.0"),
}

OFFSETS_C = r"""
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#if PY_VERSION_HEX >= 0x03090000
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#else
#include "internal/pycore_pystate.h"
#endif
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#include "internal/pycore_code.h"
#else
#include "frameobject.h"
#endif
#define P(n, e) printf("%s=%zd\n", n, (Py_ssize_t)(e))
int main(void) {
    P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
    P("tstate_next", offsetof(PyThreadState, next));
    P("tstate_thread_id", offsetof(PyThreadState, thread_id));
    P("code_filename", offsetof(PyCodeObject, co_filename));
    P("code_name", offsetof(PyCodeObject, co_name));
    P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    P("object_type", offsetof(PyObject, ob_type));
    P("unicode_state", offsetof(PyASCIIObject, state));
    P("unicode_length", offsetof(PyASCIIObject, length));
    P("unicode_ascii_size", sizeof(PyASCIIObject));
    P("unicode_compact_size", sizeof(PyCompactUnicodeObject));
    P("bytes_ob_size", offsetof(PyVarObject, ob_size));
    P("bytes_ob_sval", offsetof(PyBytesObject, ob_sval));
#if PY_VERSION_HEX >= 0x030A0000
    P("code_linetable", offsetof(PyCodeObject, co_linetable));
#else
    P("code_linetable", offsetof(PyCodeObject, co_lnotab));
#endif
#if PY_VERSION_HEX >= 0x030B0000
    P("interp_tstate_head", offsetof(PyInterpreterState, threads.head));
    P("frame_previous", offsetof(_PyInterpreterFrame, previous));
    P("code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    P("frame_owner", offsetof(_PyInterpreterFrame, owner));
    P("code_qualname", offsetof(PyCodeObject, co_qualname));
#else
    P("interp_tstate_head", offsetof(PyInterpreterState, tstate_head));
    P("tstate_frame", offsetof(PyThreadState, frame));
    P("frame_previous", offsetof(PyFrameObject, f_back));
    P("frame_code", offsetof(PyFrameObject, f_code));
    P("frame_instr", offsetof(PyFrameObject, f_lasti));
#endif
#if PY_VERSION_HEX >= 0x030D0000
    P("tstate_frame", offsetof(PyThreadState, current_frame));
    P("frame_code", offsetof(_PyInterpreterFrame, f_executable));
    P("frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
#elif PY_VERSION_HEX >= 0x030B0000
    P("tstate_frame", offsetof(PyThreadState, cframe));
    P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
    P("frame_code", offsetof(_PyInterpreterFrame, f_code));
    P("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
#endif
#if PY_VERSION_HEX >= 0x030C0000
    P("owner_cstack", FRAME_OWNED_BY_CSTACK);
#elif PY_VERSION_HEX >= 0x030B0000
    P("frame_is_entry", offsetof(_PyInterpreterFrame, is_entry));
#endif
    return 0;
}
"""


def available(version: tuple[int, int]) -> tuple[Path, Path]:
    headers, binary = BUILDS[version]
    if not (headers / "Python.h").is_file() or not binary.is_file():
        pytest.skip(f"no CPython {version[0]}.{version[1]} headers and library on this host")
    return headers, binary


def compiled_offsets(headers: Path, out: Path) -> dict[str, int]:
    src = out / "offsets.c"
    src.write_text(OFFSETS_C)
    exe = compile_c(src, out / "offsets", f"-I{headers}")
    text = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+)=(-?\d+)$", text, re.MULTILINE)}


def readelf_symbol(path: Path, name: str) -> tuple[int, int]:
    text = subprocess.run(
        ["readelf", "-Ws", "--dyn-syms", str(path)], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(rf"^\s*\d+: ([0-9a-f]+)\s+(\S+) \w+\s+\w+\s+\w+\s+\d+ {name}$", text, re.M)
    assert m, name
    size = m.group(2)
    return int(m.group(1), 16), int(size, 16) if size.startswith("0x") else int(size)


def elf_of(path: Path) -> ElfFile:
    return ElfFile(io.BytesIO(path.read_bytes()), Budget())


@pytest.mark.parametrize("version", [(3, 8), (3, 9), (3, 10), (3, 11), (3, 12)])
def test_tables_match_offsetof_from_the_release_headers(
    version: tuple[int, int], tmp_path: Path
) -> None:
    headers, _ = available(version)
    expected = compiled_offsets(headers, tmp_path)
    table = TABLES[version]
    assert len(expected) >= 18  # every field the version has
    for name, value in expected.items():
        assert getattr(table, name) == value, name


def test_debug_offsets_of_313_match_offsetof_from_its_headers(tmp_path: Path) -> None:
    headers, binary = available((3, 13))
    expected = compiled_offsets(headers, tmp_path)
    got = inspect_file(binary)
    assert got is not None
    layout = got[1]
    for name, value in expected.items():
        if name != "owner_cstack":  # a constant, not in the debug offsets
            assert getattr(layout, name) == value, name
    assert layout.owner_cstack == expected["owner_cstack"] == 3


@pytest.mark.parametrize("version", sorted(BUILDS))
def test_discovery_agrees_with_readelf(version: tuple[int, int]) -> None:
    _, binary = available(version)
    got = inspect_file(binary)
    assert got is not None
    interp, layout = got
    assert interp.version == version
    assert (interp.runtime, interp.runtime_size) == readelf_symbol(binary, "_PyRuntime")
    start, size = readelf_symbol(binary, "_PyEval_EvalFrameDefault")
    assert (interp.eval_start, interp.eval_end) == (start, start + size)
    assert interp.code_type == readelf_symbol(binary, "PyCode_Type")[0]
    assert isinstance(layout, WalkLayout)


def test_host_python311_hexversion_is_the_running_interpreters() -> None:
    if not HOST.is_file():
        pytest.skip("no /usr/bin/python3.11")
    said = subprocess.run(
        [str(HOST), "-c", "import sys; print(sys.hexversion)"], capture_output=True, text=True
    ).stdout
    got = inspect_file(HOST)
    assert got is not None and got[0].hexversion == int(said)


def test_python37_is_recognised_and_refused_by_version() -> None:
    lib = PYENV / "3.7.16/lib/libpython3.7m.so.1.0"
    if not lib.is_file():
        pytest.skip("no CPython 3.7 on this host")
    with pytest.raises(UnsupportedInterpreter, match=r"3\.7"):
        inspect_file(lib)


def test_a_file_without_cpython_is_none() -> None:
    assert inspect_file("/bin/true") is None


def _patched(binary: Path, vaddr: int, new: bytes) -> ElfFile:
    """The file with `new` written at the file offset of `vaddr`."""
    data = bytearray(binary.read_bytes())
    elf = elf_of(binary)
    seg = next(s for s in elf.segments() if s.vaddr <= vaddr < s.vaddr + s.filesz)
    at = seg.offset + vaddr - seg.vaddr
    data[at : at + len(new)] = new
    return ElfFile(io.BytesIO(bytes(data)), Budget())


def test_a_free_threaded_debug_header_is_unsupported() -> None:
    _, binary = available((3, 13))
    runtime = readelf_symbol(binary, "_PyRuntime")[0]
    with pytest.raises(UnsupportedInterpreter, match=r"3\.13: free-threaded"):
        find_interpreter(_patched(binary, runtime + 16, struct.pack("<Q", 1)))


def test_a_wrong_cookie_or_future_version_is_unsupported() -> None:
    _, binary = available((3, 13))
    runtime = readelf_symbol(binary, "_PyRuntime")[0]
    with pytest.raises(UnsupportedInterpreter, match="no matching debug offsets"):
        find_interpreter(_patched(binary, runtime, b"notdebug"))
    py_version = readelf_symbol(binary, "Py_Version")[0]
    with pytest.raises(UnsupportedInterpreter, match=r"CPython 3\.15 is not supported"):
        find_interpreter(_patched(binary, py_version, struct.pack("<Q", 0x030F00A1)))


def test_debug_offsets_that_do_not_fit_their_struct_are_refused() -> None:
    _, binary = available((3, 13))
    interp = find_interpreter(elf_of(binary))
    assert interp is not None
    data = bytearray(binary.read_bytes())
    elf = elf_of(binary)
    seg = next(s for s in elf.segments() if s.vaddr <= interp.runtime < s.vaddr + s.filesz)
    raw = bytearray(data[seg.offset + interp.runtime - seg.vaddr :][:1024])
    assert parse_debug_offsets(bytes(raw), (3, 13))["thread_state.thread_id"] == 152
    struct.pack_into("<Q", raw, 24 + 8 * 2, 1 << 40)  # runtime_state.interpreters_head
    with pytest.raises(UnsupportedInterpreter, match="runtime_state do not fit"):
        parse_debug_offsets(bytes(raw), (3, 13))


def test_cpython_built_for_another_machine_is_unsupported() -> None:
    _, binary = available((3, 11))
    data = bytearray(binary.read_bytes())
    struct.pack_into("<H", data, 18, 183)  # e_machine = EM_AARCH64
    with pytest.raises(UnsupportedInterpreter, match="machine 183, not x86_64"):
        find_interpreter(ElfFile(io.BytesIO(bytes(data)), Budget()))


@pytest.mark.parametrize("version", sorted(BUILDS))
def test_eval_ranges_hold_the_symbol_and_its_cold_part(version: tuple[int, int]) -> None:
    _, binary = available(version)
    got = inspect_file(binary)
    assert got is not None
    interp = got[0]
    assert interp.eval_ranges[0] == (interp.eval_start, interp.eval_end)
    text = subprocess.run(["readelf", "-Ws", str(binary)], capture_output=True, text=True).stdout
    if " _PyEval_EvalFrameDefault.cold" in text:
        start, size = readelf_symbol(binary, r"_PyEval_EvalFrameDefault\.cold")
        assert interp.eval_ranges[1:] == ((start, start + size),)
    else:
        assert len(interp.eval_ranges) == 1


def test_a_32_bit_file_is_not_read_as_cpython() -> None:
    _, binary = available((3, 11))
    data = bytearray(binary.read_bytes()[:64])
    data[4] = 1  # ELFCLASS32: its headers and symbols are another layout
    struct.pack_into("<HHIIIIIHHHHHH", data, 16, 3, 3, 1, 0, 0, 0, 0, 52, 32, 0, 40, 0, 0)
    assert find_interpreter(ElfFile(io.BytesIO(bytes(data)), Budget())) is None

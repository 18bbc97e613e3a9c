"""Finding a command's libraries before it runs, checked against ldd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.unwind.needed import dynamic_entries, find_library, ld_so_conf_dirs, needed_libraries
from tests.conftest import compile_c

LIB = "int lib_fn(int x) { return x * 3; }\n"
MAIN = "int lib_fn(int);\nint main(int c, char **v) { (void)v; return lib_fn(c); }\n"


def ldd(path: str) -> set[str]:
    """The files ldd says the program maps, by real path (the vDSO has none;
    the loader is listed by its path alone)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    libs = set()
    for line in out.splitlines():
        target = line.split("=>", 1)[-1].split("(")[0].strip()
        if target.startswith("/"):
            libs.add(os.path.realpath(target))
    return libs


@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd as the oracle")
@pytest.mark.parametrize("program", ["/usr/bin/python3", "/bin/ls", "/usr/bin/ssh"])
def test_distro_binaries_match_ldd(program: str) -> None:
    if not os.path.exists(program):
        pytest.skip(f"{program} is not installed")
    ours = {os.path.realpath(p) for p in needed_libraries(program)}
    assert ours == ldd(program)


def test_runpath_with_origin(tmp_path: Path) -> None:
    libdir = tmp_path / "lib"
    libdir.mkdir()
    (tmp_path / "lib.c").write_text(LIB)
    (tmp_path / "main.c").write_text(MAIN)
    compile_c(tmp_path / "lib.c", libdir / "libthree.so", "-shared", "-fPIC")
    exe = tmp_path / "main"
    subprocess.run(
        ["gcc", "-o", str(exe), str(tmp_path / "main.c"), f"-L{libdir}", "-lthree",
         "-Wl,--enable-new-dtags,-rpath,$ORIGIN/lib"],
        check=True, capture_output=True,
    )  # fmt: skip
    names, dirs = dynamic_entries(str(exe))
    assert "libthree.so" in names and dirs == [str(libdir)]
    found = needed_libraries(str(exe))
    assert str(libdir / "libthree.so") in found
    assert any(p.endswith("/libc.so.6") for p in found)


def test_unreadable_or_static_files_need_nothing(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + b"\xff" * 100)
    assert dynamic_entries(str(junk)) == ([], [])
    assert needed_libraries(str(tmp_path / "missing")) == []


def test_ld_so_conf_follows_includes(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("/opt/a/lib  # a comment\n")
    (tmp_path / "conf.d" / "b.conf").write_text("include ../loop.conf\n/opt/b\n")
    (tmp_path / "loop.conf").write_text("include conf.d/*.conf\n")
    (tmp_path / "ld.so.conf").write_text("include conf.d/*.conf\n/usr/local/lib\n")
    dirs = ld_so_conf_dirs(str(tmp_path / "ld.so.conf"))
    # the include loop is cut at a fixed depth; repeats are harmless
    assert dirs == ["/opt/a/lib", "/opt/a/lib", "/opt/b", "/opt/b", "/usr/local/lib"]


def test_find_library_takes_the_first_directory(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "libx.so").write_text("")
    (tmp_path / "one" / "libx.so").write_text("")
    assert find_library("libx.so", [str(tmp_path / "one"), str(tmp_path / "two")]) == str(
        tmp_path / "one" / "libx.so"
    )
    assert find_library("libnone.so", [str(tmp_path)]) is None
    assert find_library(str(tmp_path / "two" / "libx.so"), []) == str(tmp_path / "two" / "libx.so")

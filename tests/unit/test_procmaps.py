"""parse_maps: table-driven cases written as the kernel prints them."""

from __future__ import annotations

import os

import pytest

from symbolizer.procmaps import MapEntry, parse_maps, parse_maps_line, read_maps

CASES = {
    "file mapping": (
        "7f1c2a400000-7f1c2a5a6000 r-xp 00028000 fe:00 339380"
        "                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        MapEntry(
            0x7F1C2A400000,
            0x7F1C2A5A6000,
            "r-xp",
            0x28000,
            "fe:00",
            339380,
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ),
    ),
    "path with spaces": (
        "00400000-00401000 r-xp 00001000 08:01 42   /opt/my app/bin/my prog",
        MapEntry(0x400000, 0x401000, "r-xp", 0x1000, "08:01", 42, "/opt/my app/bin/my prog"),
    ),
    "deleted file": (
        "7f0000000000-7f0000001000 r-xp 00000000 08:01 77  /usr/lib/libfoo.so.1 (deleted)",
        MapEntry(
            0x7F0000000000, 0x7F0000001000, "r-xp", 0, "08:01", 77, "/usr/lib/libfoo.so.1", True
        ),
    ),
    "vdso": (
        "7ffd1a3f0000-7ffd1a3f2000 r-xp 00000000 00:00 0                          [vdso]",
        MapEntry(0x7FFD1A3F0000, 0x7FFD1A3F2000, "r-xp", 0, "00:00", 0, "[vdso]"),
    ),
    "heap": (
        "55bbb72e8000-55bbb7309000 rw-p 00000000 00:00 0                          [heap]",
        MapEntry(0x55BBB72E8000, 0x55BBB7309000, "rw-p", 0, "00:00", 0, "[heap]"),
    ),
    "anonymous, no path": (
        "7f1c2a600000-7f1c2a60d000 rw-p 00000000 00:00 0 ",
        MapEntry(0x7F1C2A600000, 0x7F1C2A60D000, "rw-p", 0, "00:00", 0, ""),
    ),
    "anonymous, no trailing space": (
        "7f1c2a600000-7f1c2a60d000 rw-p 00000000 00:00 0",
        MapEntry(0x7F1C2A600000, 0x7F1C2A60D000, "rw-p", 0, "00:00", 0, ""),
    ),
    "memfd (deleted)": (
        "7f00aa000000-7f00aa001000 r-xs 00000000 00:01 1025  /memfd:jit (deleted)",
        MapEntry(0x7F00AA000000, 0x7F00AA001000, "r-xs", 0, "00:01", 1025, "/memfd:jit", True),
    ),
}


@pytest.mark.parametrize("line,expected", CASES.values(), ids=CASES.keys())
def test_parse_maps_line(line: str, expected: MapEntry) -> None:
    assert parse_maps_line(line) == expected


GARBLED = {
    "blank": "",
    "too few fields": "00400000-00401000 r-xp 00000000",
    "bad hex": "0040zz00-00401000 r-xp 00000000 08:01 42 /bin/x",
    "no dash": "00400000 r-xp 00000000 08:01 42 /bin/x",
    "end before start": "00401000-00400000 r-xp 00000000 08:01 42 /bin/x",
}


@pytest.mark.parametrize("line", GARBLED.values(), ids=GARBLED.keys())
def test_garbled_lines_are_skipped(line: str) -> None:
    assert parse_maps_line(line) is None


def test_parse_maps_keeps_order_and_skips_garbage() -> None:
    text = "\n".join([CASES["file mapping"][0], "garbage", CASES["heap"][0], ""])
    assert parse_maps(text) == [CASES["file mapping"][1], CASES["heap"][1]]


def test_entry_properties() -> None:
    libc = CASES["file mapping"][1]
    assert libc.is_exec and libc.is_file
    assert libc.file_offset(libc.start + 0x10) == 0x28010
    assert libc.contains(libc.start) and not libc.contains(libc.end)
    vdso = CASES["vdso"][1]
    assert vdso.is_exec and not vdso.is_file
    assert not CASES["anonymous, no path"][1].is_file


def test_read_maps_of_this_process_parses() -> None:
    entries = parse_maps(read_maps(os.getpid()))
    assert any(e.is_exec and e.is_file for e in entries)
    assert [e.start for e in entries] == sorted(e.start for e in entries)


def test_read_maps_under_another_root(tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(tmp_path, "proc")
    os.makedirs(os.path.join(root, "7"))
    with open(os.path.join(root, "7", "maps"), "w") as f:
        f.write(CASES["heap"][0] + "\n")
    assert parse_maps(read_maps(7, root)) == [CASES["heap"][1]]

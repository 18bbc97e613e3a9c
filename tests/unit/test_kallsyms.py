"""Kernel symbols: inline kallsyms text, and the host's real one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from symbolizer import KernelSymbol, KernelSymbols, Symbolizer

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000100 t local_fn
ffffffff81000200 T __x64_sys_read
ffffffff81000200 T sys_read
ffffffff81000280 D some_data
ffffffff81000300 W weak_fn
ffffffff81000400 T _etext
ffffffff81000500 T _sinittext
ffffffff81000600 b some_bss
ffffffffc0001000 t mod_fn\t[mymod]
ffffffffc0000000 t first_mod_fn\t[othermod]
ffffffffc0002000 t bpf_prog_6deef7357e7b4530_probe\t[bpf]
"""

K = 0xFFFFFFFF81000000
LOOKUPS = {
    "below the first symbol": (K - 1, None),
    "aliases: the plainest name wins over _stext/_text": (K, KernelSymbol("startup_64", K)),
    "inside a local symbol": (K + 0x150, KernelSymbol("local_fn", K + 0x100)),
    "last byte before the next symbol": (K + 0x1FF, KernelSymbol("local_fn", K + 0x100)),
    "aliases: sys_read over __x64_sys_read": (K + 0x200, KernelSymbol("sys_read", K + 0x200)),
    "data symbols are skipped": (K + 0x280, KernelSymbol("sys_read", K + 0x200)),
    "weak text symbol": (K + 0x3FF, KernelSymbol("weak_fn", K + 0x300)),
    "past _etext": (K + 0x400, None),
    "past _etext, still before init text": (K + 0x4FF, None),
    "init text": (K + 0x650, KernelSymbol("_sinittext", K + 0x500)),
    "module symbol": (0xFFFFFFFFC0001010, KernelSymbol("mod_fn", 0xFFFFFFFFC0001000, "mymod")),
    "unsorted input is sorted": (
        0xFFFFFFFFC0000008,
        KernelSymbol("first_mod_fn", 0xFFFFFFFFC0000000, "othermod"),
    ),
    "BPF program": (
        0xFFFFFFFFC0002040,
        KernelSymbol("bpf_prog_6deef7357e7b4530_probe", 0xFFFFFFFFC0002000, "bpf"),
    ),
}


@pytest.mark.parametrize("address,expected", LOOKUPS.values(), ids=LOOKUPS.keys())
def test_lookup(address: int, expected: KernelSymbol | None) -> None:
    assert KernelSymbols.from_text(KALLSYMS).lookup(address) == expected


def test_text_start_and_size() -> None:
    table = KernelSymbols.from_text(KALLSYMS)
    assert table.text_start == K
    assert table.text_end == K + 0x400
    # startup_64 local_fn sys_read weak_fn _sinittext mod_fn first_mod_fn bpf_prog
    assert len(table) == 8


def test_restricted_kallsyms_gives_an_empty_table() -> None:
    hidden = "0000000000000000 T _text\n0000000000000000 T startup_64\n"
    table = KernelSymbols.from_text(hidden)
    assert len(table) == 0
    assert table.lookup(K) is None


def test_resolve_kernel_frame_and_lazy_load(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    sym = Symbolizer(kallsyms_path=str(path))
    path.write_text(KALLSYMS)  # written after construction: loading is lazy
    frame = sym.resolve_kernel(0xFFFFFFFFC0001010)
    assert (frame.function, frame.symbol_offset, frame.module) == ("mod_fn", 0x10, "mymod")
    assert frame.mapping is None and frame.address == 0xFFFFFFFFC0001010
    assert sym.resolve_kernel(K - 1).function is None
    assert (sym.stats.resolved, sym.stats.misses) == (1, 1)


def test_unreadable_kallsyms_leaves_addresses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sym = Symbolizer(kallsyms_path=str(tmp_path / "missing"))
    frames = [sym.resolve_kernel(K + i) for i in range(3)]
    assert [f.function for f in frames] == [None, None, None]
    assert [f.address for f in frames] == [K, K + 1, K + 2]
    assert sym.stats.kernel_unavailable == 1
    assert len([r for r in caplog.records if r.name == "bpfprof.symbolizer"]) == 2


def _real_kallsyms() -> str:
    try:
        text = Path("/proc/kallsyms").read_text()
    except OSError:
        return ""
    return text if text[:16].strip("0") else ""


@pytest.mark.skipif(not _real_kallsyms(), reason="/proc/kallsyms unreadable or zeroed (not root?)")
def test_real_kallsyms_parses_fast_and_resolves() -> None:
    text = _real_kallsyms()
    began = time.perf_counter()
    table = KernelSymbols.from_text(text)
    elapsed = time.perf_counter() - began
    print(f"kallsyms: {len(text.splitlines())} lines, {len(table)} symbols, {elapsed * 1e3:.0f} ms")
    assert elapsed < 2.0  # ~150 ms on the CI hosts; generous for a loaded machine
    assert table.text_start != 0
    for line in text.splitlines()[:: max(1, len(text.splitlines()) // 500)]:
        addr, kind, name = line.split()[:3]
        if kind in "tT" and not name.startswith("_"):
            found = table.lookup(int(addr, 16))
            assert found is not None and found.start == int(addr, 16), line


@pytest.mark.skipif(not os.path.exists("/proc/kallsyms"), reason="no /proc/kallsyms")
def test_symbolizer_default_path_does_not_raise() -> None:
    Symbolizer().resolve_kernel(K)


def test_kernel_build_id_from_notes_file(tmp_path: Path) -> None:
    import struct

    desc = bytes(range(20))
    notes = struct.pack("<III", 4, 4, 1) + b"Xen\0" + b"\0" * 4  # another owner's note first
    notes += struct.pack("<III", 4, len(desc), 3) + b"GNU\0" + desc
    (tmp_path / "notes").write_bytes(notes)
    sym = Symbolizer(notes_path=str(tmp_path / "notes"))
    assert sym.kernel_build_id() == desc.hex()
    assert Symbolizer(notes_path=str(tmp_path / "missing")).kernel_build_id() == ""


@pytest.mark.skipif(not os.access("/sys/kernel/notes", os.R_OK), reason="no /sys/kernel/notes")
def test_running_kernel_has_a_build_id() -> None:
    assert len(Symbolizer().kernel_build_id()) >= 16


# GIVEN the layout of a real 6.x kallsyms: init text above _etext and
# rodata, ending at _einittext, then the module area holding BPF programs
REAL_LAYOUT = """\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000100 T do_syscall_64
ffffffff82259b00 T _etext
ffffffff82400000 D __start_rodata
ffffffff83576000 T _sinittext
ffffffff835ec710 T use_tsc_delay
ffffffff835ec750 T use_tpause_delay
ffffffff835ec770 T _einittext
ffffffffc00010f0 t bpf_prog_cef641c59c5f910c_on_sample\t[bpf]
ffffffffc0001400 t bpf_prog_6deef7357e7b4530_sched_switch\t[bpf]
"""
BPF = 0xFFFFFFFFC00010F0
REAL_LOOKUPS = {
    "init text": (0xFFFFFFFF835EC760, KernelSymbol("use_tpause_delay", 0xFFFFFFFF835EC750)),
    "at _einittext": (0xFFFFFFFF835EC770, None),
    "rodata past _etext": (0xFFFFFFFF82400010, None),
    "below the first BPF program": (BPF - 0x10, None),
    "inside a BPF program": (
        BPF + 0x38,
        KernelSymbol("bpf_prog_cef641c59c5f910c_on_sample", BPF, "bpf"),
    ),
}


@pytest.mark.parametrize("address,expected", REAL_LOOKUPS.values(), ids=REAL_LOOKUPS.keys())
def test_lookup_stops_at_the_end_of_each_text_range(
    address: int, expected: KernelSymbol | None
) -> None:
    assert KernelSymbols.from_text(REAL_LAYOUT).lookup(address) == expected


def test_an_unloaded_bpf_program_is_not_named_after_the_last_init_function() -> None:
    """`record` reads kallsyms after unloading its programs: their addresses
    must stay unnamed, not be given to use_tpause_delay."""
    unloaded = "".join(line + "\n" for line in REAL_LAYOUT.splitlines() if "[bpf]" not in line)
    table = KernelSymbols.from_text(unloaded)
    assert table.lookup(BPF + 0x38) is None
    assert table.lookup(0xFFFFFFFFC0001410) is None


@pytest.mark.skipif(not _real_kallsyms(), reason="/proc/kallsyms unreadable or zeroed (not root?)")
def test_real_kallsyms_never_names_a_core_symbol_outside_its_text_range() -> None:
    """On the host's kallsyms: every BPF program resolves to itself, and with
    the BPF lines removed (programs unloaded) no address in them, nor just
    past _einittext, is named after a core kernel symbol."""
    text = _real_kallsyms()
    ends = {n: int(a, 16) for a, _, n in (ln.split()[:3] for ln in text.splitlines())}
    progs = [
        (int(ln.split()[0], 16), ln.split()[2])
        for ln in text.splitlines()
        if ln.endswith("\t[bpf]") and " bpf_prog_" in ln
    ]
    table = KernelSymbols.from_text(text)
    for address, name in progs:
        found = table.lookup(address + 1)
        assert found is not None and found.module == "bpf", hex(address)
        assert found.name == name or found.start == address
    unloaded = KernelSymbols.from_text(
        "".join(ln + "\n" for ln in text.splitlines() if not ln.endswith("\t[bpf]"))
    )
    for address in [ends["_einittext"], ends["_einittext"] + 0x10] + [a + 1 for a, _ in progs]:
        found = unloaded.lookup(address)
        assert found is None or found.module, (hex(address), found)


def test_kallsyms_of_zeros_warns_once_why_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "kallsyms"
    path.write_text("0000000000000000 T _text\n0000000000000000 T startup_64\n")
    sym = Symbolizer(kallsyms_path=str(path))
    for i in range(3):
        assert sym.resolve_kernel(K + i).function is None
    warnings = [r.getMessage() for r in caplog.records if "every kernel address as 0" in r.message]
    assert len(warnings) == 1
    assert "CAP_SYSLOG" in warnings[0] and "kernel frames will be unnamed" in warnings[0]
    assert sym.stats.kallsyms_hidden == 1


@pytest.mark.skipif(
    not _real_kallsyms() or shutil.which("setpriv") is None,
    reason="needs a readable /proc/kallsyms and setpriv",
)
def test_real_kallsyms_without_cap_syslog_warns(tmp_path: Path) -> None:
    """A process without CAP_SYSLOG reads the host's kallsyms as zeros
    (unless kptr_restrict=0 and perf_event_paranoid<=1 show them anyway)."""
    code = (
        "import logging; logging.basicConfig()\n"
        "from symbolizer import Symbolizer\n"
        "s = Symbolizer(); s.resolve_kernel(0xffffffff81000000)\n"
        "print('hidden', s.stats.kallsyms_hidden)\n"
    )
    drop = ["setpriv", "--inh-caps=-syslog", "--bounding-set=-syslog"]
    run = subprocess.run(
        [*drop, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    if "hidden 0" in run.stdout:
        pytest.skip("this host shows kallsyms to processes without CAP_SYSLOG")
    assert "hidden 1" in run.stdout
    assert run.stderr.count("every kernel address as 0") == 1, run.stderr

"""Symbol sources beyond one ELF file: JIT perf maps, MiniDebugInfo, the
on-disk cache, demangling, live processes, the CLI, and hostile input."""

from __future__ import annotations

import json
import lzma
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli import main
from symbolizer import Symbolizer, demangle
from symbolizer.debuginfo import DebugSearch, parse_debuglink
from symbolizer.diskcache import SymbolCache
from symbolizer.perfmap import PerfMap
from tests.programs import symtest, symtest_dwarf

needs_gcc = pytest.mark.skipif(not symtest.have_gcc(), reason="gcc is not installed")


def _python_with_perf_support() -> str:
    """A CPython >= 3.12 that runs (a pyenv shim may exist and not run)."""
    found = [shutil.which(f"python3.{minor}") for minor in (12, 13, 14)]
    found += [str(p) for p in sorted(Path("/root/.pyenv/versions").glob("3.1[2-9]*/bin/python3"))]
    for exe in filter(None, found):
        try:
            subprocess.run([exe, "-X", "perf", "-c", "pass"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        return exe
    return ""


PY312 = _python_with_perf_support()


def bare() -> Symbolizer:
    return Symbolizer(debug_search=DebugSearch((), ()))


# -- perf maps -------------------------------------------------------------------

PERF_MAP = """\
7f0000001000 40 py::work:/app/main.py
0x7f0000002000 0x100 LazyCompile:*fib /app/fib.js:3
garbage line
7f0000001000 80 py::work_v2:/app/main.py
"""


@pytest.mark.parametrize(
    "address,name",
    [
        (0x7F0000001000, "py::work_v2:/app/main.py"),  # a later line for the same start wins
        (0x7F000000107F, "py::work_v2:/app/main.py"),
        (0x7F0000001080, None),
        (0x7F00000020FF, "LazyCompile:*fib /app/fib.js:3"),
        (0x7F0000000FFF, None),
    ],
)
def test_perf_map_lookup(address: int, name: str | None) -> None:
    found = PerfMap(PERF_MAP).lookup(address)
    assert (found.name if found else None) == name


@pytest.mark.skipif(not PY312, reason="no CPython >= 3.12 for -X perf")
def test_cpython_perf_trampolines_resolve_through_the_process_root() -> None:
    code = "import sys,time\ndef spin():\n    time.sleep(60)\nprint('go', flush=True)\nspin()\n"
    proc = subprocess.Popen([PY312, "-X", "perf", "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        sym = bare()
        sym.observe(proc.pid)
        path = f"/proc/{proc.pid}/root/tmp/perf-{proc.pid}.map"
        start = int(
            next(ln for ln in Path(path).read_text().splitlines() if "py::spin" in ln).split()[0],
            16,
        )
        frame = sym.resolve_user(proc.pid, start + 1)
        assert frame.kind == "jit" and frame.function is not None
        assert frame.function.startswith("py::spin:")
    finally:
        proc.kill()
        proc.wait()
    assert sym.resolve_user(proc.pid, start + 1).function == frame.function  # after exit


# -- demangling ------------------------------------------------------------------


@pytest.mark.parametrize(
    "mangled,expected",
    [
        ("_ZNSt6vectorIiSaIiEE9push_backERKi",
         "std::vector<int, std::allocator<int> >::push_back(int const&)"),
        ("_Z3fooi.cold", "foo(int) [clone .cold]"),
        ("_ZN4core3ptr13drop_in_place17h0123456789abcdefE", "core::ptr::drop_in_place"),
        ("_RNvCs1234_7mycrate3foo", "mycrate::foo"),
        ("main", "main"),
        ("_Zgarbage!!", "_Zgarbage!!"),
        ("_R" + "B" * 5000, "_R" + "B" * 5000),
    ],
)  # fmt: skip
def test_demangle(mangled: str, expected: str) -> None:
    assert demangle(mangled) == expected


@needs_gcc
def test_cpp_names_equal_cxxfilt(tmp_path: Path) -> None:
    exe = symtest_dwarf.build_cpp(tmp_path)
    names = sorted({n for _, _, n in symtest.function_symbols(exe) if n.startswith("_Z")})
    theirs = symtest_dwarf.run("c++filt", *names).splitlines()
    assert len(names) > 5
    assert [demangle(n) for n in names] == theirs


# -- separate debug data -----------------------------------------------------------


def test_parse_debuglink() -> None:
    data = b"prog.debug\0\0" + (0x12345678).to_bytes(4, "little")
    link = parse_debuglink(data)
    assert link is not None and (link.name, link.crc) == ("prog.debug", 0x12345678)
    assert parse_debuglink(b"\0\0\0\0") is None
    assert parse_debuglink(b"x/y.debug\0\0\0\0\0\0\0") is None  # no directories


@needs_gcc
def test_minidebuginfo_adds_local_functions(tmp_path: Path) -> None:
    """A stripped binary keeps .dynsym only; .gnu_debugdata (an xz ELF with a
    .symtab, as Fedora ships) brings back its static functions."""
    exe = symtest_dwarf.build_c(tmp_path, "mini", "-O2", "-g")
    mini, stripped = tmp_path / "mini.symtab", tmp_path / "mini.stripped"
    symtest_dwarf.run("objcopy", "--only-keep-debug", "--strip-debug", exe, mini)
    (tmp_path / "mini.xz").write_bytes(lzma.compress(mini.read_bytes()))
    symtest_dwarf.run("objcopy", "--strip-all", exe, stripped)
    symtest_dwarf.run("objcopy", f"--add-section=.gnu_debugdata={tmp_path / 'mini.xz'}", stripped)
    cmp_pair = next(s for s, _, n in symtest.function_symbols(exe) if n == "cmp_pair")
    assert bare().resolve_elf(str(stripped), cmp_pair).function == "cmp_pair"
    plain = tmp_path / "plain.stripped"
    symtest_dwarf.run("objcopy", "--strip-all", exe, plain)
    assert bare().resolve_elf(str(plain), cmp_pair).function != "cmp_pair"


# -- the on-disk cache ----------------------------------------------------------------


@needs_gcc
def test_disk_cache_answers_without_the_debug_file(tmp_path: Path) -> None:
    exe = symtest_dwarf.build_c(tmp_path, "cached", "-O2", "-g")
    probes = symtest_dwarf.probe_addresses(exe)
    cache = tmp_path / "cache"
    first = Symbolizer(debug_search=DebugSearch((), ()), cache_dir=str(cache))
    expected = [first.resolve_elf(str(exe), a).lines for a in probes]
    assert first.save_cache() == 1 and first.save_cache() == 0
    copy = tmp_path / "copy"
    shutil.copy(exe, copy)
    exe.unlink()  # the DWARF source is gone: answers come from the cache
    second = Symbolizer(debug_search=DebugSearch((), ()), cache_dir=str(cache))
    assert [second.resolve_elf(str(copy), a).lines for a in probes] == expected
    assert second.stats.disk_cache_hits == 1 and second.stats.tables_loaded == 0


def test_disk_cache_refuses_foreign_or_corrupt_entries(tmp_path: Path) -> None:
    cache = SymbolCache(str(tmp_path / "c"))
    cache.store("abcd", ([1], "x"))
    assert cache.load("abcd") == ([1], "x")
    entry = tmp_path / "c" / "ab" / "abcd.sym"
    entry.chmod(0o666)
    assert cache.load("abcd") is None  # writable by others
    entry.chmod(0o600)
    entry.write_bytes(b"\x00garbage")
    assert cache.load("abcd") is None
    assert cache.load("../../etc/passwd") is None
    with pytest.raises(ValueError):
        cache.store("not-hex", ())


# -- live processes ---------------------------------------------------------------------


@needs_gcc
def test_process_addresses_get_inline_chains(tmp_path: Path) -> None:
    exe = symtest_dwarf.build_c(tmp_path, "live", "-O2", "-g", "-fPIE", "-pie")
    proc = subprocess.Popen([str(exe), "200000000"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.05)
        sym = bare()
        sym.observe(proc.pid)
        base = next(
            int(ln.split("-")[0], 16)
            for ln in Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
            if ln.rstrip().endswith(str(exe)) and " 00000000 " in ln
        )
        probes = symtest_dwarf.probe_addresses(exe)
        oracle = symtest_dwarf.llvm_frames(exe, probes)
        for vaddr, want in zip(probes, oracle, strict=True):
            r = sym.resolve_user(proc.pid, base + vaddr)
            got = [(ln.system_name, ln.file, ln.line, ln.column) for ln in r.lines]
            if want[0][0] != "??" and want[0][2]:
                assert got == want, hex(vaddr)
    finally:
        proc.kill()
        proc.wait()


# -- the command line -------------------------------------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@needs_gcc
def test_cli_symbolize_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exe = symtest_dwarf.build_c(tmp_path, "cli", "-O2", "-g", "-gdwarf-5")
    probes = symtest_dwarf.probe_addresses(exe)
    oracle = symtest_dwarf.llvm_frames(exe, probes)
    vaddr, want = next((a, f) for a, f in zip(probes, oracle, strict=True) if len(f) == 3)
    code, out, _ = run_cli(["symbolize", "--debug-dir", str(tmp_path), "--elf", str(exe),
                            hex(vaddr), str(vaddr)], capsys)  # fmt: skip
    assert code == 0
    first = out.split("\n\n")[0].splitlines()
    assert first[0] == f"{hex(vaddr)}: {want[0][0]} at {want[0][1]}:{want[0][2]}:{want[0][3]}"
    assert first[1].startswith(" (inlined by) ") and len(first) == 3
    code, out, _ = run_cli(["symbolize", "--json", "--elf", str(exe), hex(vaddr)], capsys)
    (entry,) = json.loads(out)
    assert [(f["function"], f["file"], f["line"]) for f in entry["frames"]] == [
        (w[0], w[1], w[2]) for w in want
    ]
    assert entry["module"] == str(exe) and [f["inlined"] for f in entry["frames"]] == [
        True, True, False,
    ]  # fmt: skip


@needs_gcc
def test_cli_symbolize_pid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exe = symtest_dwarf.build_c(tmp_path, "clipid", "-O0", "-g", "-fno-pie", "-no-pie")
    run_addr = next(s for s, _, n in symtest.function_symbols(exe) if n == "run")
    proc = subprocess.Popen([str(exe), "300000000"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.05)
        code, out, _ = run_cli(["symbolize", "--pid", str(proc.pid), hex(run_addr)], capsys)
    finally:
        proc.kill()
        proc.wait()
    assert code == 0 and out.startswith(f"{hex(run_addr)}: run at ") and "symtest_inline.c:" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--elf", "/nonexistent/file", "0x10"], "/nonexistent/file: no such file"),
        (["--elf", "/", "0x10"], "is a directory"),
        (["--elf", __file__, "0x10"], "not a usable ELF file"),
        (["--elf", sys.executable, "0xzz"], "bad address '0xzz'"),
        (["--elf", sys.executable, "12abc"], "bad address"),
        (["--elf", sys.executable], "at least one address"),
        (["--pid", "99999999", "0x10"], "no process with pid 99999999"),
        (["0x10"], "exactly one of --elf PATH or --pid PID"),
    ],
)
def test_cli_symbolize_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["symbolize", *args], capsys)
    assert code != 0 and out == ""
    assert err.startswith("bpfprof: error: ") and message in err and err.count("\n") == 1


# -- hostile input --------------------------------------------------------------------------


@needs_gcc
def test_fuzzed_binaries_finish_quickly_and_never_raise(tmp_path: Path) -> None:
    """Truncations, byte flips in the DWARF, and huge counts: each variant is
    loaded and queried within a time bound; answers may be wrong, never raise."""
    exe = symtest_dwarf.build_c(tmp_path, "fuzz", "-O2", "-g", "-gdwarf-5")
    good = exe.read_bytes()
    probes = symtest_dwarf.probe_addresses(exe)[::7]
    rng = random.Random(2024)
    variants: list[bytes] = [good[: rng.randrange(64, len(good))] for _ in range(12)]
    debug_at = good.find(b"symtest_inline.c")
    for _ in range(40):
        data = bytearray(good)
        for _ in range(rng.choice((1, 8, 64))):
            data[rng.randrange(debug_at - 20000 if debug_at > 20000 else 0, len(data))] = (
                rng.randrange(256)
            )
        variants.append(bytes(data))
    for _ in range(10):  # 0xff runs: LEB128s and counts that claim billions
        data = bytearray(good)
        at = rng.randrange(len(data) // 2, len(data) - 16)
        data[at : at + 16] = b"\xff" * 16
        variants.append(bytes(data))
    for i, data in enumerate(variants):
        path = tmp_path / f"variant{i}"
        path.write_bytes(data)
        sym = bare()
        began = time.process_time()
        try:
            sym.load_file(str(path))
        except Exception as exc:  # an unusable ELF is reported as ElfError only
            assert type(exc).__name__ == "ElfError", repr(exc)
            continue
        for a in probes:
            sym.resolve_elf(str(path), a)
        assert time.process_time() - began < 10, f"variant {i} took too long"


def test_resolve_elf_memoises_and_rechecks_a_file_after_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import symbolizer.resolver as resolver

    clock = [100.0]
    monkeypatch.setattr(resolver.time, "monotonic", lambda: clock[0])
    target = tmp_path / "prog"
    shutil.copy("/bin/true", target)
    sym = resolver.Symbolizer(proc_root=str(tmp_path / "proc"))
    first = sym.resolve_elf(str(target), 0x1000)
    assert sym.resolve_elf(str(target), 0x1000) is first  # memoised
    shutil.copy("/bin/ls", tmp_path / "new")
    (tmp_path / "new").replace(target)  # a new file at the same path
    assert sym.resolve_elf(str(target), 0x1000).build_id == first.build_id  # within 1 s
    clock[0] += 1.5
    assert sym.resolve_elf(str(target), 0x1000).build_id != first.build_id

"""Differential tests against `go tool pprof`, the reference pprof reader.

Our files must load in pprof silently with the same numbers, and files
written by Go's runtime/pprof must decode and rank the same way pprof
ranks them. The Go program is built here, offline, from the stdlib only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from agent.exporters.pprof import decode, encode
from agent.model import Location, Mapping, Profile, Sample, ValueType
from agent.tools.report import format_top
from tests.fake_profiles import cpu_profile

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("go") is None, reason="needs `go` for `go tool pprof`"),
]

PROGRAM = """\
package main

import (
\t"os"
\t"runtime"
\t"runtime/pprof"
\t"syscall"
)

var sink []byte

func cpuSeconds() float64 {
\tvar ru syscall.Rusage
\tsyscall.Getrusage(syscall.RUSAGE_SELF, &ru)
\treturn float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

//go:noinline
func burn(seconds float64) (x uint64) {
\tfor start := cpuSeconds(); cpuSeconds()-start < seconds; {
\t\tfor i := 0; i < 100000; i++ {
\t\t\tx = x*6364136223846793005 + 1442695040888963407
\t\t}
\t}
\treturn x
}

//go:noinline
func allocate(n int) {
\tfor i := 0; i < n; i++ {
\t\tsink = make([]byte, 4096)
\t}
}

func main() {
\tout, _ := os.Create(os.Args[2])
\tdefer out.Close()
\tif os.Args[1] == "cpu" {
\t\tpprof.StartCPUProfile(out)
\t\tburn(0.3) // CPU seconds, not wall time: a busy host only makes it slower
\t\tpprof.StopCPUProfile()
\t} else {
\t\truntime.MemProfileRate = 1
\t\tallocate(1000)
\t\truntime.GC()
\t\tpprof.Lookup("heap").WriteTo(out, 0)
\t}
}
"""

ROW = re.compile(r"^\s*(\S+)\s+(\S+%)\s+(\S+%)\s+(\S+)\s+(\S+%)\s+(.+)$")


@pytest.fixture(scope="module")
def go_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Caches inside the test's temporary directory; no network, ever."""
    tmp = tmp_path_factory.mktemp("go")
    return os.environ | {
        "GOCACHE": str(tmp / "cache"),
        "GOPATH": str(tmp / "path"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "PPROF_TMPDIR": str(tmp),
    }


@pytest.fixture(scope="module")
def go_program(tmp_path_factory: pytest.TempPathFactory, go_env: dict[str, str]) -> Path:
    src = tmp_path_factory.mktemp("prog")
    (src / "main.go").write_text(PROGRAM)
    (src / "go.mod").write_text("module pprofwriter\n\ngo 1.19\n")
    run(["go", "build", "-o", "prog", "."], go_env, cwd=src)
    return src / "prog"


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"{cmd} warned: {done.stderr}"
    return done.stdout


def pprof(env: dict[str, str], *args: str | Path) -> str:
    """`go tool pprof` output; fails on any warning it prints."""
    return run(["go", "tool", "pprof", *map(str, args)], env)


def top_rows(text: str) -> dict[str, tuple[str, ...]]:
    """flat, flat%, cum, cum% by name, from pprof's or our -top text."""
    rows: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match and match[1] != "flat":
            flat, flat_pct, _, cum, cum_pct, name = match.groups()
            rows[name.removesuffix(" (inline)")] = (flat, flat_pct, cum, cum_pct)
    return rows


def write(tmp_path: Path, profile: Profile) -> Path:
    path = tmp_path / "profile.pb.gz"
    path.write_bytes(encode(profile))
    return path


def symbolized_cpu_profile() -> Profile:
    """The fake profile without its unsymbolized app frame: pprof would try
    (and, with no /usr/bin/app here, fail loudly) to symbolize that one."""
    profile = cpu_profile()
    return replace(profile, samples=profile.samples[:2])


def test_pprof_raw_reads_our_samples_and_mappings(go_env: dict[str, str], tmp_path: Path) -> None:
    profile = symbolized_cpu_profile()
    raw = pprof(go_env, "-raw", write(tmp_path, profile))
    samples = raw.split("Samples:")[1].split("Locations")[0]
    values = [tuple(map(int, m[1].split())) for m in re.finditer(r"^\s+([-\d ]+):", samples, re.M)]
    assert values == [s.values for s in profile.samples]
    assert "pid:[42] tid:[43]" in samples and "comm:[app-worker] process:[app]" in samples
    mappings = raw.split("Mappings")[1]
    assert "0x400000/0x500000/0x1000 /usr/bin/app b1d0 [FN][FL][LN][IN]" in mappings
    assert re.search(r"/0x0 \[kernel\.kallsyms\]\s*$", mappings, re.M)


def test_pprof_top_numbers_match_ours(go_env: dict[str, str], tmp_path: Path) -> None:
    profile = symbolized_cpu_profile()
    theirs = pprof(go_env, "-top", write(tmp_path, profile))
    ours = format_top(profile)
    assert "of 50.51ms total" in theirs and "Total: 50.51ms" in ours
    names = ["inner", "work", "main"]
    assert {n: top_rows(theirs)[n] for n in names} == {n: top_rows(ours)[n] for n in names}


def test_pprof_symbolizes_what_we_could_not(
    go_env: dict[str, str], go_program: Path, tmp_path: Path
) -> None:
    """An unsymbolized frame keeps address and mapping (has_functions false),
    so pprof names it from the binary: here main.burn in the Go program."""
    nm = run(["go", "tool", "nm", str(go_program)], go_env)
    burn = int(next(line.split()[0] for line in nm.splitlines() if line.endswith(" main.burn")), 16)
    mapping = Mapping(0x400000, burn + 0x1000, 0, str(go_program))
    profile = Profile(
        (ValueType("samples", "count"),), [Sample((Location(burn + 8, mapping),), (7,))]
    )
    assert "main.burn" not in format_top(profile)
    assert top_rows(pprof(go_env, "-top", write(tmp_path, profile)))["main.burn"][0] == "7"


def go_profile(go_program: Path, kind: str, env: dict[str, str]) -> Path:
    out = go_program.parent / f"{kind}.pb.gz"
    if not out.exists():
        run([str(go_program), kind, str(out)], env)
    return out


def test_go_cpu_profile_decodes_and_ranks_the_busy_loop_first(
    go_env: dict[str, str], go_program: Path
) -> None:
    path = go_profile(go_program, "cpu", go_env)
    profile = decode(path.read_bytes())
    ours = top_rows(format_top(profile, count=1000))
    assert next(iter(ours)) == "main.burn"
    theirs = top_rows(pprof(go_env, "-top", "-nodefraction=0", path))
    # The runtime's own functions vary from run to run, and pprof lists a
    # function apart when it is inlined somewhere: compare ours, never inlined.
    for name in ("main.burn", "main.main"):
        assert theirs[name] == ours[name]


def test_go_heap_profile_round_trips_through_our_encoder(
    go_env: dict[str, str], go_program: Path, tmp_path: Path
) -> None:
    path = go_profile(go_program, "heap", go_env)
    profile = decode(path.read_bytes())
    assert decode(encode(profile)) == profile
    again = write(tmp_path, profile)
    for index in ("alloc_space", "inuse_objects"):
        args = ("-top", "-nodefraction=0", f"-sample_index={index}")
        assert top_rows(pprof(go_env, *args, again)) == top_rows(pprof(go_env, *args, path))
    assert next(iter(top_rows(format_top(profile, "alloc_space")))) == "main.allocate"

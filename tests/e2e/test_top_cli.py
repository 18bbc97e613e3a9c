"""`bpfprof top FILE` as users run it: the installed command, in a subprocess."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.exporters.pprof import encode
from agent.model import Frame, Location, Mapping, Profile, Sample, ValueType
from tests.fake_profiles import KERNEL, cpu_profile

pytestmark = pytest.mark.e2e


def bpfprof(cmd: list[str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(encode(cpu_profile()))
    return path


def test_top_lists_the_heaviest_functions(bpfprof_cmd: list[str], profile_file: Path) -> None:
    done = bpfprof(bpfprof_cmd, "top", profile_file, "-n", "2")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[-3:] == [
        "      flat  flat%   sum%        cum   cum%  name",
        "   30.30ms 50.00% 50.00%    30.30ms 50.00%  [kernel.kallsyms]",
        "   20.20ms 33.33% 83.33%    50.51ms 83.33%  inner",
    ]


def test_top_by_another_sample_type_and_cum(bpfprof_cmd: list[str], profile_file: Path) -> None:
    done = bpfprof(
        bpfprof_cmd, "top", profile_file, "--sample-index", "samples", "--cum", "-n", "1"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "         0     0%     0%          6   100%  main"


def unsymbolized_profile() -> Profile:
    """Three addresses in each of two binaries, three in the kernel, one in
    no mapping; one sample's stack goes through three of them at once."""
    app = Mapping(0x400000, 0x500000, 0x1000, "/usr/bin/app", "b1d0")
    libz = Mapping(0x7F0000, 0x800000, 0, "/lib/libz.so.1")
    main = Location(0x401000, app, (Frame("main", "app.c", 10, 5),))
    leaves = [Location(m.start + 0x100 + 16 * i, m) for m in (app, libz, KERNEL) for i in range(3)]
    samples = [Sample((leaf, main), (i + 1,)) for i, leaf in enumerate(leaves)]
    samples.append(Sample((leaves[3], leaves[0], leaves[1], main), (5,)))
    samples.append(Sample((Location(0x1234), main), (2,)))
    return Profile(sample_types=(ValueType("samples", "count"),), samples=samples)


def rows(text: str) -> list[str]:
    """The table's rows with pprof's `[[kernel.kallsyms]]` (the mapping's
    name bracketed once more) said as we say it."""
    lines = text.replace("[[kernel.kallsyms]]", "[kernel.kallsyms]").splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("flat"))
    return [" ".join(line.split()) for line in lines[header + 1 :]]


@pytest.mark.skipif(shutil.which("go") is None, reason="needs `go` for `go tool pprof`")
def test_unnamed_code_is_one_row_per_binary_as_in_go_pprof(
    bpfprof_cmd: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "unsymbolized.pb.gz"
    path.write_bytes(encode(unsymbolized_profile()))
    ours = bpfprof(bpfprof_cmd, "top", path)
    env = os.environ | {"GOCACHE": str(tmp_path / "gocache"), "GOPROXY": "off"}
    theirs = subprocess.run(
        ["go", "tool", "pprof", "-top", "-symbolize=none", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    assert (ours.returncode, ours.stderr, theirs.stderr) == (0, "", "")
    assert rows(ours.stdout) == rows(theirs.stdout)
    assert len(rows(ours.stdout)) == 5  # [libz.so.1], [kernel.kallsyms], [app], <unknown>, main


@pytest.mark.parametrize(
    ("content", "args", "message", "status"),
    [
        (b"not a profile\n", (), "cpu.pb.gz: not a pprof profile", 65),
        (gzip.compress(b"\x00\x01garbage"), (), "cpu.pb.gz: not a pprof profile", 65),
        (None, ("--sample-index", "wall"), "bpfprof: error: no sample type 'wall'", 65),
    ],
    ids=["text-file", "gzip-of-garbage", "unknown-sample-index"],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    bpfprof_cmd: list[str],
    profile_file: Path,
    content: bytes | None,
    args: tuple[str, ...],
    message: str,
    status: int,
) -> None:
    if content is not None:
        profile_file.write_bytes(content)
    done = bpfprof(bpfprof_cmd, "top", profile_file, *args)
    assert done.returncode == status
    assert done.stdout == ""
    assert done.stderr.startswith("bpfprof: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr

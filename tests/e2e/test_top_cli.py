"""`bpfprof top FILE` as users run it: the installed command, in a subprocess."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from agent.exporters.pprof import encode
from tests.fake_profiles import cpu_profile

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
        "   30.30ms 50.00% 50.00%    30.30ms 50.00%  [kernel.kallsyms]+0x1000",
        "   20.20ms 33.33% 83.33%    50.51ms 83.33%  inner",
    ]


def test_top_by_another_sample_type_and_cum(bpfprof_cmd: list[str], profile_file: Path) -> None:
    done = bpfprof(
        bpfprof_cmd, "top", profile_file, "--sample-index", "samples", "--cum", "-n", "1"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "         0     0%     0%          6   100%  main"


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

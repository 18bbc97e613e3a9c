"""`bpfprof flamegraph` and `bpfprof diff` as users run them, in a subprocess."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from agent.exporters.pprof import encode
from agent.model import Profile
from tests.e2e.test_top_cli import bpfprof
from tests.split_profiles import split_profile
from tests.unit.test_flamegraph import frames, page_data

pytestmark = pytest.mark.e2e


def write(path: Path, profile: Profile) -> Path:
    path.write_bytes(encode(profile))
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(tmp_path / "base.pb.gz", split_profile(75, 25))


@pytest.fixture
def new(tmp_path: Path) -> Path:
    return write(tmp_path / "new.pb.gz", split_profile(50, 50))


def test_html_page_from_a_pprof_file(bpfprof_cmd: list[str], base: Path, tmp_path: Path) -> None:
    out = tmp_path / "fg.html"
    done = bpfprof(bpfprof_cmd, "flamegraph", base, "-o", out, "--title", "My run")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and f"wrote flame graph to {out}" in done.stderr
    page = out.read_text()
    assert "<title>My run</title>" in page
    data = page_data(page)
    assert data["types"] == [["samples", "count"], ["space", "bytes"]]
    assert "hot_a" in data["names"]  # type: ignore[operator]


def test_default_title_and_sample_index(bpfprof_cmd: list[str], base: Path, tmp_path: Path) -> None:
    out = tmp_path / "fg.html"
    done = bpfprof(bpfprof_cmd, "flamegraph", base, "-o", out, "--sample-index", "space")
    assert done.returncode == 0, done.stderr
    data = page_data(out.read_text())
    assert (data["title"], data["defaultType"]) == ("Flame graph of base.pb.gz", 1)


def test_svg_output(bpfprof_cmd: list[str], base: Path, tmp_path: Path) -> None:
    out = tmp_path / "fg.svg"
    done = bpfprof(bpfprof_cmd, "flamegraph", base, "-o", out)
    assert done.returncode == 0, done.stderr
    drawn = frames(out.read_text())
    assert drawn["hot_a"][0] / drawn["all"][0] == pytest.approx(0.75, abs=0.001)


def test_diff_flamegraph_paints_the_grown_function_red(
    bpfprof_cmd: list[str], base: Path, new: Path, tmp_path: Path
) -> None:
    for suffix in ("html", "svg"):
        out = tmp_path / f"diff.{suffix}"
        done = bpfprof(bpfprof_cmd, "flamegraph", "--diff", base, new, "-o", out)
        assert done.returncode == 0, done.stderr
    data = page_data((tmp_path / "diff.html").read_text())
    assert data["diff"] is True and data["title"] == "Change from base.pb.gz to new.pb.gz"
    drawn = frames((tmp_path / "diff.svg").read_text())
    assert drawn["hot_b"][1] == "rgb(255,20,20)" and drawn["hot_a"][1] == "rgb(20,20,255)"


def test_diff_text(bpfprof_cmd: list[str], base: Path, new: Path) -> None:
    done = bpfprof(bpfprof_cmd, "diff", base, new, "-n", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == [
        "  before    after    change  name",
        "  75.00%   50.00%   -25.00%  hot_a",
    ]
    done = bpfprof(bpfprof_cmd, "diff", base, new, "--sample-index", "space", "--cum")
    assert "  75.00%   50.00%   -25.00%  work_b" in done.stdout.splitlines()


def test_a_profile_without_samples_gets_a_page_that_says_so(
    bpfprof_cmd: list[str], tmp_path: Path
) -> None:
    empty = write(tmp_path / "empty.pb.gz", Profile(split_profile(1, 1).sample_types, []))
    out = tmp_path / "fg.html"
    done = bpfprof(bpfprof_cmd, "flamegraph", empty, "-o", out)
    assert done.returncode == 0, done.stderr
    assert "the profile has no samples" in done.stderr
    assert "This profile has no samples" in out.read_text()


@pytest.mark.parametrize(
    ("content", "args", "message", "status"),
    [
        (b"not a profile\n", (), "not a pprof profile", 65),
        (b"", (), "not a pprof profile: the input is empty", 65),
        (gzip.compress(b"\x00\x01garbage"), (), "not a pprof profile", 65),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", (), "not a pprof profile", 65),
        (None, ("--sample-index", "wall"), "no sample type 'wall'", 65),
        (None, ("-o", "graph.png"), "unknown flame graph format; name it .html or .svg", 2),
        (None, ("--diff",), "flamegraph takes --diff BASE NEW, got 1 files", 2),
    ],
    ids=["text", "empty-file", "gzip-of-garbage", "png", "unknown-type", "bad-suffix", "one-diff"],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    bpfprof_cmd: list[str],
    base: Path,
    tmp_path: Path,
    content: bytes | None,
    args: tuple[str, ...],
    message: str,
    status: int,
) -> None:
    if content is not None:
        base.write_bytes(content)
    done = bpfprof(bpfprof_cmd, "flamegraph", base, "-o", tmp_path / "fg.html", *args)
    assert (done.returncode, done.stdout) == (status, "")
    assert done.stderr.startswith("bpfprof: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "fg.html").exists()


def test_diff_errors_name_the_file(bpfprof_cmd: list[str], base: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pb.gz"
    done = bpfprof(bpfprof_cmd, "diff", base, missing)
    assert done.returncode == 65
    assert done.stderr == f"bpfprof: error: {missing}: no such file\n"
    done = bpfprof(bpfprof_cmd, "flamegraph", "--diff", base, missing, "-o", tmp_path / "d.html")
    assert done.returncode == 65 and done.stderr.count("\n") == 1

"""`bpfprof diff` and `flamegraph --diff` on two real recordings of the
ground truth: hotsplit as shipped (hot_a 75%, hot_b 25%) and a variant built
here with hot_a doing a third of the work (50/50). hot_b must come out as the
function that grew, by about 25 points, and hot_a as the one that shrank.
The variant is built from another file name, as another build of the same
code would be: the diff matches functions by name, not by source path."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from agent.exporters.pprof import decode
from agent.tools.flamegraph.diff import function_changes
from tests.conftest import PROGRAMS, compile_c
from tests.unit.test_flamegraph import frames

pytestmark = [pytest.mark.bpf, pytest.mark.e2e]


def bpfprof(cmd: list[str], *args: str | Path) -> str:
    done = subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def recordings(
    bpfprof_cmd: list[str], hotsplit: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("split")
    source = (PROGRAMS / "hotsplit.c").read_text()
    assert "hot_a(3 * UNIT)" in source
    (tmp / "even.c").write_text(source.replace("hot_a(3 * UNIT)", "hot_a(UNIT)"))
    even = compile_c(tmp / "even.c", tmp / "even", "-O1", "-g", "-fno-omit-frame-pointer")
    base, new = tmp / "base.pb.gz", tmp / "new.pb.gz"
    # About 2 s of CPU each: 4 units a round in hotsplit, 2 in the variant.
    bpfprof(bpfprof_cmd, "record", "-o", base, "--", hotsplit, "400")
    bpfprof(bpfprof_cmd, "record", "-o", new, "--", even, "800")
    return base, new


def test_diff_names_the_function_that_grew(
    bpfprof_cmd: list[str], recordings: tuple[Path, Path]
) -> None:
    base, new = recordings
    samples = min(sum(s.values[0] for s in decode(p.read_bytes()).samples) for p in (base, new))
    assert samples > 50, "too few samples to judge a split"
    changes = {
        c.name: c
        for c in function_changes(decode(base.read_bytes()), decode(new.read_bytes()), "samples")
    }
    # Each share has a binomial error of at most 0.5/sqrt(n); allow 4 sigma of
    # the difference of two.
    tolerance = 4 * math.sqrt(2) * 0.5 / math.sqrt(samples)
    shares = {n: (round(c.before, 3), round(c.after, 3)) for n, c in changes.items()}
    assert changes["hot_b"].delta == pytest.approx(0.25, abs=tolerance), shares
    assert changes["hot_a"].delta == pytest.approx(-0.25, abs=tolerance), shares

    text = bpfprof(bpfprof_cmd, "diff", base, new, "--sample-index", "samples", "-n", "2")
    rows = text.splitlines()[-2:]
    assert {row.split()[-1] for row in rows} == {"hot_a", "hot_b"}
    grown = next(row for row in rows if row.endswith("hot_b"))
    assert re.search(r"\+\d+\.\d\d%  hot_b$", grown)


def test_diff_flamegraph_paints_hot_b_red_and_hot_a_blue(
    bpfprof_cmd: list[str], recordings: tuple[Path, Path], tmp_path: Path
) -> None:
    base, new = recordings
    out = tmp_path / "diff.svg"
    bpfprof(bpfprof_cmd, "flamegraph", "--diff", base, new, "-o", out)
    drawn = frames(out.read_text())
    r, g, b = map(int, re.findall(r"\d+", drawn["hot_b"][1]))
    # Saturation is relative to the largest change in the graph, which a
    # stack truncated by the unwinder can hold: the hue is what must hold.
    assert r == 255 and g == b < 255, f"hot_b should be red: {drawn['hot_b'][1]}"
    r, g, b = map(int, re.findall(r"\d+", drawn["hot_a"][1]))
    assert b == 255 and r == g < 255, f"hot_a should be blue: {drawn['hot_a'][1]}"

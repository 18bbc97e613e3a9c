"""Flame graphs of pprof files written by Go's runtime/pprof, not by us."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.e2e.test_go_pprof import go_env, go_profile, go_program  # noqa: F401  (fixtures)
from tests.e2e.test_go_pprof import pytestmark as go_marks
from tests.unit.test_flamegraph import frames, page_data

pytestmark = go_marks


def run(cmd: list[str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_go_cpu_profile_as_svg_puts_the_busy_loop_widest(
    bpfprof_cmd: list[str],
    go_env: dict[str, str],  # noqa: F811
    go_program: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    profile = go_profile(go_program, "cpu", go_env)
    run(bpfprof_cmd, "flamegraph", profile, "-o", tmp_path / "go.svg")
    drawn = frames((tmp_path / "go.svg").read_text())
    leaves = {name: w for name, (w, _) in drawn.items() if name.startswith("main.")}
    assert "main.main" in leaves and "main.burn" in leaves
    # burn does all of main's work (the loop inlines nothing that is not it).
    assert leaves["main.burn"] / leaves["main.main"] > 0.9


def test_go_heap_profile_page_offers_its_four_sample_types(
    bpfprof_cmd: list[str],
    go_env: dict[str, str],  # noqa: F811
    go_program: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    profile = go_profile(go_program, "heap", go_env)
    run(bpfprof_cmd, "flamegraph", profile, "-o", tmp_path / "heap.html")
    data = page_data((tmp_path / "heap.html").read_text())
    assert [t[0] for t in data["types"]] == [  # type: ignore[attr-defined]
        "alloc_objects",
        "alloc_space",
        "inuse_objects",
        "inuse_space",
    ]
    assert "main.allocate" in data["names"]  # type: ignore[operator]
    text = run(bpfprof_cmd, "diff", profile, profile).stdout
    assert "Showing top 0 of 0 functions whose share changed" in text

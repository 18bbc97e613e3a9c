"""`bpfprof record` of programs built without frame pointers: the CFI walker
must give whole stacks through the whole path (first-sample table loading,
symbolization, folded output), and frame pointers alone must not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bpf, pytest.mark.e2e]

MIN_SAMPLES = 50


def record_folded(cmd: list[str], tmp_path: Path, *args: str) -> list[tuple[list[str], int]]:
    """Stacks (root first) and counts of one recording, as folded text."""
    out = tmp_path / "out.folded"
    subprocess.run(
        [*cmd, "record", "-F", "199", "-o", str(out), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    stacks = []
    for line in out.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        stacks.append((frames.split(";"), int(count)))
    return stacks


def share_with(stacks: list[tuple[list[str], int]], leaf: str, *callers: str) -> tuple[float, int]:
    hits = [(f, n) for f, n in stacks if leaf in f]
    total = sum(n for _, n in hits)
    good = sum(n for f, n in hits if all(c in f[: f.index(leaf)] for c in callers))
    return (good / total if total else 0.0), total


def test_record_reaches_main_without_frame_pointers(
    bpfprof_cmd: list[str], unwind_prog: Path, tmp_path: Path
) -> None:
    # the warm-up gets the process sampled, and so its tables loaded, before `hot` runs
    stacks = record_folded(bpfprof_cmd, tmp_path, "--", str(unwind_prog), "chain", "3", "0.3")
    share, total = share_with(stacks, "hot", "_start", "main", "run", "work")
    assert total >= MIN_SAMPLES and share >= 0.9, (share, total)


def test_record_through_debian_libc(
    bpfprof_cmd: list[str], unwind_prog: Path, tmp_path: Path
) -> None:
    stacks = record_folded(bpfprof_cmd, tmp_path, "--", str(unwind_prog), "qsort", "3", "0.3")
    share, total = share_with(stacks, "compare", "main", "run", "sort_all")
    assert total >= MIN_SAMPLES and share >= 0.9, (share, total)


def test_frame_pointers_only_lose_the_callers(
    bpfprof_cmd: list[str], unwind_prog: Path, tmp_path: Path
) -> None:
    args = ("--unwind", "fp", "--", str(unwind_prog), "chain", "3", "0.3")
    share, total = share_with(record_folded(bpfprof_cmd, tmp_path, *args), "hot", "main")
    assert total >= MIN_SAMPLES and share < 0.5, (share, total)


def test_a_command_is_walked_whole_from_its_first_sample(
    bpfprof_cmd: list[str], unwind_prog: Path, tmp_path: Path
) -> None:
    """No warm-up and a cold table cache: the command's executable and
    libraries get their tables before it is released, so even its first
    samples are walked whole."""
    out = tmp_path / "cold.folded"
    env = {**os.environ, "BPFPROF_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(
        [*bpfprof_cmd, "record", "-F", "199", "-o", str(out), "--", str(unwind_prog),
         "chain", "1", "0"],
        capture_output=True, text=True, check=True, timeout=300, env=env,
    )  # fmt: skip
    stacks = [
        (frames.split(";"), int(count))
        for frames, _, count in (ln.rpartition(" ") for ln in out.read_text().splitlines())
    ]
    share, total = share_with(stacks, "hot", "_start", "main", "run", "work")
    assert total >= 0.5 * MIN_SAMPLES and share >= 0.9, (share, total)
    assert any((tmp_path / "cache" / "unwind").iterdir())  # the tables were built here

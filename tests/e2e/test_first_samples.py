"""A process's first samples are walked whole: short-lived children of a
shell, each a new exec of a program built without frame pointers, reach
`main` in >= 98 % of their samples, including the first ones, taken before
user space has loaded the process's unwind tables (issue 14, item 4).

The table cache is cold (its own directory) and the program is not the
recorded command, so nothing is prewarmed for it: every child's first
samples come before its announcement has been handled."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bpf, pytest.mark.e2e]

CHILDREN = 30
SECONDS = 0.05  # each child burns `hot` for its first 50 ms only
GOAL = 0.98


def folded(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        out.append((frames.split(";"), int(count)))
    return out


def reach_main(stacks: list[tuple[list[str], int]], leaf: str) -> tuple[int, int]:
    """(samples in `leaf`, of them those whose callers include main)."""
    hits = [(f, n) for f, n in stacks if leaf in f]
    return sum(n for _, n in hits), sum(n for f, n in hits if "main" in f[: f.index(leaf)])


def record_children(bpfprof_cmd: list[str], prog: Path, tmp_path: Path) -> tuple[int, int, str]:
    out = tmp_path / "children.folded"
    # not under coverage's subprocess tracing (COVERAGE_PROCESS_*): it makes the
    # agent's Python several times slower, and this test is about timing
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_CORE_", "COVERAGE_"))}
    env["BPFPROF_CACHE_DIR"] = str(tmp_path / "cache")
    script = f"for i in $(seq {CHILDREN}); do {prog} chain {SECONDS} </dev/null; done"
    done = subprocess.run(
        [*bpfprof_cmd, "record", "-F", "997", "-o", str(out), "--", "sh", "-c", script],
        capture_output=True, text=True, check=True, timeout=300, env=env,
    )  # fmt: skip
    # the same stack in 30 processes that ASLR moved by whole pages once
    # shared its ustacks buckets: a third of the samples lost their user stack
    assert "user stacks lost" not in done.stderr, done.stderr
    return (*reach_main(folded(out), "hot"), done.stderr)


# Known gap (issue 14, item 4): in CI's runs (a fresh clone, right after the
# BPF tier) the 50 ms children exit before the agent has read their maps, and
# none of their samples is named (3 runs of 3); run alone it passes (100 %
# reach main). The fix is to read each new pid's maps before any slow work
# (agent/pipeline/core.py). Not strict: it counts as a pass where it passes.
@pytest.mark.xfail(reason="children exit before their maps are read (issue 14 item 4)")
def test_short_lived_children_reach_main_from_their_first_samples(
    bpfprof_cmd: list[str], unwind_prog: Path, tmp_path: Path
) -> None:
    total, good, said = record_children(bpfprof_cmd, unwind_prog, tmp_path)
    # 30 children x 50 ms at 997 Hz: up to 1500 samples (fewer on a busy
    # host); too few means the recording missed the children
    assert total >= 200, (total, said)
    assert good / total >= GOAL, (good, total, said)

"""`bpfprof record --capture` then `bpfprof replay`: a real recording of the
75/25 ground-truth program, replayed without the kernel, gives the same
profile (same folded stacks, same counts) as the recording wrote."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from agent.exporters import folded
from agent.record.replay import replay

pytestmark = [pytest.mark.bpf, pytest.mark.e2e]


def test_a_recording_replays_to_the_same_profile(
    bpfprof_cmd: list[str], hotsplit: Path, tmp_path: Path
) -> None:
    recorded, capture = tmp_path / "recorded.folded", tmp_path / "capture"
    subprocess.run(
        [*bpfprof_cmd, "record", "-o", str(recorded), "--capture", str(capture),
         "--capture-binaries", "--", str(hotsplit), "300"],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = recorded.read_text()
    assert "main;run;work_a;hot_a" in text and "main;run;work_b;hot_b" in text

    assert folded.encode(replay(capture), sample_index=0) == text
    out = tmp_path / "replayed.folded"  # and through the command, in its own process
    subprocess.run([*bpfprof_cmd, "replay", str(capture), "-o", str(out)], check=True, timeout=120)
    assert out.read_text() == text

    files = [json.loads(line) for line in (capture / "files.jsonl").read_text().splitlines()]
    program = next(f for f in files if f["path"] == str(hotsplit))
    assert len(program["build_id"]) == 40 and (capture / program["stored"]).is_file()
    for path in [capture, *capture.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path

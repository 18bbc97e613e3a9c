"""Container ids from /proc/PID/cgroup, as each runtime names them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.pipeline.procinfo import ProcessTable, parse_container_id

CID = "3f4e" * 16


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"0::/system.slice/docker-{CID}.scope\n", CID),
        (f"12:pids:/docker/{CID}\n11:cpu:/docker/{CID}\n", CID),
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
            f"cri-containerd-{CID}.scope\n",
            CID,
        ),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", CID),
        (f"0::/kubepods/besteffort/pod8d1c/{CID}\n", CID),
        ("0::/user.slice/user-0.slice/session-1.scope\n", ""),
        ("0::/\n", ""),
        ("", ""),
        (f"0::/system.slice/docker-{CID[:-1]}.scope\n", ""),  # 63 hex: not an id
    ],
)
def test_parse_container_id(text: str, expected: str) -> None:
    assert parse_container_id(text) == expected


def test_container_ids_are_remembered_after_the_process_is_gone(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text(f"0::/docker/{CID}\n")
    table = ProcessTable(proc_root=str(tmp_path))
    table.observe(7)
    (tmp_path / "7" / "cgroup").unlink()
    assert table.get(7).container_id == CID
    assert table.get(8).container_id == ""  # never existed: no label, no error
    table.forget(7)
    assert table.get(7).container_id == ""  # forgotten: read again, and gone

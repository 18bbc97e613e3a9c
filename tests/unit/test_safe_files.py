"""symbolizer.safeopen and agent.safewrite: the two doors through which the
root agent reads files others control and writes its own."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from agent.safewrite import private_dir, write_atomic
from symbolizer.safeopen import (
    UnsafeFile,
    open_in_root,
    open_regular,
    read_bounded,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A process root: /etc/shadow of its own, links inside and out."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "usr/lib").mkdir(parents=True)
    (r / "etc/shadow").write_text("inner\n")
    (r / "usr/lib/libx.so").write_text("lib\n")
    (r / "lib").symlink_to("usr/lib")
    (r / "abs").symlink_to("/etc/shadow")
    (r / "up").symlink_to("../../outside")
    (tmp_path / "outside").write_text("host secret\n")
    os.mkfifo(r / "fifo")
    return r


def test_symlinks_resolve_inside_the_root(root: Path) -> None:
    assert open_in_root(str(root), "/lib/libx.so").read() == b"lib\n"
    # an absolute link means the root's own /etc/shadow, never the host's
    assert open_in_root(str(root), "/abs").read() == b"inner\n"


def test_dotdot_stops_at_the_root(root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_in_root(str(root), "/up")
    with pytest.raises(FileNotFoundError):
        open_in_root(str(root), "/../../outside")


def test_nofollow_refuses_a_final_symlink(root: Path) -> None:
    with pytest.raises(OSError, match="symbolic links"):
        open_in_root(str(root), "/abs", nofollow=True)
    with pytest.raises(OSError, match="symbolic links"):
        open_regular(str(root / "abs"))
    with pytest.raises(OSError, match="symbolic links"):
        open_in_root(str(root), "/lib/libx.so", symlinks=False)
    assert open_in_root(str(root), "/usr/lib/libx.so", symlinks=False).read() == b"lib\n"


def test_a_fifo_is_refused_without_blocking(root: Path) -> None:
    done: list[BaseException] = []

    def attempt() -> None:
        try:
            open_in_root(str(root), "/fifo")
        except BaseException as exc:
            done.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening a FIFO blocked"
    assert isinstance(done[0], UnsafeFile)
    with pytest.raises(UnsafeFile, match="not a regular file"):
        open_regular(str(root / "fifo"))


def test_devices_and_directories_are_refused(root: Path) -> None:
    with pytest.raises(UnsafeFile):
        open_regular("/dev/zero")
    with pytest.raises(UnsafeFile):
        open_in_root(str(root), "/etc")


def test_owner_is_checked(root: Path) -> None:
    mine = os.stat(root / "etc/shadow").st_uid
    assert open_regular(str(root / "etc/shadow"), owner=mine).read() == b"inner\n"
    with pytest.raises(UnsafeFile, match="owned by uid"):
        open_regular(str(root / "etc/shadow"), owner=mine + 1)


def test_read_bounded(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 10)
    with open(p, "rb") as f:
        assert read_bounded(f, 10) == b"x" * 10
    with open(p, "rb") as f, pytest.raises(OSError, match="larger than 9"):
        read_bounded(f, 9)


def test_private_dir_is_created_and_tightened(tmp_path: Path) -> None:
    d = private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o755)
    private_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_private_dir_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError, match="not a directory"):
        private_dir(tmp_path / "link")


def test_write_atomic_replaces_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "out.pb.gz").symlink_to(victim)
    write_atomic(tmp_path / "out.pb.gz", b"profile")
    assert victim.read_text() == "untouched"
    out = tmp_path / "out.pb.gz"
    assert not out.is_symlink() and out.read_bytes() == b"profile"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_write_atomic_mode_ignores_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "f", b"x", mode=0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o640


def test_write_atomic_leaves_no_temporary_on_failure(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "dir", b"x")  # rename over a directory fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]

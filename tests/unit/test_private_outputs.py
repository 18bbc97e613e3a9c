"""What the agent writes is private (0700 directories, 0600 files), never
written through a planted name, and refused in a directory that is not its
own; `record -o` is checked before anything is attached. Case 5 of issue 11;
the real agent against a real local user is tests/security/test_outputs.py."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.daemon.rolling import RollingFiles, file_name
from agent.daemon.telemetry import check_status_dir, read_status, write_status
from agent.errors import ConfigError, InputError, UsageError
from agent.exporters.output import check_destination, trusted_owners, write_atomically
from agent.unwind.table import TableCache, UnwindTable
from symbolizer.diskcache import SymbolCache


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file a planted link points at; it must never change."""
    v = tmp_path / "victim"
    v.write_bytes(b"VICTIM\n")
    return v


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A directory like /tmp: world-writable and sticky."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


def test_rolling_files_are_private(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "profiles"
    out.mkdir(mode=0o755)  # as an older install left it
    os.chmod(out, 0o755)
    files = RollingFiles(out, 10, 1 << 20)
    assert mode(out) == 0o700
    name = file_name("cpu", 1_700_000_000)
    (out / name).symlink_to(victim)
    files.send(name, b"profile")
    assert victim.read_bytes() == b"VICTIM\n"
    assert not (out / name).is_symlink() and (out / name).read_bytes() == b"profile"
    assert mode(out / name) == 0o600
    assert [p.name for p in out.iterdir()] == [name]  # no temporary left


@pytest.mark.parametrize("kind", ["shared", "symlink"])
def test_rolling_files_refuse_a_directory_not_their_own(
    tmp_path: Path, shared: Path, kind: str
) -> None:
    target = shared
    if kind == "symlink":
        target = tmp_path / "link"
        target.symlink_to(tmp_path)
    with pytest.raises(ConfigError, match=f"output.dir {target}: .*directory of its own"):
        RollingFiles(target, 10, 1 << 20)
    assert mode(shared) == 0o1777  # never tightened: it is not ours


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes a directory another user owns")
def test_rolling_files_refuse_another_users_directory(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 4242, 4242)  # they could swap what it holds under the agent
    with pytest.raises(ConfigError, match=f"output.dir {theirs}: owned by uid 4242"):
        RollingFiles(theirs, 10, 1 << 20)


def test_status_file_is_private_and_replaces_planted_names(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "run"
    state.mkdir()
    os.chmod(state, 0o755)
    path = state / "status.json"
    (state / ".status.json.tmp").symlink_to(victim)  # the old fixed temporary name
    path.symlink_to(victim)
    check_status_dir(path)
    write_status(path, {"intervals": 3})
    assert victim.read_bytes() == b"VICTIM\n"
    assert json.loads(path.read_text()) == {"intervals": 3}
    assert mode(path) == 0o600 and mode(state) == 0o700


def test_status_in_a_shared_directory_is_refused_and_never_written(
    shared: Path, victim: Path
) -> None:
    path = shared / "status.json"
    path.symlink_to(victim)
    with pytest.raises(ConfigError, match=r"status_file's directory .*: writable by other users"):
        check_status_dir(path)
    write_status(path, {"intervals": 1})  # a failure costs only the file
    assert victim.read_bytes() == b"VICTIM\n" and path.is_symlink()


def test_status_permission_denied_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Path, *a: object, **k: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(InputError, match=r"permission denied: .*sudo bpfprof status"):
        read_status(tmp_path / "status.json")


def test_record_output_is_0600_and_replaces_a_planted_link(shared: Path, victim: Path) -> None:
    # record -o in /tmp is common: a sticky shared directory of root's is fine
    out = shared / "x.pb.gz"
    out.symlink_to(victim)
    check_destination(out)
    assert write_atomically(out, b"profile") == 7
    assert victim.read_bytes() == b"VICTIM\n"
    assert out.read_bytes() == b"profile" and mode(out) == 0o600
    assert sorted(p.name for p in shared.iterdir()) == ["x.pb.gz"]  # no probe left


def missing_dir(t: Path) -> Path:
    return t / "absent" / "x.pb.gz"


def symlinked_dir(t: Path) -> Path:
    (t / "link").symlink_to(t)
    return t / "link" / "x.pb.gz"


def directory_named(t: Path) -> Path:
    (t / "d.pb.gz").mkdir()
    return t / "d.pb.gz"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (missing_dir, "absent: no such directory"),
        (symlinked_dir, "a symlink is refused"),
        (directory_named, "is a directory"),
    ],
    ids=["missing", "symlink", "directory"],
)
def test_record_destination_checked_before_recording(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(UsageError, match=f"^cannot write {path}: .*{message}"):
        check_destination(path)
    with pytest.raises(UsageError, match=f"(?i)^cannot write {path}: .*{message}"):
        write_atomically(path, b"x")  # and the same at the end, if it changed meanwhile


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes a directory another user owns")
def test_record_refuses_another_users_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, 4242, 4242)
    monkeypatch.delenv("SUDO_UID", raising=False)
    with pytest.raises(UsageError, match="belongs to uid 4242"):
        check_destination(d / "x.pb.gz")
    monkeypatch.setenv("SUDO_UID", "4242")  # the user who ran sudo: their own directory
    check_destination(d / "x.pb.gz")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0500 directory")
def test_record_destination_without_permission(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    with pytest.raises(UsageError, match="Permission denied"):
        check_destination(d / "x.pb.gz")


def test_trusted_owners() -> None:
    assert trusted_owners({}) == {0, os.geteuid()}
    assert trusted_owners({"SUDO_UID": "1000"}) == {0, os.geteuid(), 1000}
    assert trusted_owners({"SUDO_UID": "x"}) == {0, os.geteuid()}


def test_unwind_cache_files_are_private(tmp_path: Path, victim: Path) -> None:
    cache_dir = tmp_path / "unwind"
    cache_dir.mkdir()
    os.chmod(cache_dir, 0o755)
    cache = TableCache(cache_dir)
    table = UnwindTable("abcd1234", 0x1000, b"")
    cached = cache.path(table.build_id)
    assert cached is not None
    cached.symlink_to(victim)
    cache.put(table)
    assert victim.read_bytes() == b"VICTIM\n"
    assert mode(cache_dir) == 0o700 and mode(cached) == 0o600
    assert cache.get(table.build_id) == table


def test_unwind_cache_in_a_shared_directory_is_not_written(shared: Path) -> None:
    TableCache(shared).put(UnwindTable("abcd1234", 0x1000, b""))
    assert list(shared.iterdir()) == []


def test_symbol_cache_files_are_private(tmp_path: Path) -> None:
    top = tmp_path / "symbols"
    cache = SymbolCache(str(top))
    cache.store("abcd1234", {"functions": [1, 2]})
    entry = top / "ab" / "abcd1234.sym"
    assert mode(top) == 0o700 and mode(top / "ab") == 0o700 and mode(entry) == 0o600
    assert cache.load("abcd1234") == {"functions": [1, 2]}
    os.chmod(top, 0o1777)
    with pytest.raises(OSError, match="writable by other users"):
        cache.store("abcd1234", {})

"""Case 5 of issue 11: what the root agent writes.

Profiles and the status file name every process on the host and their
stacks. A local user must not read them, and must not turn the agent's
writes against a file of root's by planting a symlink where the agent
writes. What is checked, as the unprivileged user `bpfprof-hostile`:

- a real `bpfprof run` whose directories an older install left 0755:
  every directory it writes is 0700, every file 0600, the user cannot read
  them (nor `bpfprof status`, which says why);
- a real `bpfprof record -o` in a sticky shared directory (like /tmp) where
  the user planted the output name as a link to a root-only file: the file
  is replaced, not written through, and is 0600;
- `bpfprof run` pointed at a shared or the user's own directory, where the
  user planted the status file's old fixed temporary name and its final
  name: the agent refuses the directory at start, one line, and the
  root-only file is byte for byte unchanged.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.security.conftest import Agent, Hostile, Secret

ONE_LINE_ERROR = "bpfprof: error: "


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A directory of root's under /tmp, 0755, as `install -d` or an older
    bpfprof left /var/lib/bpfprof: within the local user's reach, unlike
    root's pytest tmp_path."""
    d = Path(tempfile.mkdtemp(prefix="bpfprof-out-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shared(root_dir: Path) -> Path:
    """Like /tmp: root's, world-writable and sticky."""
    d = root_dir / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


def plant(hostile: Hostile, link: Path, target: Path) -> None:
    """The user makes `link` point at `target` (which it cannot read)."""
    done = hostile.run(["ln", "-s", str(target), str(link)])
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.lstat(link).st_uid == hostile.uid


def assert_private(top: Path, hostile: Hostile, skip: tuple[str, ...] = ()) -> list[Path]:
    """Every directory under `top` (and `top`) 0700, every file 0600 and
    unreadable by the user; returns the files."""
    assert mode(top) == 0o700, f"{top} is {mode(top):o}"
    files = []
    for path in top.rglob("*"):
        if path.name in skip:
            continue
        if path.is_dir():
            assert mode(path) == 0o700, f"{path} is {mode(path):o}"
            continue
        assert mode(path) == 0o600, f"{path} is {mode(path):o}"
        assert os.stat(path).st_uid == 0
        files.append(path)
    for path in files:
        read = hostile.run(["cat", str(path)])
        assert read.returncode != 0 and not read.stdout, f"the user read {path}"
    return files


def test_agent_files_are_private(
    start_agent: Callable[..., Agent],
    hostile: Hostile,
    root_secret: Secret,
    root_dir: Path,
    bpfprof_cmd: list[str],
) -> None:
    # GIVEN the agent's directories as an older install left them: 0755,
    # with a world-readable profile in the output directory
    (root_dir / "profiles").mkdir(mode=0o755)
    os.chmod(root_dir / "profiles", 0o755)
    # WHEN the agent runs and reports while something burns CPU (an idle VM
    # gives a 19 Hz sampler no sample, and so no profile file to check)
    burner = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        agent = start_agent(state=root_dir)
        agent.wait_for(
            lambda: any((root_dir / "profiles").glob("*-cpu.pb.gz")), 60, "a cpu profile"
        )
        agent.assert_healthy()
    finally:
        burner.kill()
        burner.wait()
    # THEN the directories were tightened, and what it wrote is root's alone
    # (agent.log is the test's capture of stderr, not the agent's)
    files = assert_private(root_dir, hostile, skip=("agent.log",))
    assert agent.status_file in files
    assert any(p.name.endswith("-cpu.pb.gz") for p in files)
    if hostile.run([*bpfprof_cmd, "--version"]).returncode == 0:  # CI's checkout may be 0700
        status = hostile.run([*bpfprof_cmd, "status", "--status-file", str(agent.status_file)])
        assert status.returncode == 65 and not status.stdout
        assert status.stderr.startswith(ONE_LINE_ERROR) and status.stderr.count("\n") == 1
        assert "permission denied" in status.stderr and "sudo bpfprof status" in status.stderr
    agent.assert_no_secret(root_secret)
    agent.stop()
    assert_private(root_dir, hostile, skip=("agent.log",))  # the last status too


def test_record_output_replaces_a_planted_link_and_is_private(
    hostile: Hostile, root_secret: Secret, shared: Path, bpfprof_cmd: list[str]
) -> None:
    before = root_secret.path.read_bytes()
    out = shared / "x.pb.gz"
    plant(hostile, out, root_secret.path)
    done = subprocess.run(
        [*bpfprof_cmd, "record", "-d", "1", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert root_secret.path.read_bytes() == before
    assert not out.is_symlink() and mode(out) == 0o600 and os.stat(out).st_uid == 0
    assert [p.name for p in shared.iterdir()] == ["x.pb.gz"]  # no probe, no temporary
    read = hostile.run(["cat", str(out)])
    assert read.returncode != 0 and not read.stdout
    assert mode(shared) == 0o1777  # a shared directory is written into, never tightened


@pytest.mark.parametrize("where", ["shared", "users_own"])
@pytest.mark.parametrize("setting", ["--status-file", "--output-dir"])
def test_run_refuses_a_directory_others_control(
    hostile: Hostile,
    root_secret: Secret,
    shared: Path,
    root_dir: Path,
    bpfprof_cmd: list[str],
    where: str,
    setting: str,
) -> None:
    # GIVEN a directory the user can plant names in, and the names the agent
    # would write there (the status file's old fixed temporary among them)
    # planted as links to a root-only file
    target = shared if where == "shared" else hostile.home
    before = root_secret.path.read_bytes()
    for name in (".status.json.tmp", "status.json"):
        plant(hostile, target / name, root_secret.path)
    own = root_dir / "own"
    paths = {"--status-file": own / "status.json", "--output-dir": own / "profiles"}
    paths[setting] = target / "status.json" if setting == "--status-file" else target
    # WHEN the agent is pointed there (an agent that does not refuse runs
    # on: it is stopped after a few intervals, to look at what it did)
    proc = subprocess.Popen(
        [*bpfprof_cmd, "run", "--interval", "1", "--spool-dir", str(own / "spool")]
        + [arg for key, value in paths.items() for arg in (key, str(value))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    # THEN nothing of root's was written through the links
    assert root_secret.path.read_bytes() == before, "written through a planted link"
    assert all((target / n).is_symlink() for n in (".status.json.tmp", "status.json"))
    # and it refused at start, in one line that names the directory and why
    assert proc.returncode == 2, err[-2000:]
    assert err.startswith(ONE_LINE_ERROR) and err.count("\n") == 1, err
    why = "writable by other users" if where == "shared" else f"owned by uid {hostile.uid}"
    assert f"{target}: {why}" in err and "directory of its own" in err
    assert stat.S_IMODE(os.stat(target).st_mode) in (0o1777, 0o755)  # not tightened

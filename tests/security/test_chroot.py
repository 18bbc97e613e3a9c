"""Case 4: a chrooted user cannot make the agent read a root-only library.

The attack, as reproduced on the old code: a user owns a chroot
directory JAIL and runs a program inside it (root starts it with
`chroot --userspec`, as a service manager would). The kernel prints the
program's mappings in /proc/PID/maps as the *reader* (the host's root)
sees them: JAIL/lib/libpub.so. The old symbolizer re-rooted that path
under /proc/PID/root, i.e. opened JAIL + JAIL/lib/libpub.so, a path that
only exists if the user makes it; the user makes it a symlink to
/root-only/libsecret.so. After the /proc/PID/root jump the rest of the
path is walked by root on the host, so the absolute link reaches the
0700 directory, and the secret library's symbols named the samples
taken in libpub: `root_only_secret_fn` appeared in the profile.

Now the mapped file is opened through /proc/PID/map_files (the kernel's
handle on the mapped inode), and any other way in must lead to the device
and inode the maps line names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.security.conftest import Hostile, Secret

LIB = r"""
volatile unsigned long sink;
__attribute__((noinline)) void FN(void) {
    for (unsigned long i = 0; i < 200000000UL; i++) sink += i * 7;
}
"""
PROG = r"""
void public_lib_fn(void);
__attribute__((noinline)) void own_chrooted_loop(void) { for (;;) public_lib_fn(); }
int main(void) { own_chrooted_loop(); return 0; }
"""
CFLAGS = ["-O1", "-g0", "-fno-omit-frame-pointer"]


def _gcc(*args: str | Path) -> None:
    subprocess.run(["gcc", *CFLAGS, *map(str, args)], check=True)


def _copy_into(jail: Path, path: str) -> None:
    """Copy a host file to the same path inside the jail."""
    inside = jail / path.lstrip("/")
    inside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.realpath(path), inside)


def _ldd(exe: Path) -> list[str]:
    """The absolute paths ldd names: libraries and the interpreter."""
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True).stdout
    paths = []
    for line in out.splitlines():
        words = [w for w in line.replace("=>", " ").split() if w.startswith("/")]
        paths += words[:1]
    return paths


@pytest.fixture
def jail(hostile: Hostile, root_secret: Secret) -> tuple[Path, Path]:
    """JAIL owned by the user, with the program, libpub and what they need;
    the secret library (same code, other name) in root's 0700 directory."""
    jail = hostile.home / "jail"
    build = hostile.home / "build"
    for d in (jail / "lib", build):
        d.mkdir(parents=True)
    (build / "lib.c").write_text(LIB)
    (build / "prog.c").write_text(PROG)
    _gcc("-shared", "-fPIC", "-DFN=public_lib_fn", build / "lib.c", "-o", jail / "lib/libpub.so")
    secret_lib = root_secret.path.parent / "libsecret.so"
    _gcc("-shared", "-fPIC", "-DFN=root_only_secret_fn", build / "lib.c", "-o", secret_lib)
    _gcc(build / "prog.c", "-L", jail / "lib", "-lpub", "-Wl,-rpath,/lib", "-o", jail / "prog")
    for path in _ldd(jail / "prog"):
        if not path.endswith("libpub.so"):
            _copy_into(jail, path)
    for p in [jail, *jail.rglob("*")]:
        hostile.give(p)
    # what the user plants: JAIL re-rooted under JAIL, its libpub a link out
    planted = jail / str(jail / "lib/libpub.so").lstrip("/")
    hostile.run(["mkdir", "-p", str(planted.parent)], check=True)
    hostile.run(["ln", "-s", str(secret_lib), str(planted)], check=True)
    assert planted.is_symlink()
    return jail, secret_lib


def _chrooted(jail: Path, hostile: Hostile) -> subprocess.Popen[str]:
    """The program run in the jail as the user (root chroots, then drops)."""
    return subprocess.Popen(
        ["chroot", f"--userspec={hostile.uid}:{hostile.gid}", str(jail), "/prog"], text=True
    )


def _wait_mapped(pid: int, name: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        maps = Path(f"/proc/{pid}/maps").read_text()
        if name in maps:
            return maps
        time.sleep(0.05)
    pytest.fail(f"{name} never mapped by {pid}")


def test_a_planted_link_in_a_chroot_does_not_reach_a_root_only_library(
    jail: tuple[Path, Path], hostile: Hostile, bpfprof_cmd: list[str], tmp_path: Path
) -> None:
    root, secret_lib = jail
    prog = _chrooted(root, hostile)
    try:
        maps = _wait_mapped(prog.pid, "libpub.so")
        # the attack's premise: maps names the host path, which re-rooted
        # under /proc/PID/root is the user's link
        assert f"{root}/lib/libpub.so" in maps
        assert os.readlink(f"/proc/{prog.pid}/root{root}/lib/libpub.so") == str(secret_lib)
        out = tmp_path / "chroot.folded"
        done = subprocess.run(
            [*bpfprof_cmd, "record", "-p", str(prog.pid), "-d", "3", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        prog.kill()
        prog.wait()
    assert done.returncode == 0, done.stderr
    folded = out.read_text()
    assert "root_only_secret_fn" not in folded
    # not vacuous: the samples in libpub were taken and named from libpub
    assert "public_lib_fn" in folded, folded[:2000]
    assert "own_chrooted_loop" in folded


def test_the_agent_refuses_the_planted_link_and_goes_on(
    jail: tuple[Path, Path], hostile: Hostile, start_agent: object, root_secret: Secret
) -> None:
    """The continuous agent meets the same chrooted process: it names libpub's
    function, never the secret one, and stays healthy."""
    root, _ = jail
    prog = _chrooted(root, hostile)
    try:
        _wait_mapped(prog.pid, "libpub.so")
        agent = start_agent()  # type: ignore[operator]
        agent.assert_healthy()
        agent.wait_for(
            lambda: any(b"public_lib_fn" in _readable(p) for p in agent.outputs()),
            60,
            "a profile naming public_lib_fn",
        )
        agent.stop()
    finally:
        prog.kill()
        prog.wait()
    for path in agent.outputs():
        assert b"root_only_secret_fn" not in _readable(path), path
    agent.assert_no_secret(root_secret)


def _readable(path: Path) -> bytes:
    from tests.security.conftest import readable_bytes

    return readable_bytes(path)
